"""A tenant's prepaid Communication Credits: balance, auto-recharge and balance events.

Pure and deterministic: every function takes the current state, one input and ``now`` (the
clock is injected, never read here) and returns the new immutable state plus the effects to
publish. The streaming layer keeps one :class:`Account` per tenant (``to_dict``/``from_dict``)
and calls these functions in order per tenant; idempotency of inputs (``cdr_id``,
``event_id``) is its job, not ours.

Choices worth knowing (CONTRACTS.md "Balance rules" leaves them open):

* A tenant is created by its first settings message with balance 0, and creation emits
  ``exhausted``: the platform must block credit-requiring calls until funds arrive. Creation
  emits no ``low_balance`` (the tenant never had credits above the line).
* Balance events fire on crossings only. ``low_balance`` fires when "balance < L" turns true,
  where L is ``low_balance_alert``, else the trigger when auto-recharge is enabled, else there
  is no line. A settings change that moves L above the balance counts as a crossing.
  Order within one change: ``low_balance``, ``exhausted``, ``restored``, ``recharge_failing``.
* At most one recharge command is outstanding. Its retries resend the same ``command_id`` with
  the same amount (billing dedupes by id), even if the settings changed meanwhile.
* A ``recharge_failed`` for the outstanding command while we already wait to retry it is
  ignored: that attempt was already counted (by the response timeout), so counting it again
  would double the backoff for one attempt.
* One command is one recharge. A recharge result (``recharge_succeeded`` or
  ``recharge_failed``) applies only to the tenant's outstanding command with that
  ``command_id``; a result for any other command (resolved before, never issued, another
  tenant's) is refused as ``command_not_outstanding`` and credits nothing, so a billing
  resend under a new ``event_id`` never creates money. The refusal's detail says which
  event resolved the command before, or that it was never issued.
* The one exception is a command *we* closed without billing's answer (``given_up`` after
  the last failure, or ``abandoned`` below): billing may still have charged the card, so its
  first late ``recharge_succeeded`` credits once (then it counts as resolved like any other);
  a late ``recharge_failed`` for it is ignored (nothing moved). The account remembers the
  last :data:`RECENT_CLOSED` closed commands for this; older ones are refused.
* A success whose amount differs from the command's credits the event's amount (billing moved
  that money) and is reported in ``Effects.amount_mismatch`` for an alert.
* Disabling auto-recharge does not cancel the outstanding command (billing may be charging the
  card); its result is applied when it arrives. But a disabled tenant's command is never
  *re*-sent: when it falls due it is dropped (outcome ``abandoned``); a late success for it
  still credits once.
* ``recharge_failing`` (given up) stops new commands until a settings change, a
  ``manual_add``, a positive ``adjustment`` or a ``recharge_succeeded`` (money arrived, so the
  payment path works). A negative adjustment is not "funds arriving" and does not resume.
* The daily cap counts new commands (not retries) per UTC day of ``now``. Hitting it reports
  outcome ``capped`` once per day; :func:`needs_tick` then asks for a tick at the next UTC
  midnight so a tenant stuck below its trigger recharges as soon as the new day allows.
* An identical settings message (a re-delivery) is not a change: it does not clear
  ``recharge_failing``, so a replay cannot restart a given-up retry loop.
* Money is ``Decimal`` in a 50-digit context that traps inexact results, so a sum is exact
  or fails loudly; amounts of 10**15 or more, or with more than 12 decimals, are refused.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from datetime import UTC, datetime, timedelta
from decimal import Context, Decimal, Inexact, InvalidOperation, Overflow, Underflow
from operator import attrgetter
from typing import Any, Final, Literal

from rating.contracts import (
    BalanceEvent,
    BalanceEventKind,
    FundsEvent,
    FundsKind,
    RechargeCommand,
    RejectReason,
    TenantSettings,
    format_money,
    format_time,
)
from rating.domain.immutable import immutable
from rating.memo import RememberLast

RechargeOutcome = Literal[
    "issued", "retried", "succeeded", "failed", "timed_out", "given_up", "capped", "abandoned"
]
#: Every recharge outcome, for pre-initialising metric labels.
RECHARGE_OUTCOMES: Final[tuple[RechargeOutcome, ...]] = (
    "issued",  # a new command (attempt 1)
    "retried",  # the outstanding command resent after a failure's backoff
    "succeeded",  # a recharge_succeeded credited (the outstanding or a locally closed command)
    "failed",  # a failure (billing's or a response timeout); a retry is scheduled
    "timed_out",  # no answer within response_timeout; also reported as failed/given_up
    "given_up",  # max_failures reached: recharge_failing emitted
    "capped",  # a command was due but the daily cap was reached (once per tenant-day)
    "abandoned",  # a due retry of a tenant that disabled auto-recharge is not resent
)

FundsOutcome = Literal["applied", "ignored"]

#: Version of the ``to_dict`` layout, so a future change can migrate stored state.
#: 2: ``closed`` (recently closed commands) and the escaped state keys of ``rating.keys``.
#: 3: compact markers and the outbox (``ledger.py``); the account layout is that of 2, so a
#: version-3 worker reads version-2 state, and a version-2 worker refuses version-3 accounts.
STATE_VERSION: Final = 3
READABLE_VERSIONS: Final = frozenset({2, 3})
#: How many closed recharge commands an account remembers (to tell a billing resend from a
#: late first answer, and to name the event that resolved a command).
RECENT_CLOSED: Final = 4  # stored in every account write: keep it small

ClosedHow = Literal["succeeded", "given_up", "abandoned"]

_ZERO: Final = Decimal(0)
_MAX_AMOUNT: Final = Decimal(10) ** 15
_MAX_DECIMALS: Final = 12
# Wide enough that sums of refused-if-larger amounts never round; if one ever would, the
# Inexact trap raises instead of losing money silently.
_CTX: Final = Context(prec=50, traps=[Inexact, InvalidOperation, Overflow, Underflow])


@dataclass(frozen=True, slots=True)
class RechargePolicy:
    """Operator knobs for auto-recharge; the same for every tenant of a deployment."""

    # No answer from billing within this counts as a failure; the same command is retried.
    response_timeout: timedelta = timedelta(minutes=10)
    # Retry delay after the 1st failure, doubling each time up to backoff_max.
    backoff_initial: timedelta = timedelta(seconds=30)
    backoff_max: timedelta = timedelta(hours=1)
    # After this many consecutive failures: recharge_failing, no retries until resumed.
    max_failures: int = 5
    # At most this many NEW commands per tenant per UTC day (retries don't count).
    daily_cap: int = 10

    def __post_init__(self) -> None:
        zero = timedelta(0)
        if self.response_timeout <= zero or self.backoff_initial <= zero:
            raise ValueError("response_timeout and backoff_initial must be positive")
        if self.backoff_max < self.backoff_initial:
            raise ValueError("backoff_max must be >= backoff_initial")
        if self.max_failures < 1 or self.daily_cap < 0:
            raise ValueError("max_failures must be >= 1 and daily_cap >= 0")

    def backoff(self, failures: int) -> timedelta:
        """``min(backoff_initial * 2**(failures-1), backoff_max)``, without overflowing."""
        delay = self.backoff_initial
        for _ in range(failures - 1):
            if delay >= self.backoff_max:
                break
            delay *= 2
        return min(delay, self.backoff_max)


@dataclass(frozen=True, slots=True)
class Outstanding:
    """The one recharge command billing has not resolved yet."""

    command_id: str
    amount: Decimal
    trigger_balance: Decimal
    issued_at: datetime  # first send; retries carry their own issued_at on the wire
    attempt: int  # sends so far (1 = first)
    failures: int  # consecutive failures of this command
    # When to act next: the response deadline while awaiting billing, or the retry time.
    due_at: datetime
    awaiting_retry: bool  # True after a failure, until due_at resends it

    def to_dict(self) -> dict[str, Any]:
        return {
            "command_id": self.command_id,
            "amount": format_money(self.amount),
            "trigger_balance": format_money(self.trigger_balance),
            "issued_at": format_time(self.issued_at),
            "attempt": self.attempt,
            "failures": self.failures,
            "due_at": format_time(self.due_at),
            "awaiting_retry": self.awaiting_retry,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Outstanding:
        return cls(
            command_id=_str(d, "command_id"),
            amount=_dec(d, "amount"),
            trigger_balance=_dec(d, "trigger_balance"),
            issued_at=_time(d, "issued_at"),
            attempt=_int(d, "attempt"),
            failures=_int(d, "failures"),
            due_at=_time(d, "due_at"),
            awaiting_retry=_bool(d, "awaiting_retry"),
        )


@dataclass(frozen=True, slots=True)
class Closed:
    """A recharge command that is no longer outstanding, and how it ended."""

    command_id: str
    how: ClosedHow
    amount: Decimal
    event_id: str | None = None  # the recharge_succeeded that resolved it

    def to_dict(self) -> dict[str, Any]:
        return {
            "command_id": self.command_id,
            "how": self.how,
            "amount": format_money(self.amount),
            "event_id": self.event_id,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Closed:
        how = _str(d, "how")
        if how not in ("succeeded", "given_up", "abandoned"):
            raise ValueError(f"account state: closed.how is {how!r}")
        event_id = d.get("event_id")
        if event_id is not None and not isinstance(event_id, str):
            raise ValueError("account state: closed.event_id must be a string or null")
        return cls(_str(d, "command_id"), how, _dec(d, "amount"), event_id)  # type: ignore[arg-type]


@immutable
class Account:
    """One tenant's state. Immutable: every operation returns a new one."""

    tenant_id: str
    currency: str
    plan: str
    balance: Decimal
    auto_recharge_enabled: bool
    recharge_amount: Decimal
    trigger_balance: Decimal
    low_balance_alert: Decimal | None
    outstanding: Outstanding | None
    # Commands ever issued; the next command's id uses recharge_seq + 1, so ids are
    # deterministic from state and stay the same across replays.
    recharge_seq: int
    # recharge_failing was emitted; no commands until settings change or funds arrive.
    recharge_failing: bool
    cap_day: str  # "YYYY-MM-DD" UTC day that recharges_today counts
    recharges_today: int
    cap_reported: bool = False  # "capped" already reported for cap_day
    closed: tuple[Closed, ...] = ()  # the last RECENT_CLOSED closed commands, oldest first

    @property
    def low_line(self) -> Decimal | None:
        """The ``low_balance`` threshold: the alert, else the enabled trigger, else none."""
        if self.low_balance_alert is not None:
            return self.low_balance_alert
        return self.trigger_balance if self.auto_recharge_enabled else None

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe: money and times as contract strings; stable keys."""
        return {
            "v": STATE_VERSION,
            "tenant_id": self.tenant_id,
            "currency": self.currency,
            "plan": self.plan,
            "balance": format_money(self.balance),
            "auto_recharge_enabled": self.auto_recharge_enabled,
            "recharge_amount": format_money(self.recharge_amount),
            "trigger_balance": format_money(self.trigger_balance),
            "low_balance_alert": (
                None if self.low_balance_alert is None else format_money(self.low_balance_alert)
            ),
            "outstanding": None if self.outstanding is None else self.outstanding.to_dict(),
            "recharge_seq": self.recharge_seq,
            "recharge_failing": self.recharge_failing,
            "cap_day": self.cap_day,
            "recharges_today": self.recharges_today,
            "cap_reported": self.cap_reported,
            "closed": [c.to_dict() for c in self.closed],
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Account:
        """Exact inverse of :meth:`to_dict`; raises ``ValueError`` on a malformed dict."""
        if d.get("v") not in READABLE_VERSIONS:
            raise ValueError(f"unknown account state version {d.get('v')!r}")
        raw_out = d.get("outstanding")
        if raw_out is not None and not isinstance(raw_out, Mapping):
            raise ValueError("account state: outstanding must be an object or null")
        raw_closed = d.get("closed")
        if not isinstance(raw_closed, list) or not all(isinstance(c, Mapping) for c in raw_closed):
            raise ValueError("account state: closed must be a list of objects")
        return cls(
            tenant_id=_str(d, "tenant_id"),
            currency=_str(d, "currency"),
            plan=_str(d, "plan"),
            balance=_dec(d, "balance"),
            auto_recharge_enabled=_bool(d, "auto_recharge_enabled"),
            recharge_amount=_dec(d, "recharge_amount"),
            trigger_balance=_dec(d, "trigger_balance"),
            low_balance_alert=_opt_dec(d, "low_balance_alert"),
            outstanding=None if raw_out is None else Outstanding.from_dict(raw_out),
            recharge_seq=_int(d, "recharge_seq"),
            recharge_failing=_bool(d, "recharge_failing"),
            cap_day=_str(d, "cap_day"),
            recharges_today=_int(d, "recharges_today"),
            cap_reported=_bool(d, "cap_reported"),
            closed=tuple(Closed.from_dict(c) for c in raw_closed),
        )

    def public_view(self) -> dict[str, Any]:
        """The ``GET /tenants/{tenant_id}`` body (CONTRACTS.md "Command line")."""
        out = self.outstanding
        return {
            "tenant_id": self.tenant_id,
            "currency": self.currency,
            "balance": format_money(self.balance),
            "auto_recharge": {
                "enabled": self.auto_recharge_enabled,
                "recharge_amount": format_money(self.recharge_amount),
                "trigger_balance": format_money(self.trigger_balance),
            },
            "outstanding_command": None if out is None else out.to_dict(),
            # Extensions for operators (additive to the contract's fields).
            "plan": self.plan,
            "low_balance_alert": (
                None if self.low_balance_alert is None else format_money(self.low_balance_alert)
            ),
            "recharge_failing": self.recharge_failing,
        }


@dataclass(frozen=True, slots=True)
class Effects:
    """What one operation asks the streaming layer to publish and count.

    ``recharge_outcomes``: strings from :data:`RECHARGE_OUTCOMES`, one per thing that happened,
    in order (a timeout reports ``timed_out`` then ``failed`` or ``given_up``).
    ``funds_outcome``: for :func:`apply_funds` only, ``"applied"`` when the event changed
    anything (credited, resolved or counted a failure), ``"ignored"`` for a
    ``recharge_failed`` of an attempt already counted or of a command we closed ourselves;
    ``None`` for other operations.
    ``amount_mismatch``: a ``recharge_succeeded`` credited an amount other than its command's.
    """

    recharge_commands: tuple[RechargeCommand, ...] = ()
    balance_events: tuple[BalanceEvent, ...] = ()
    recharge_outcomes: tuple[RechargeOutcome, ...] = ()
    funds_outcome: FundsOutcome | None = None
    amount_mismatch: bool = False


@dataclass(frozen=True, slots=True)
class Refusal:
    """Bad input, returned as a value so the caller dead-letters it (no exception)."""

    reason: RejectReason
    detail: str


def command_id(tenant_id: str, seq: int) -> str:
    """The deterministic id of a tenant's ``seq``-th recharge command."""
    return f"{tenant_id}:recharge:{seq}"


