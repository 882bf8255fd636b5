"""The per-tenant ledger: applies CDRs, funds, settings and clock ticks to account state.

No Faust here: the state lives in any ``MutableMapping`` (a Faust table in the worker, a dict
in unit tests) and results are values the adapter publishes. This is where "every CDR is
charged exactly once" is decided, so the argument is written down next to the code.

State keys, all in ONE table so they share one changelog partition per tenant and Kafka
keeps their order (encoding: :mod:`rating.keys`: each id is escaped, ``%`` -> ``%25`` and
``/`` -> ``%2F``, then joined with ``/``, so any two distinct ids give distinct keys):

- ``a/{tenant}``             the account, plus ``lo``: the ledger offset that last changed it
- ``c/{tenant}/{cdr_id}``    a charge marker: ledger offset, source, amount, expiry, outputs
- ``f/{tenant}/{event_id}``  a funds marker (same shape, no amount)
- ``s/{tenant}``             the outputs of the latest settings message (for replays)
- ``h/{tenant}/{offset}``    a CDR or funds event held until the tenant's first settings
- ``u/{tenant}/{day}/{product}``, ``r/{tenant}``  usage per day and product, recent activity
  (:mod:`rating.usage`): written after the markers and before the account, each row once per
  record and only if its ``lo`` is older than the record's, so a crash prefix never counts a
  charge twice or loses one

Exactly once in effect, without Kafka transactions:

1. Every state change writes its marker first and the account second. A crash keeps a
   prefix of the changelog, so after recovery either both are there, or only the marker
   (account ``lo`` < marker ``lo``: the debit is re-applied from the marker's amount), or
   neither (the message is simply processed again).
2. Faust commits an input offset only after flushing the changelog, so a message whose
   effects were lost is always redelivered.
   A local RocksDB store (``rocksdict://``) is written only after its changelog records are
   acked, together with the changelog offset it reaches (``streaming/rocks.py``), so a
   restart from the data dir also starts from a prefix of the changelog, never ahead of it.
3. A redelivered message whose offset is <= the account's ``lo`` changes nothing; its stored
   outputs are published again (same content: consumers dedupe Charges by ``cdr_id``).
4. The same CDR published twice has a different source: the marker says it was charged, so
   it is dropped and counted as a duplicate.
5. Charge markers live until ``call_start + horizon + grace``; a CDR older than
   ``call_start + horizon`` is rejected as ``stale``, so a duplicate can never outlive its
   marker. Funds markers never expire (funds are few and have no time to judge them by).
6. ``now`` is the ledger record's timestamp, so reprocessing a record computes the same
   Charge, to the byte, whether or not its first result survived.
7. One record's writes are collected first (:class:`_Writes`) and then written in that
   order: markers (and held-message changes), then the account, then deletions. So a
   record that applies several messages at once (below) still lands as a prefix.

Messages that arrive before their tenant (funds or CDRs before the first settings: they
come on other topics, so the ledger's order is not billing's) are *held* under
``h/{tenant}/{offset}``: durable state like any other, idempotent by ledger offset. The
tenant's creating settings record applies them in arrival order, all at its own offset:
their markers are written before the new account and carry that offset, so a crash in
between re-applies the ones whose account write was lost (the usual marker repair), and a
replay of the settings record republishes every output it produced. A held message whose
tenant gets no settings within ``hold.seconds`` is rejected as ``unknown_tenant`` by the
partition's clock tick; its key then keeps the rejection (so a replayed tick republishes
it) until it expires. Held messages are bounded per tenant and per partition; past a bound
a message is rejected at once.
"""

from __future__ import annotations

import heapq
import logging
from collections.abc import Callable, Iterable, MutableMapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any, Literal

from pydantic import ValidationError

