"""The per-tenant ledger: applies CDRs, funds, settings and clock ticks to account state.

No Faust here: the state lives in any ``MutableMapping`` (a Faust table in the worker, a dict
in unit tests) and results are values the adapter publishes. This is where "every CDR is
charged exactly once" is decided, so the argument is written down next to the code.

State keys, all in ONE table so they share one changelog partition per tenant and Kafka
keeps their order:

- ``a/{tenant}``             the account, plus ``lo``: the ledger offset that last changed it
- ``c/{tenant}/{cdr_id}``    a charge marker: ledger offset, source, amount, expiry, outputs
- ``f/{tenant}/{event_id}``  a funds marker (same shape, no amount)
- ``s/{tenant}``             the outputs of the latest settings message (for replays)
- ``u/...``, ``r/{tenant}``  usage per day and product, recent activity (rating.usage);
  written between the marker and the account, with the same ``lo`` rule

Exactly once in effect, without Kafka transactions:

1. Every state change writes its marker first and the account second. A crash keeps a
   prefix of the changelog, so after recovery either both are there, or only the marker
   (account ``lo`` < marker ``lo``: the debit is re-applied from the marker's amount), or
   neither (the message is simply processed again).
2. Faust commits an input offset only after flushing the changelog, so a message whose
   effects were lost is always redelivered.
3. A redelivered message whose offset is <= the account's ``lo`` changes nothing; its stored
   outputs are published again (same content: consumers dedupe Charges by ``cdr_id``).
4. The same CDR published twice has a different source: the marker says it was charged, so
   it is dropped and counted as a duplicate.
5. Charge markers live until ``call_start + horizon + grace``; a CDR older than
   ``call_start + horizon`` is rejected as ``stale``, so a duplicate can never outlive its
   marker. Funds markers never expire (funds are few and have no time to judge them by).
6. ``now`` is the ledger record's timestamp, so reprocessing a record computes the same
   Charge, to the byte, whether or not its first result survived.
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
from rating.ingest import Envelope, make_rejection
from rating.usage import record_charge, record_funds

log = logging.getLogger(__name__)

Role = Literal["charges", "recharge", "balance", "rejected"]
_ROLE_CODES: dict[Role, str] = {"charges": "c", "recharge": "r", "balance": "b", "rejected": "x"}
_CODE_ROLES: dict[str, Role] = {v: k for k, v in _ROLE_CODES.items()}

#: Markers outlive the stale cut-off by this much, so a worker whose clock is a little
#: behind another's never accepts a duplicate whose marker was already expired.
EXPIRY_GRACE = timedelta(hours=1)
#: Bound the tombstones one tick writes so a tick never stalls the partition.
MAX_EXPIRE_PER_TICK = 5000


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


def _epoch(t: datetime) -> int:
    return int(t.timestamp())


def _effects_outputs(tenant: str, effects: Effects) -> list[Output]:
    key = tenant.encode()
    out = [Output("recharge", key, c.model_dump_json().encode()) for c in effects.recharge_commands]
    out += [Output("balance", key, e.model_dump_json().encode()) for e in effects.balance_events]
    return out


def _pack(outputs: list[Output]) -> list[list[str]]:
    return [[_ROLE_CODES[o.role], o.value.decode()] for o in outputs]


def _unpack(tenant: str, packed: list[list[str]]) -> list[Output]:
    # Markers only hold outputs of applied messages, all keyed by the tenant.
    return [Output(_CODE_ROLES[code], tenant.encode(), value.encode()) for code, value in packed]


class Ledger:
    """Applies ledger messages of the partitions this process owns to ``store``."""

    def __init__(
        self,
        store: MutableMapping[str, Any],
        rates: Callable[[], RateBook],
        policy: RechargePolicy,
        horizon: timedelta,
    ) -> None:
        self.store = store
        self._rates = rates
        self.policy = policy
        self.horizon = horizon
        # In-memory indexes, rebuilt from the store after a rebalance (see rebuild_index).
        self._due: dict[int, dict[str, datetime]] = {}
        # tenant -> (partition, below trigger, exhausted, outstanding) for the gauges.
        self._status: dict[str, tuple[int, bool, bool, bool]] = {}
        self._expiry: dict[int, list[tuple[int, str]]] = {}

    # --- reads ----------------------------------------------------------------------------

    def account(self, tenant: str) -> Account | None:
        rec = self.store.get(f"a/{tenant}")
        return None if rec is None else Account.from_dict(rec["acct"])

    def _load(self, tenant: str) -> tuple[Account | None, int]:
        rec = self.store.get(f"a/{tenant}")
        if rec is None:
            return None, -1
        return Account.from_dict(rec["acct"]), int(rec["lo"])

    def _save(self, partition: int, account: Account, offset: int) -> None:
        self.store[f"a/{account.tenant_id}"] = {"acct": account.to_dict(), "lo": offset}
        self._track(partition, account)

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

    def _record(self, partition: int, charge: Charge, offset: int) -> None:
        # Usage and recent charges: between the marker and the account (see rating.usage).
        created = record_charge(self.store, charge, offset)
        if created is not None:  # the row's retention rides on the marker expiry heap
            heapq.heappush(self._expiry.setdefault(partition, []), created)

    def _mark(self, partition: int, key: str, marker: dict[str, Any]) -> None:
        self.store[key] = marker
        if "exp" in marker:
            heapq.heappush(self._expiry.setdefault(partition, []), (marker["exp"], key))

    # --- messages -------------------------------------------------------------------------

    def handle(self, env: Envelope, partition: int, offset: int, now: datetime) -> Result:
        try:
            if env.kind == "cdr":
                return self._cdr(env, partition, offset, now)
            if env.kind == "funds":
                return self._funds(env, partition, offset, now)
            return self._settings(env, partition, offset, now)
        except Exception as exc:
            # A bug must not stall the tenant's partition. State is written only after all
            # checks (marker, then account), so at worst the marker exists and a replay of
            # the parked message completes the debit through the repair path.
            log.exception("ledger failed on %s", env.source.ref)
            detail = f"internal error {type(exc).__name__}: {exc}"
            return self._reject(env, RejectReason.INTERNAL_ERROR, detail, now)

    def _reject(self, env: Envelope, reason: RejectReason, detail: str, now: datetime) -> Result:
        rej = make_rejection(env.source, env.payload, reason, detail, now)
        return Result(
            outcome="rejected",
            reason=reason,
            outputs=[Output("rejected", env.source.key, rej.model_dump_json().encode())],
        )

    def _unknown_tenant(self, env: Envelope, tenant: str, now: datetime) -> Result:
        detail = f"tenant_id {tenant!r} has no settings (no account)"
        return self._reject(env, RejectReason.UNKNOWN_TENANT, detail, now)

    def _parse(self, env: Envelope, model: type[Any], now: datetime) -> Any:
        try:
            return model.model_validate_json(env.payload)
        except ValidationError as exc:  # ingest validated it; only a version skew gets here
            return self._reject(env, RejectReason.SCHEMA, summarize_validation_error(exc), now)

    def _replayed(
        self, marker: dict[str, Any], env: Envelope, tenant: str, duplicate_outcome: str
    ) -> Result:
        if marker.get("src") == env.source.ref:
            return Result(outcome="replayed", outputs=_unpack(tenant, marker["out"]))
        return Result(outcome=duplicate_outcome)

    def _cdr(self, env: Envelope, partition: int, offset: int, now: datetime) -> Result:
        cdr = self._parse(env, CDR, now)
        if isinstance(cdr, Result):
            return cdr
        tenant = cdr.tenant_id
        account, lo = self._load(tenant)
        if account is None:
            return self._unknown_tenant(env, tenant, now)
        mkey = f"c/{tenant}/{cdr.cdr_id}"
        marker = self.store.get(mkey)
        if marker is not None:
            if lo < marker["lo"]:
                # The marker reached the changelog but the account did not: finish the debit.
                account, effects = apply_charge(account, Decimal(marker["amt"]), now, self.policy)
                for out in _unpack(tenant, marker["out"]):
                    if out.role == "charges":
                        self._record(partition, Charge.model_validate_json(out.value), marker["lo"])
                self._save(partition, account, marker["lo"])
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
        if offset <= lo:
            # Applied by an earlier delivery whose marker has since expired.
            return Result(outcome="duplicate", product=cdr.product.value)
        account, effects = apply_charge(account, rated.amount, now, self.policy)
        charge = rated.model_copy(update={"balance_after": account.balance})
        charge_json = charge.model_dump_json(exclude_none=True).encode()
        outputs = [Output("charges", tenant.encode(), charge_json)]
        outputs += _effects_outputs(tenant, effects)
        expires = _epoch(cdr.call_start + self.horizon + EXPIRY_GRACE)
        self._mark(
            partition,
            mkey,
            {
                "lo": offset,
                "src": env.source.ref,
                "exp": expires,
                "amt": format_money(rated.amount),
                "out": _pack(outputs),
            },
        )
        self._record(partition, charge, offset)
        self._save(partition, account, offset)
        call_end = cdr.call_start + timedelta(seconds=cdr.duration_seconds)
        return Result(
            outcome="charged", outputs=outputs, charge=charge, call_end=call_end, effects=[effects]
        )

    def _funds(self, env: Envelope, partition: int, offset: int, now: datetime) -> Result:
        event = self._parse(env, FundsEvent, now)
        if isinstance(event, Result):
            return event
        tenant = event.tenant_id
        account, lo = self._load(tenant)
        if account is None:
            return self._unknown_tenant(env, tenant, now)
        mkey = f"f/{tenant}/{event.event_id}"
        marker = self.store.get(mkey)
        if marker is not None and lo >= marker["lo"]:
            result = self._replayed(marker, env, tenant, "funds_duplicate")
            result.funds = event
            return result
        applied = apply_funds(account, event, now, self.policy)
        if isinstance(applied, Refusal):
            return self._reject(env, RejectReason(applied.reason), applied.detail, now)
        if marker is None and offset <= lo:
            return Result(outcome="funds_duplicate", funds=event)
        account, effects = applied
        outputs = _effects_outputs(tenant, effects)
        at = marker["lo"] if marker is not None else offset
        # Funds markers never expire: a funds event has no time of its own to call it stale
        # by, re-reading billing.funds must never credit twice, and funds are few.
        self._mark(
            partition,
            mkey,
            {"lo": at, "src": env.source.ref, "out": _pack(outputs)},
        )
        record_funds(self.store, event, now, at)
        self._save(partition, account, at)
        return Result(outcome="funds", outputs=outputs, effects=[effects], funds=event)

    def _settings(self, env: Envelope, partition: int, offset: int, now: datetime) -> Result:
        settings = self._parse(env, TenantSettings, now)
        if isinstance(settings, Result):
            return settings
        tenant = settings.tenant_id
        account, lo = self._load(tenant)
        applied = open_or_update(account, settings, now, self.policy)
        if isinstance(applied, Refusal):
            return self._reject(env, RejectReason(applied.reason), applied.detail, now)
        if offset <= lo:
            marker = self.store.get(f"s/{tenant}")
            if marker is not None and marker.get("src") == env.source.ref:
                return Result(outcome="replayed", outputs=_unpack(tenant, marker["out"]))
            return Result(outcome="ignored")
        account, effects = applied
        outputs = _effects_outputs(tenant, effects)
        self._mark(
            partition, f"s/{tenant}", {"lo": offset, "src": env.source.ref, "out": _pack(outputs)}
        )
        self._save(partition, account, offset)
        return Result(outcome="settings", outputs=outputs, effects=[effects])

    # --- the clock ------------------------------------------------------------------------

    def tick(self, partition: int, offset: int, now: datetime) -> Result:
        """Recharge retries/timeouts for due tenants, then expire old markers."""
        result = Result(outcome="tick")
        due = self._due.get(partition, {})
        for tenant in [t for t, at in due.items() if at <= now]:
            account, lo = self._load(tenant)
            if account is None or offset <= lo:
                continue
            account, effects = on_tick(account, now, self.policy)
            self._save(partition, account, offset)
            result.effects.append(effects)
            result.outputs += _effects_outputs(tenant, effects)
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

    def rebuild_index(self, partition: int, items: Iterable[tuple[str, Any]]) -> None:
        """Rebuild the in-memory indexes of one partition from its stored keys."""
        heap: list[tuple[int, str]] = []
        self._due[partition] = {}
        for key, value in items:
            if key.startswith("a/"):
                self._track(partition, Account.from_dict(value["acct"]))
            elif "exp" in value:
                heap.append((value["exp"], key))
        heapq.heapify(heap)
        self._expiry[partition] = heap

    def forget(self, partition: int) -> None:
        self._due.pop(partition, None)
        self._expiry.pop(partition, None)
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


def tenant_of(key: str) -> str:
    """The tenant a store key belongs to (for attributing keys to partitions)."""
    return key.split("/", 2)[1]