# --- operations ---------------------------------------------------------------------------


def open_or_update(
    account: Account | None, settings: TenantSettings, now: datetime, policy: RechargePolicy
) -> tuple[Account, Effects] | Refusal:
    """Create the tenant from its first settings message, or apply new settings."""
    _check_now(now)
    refusal = _check_settings(settings)
    if refusal is not None:
        return refusal
    ar = settings.auto_recharge
    if account is None:
        created = Account(
            tenant_id=settings.tenant_id,
            currency=settings.currency,
            plan=settings.plan,
            balance=_ZERO,
            auto_recharge_enabled=ar.enabled,
            recharge_amount=ar.recharge_amount,
            trigger_balance=ar.trigger_balance,
            low_balance_alert=settings.low_balance_alert,
            outstanding=None,
            recharge_seq=0,
            recharge_failing=False,
            cap_day=_utc_day(now),
            recharges_today=0,
        )
        out = _Out()
        # Balance 0 is already "exhausted": the platform must block until funds arrive.
        out.events.append(_event(created, BalanceEventKind.EXHAUSTED, _ZERO, now))
        return _finish(created, out, now, policy)

    if settings.tenant_id != account.tenant_id:
        return Refusal(
            RejectReason.KEY_MISMATCH,
            f"tenant_id: settings for {settings.tenant_id!r} applied to {account.tenant_id!r}",
        )
    if settings.currency != account.currency and (
        account.balance != 0 or account.outstanding is not None
    ):
        return Refusal(
            RejectReason.CURRENCY_MISMATCH,
            f"currency: cannot change {account.currency} to {settings.currency} with balance "
            f"{format_money(account.balance)} or a recharge outstanding",
        )
    before = _roll_day(account, now)
    updated = replace(
        before,
        currency=settings.currency,
        plan=settings.plan,
        auto_recharge_enabled=ar.enabled,
        recharge_amount=ar.recharge_amount,
        trigger_balance=ar.trigger_balance,
        low_balance_alert=settings.low_balance_alert,
    )
    if updated != before:
        # A real change (not a re-delivery) is the admin acting: resume a given-up recharge.
        updated = replace(updated, recharge_failing=False)
        if updated.outstanding is not None and updated.outstanding.failures:
            updated = replace(updated, outstanding=replace(updated.outstanding, failures=0))
    out = _Out()
    out.events.extend(_crossings(before, updated, now))
    return _finish(updated, out, now, policy)