from rating.contracts import (
    CDR,
    Charge,
    FundsEvent,
    RejectReason,
    TenantSettings,
    format_money,
)
from rating.domain.account import (
    Account,
    Effects,
    RechargePolicy,
    Refusal,
    apply_charge,
    apply_funds,
    needs_tick,
    on_tick,
    open_or_update,
)
from rating.domain.ratecard import RateBook
from rating.domain.rating import RatingError, rate_cdr
from rating.domain.validation import summarize_validation_error
from rating.ingest import MODELS, Envelope, make_rejection
from rating.keys import (
    KeyKind,
    account_key,
    charge_key,
    funds_key,
    held_key,
    is_kind,
    settings_key,
    tenant_of,
)
from rating.usage import record_activity

log = logging.getLogger(__name__)

Role = Literal["charges", "recharge", "balance", "rejected"]
_ROLE_CODES: dict[Role, str] = {"charges": "c", "recharge": "r", "balance": "b", "rejected": "x"}
_CODE_ROLES: dict[str, Role] = {v: k for k, v in _ROLE_CODES.items()}

#: Markers outlive the stale cut-off by this much, so a worker whose clock is a little
#: behind another's never accepts a duplicate whose marker was already expired.
EXPIRY_GRACE = timedelta(hours=1)
#: Bound the tombstones one tick writes so a tick never stalls the partition.
MAX_EXPIRE_PER_TICK = 5000
#: A held message rejected by a tick keeps its rejection this long, for a replayed tick.
HELD_REJECTION_TTL = timedelta(days=1)


@dataclass(frozen=True, slots=True)
class HoldPolicy:
    """How long and how much the ledger holds for tenants that have no settings yet."""

    seconds: int = 900
    max_per_tenant: int = 1000
    max_per_partition: int = 100_000


@dataclass(frozen=True, slots=True)
class Output:
    role: Role
    key: bytes | None
    value: bytes


@dataclass(slots=True)
class Result:
    """What one ledger message did: outputs to publish plus facts for the metrics."""

    outcome: str = "ignored"
    outputs: list[Output] = field(default_factory=list)
    reason: RejectReason | None = None
    charge: Charge | None = None
    call_end: datetime | None = None
    effects: list[Effects] = field(default_factory=list)
    funds: FundsEvent | None = None
    product: str | None = None
    topic: str | None = None  # the source topic of a rejected or held message
    # Messages applied along with this one (held ones, applied by the creating settings;
    # or held ones a tick rejected): counted like their own results, outputs are above.
    parts: list[Result] = field(default_factory=list)

    def all(self) -> list[Result]:
        return [self, *self.parts]


def _epoch(t: datetime) -> int:
    return int(t.timestamp())


def _effects_outputs(tenant: str, effects: Effects) -> list[Output]:
    key = tenant.encode()
    out = [Output("recharge", key, c.model_dump_json().encode()) for c in effects.recharge_commands]
    out += [Output("balance", key, e.model_dump_json().encode()) for e in effects.balance_events]
    return out


def _pack(tenant: str, outputs: list[Output]) -> list[list[str | None]]:
    # Outputs are keyed by the tenant; only a rejection may carry the original null key.
    own = tenant.encode()
    return [
        [_ROLE_CODES[o.role], o.value.decode()] + ([] if o.key == own else [None]) for o in outputs
    ]


def _unpack(tenant: str, packed: list[list[str | None]]) -> list[Output]:
    own = tenant.encode()
    return [
        Output(_CODE_ROLES[str(item[0])], own if len(item) == 2 else None, str(item[1]).encode())
        for item in packed
    ]