def apply_charge(
    account: Account, amount: Decimal, now: datetime, policy: RechargePolicy
) -> tuple[Account, Effects]:
    """Debit a rated call. Always debits (the call happened); the balance may go negative.

    ``amount`` must be a finite ``Decimal`` >= 0 (rating guarantees it; anything else is a
    bug and raises ``ValueError``). A zero charge returns ``account`` itself and no effects.
    """
    _check_now(now)
    if not isinstance(amount, Decimal) or not amount.is_finite() or amount < 0:
        raise ValueError(f"charge amount must be a finite Decimal >= 0, got {amount!r}")
    if amount == 0:
        return account, Effects()
    before = _roll_day(account, now)
    after = _with_balance(before, _CTX.subtract(before.balance, amount))
    events = _crossings(before, after, now)
    if not events and (after.outstanding is not None or not _wants_recharge(after)):
        return after, _NO_EFFECTS  # the usual debit: what _finish would return, built once
    out = _Out()
    out.events.extend(events)
    return _finish(after, out, now, policy)


def apply_funds(
    account: Account, event: FundsEvent, now: datetime, policy: RechargePolicy
) -> tuple[Account, Effects] | Refusal:
    """Apply a billing funds event: a credit, a recharge result or an adjustment."""
    _check_now(now)
    refusal = _check_funds(account, event)
    if refusal is not None:
        return refusal
    before = _roll_day(account, now)
    out = _Out()
    out.funds_outcome = "applied"
    pending = before.outstanding
    matches = pending is not None and event.command_id == pending.command_id
    late: Closed | None = None  # a command we closed ourselves, answered late
    if event.kind in _RESULTS and not matches:
        late = _closed_locally(before, event)
        if late is None:
            return Refusal(RejectReason.COMMAND_NOT_OUTSTANDING, _not_outstanding(before, event))

    if event.kind is FundsKind.RECHARGE_FAILED:
        if late is not None or (pending is not None and pending.awaiting_retry):
            # Nothing to count: we gave up on that command, or this attempt already failed.
            out.funds_outcome = "ignored"
            return _finish(before, out, now, policy)
        return _finish(_fail(before, now, policy, out), out, now, policy)

    after = replace(before, balance=_CTX.add(before.balance, event.amount))
    if event.kind is FundsKind.RECHARGE_SUCCEEDED:
        out.outcomes.append("succeeded")
        if late is not None:
            resolved = replace(late, how="succeeded", event_id=event.event_id)
            after = replace(after, closed=tuple(resolved if c is late else c for c in after.closed))
            if pending is not None and pending.failures:
                # Money came through, so the payment path works: restart the failure count.
                after = replace(after, outstanding=replace(pending, failures=0))
            expected = late.amount
        else:
            assert pending is not None  # matches
            after = _close(replace(after, outstanding=None), pending, "succeeded", event.event_id)
            expected = pending.amount
        out.amount_mismatch = event.amount != expected
        after = replace(after, recharge_failing=False)
    elif event.amount > 0:
        # manual_add (always > 0) or a positive adjustment: funds arrived, try recharging.
        after = replace(after, recharge_failing=False)
    out.events.extend(_crossings(before, after, now))
    return _finish(after, out, now, policy)


def on_tick(account: Account, now: datetime, policy: RechargePolicy) -> tuple[Account, Effects]:
    """Time passes: resend a due retry, time out an unanswered command, roll the cap day."""
    _check_now(now)
    acc = _roll_day(account, now)
    out = _Out()
    pending = acc.outstanding
    if pending is not None and now >= pending.due_at:
        if not acc.auto_recharge_enabled:
            # Disabled since: don't charge the card again. A late success still credits once.
            out.outcomes.append("abandoned")
            acc = _close(replace(acc, outstanding=None), pending, "abandoned")
        elif pending.awaiting_retry:
            resent = replace(
                pending,
                attempt=pending.attempt + 1,
                due_at=now + policy.response_timeout,
                awaiting_retry=False,
            )
            acc = replace(acc, outstanding=resent)
            out.commands.append(_command(acc, resent, now))
            out.outcomes.append("retried")
        else:
            out.outcomes.append("timed_out")
            acc = _fail(acc, now, policy, out)
    return _finish(acc, out, now, policy)


def needs_tick(account: Account) -> datetime | None:
    """When :func:`on_tick` next has something to do, else ``None``.

    The outstanding command's ``due_at``; or, when a command is wanted but none is out (only
    the daily cap stops it), the next UTC midnight after ``cap_day``.
    """
    if account.outstanding is not None:
        return account.outstanding.due_at
    if _wants_recharge(account):
        day = datetime.strptime(account.cap_day, "%Y-%m-%d").replace(tzinfo=UTC)
        return day + timedelta(days=1)
    return None