@dataclass(slots=True)
class _Writes:
    """One ledger record's state changes, written in write-ahead order by ``_commit``."""

    partition: int
    offset: int
    now: datetime
    tenant: str
    account: Account | None
    lo: int  # the stored account's ``lo`` before this record (-1: no account)
    marks: dict[str, dict[str, Any]] = field(default_factory=dict)
    save_lo: int | None = None  # set when the account changed: the ``lo`` to store
    deletes: list[str] = field(default_factory=list)
    # Markers applied by this record (written, or repaired): a second message with the same
    # id within one record (held duplicates) is a duplicate, never a second repair.
    applied: set[str] = field(default_factory=set)
    # Usage and recent activity of this record, written once per row by _commit.
    charges: list[Charge] = field(default_factory=list)
    funds: list[tuple[FundsEvent, datetime]] = field(default_factory=list)
    activity_lo: int = -1  # the ledger offset those changes belong to

    def set_account(self, account: Account, lo: int) -> None:
        self.account = account
        self.save_lo = lo

    def add_activity(
        self, lo: int, charge: Charge | None = None, funds: FundsEvent | None = None
    ) -> None:
        # One record's changes all belong to one ledger offset: the record's own, or (for a
        # repair) that of the record whose account write was lost; a held batch shares it.
        self.activity_lo = lo
        if charge is not None:
            self.charges.append(charge)
        if funds is not None:
            self.funds.append((funds, self.now))