# --- internals ----------------------------------------------------------------------------


@dataclass(slots=True)
class _Out:
    """Effects being collected during one operation."""

    commands: list[RechargeCommand] = field(default_factory=list)
    events: list[BalanceEvent] = field(default_factory=list)
    outcomes: list[RechargeOutcome] = field(default_factory=list)
    funds_outcome: FundsOutcome | None = None
    amount_mismatch: bool = False


_NO_EFFECTS: Final = Effects()  # frozen, all tuples: safe to share
_RESULTS: Final = (FundsKind.RECHARGE_SUCCEEDED, FundsKind.RECHARGE_FAILED)


def _close(
    account: Account, pending: Outstanding, how: ClosedHow, event_id: str | None = None
) -> Account:
    closed = (*account.closed, Closed(pending.command_id, how, pending.amount, event_id))
    return replace(account, closed=closed[-RECENT_CLOSED:])


def _find_closed(account: Account, command: str | None) -> Closed | None:
    return next((c for c in account.closed if c.command_id == command), None)


def _closed_locally(account: Account, event: FundsEvent) -> Closed | None:
    found = _find_closed(account, event.command_id)
    return None if found is None or found.how == "succeeded" else found


def _issued_seq(account: Account, command: str | None) -> int | None:
    """The sequence number of ``command`` if this tenant ever issued it."""
    prefix = command_id(account.tenant_id, 0)[:-1]
    if command is None or not command.startswith(prefix):
        return None
    tail = command[len(prefix) :]
    if not tail.isdigit() or tail != str(int(tail)):
        return None
    seq = int(tail)
    return seq if 1 <= seq <= account.recharge_seq else None


def _not_outstanding(account: Account, event: FundsEvent) -> str:
    cmd = event.command_id
    what = f"{event.kind.value} {event.event_id!r} credits nothing: command_id {cmd!r}"
    if cmd is None:
        return f"{what}: a recharge result must name the command it answers"
    found = _find_closed(account, cmd)
    if found is not None:
        return f"{what} was already resolved by event {found.event_id!r}"
    if _issued_seq(account, cmd) is not None:
        return f"{what} was issued and resolved before (older than the last {RECENT_CLOSED})"
    out = account.outstanding
    now_out = "none" if out is None else repr(out.command_id)
    return f"{what} was never issued to tenant {account.tenant_id!r} (outstanding: {now_out})"


def _finish(
    account: Account, out: _Out, now: datetime, policy: RechargePolicy
) -> tuple[Account, Effects]:
    """Every operation ends here, so "below the trigger => a command is out" always holds."""
    account = _maybe_issue(account, out, now, policy)
    return account, Effects(
        recharge_commands=tuple(out.commands),
        balance_events=tuple(out.events),
        recharge_outcomes=tuple(out.outcomes),
        funds_outcome=out.funds_outcome,
        amount_mismatch=out.amount_mismatch,
    )


def _wants_recharge(account: Account) -> bool:
    return (
        account.auto_recharge_enabled
        and not account.recharge_failing
        and account.balance < account.trigger_balance  # strictly: equal is not below
    )