class Ledger:
    """Applies ledger messages of the partitions this process owns to ``store``."""

    def __init__(
        self,
        store: MutableMapping[str, Any],
        rates: Callable[[], RateBook],
        policy: RechargePolicy,
        horizon: timedelta,
        hold: HoldPolicy | None = None,
    ) -> None:
        self.store = store
        self._rates = rates
        self.policy = policy
        self.horizon = horizon
        self.hold = hold or HoldPolicy()
        # In-memory indexes, rebuilt from the store after a rebalance (see rebuild_index).
        self._due: dict[int, dict[str, datetime]] = {}
        # tenant -> (partition, below trigger, exhausted, outstanding) for the gauges.
        self._status: dict[str, tuple[int, bool, bool, bool]] = {}
        self._expiry: dict[int, list[tuple[int, str]]] = {}
        # partition -> tenant -> [(ledger offset, key, deadline epoch)] of held messages.
        self._held: dict[int, dict[str, list[tuple[int, str, int]]]] = {}
        # partition -> tick offset -> held keys that tick rejected (republished on replay).
        self._held_rejected: dict[int, dict[int, list[str]]] = {}

    # --- reads ----------------------------------------------------------------------------

    def account(self, tenant: str) -> Account | None:
        rec = self.store.get(account_key(tenant))
        return None if rec is None else Account.from_dict(rec["acct"])

    def held_count(self, tenant: str) -> int:
        """Messages held for ``tenant`` (no settings yet), in the partitions owned here."""
        return sum(len(by.get(tenant, ())) for by in self._held.values())

    def _load(self, tenant: str) -> tuple[Account | None, int]:
        rec = self.store.get(account_key(tenant))
        if rec is None:
            return None, -1
        return Account.from_dict(rec["acct"]), int(rec["lo"])

    def _begin(self, partition: int, offset: int, now: datetime, tenant: str) -> _Writes:
        account, lo = self._load(tenant)
        return _Writes(partition, offset, now, tenant, account, lo)

    def _get(self, w: _Writes, key: str) -> Any:
        return w.marks[key] if key in w.marks else self.store.get(key)

    def _commit(self, w: _Writes) -> None:
        for key, value in w.marks.items():
            self._mark(w.partition, key, value)
        if w.charges or w.funds:
            for row in record_activity(self.store, w.charges, w.funds, w.activity_lo):
                heapq.heappush(self._expiry.setdefault(w.partition, []), row)
        if w.save_lo is not None and w.account is not None:
            self.store[account_key(w.tenant)] = {"acct": w.account.to_dict(), "lo": w.save_lo}
            self._track(w.partition, w.account)
        for key in w.deletes:
            if key in self.store:
                del self.store[key]
        if w.deletes:
            self._unhold(w.partition, w.tenant, set(w.deletes))

    def _track(self, partition: int, account: Account) -> None:
        below = account.auto_recharge_enabled and account.balance < account.trigger_balance
        self._status[account.tenant_id] = (
            partition,
            below,
            account.balance <= 0,
            account.outstanding is not None,
        )
        due = needs_tick(account)
        tenants = self._due.setdefault(partition, {})
        if due is None:
            tenants.pop(account.tenant_id, None)
        else:
            tenants[account.tenant_id] = due

    def _mark(self, partition: int, key: str, marker: dict[str, Any]) -> None:
        self.store[key] = marker
        if "exp" in marker:
            heapq.heappush(self._expiry.setdefault(partition, []), (marker["exp"], key))

    # --- messages -------------------------------------------------------------------------

    def handle(self, env: Envelope, partition: int, offset: int, now: datetime) -> Result:
        try:
            return self._handle(env, partition, offset, now)
        except Exception as exc:
            # A bug must not stall the tenant's partition. A record's state is written only
            # after all of its checks (see _Writes), so nothing half-done is left behind.
            log.exception("ledger failed on %s", env.source.ref)
            detail = f"internal error {type(exc).__name__}: {exc}"
            return self._reject(env, RejectReason.INTERNAL_ERROR, detail, now)

    def _handle(self, env: Envelope, partition: int, offset: int, now: datetime) -> Result:
        model = self._parse(env, now)
        if isinstance(model, Result):
            return model
        w = self._begin(partition, offset, now, model.tenant_id)
        if isinstance(model, TenantSettings):
            result = self._settings(w, env, model)
        elif w.account is None:
            result = self._hold(w, env)
        elif isinstance(model, CDR):
            result = self._cdr(w, env, model)
        else:
            result = self._funds(w, env, model)
        self._commit(w)
        return result

    def _reject(self, env: Envelope, reason: RejectReason, detail: str, now: datetime) -> Result:
        rej = make_rejection(env.source, env.payload, reason, detail, now)
        return Result(
            outcome="rejected",
            reason=reason,
            topic=env.source.topic,
            outputs=[Output("rejected", env.source.key, rej.model_dump_json().encode())],
        )

    def _parse(self, env: Envelope, now: datetime) -> CDR | FundsEvent | TenantSettings | Result:
        try:
            model: CDR | FundsEvent | TenantSettings = MODELS[env.kind].model_validate_json(  # type: ignore[assignment]
                env.payload
            )
            return model
        except ValidationError as exc:  # ingest validated it; only a version skew gets here
            return self._reject(env, RejectReason.SCHEMA, summarize_validation_error(exc), now)

    def _replayed(
        self, marker: dict[str, Any], env: Envelope, tenant: str, duplicate_outcome: str
    ) -> Result:
        if marker.get("src") == env.source.ref:
            return Result(outcome="replayed", outputs=_unpack(tenant, marker["out"]))
        return Result(outcome=duplicate_outcome)

    # --- holding messages of tenants without settings -------------------------------------

    def _hold(self, w: _Writes, env: Envelope) -> Result:
        key = held_key(w.tenant, str(w.offset))
        if self.store.get(key) is not None:
            return Result(outcome="held_again", topic=env.source.topic)  # a replay
        by_tenant = self._held.setdefault(w.partition, {})
        mine = len(by_tenant.get(w.tenant, ()))
        total = sum(len(v) for v in by_tenant.values())
        if mine >= self.hold.max_per_tenant or total >= self.hold.max_per_partition:
            detail = (
                f"tenant_id {w.tenant!r} has no settings (no account), and the hold is full "
                f"({mine} held for this tenant, max {self.hold.max_per_tenant}; {total} in "
                f"ledger partition {w.partition}, max {self.hold.max_per_partition})"
            )
            return self._reject(env, RejectReason.UNKNOWN_TENANT, detail, w.now)
        held = {"lo": w.offset, "at": _epoch(w.now), "env": env.to_dict()}
        w.marks[key] = held
        self._index_held(w.partition, key, held)
        return Result(outcome="held", topic=env.source.topic)

    def _index_held(self, partition: int, key: str, held: dict[str, Any]) -> None:
        entries = self._held.setdefault(partition, {}).setdefault(tenant_of(key), [])
        entries.append((int(held["lo"]), key, int(held["at"]) + self.hold.seconds))
        entries.sort()

    def _unhold(self, partition: int, tenant: str, keys: set[str]) -> None:
        by_tenant = self._held.get(partition, {})
        left = [e for e in by_tenant.get(tenant, []) if e[1] not in keys]
        if left:
            by_tenant[tenant] = left
        else:
            by_tenant.pop(tenant, None)

    def _apply_held(self, w: _Writes, result: Result) -> None:
        """The tenant was just created: apply its held messages in arrival order."""
        for _, key, _ in list(self._held.get(w.partition, {}).get(w.tenant, [])):
            held = self.store.get(key)
            w.deletes.append(key)
            if held is None or "env" not in held:
                continue
            env = Envelope.from_dict(held["env"])
            model = self._parse(env, w.now)
            if isinstance(model, CDR):
                part = self._cdr(w, env, model)
            elif isinstance(model, FundsEvent):
                part = self._funds(w, env, model)
            elif isinstance(model, Result):  # rejected on parsing
                part = model
            else:  # ingest only holds CDRs and funds; settings never wait
                continue
            result.outputs += part.outputs
            result.parts.append(part)

    # --- the three kinds ------------------------------------------------------------------

    def _cdr(self, w: _Writes, env: Envelope, cdr: CDR) -> Result:
        tenant, account, lo, now = w.tenant, w.account, w.lo, w.now
        assert account is not None  # held otherwise
        mkey = charge_key(tenant, cdr.cdr_id)
        marker = self._get(w, mkey)
        if marker is not None:
            if lo < marker["lo"] and mkey not in w.applied:
                # The marker reached the changelog but the account did not: finish the debit.
                account, effects = apply_charge(account, Decimal(marker["amt"]), now, self.policy)
                w.set_account(account, marker["lo"])
                w.applied.add(mkey)
                for out in _unpack(tenant, marker["out"]):
                    if out.role == "charges":
                        w.add_activity(marker["lo"], charge=Charge.model_validate_json(out.value))
                return Result(
                    outcome="repaired", outputs=_unpack(tenant, marker["out"]), effects=[effects]
                )
            result = self._replayed(marker, env, tenant, "duplicate")
            result.product = cdr.product.value
            return result
        if cdr.call_start + self.horizon < now:
            return self._reject(
                env,
                RejectReason.STALE,
                f"call_start {cdr.call_start.isoformat()} is older than the dedup horizon "
                f"({self.horizon}); charging it could double-charge, so it is parked",
                now,
            )
        rated = rate_cdr(
            cdr, self._rates(), plan=account.plan, currency=account.currency, rated_at=now
        )
        if isinstance(rated, RatingError):
            # Re-emitted on a replay too: a rejection is published at least once.
            return self._reject(env, rated.reason, rated.detail, now)
        if w.offset <= lo:
            # Applied by an earlier delivery whose marker has since expired.
            return Result(outcome="duplicate", product=cdr.product.value)
        account, effects = apply_charge(account, rated.amount, now, self.policy)
        charge = rated.model_copy(update={"balance_after": account.balance})
        charge_json = charge.model_dump_json(exclude_none=True).encode()
        outputs = [Output("charges", tenant.encode(), charge_json)]
        outputs += _effects_outputs(tenant, effects)
        expires = _epoch(cdr.call_start + self.horizon + EXPIRY_GRACE)
        w.marks[mkey] = {
            "lo": w.offset,
            "src": env.source.ref,
            "exp": expires,
            "amt": format_money(rated.amount),
            "out": _pack(tenant, outputs),
        }
        w.applied.add(mkey)
        w.set_account(account, w.offset)
        w.add_activity(w.offset, charge=charge)
        call_end = cdr.call_start + timedelta(seconds=cdr.duration_seconds)
        return Result(
            outcome="charged", outputs=outputs, charge=charge, call_end=call_end, effects=[effects]
        )

    def _funds(self, w: _Writes, env: Envelope, event: FundsEvent) -> Result:
        tenant, account, lo = w.tenant, w.account, w.lo
        assert account is not None  # held otherwise
        mkey = funds_key(tenant, event.event_id)
        marker = self._get(w, mkey)
        if marker is not None and (lo >= marker["lo"] or mkey in w.applied):
            result = self._replayed(marker, env, tenant, "funds_duplicate")
            result.funds = event
            return result
        applied = apply_funds(account, event, w.now, self.policy)
        if isinstance(applied, Refusal):
            return self._reject(env, RejectReason(applied.reason), applied.detail, w.now)
        if marker is None and w.offset <= lo:
            return Result(outcome="funds_duplicate", funds=event)
        account, effects = applied
        outputs = _effects_outputs(tenant, effects)
        at = marker["lo"] if marker is not None else w.offset
        # Funds markers never expire: a funds event has no time of its own to call it stale
        # by, re-reading billing.funds must never credit twice, and funds are few.
        w.marks[mkey] = {"lo": at, "src": env.source.ref, "out": _pack(tenant, outputs)}
        w.applied.add(mkey)
        w.set_account(account, at)
        w.add_activity(at, funds=event)
        return Result(outcome="funds", outputs=outputs, effects=[effects], funds=event)

    def _settings(self, w: _Writes, env: Envelope, settings: TenantSettings) -> Result:
        tenant = w.tenant
        applied = open_or_update(w.account, settings, w.now, self.policy)
        if isinstance(applied, Refusal):
            return self._reject(env, RejectReason(applied.reason), applied.detail, w.now)
        skey = settings_key(tenant)
        if w.offset <= w.lo:
            # Held messages of an existing tenant were applied when it was created.
            w.deletes += [e[1] for e in self._held.get(w.partition, {}).get(tenant, [])]
            marker = self.store.get(skey)
            if marker is not None and marker.get("src") == env.source.ref:
                return Result(outcome="replayed", outputs=_unpack(tenant, marker["out"]))
            return Result(outcome="ignored")
        created = w.account is None
        account, effects = applied
        w.set_account(account, w.offset)
        result = Result(
            outcome="settings", outputs=_effects_outputs(tenant, effects), effects=[effects]
        )
        if created:
            self._apply_held(w, result)
        # Every output of this record, held messages' included: a replay republishes them.
        marker = {"lo": w.offset, "src": env.source.ref, "out": _pack(tenant, result.outputs)}
        w.marks = {skey: marker, **w.marks}
        return result

    # --- the clock ------------------------------------------------------------------------

    def tick(self, partition: int, offset: int, now: datetime) -> Result:
        """Recharge retries/timeouts for due tenants, held messages, then expire markers."""
        result = Result(outcome="tick")
        due = self._due.get(partition, {})
        for tenant in [t for t, at in due.items() if at <= now]:
            account, lo = self._load(tenant)
            if account is None or offset <= lo:
                continue
            account, effects = on_tick(account, now, self.policy)
            w = _Writes(partition, offset, now, tenant, account, lo)
            w.set_account(account, offset)
            self._commit(w)
            result.effects.append(effects)
            result.outputs += _effects_outputs(tenant, effects)
        self._expire_held(partition, offset, now, result)
        heap = self._expiry.get(partition, [])
        cutoff = _epoch(now)
        expired = 0
        while heap and heap[0][0] < cutoff and expired < MAX_EXPIRE_PER_TICK:
            exp, key = heapq.heappop(heap)
            marker = self.store.get(key)
            if marker is not None and marker.get("exp") == exp:
                del self.store[key]
                expired += 1
        return result

    def _expire_held(self, partition: int, offset: int, now: datetime, result: Result) -> None:
        """Reject held messages whose tenant got no settings in time (unknown_tenant)."""
        rejected = self._held_rejected.setdefault(partition, {})
        for tick_offset in [o for o in rejected if o <= offset]:
            for key in rejected.pop(tick_offset):
                held = self.store.get(key)
                if tick_offset == offset and held is not None and "rej" in held:
                    # This tick is a replay: publish what it rejected again.
                    env = Envelope.from_dict(held["env"])
                    out = Output("rejected", env.source.key, held["rej"].encode())
                    result.outputs.append(out)
        cutoff = _epoch(now)
        by_tenant = self._held.get(partition, {})
        for tenant, entries in list(by_tenant.items()):
            if self.store.get(account_key(tenant)) is not None:
                for _, key, _ in entries:  # applied at creation; the delete was lost
                    if key in self.store:
                        del self.store[key]
                by_tenant.pop(tenant)
                continue
            late = [e for e in entries if e[2] <= cutoff]
            for _, key, _ in late:
                held = self.store.get(key)
                if held is None or "env" not in held:
                    continue
                env = Envelope.from_dict(held["env"])
                detail = (
                    f"tenant_id {tenant!r} has no settings (no account): held "
                    f"{self.hold.seconds}s (RATING_UNKNOWN_TENANT_HOLD_SECONDS) without settings"
                )
                part = self._reject(env, RejectReason.UNKNOWN_TENANT, detail, now)
                value = part.outputs[0].value.decode()
                exp = _epoch(now + HELD_REJECTION_TTL)
                self._mark(
                    partition, key, {"lo": offset, "env": held["env"], "rej": value, "exp": exp}
                )
                result.outputs += part.outputs
                result.parts.append(part)
            if late:
                self._unhold(partition, tenant, {e[1] for e in late})

    def rebuild_index(self, partition: int, items: Iterable[tuple[str, Any]]) -> None:
        """Rebuild the in-memory indexes of one partition from its stored keys."""
        heap: list[tuple[int, str]] = []
        self._due[partition] = {}
        self._held[partition] = {}
        self._held_rejected[partition] = {}
        for key, value in items:
            if is_kind(key, KeyKind.ACCOUNT):
                self._track(partition, Account.from_dict(value["acct"]))
                continue
            if "exp" in value:
                heap.append((value["exp"], key))
            if is_kind(key, KeyKind.HELD):
                if "rej" in value:
                    self._held_rejected[partition].setdefault(value["lo"], []).append(key)
                else:
                    self._index_held(partition, key, value)
        heapq.heapify(heap)
        self._expiry[partition] = heap

    def forget(self, partition: int) -> None:
        self._due.pop(partition, None)
        self._expiry.pop(partition, None)
        self._held.pop(partition, None)
        self._held_rejected.pop(partition, None)
        for tenant in [t for t, s in self._status.items() if s[0] == partition]:
            del self._status[tenant]

    def tenants(self, partitions: set[int]) -> list[str]:
        """The tenants of ``partitions`` this ledger has indexed (for the admin list)."""
        return sorted(t for t, s in self._status.items() if s[0] in partitions)

    def status(self, partitions: set[int]) -> tuple[int, int, int, int]:
        """(tenants, below trigger, exhausted, outstanding commands) in ``partitions``."""
        rows = [s for s in self._status.values() if s[0] in partitions]
        return (
            len(rows),
            sum(s[1] for s in rows),
            sum(s[2] for s in rows),
            sum(s[3] for s in rows),
        )

    def held_total(self, partitions: set[int]) -> int:
        """Messages held now (tenants without settings) in ``partitions``."""
        return sum(len(entries) for p in partitions for entries in self._held.get(p, {}).values())


__all__ = ["HoldPolicy", "Ledger", "Output", "Result"]