def _maybe_issue(account: Account, out: _Out, now: datetime, policy: RechargePolicy) -> Account:
    if account.outstanding is not None or not _wants_recharge(account):
        return account
    if account.recharges_today >= policy.daily_cap:
        if account.cap_reported:
            return account
        out.outcomes.append("capped")
        return replace(account, cap_reported=True)
    seq = account.recharge_seq + 1
    pending = Outstanding(
        command_id=command_id(account.tenant_id, seq),
        amount=account.recharge_amount,
        trigger_balance=account.trigger_balance,
        issued_at=now,
        attempt=1,
        failures=0,
        due_at=now + policy.response_timeout,
        awaiting_retry=False,
    )
    out.commands.append(_command(account, pending, now))
    out.outcomes.append("issued")
    return replace(
        account,
        outstanding=pending,
        recharge_seq=seq,
        recharges_today=account.recharges_today + 1,
    )


def _fail(account: Account, now: datetime, policy: RechargePolicy, out: _Out) -> Account:
    """Count a failure of the outstanding command: back off, or give up."""
    pending = account.outstanding
    assert pending is not None  # callers check; a bug otherwise
    failures = pending.failures + 1
    if failures >= policy.max_failures:
        out.outcomes.append("given_up")
        out.events.append(
            _event(account, BalanceEventKind.RECHARGE_FAILING, account.trigger_balance, now)
        )
        closed = _close(replace(account, outstanding=None), pending, "given_up")
        return replace(closed, recharge_failing=True)
    out.outcomes.append("failed")
    retry = replace(
        pending, failures=failures, awaiting_retry=True, due_at=now + policy.backoff(failures)
    )
    return replace(account, outstanding=retry)


def _crossings(before: Account, after: Account, now: datetime) -> list[BalanceEvent]:
    """Balance events for the change before -> after: crossings only, in a fixed order."""
    events: list[BalanceEvent] = []
    old, new = before.balance, after.balance
    old_line, new_line = before.low_line, after.low_line
    was_low = old_line is not None and old < old_line
    if new_line is not None and new < new_line and not was_low:
        events.append(_event(after, BalanceEventKind.LOW_BALANCE, new_line, now))
    if old > 0 >= new:
        events.append(_event(after, BalanceEventKind.EXHAUSTED, _ZERO, now))
    if old <= 0 < new:
        events.append(_event(after, BalanceEventKind.RESTORED, _ZERO, now))
    return events


def _event(
    account: Account, kind: BalanceEventKind, threshold: Decimal, now: datetime
) -> BalanceEvent:
    return BalanceEvent(
        tenant_id=account.tenant_id,
        kind=kind,
        balance=account.balance,
        threshold=threshold,
        at=now,
    )


def _command(account: Account, pending: Outstanding, now: datetime) -> RechargeCommand:
    return RechargeCommand(
        command_id=pending.command_id,
        tenant_id=account.tenant_id,
        amount=pending.amount,
        currency=account.currency,
        trigger_balance=pending.trigger_balance,
        balance=account.balance,
        issued_at=now,
        attempt=pending.attempt,
    )


# The per-CDR debit changes one field: build the new Account positionally (a C attrgetter
# and one constructor call) instead of dataclasses.replace, which walks the fields in Python.
_ACCOUNT_FIELDS: Final = tuple(f.name for f in fields(Account))
_account_values: Final = attrgetter(*_ACCOUNT_FIELDS)
_BALANCE_AT: Final = _ACCOUNT_FIELDS.index("balance")


def _with_balance(account: Account, balance: Decimal) -> Account:
    values = list(_account_values(account))
    values[_BALANCE_AT] = balance
    return Account(*values)


def _roll_day(account: Account, now: datetime) -> Account:
    today = _utc_day(now)
    # ">" (ISO dates sort as text): a clock stepping back must not reset the counter.
    if today > account.cap_day:
        return replace(account, cap_day=today, recharges_today=0, cap_reported=False)
    return account


def _day_of(now: datetime) -> str:
    utc = now if now.tzinfo is UTC else now.astimezone(UTC)
    return utc.date().isoformat()


# A batch debits many accounts at one ``now``.
_utc_day: Final = RememberLast(_day_of)


def _check_now(now: datetime) -> None:
    if now.tzinfo is UTC:
        return
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError("now must be a timezone-aware datetime")


def _amount_problem(value: Decimal) -> str | None:
    if not value.is_finite():
        return "is not a finite number"
    if abs(value) >= _MAX_AMOUNT:
        return f"is out of range (|amount| must be < {_MAX_AMOUNT:f})"
    exponent = value.as_tuple().exponent
    if isinstance(exponent, int) and exponent < -_MAX_DECIMALS:
        return f"has more than {_MAX_DECIMALS} decimals"
    return None


def _check_settings(settings: TenantSettings) -> Refusal | None:
    ar = settings.auto_recharge
    amounts = {
        "auto_recharge.recharge_amount": ar.recharge_amount,
        "auto_recharge.trigger_balance": ar.trigger_balance,
    }
    if settings.low_balance_alert is not None:
        amounts["low_balance_alert"] = settings.low_balance_alert
    for name, value in amounts.items():
        problem = _amount_problem(value)
        if problem is not None:
            return Refusal(RejectReason.SCHEMA, f"{name}: {format_money(value)} {problem}")
    if ar.recharge_amount < 0 or (ar.enabled and ar.recharge_amount == 0):
        return Refusal(
            RejectReason.SCHEMA,
            f"auto_recharge.recharge_amount: must be > 0 when enabled and never negative, "
            f"got {format_money(ar.recharge_amount)}",
        )
    return None


def _check_funds(account: Account, event: FundsEvent) -> Refusal | None:
    if event.tenant_id != account.tenant_id:
        return Refusal(
            RejectReason.KEY_MISMATCH,
            f"tenant_id: funds for {event.tenant_id!r} applied to {account.tenant_id!r}",
        )
    if event.currency != account.currency:
        return Refusal(
            RejectReason.CURRENCY_MISMATCH,
            f"currency: event {event.event_id!r} is in {event.currency}, "
            f"tenant {account.tenant_id!r} in {account.currency}",
        )
    problem = _amount_problem(event.amount)
    if problem is not None:
        return Refusal(RejectReason.SCHEMA, f"amount: {format_money(event.amount)} {problem}")
    credits = (FundsKind.MANUAL_ADD, FundsKind.RECHARGE_SUCCEEDED)
    if event.kind in credits and event.amount <= 0:
        return Refusal(
            RejectReason.SCHEMA,
            f"amount: a {event.kind.value} must be > 0, got {format_money(event.amount)}",
        )
    return None


# --- from_dict field readers: precise errors instead of a KeyError deep in the stream -----


def _get(d: Mapping[str, Any], key: str, kind: type) -> Any:
    value = d.get(key)
    # bool is an int subclass; don't let True pass as a count.
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ValueError(f"account state: {key} must be {kind.__name__}, got {value!r}")
    return value


def _str(d: Mapping[str, Any], key: str) -> str:
    value: str = _get(d, key, str)
    return value


def _int(d: Mapping[str, Any], key: str) -> int:
    value: int = _get(d, key, int)
    return value


def _bool(d: Mapping[str, Any], key: str) -> bool:
    value: bool = _get(d, key, bool)
    return value


def _dec(d: Mapping[str, Any], key: str) -> Decimal:
    text = _str(d, key)
    try:
        value = Decimal(text)
    except InvalidOperation as exc:
        raise ValueError(f"account state: {key} is not a decimal: {text!r}") from exc
    if not value.is_finite():
        raise ValueError(f"account state: {key} is not finite: {text!r}")
    return value


def _opt_dec(d: Mapping[str, Any], key: str) -> Decimal | None:
    return None if d.get(key) is None else _dec(d, key)


def _time(d: Mapping[str, Any], key: str) -> datetime:
    text = _str(d, key)
    value = datetime.fromisoformat(text)
    if value.tzinfo is None:
        raise ValueError(f"account state: {key} has no time zone: {text!r}")
    return value.astimezone(UTC)
