"""The per-tenant ledger: applies CDRs, funds, settings and clock ticks to account state.

No Faust here: the state lives in any ``MutableMapping`` (a Faust table in the worker, a dict
in unit tests) and results are values the adapter publishes. This is where "every CDR is
charged exactly once" is decided, so the argument is written down next to the code.

State keys, all in ONE table so they share one changelog partition per tenant and Kafka
keeps their order (encoding: :mod:`rating.keys`: each id is escaped, ``%`` -> ``%25`` and
``/`` -> ``%2F``, then joined with ``/``, so any two distinct ids give distinct keys):

- ``a/{tenant}``             the account, plus ``lo``: the ledger offset that last changed it
- ``c/{tenant}/{cdr_id}``    a charge marker (:class:`Marker`): ``lo`` (the ledger offset that
  charged it), ``amt``, ``exp``; ~45 bytes, no outputs
- ``f/{tenant}/{event_id}``  a funds marker (:class:`Marker`): ``lo`` only
- ``o/{tenant}/{offset}``    the outbox (:class:`OutboxEntry`): the outputs of the ledger record
  at ``offset`` for that tenant, kept only until they are published
- ``h/{tenant}/{offset}``    a CDR or funds event held until the tenant's first settings
  (:class:`Held`)
- ``u/{tenant}/{day}/{product}``, ``r/{tenant}``  usage per day and product
  (:class:`rating.usage.UsageRow`), recent activity (:mod:`rating.usage`): written after the
  markers and before the account, each row once per record and only if its ``lo`` is older
  than the record's, so a crash prefix never counts a charge twice or loses one

Markers, outbox entries and held entries carry no version of their own (a marker is ~45
bytes, and there is one per remembered CDR): their shape is that of the account's state
version, and ``from_dict`` reads version 2's as well (below).

Exactly once in effect, without Kafka transactions:

1. Every state change writes its outbox entry and markers first and the account second. A
   crash keeps a prefix of the changelog, so after recovery either all are there, or the
   account is missing (account ``lo`` < the record's offset), or nothing is.
2. Faust commits an input offset only after flushing the changelog, so a message whose
   effects were lost is always redelivered, and before any later message of its partition.
   The adapter holds the ledger to that order (``streaming/in_order.py``): a record that
   arrives after records of its partition it never applied (Faust's fetch loop has dropped
   some) waits for them, since a record below the account's ``lo`` counts as applied.
   A local RocksDB store (``rocksdict://``) is written only after its changelog records are
   acked, together with the changelog offset it reaches (``streaming/rocks.py``), so a
   restart from the data dir also starts from a prefix of the changelog, never ahead of it.
3. A marker counts only once the account has caught up with it (marker ``lo`` <= account
   ``lo``): then the charge is in the balance. A marker *ahead* of the account is the
   write-ahead of a record whose account write was lost; that record's batch never became
   durable, so none of its outputs was published. It is ignored: the record is redelivered
   (2) and charged afresh against the same pre-state with the same ``now`` (6), which writes
   the same marker, Charge and effects again. (Usage rows that landed are not counted twice:
   their ``lo`` says so.) Nothing stored is needed to repair, and a record that no longer
   charges on its second attempt deletes its own stale marker.
4. A redelivered message whose offset is <= the account's ``lo`` changes nothing. If it is
   the record a marker names (marker ``lo`` = its offset: one ledger offset is one record) it
   is a replay: its outputs are published again from its outbox entry, or not at all if the
   entry is gone, because the entry is deleted only after the broker acked those outputs.
5. The same CDR published again has another ledger offset: the marker says it was charged
   at a different offset, so it is dropped and counted as a duplicate.
6. ``now`` is the ledger record's timestamp, so reprocessing a record computes the same
   Charge, to the byte, whether or not its first result survived. (If the rate cards were
   reloaded between the two attempts, the second attempt's result stands: nothing of the
   first was published; usage rows the first attempt wrote keep its figures.)
7. Charge markers live until ``call_start + horizon + grace``; a CDR older than
   ``call_start + horizon`` is rejected as ``stale``, so a duplicate can never outlive its
   marker. Funds markers never expire (funds are few and have no time to judge them by).
   A partition's clock tick deletes what has expired, found through an index ordered by
   ``exp`` (:mod:`rating.expiry`: on RocksDB the store keeps it on disk, so a remembered CDR
   costs no RAM and a restart reads no marker); a deletion that comes late is always safe.
8. One record's writes are collected first (:class:`_Writes`) and then written in that
   order: the outbox entry, markers (and held-message changes), the deletion of stale
   markers of the record's own earlier attempt, usage, the account, then deletions (held
   messages applied). So a record that applies several messages at once (below) still
   lands as a prefix, and no prefix with the account counts a marker its debit is not in.
9. A deposed owner (a worker frozen past its session timeout, then woken) may still write
   the changelog of the batch it was in. Recovery drops its records that come after its
   successor's, the successor writes the keys they touched again, and the deposed owner
   finds its successor's records among its own and publishes nothing of that batch: owner
   epochs, :mod:`rating.streaming.epochs` (the adapter's part of this argument).

The outbox and publication. The adapter applies a batch, waits until its changelog records
are acked (``store.durable``), publishes the batch's outputs and waits for the broker's acks,
then calls :meth:`Ledger.published`, which deletes the batch's outbox entries (tombstones on
the changelog, acked before the batch's input offsets are committed: Faust flushes the
producer before every commit; the next batch's ``store.durable`` writes them to the local
store and seals them, so they cost no wait of their own). A crash
between durable and publish, or between publish and the deletes, redelivers the batch (2):
each fully applied record republishes its entry (4), same bytes; a crash after the deletes
but before the commit redelivers records whose outputs were acked already, and they publish
nothing. So outputs are stored only for the life of a batch, never for the life of a marker.
Nothing is republished on partition assignment: no outbox entry outlives its record's
commit (the commit follows the deletes), so every leftover entry belongs to a record
that is redelivered, and that record republishes it. Entries are per record and tenant, not
grouped per batch: one tombstone per entry is a few dozen bytes, and a per-record key never
needs rewriting as a batch grows.

What reaches the changelog. The ledger writes through the store one record at a time, in
the order above; the worker's store (``streaming/store.py``) sends a batch's writes
coalesced (:mod:`rating.coalescing`): each key once, at the place of its last write, with
every deletion a barrier that nothing moves past. Rule 1 holds for every prefix of that
order (the argument is in ``rating.coalescing``; the every-prefix tests run on both orders),
and an account, usage row or ring counter touched by ten CDRs of a batch costs one
changelog record instead of ten: ~4 records per CDR instead of ~6 (outbox entry, marker,
ring slot, and the entry's tombstone; plus the per-tenant rows once per batch).

Records of many messages. Ingest puts a batch's messages of one ledger partition into as
few ledger records as it can (``{"m": [envelope, ...]}``, ``streaming/app.py``), so the
ledger's hop costs one Faust event, one fetch and one produce per record, not per message.
Each tenant's share of a record is applied like a record of one message: its messages in
order against the account in memory, written once in the order of 8, all at the record's
offset. Rules 1-6 hold with "record" read as "a tenant's share of a record": a redelivered
share whose offset <= the account's ``lo`` republishes its one outbox entry once (the
first replayed message takes it, :meth:`Ledger._replayed`); the same CDR twice in one share
is a duplicate (``_Writes.applied``); messages held for a tenant without settings get ids
``{offset}``, ``{offset}.00001``, ... (:func:`held_id`). A bug met in one message parks it,
and the share is applied again without it: nothing of the share was written yet. Records of
one message (a bare envelope, as earlier versions wrote) are read as before.

Messages that arrive before their tenant (funds or CDRs before the first settings: they
come on other topics, so the ledger's order is not billing's) are *held* under
``h/{tenant}/{offset}``: durable state like any other, idempotent by ledger offset. The
tenant's creating settings record applies them in arrival order, all at its own offset:
their markers are written before the new account and carry that offset, so a crash in
between re-applies them all (3), and the settings record's outbox entry holds every output
it produced. A held message whose tenant gets no settings within ``hold.seconds`` is
rejected as ``unknown_tenant`` by the partition's clock tick: the rejection goes to the
tick's outbox entry and the held key is deleted. Held messages are bounded per tenant and
per partition; past a bound a message is rejected at once.

State version 3 (``rating.domain.account.STATE_VERSION``). Version 2 stored the outputs in
every marker (``out``), in ``s/{tenant}`` and in rejected held keys (``rej``). A version-3
worker reads version-2 state: markers are read for ``lo`` (and ``amt``/``exp``) like its
own, and a replayed record with no outbox entry republishes the outputs its version-2 marker
(or ``s/`` key, or held key) stored, so a version-2 worker killed before publishing loses
nothing. Version-2 workers refuse version-3 accounts: do not run both versions at once.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, MutableMapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from enum import StrEnum
from typing import Any, NamedTuple

from rating.contracts import (
    CDRFields,
    ChargeFields,
    FundsEvent,
    Rejection,
    RejectReason,
    TenantSettings,
    encode_charge,
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
from rating.domain.rating import RatingError, price_cdr
from rating.error_policy import park
from rating.expiry import ExpiryIndex, MemoryExpiry
from rating.ingest import Envelope, Invalid, Message, make_rejection, parse_message
from rating.keys import (
    KeyKind,
    account_key,
    charge_key,
    funds_key,
    held_key,
    is_kind,
    outbox_key,
    settings_key,
    split_key,
    tenant_of,
)
from rating.usage import record_activity


class Role(StrEnum):
    """Where a record the worker produces goes; the adapter maps each role to its topic
    (``Pipeline.sinks``). The ledger's outputs have the last four; ``LEDGER`` is ingest's:
    the ledger topic itself (ingest also produces ``REJECTED``)."""

    LEDGER = "ledger"
    CHARGES = "charges"
    RECHARGE = "recharge"
    BALANCE = "balance"
    REJECTED = "rejected"


class Outcome(StrEnum):
    """What one ledger message did (``Result.outcome``); the metrics branch on it."""

    IGNORED = "ignored"  # nothing to do (a fully applied settings record without outputs)
    CHARGED = "charged"
    REPAIRED = "repaired"  # charged again: its first attempt landed the marker, not the account
    REPLAYED = "replayed"  # a fully applied record again: its outbox entry is republished
    DUPLICATE = "duplicate"  # a CDR charged at another ledger offset
    FUNDS = "funds"
    FUNDS_DUPLICATE = "funds_duplicate"
    SETTINGS = "settings"
    HELD = "held"  # kept until the tenant's first settings
    HELD_AGAIN = "held_again"  # a replay of a held message
    REJECTED = "rejected"
    TICK = "tick"


# The outbox stores a role as one letter (state version 3).
_ROLE_CODES: dict[Role, str] = {
    Role.CHARGES: "c",
    Role.RECHARGE: "r",
    Role.BALANCE: "b",
    Role.REJECTED: "x",
}
_CODE_ROLES: dict[str, Role] = {v: k for k, v in _ROLE_CODES.items()}

#: Markers outlive the stale cut-off by this much, so a worker whose clock is a little
#: behind another's never accepts a duplicate whose marker was already expired.
EXPIRY_GRACE = timedelta(hours=1)
#: Bound the expiry entries one tick sweeps (so the tombstones it writes): a tick never
#: stalls the partition.
MAX_EXPIRE_PER_TICK = 5000
#: Decoded accounts kept for reuse (see ``Ledger._load``); ~1 KB each.
DECODED_ACCOUNTS_MAX = 10_000


@dataclass(frozen=True, slots=True)
class HoldPolicy:
    """How long and how much the ledger holds for tenants that have no settings yet."""

    seconds: int = 900
    max_per_tenant: int = 1000
    max_per_partition: int = 100_000


class TenantStatus(NamedTuple):
    """One tenant's figures for the gauges, kept in memory per owned tenant."""

    partition: int
    below_trigger: bool
    exhausted: bool
    outstanding: bool


class StatusTotals(NamedTuple):
    """:meth:`Ledger.status`: the gauges' figures over a set of partitions."""

    tenants: int
    below_trigger: int
    exhausted: int
    outstanding: int


@dataclass(frozen=True, slots=True)
class Output:
    role: Role
    key: bytes | None
    value: bytes


@dataclass(slots=True)
class Result:
    """What one ledger message did: outputs to publish plus facts for the metrics."""

    outcome: Outcome = Outcome.IGNORED
    outputs: list[Output] = field(default_factory=list)
    reason: RejectReason | None = None
    charge: ChargeFields | None = None
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


@dataclass(frozen=True, slots=True)
class Marker:
    """A charge or funds marker: only what dedup needs (see the module docstring, 3-5).

    ``lo``: the ledger offset that applied it; ``amt`` and ``exp`` (epoch seconds): charge
    markers only. ``legacy``: the packed outputs a state-version-2 marker stored, read to
    republish a replay of a record that version 2 applied; never written."""

    lo: int
    amt: Decimal | None = None
    exp: int | None = None
    legacy: list[list[str | None]] | None = None

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"lo": self.lo}
        if self.amt is not None:
            d["amt"] = format_money(self.amt)
        if self.exp is not None:
            d["exp"] = self.exp
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Marker:
        amt, exp = d.get("amt"), d.get("exp")
        return cls(
            lo=int(d["lo"]),
            amt=None if amt is None else Decimal(str(amt)),
            exp=None if exp is None else int(exp),
            legacy=d.get("out"),
        )


@dataclass(frozen=True, slots=True)
class OutboxEntry:
    """``o/{tenant}/{offset}``: the outputs of one ledger record for one tenant, kept only
    until they are published (module docstring, "The outbox").

    Stored packed, ``{"out": [[role code, value], ...]}``: a role is one letter and the key,
    which is the tenant's, is left out; a third item ``null`` stands for a null key (a
    rejection of a message that had none). State version 3, like the account."""

    tenant: str
    outputs: list[Output]

    def to_dict(self) -> dict[str, Any]:
        return {"out": _pack(self.tenant, self.outputs)}

    @classmethod
    def from_dict(cls, d: dict[str, Any], tenant: str) -> OutboxEntry:
        return cls(tenant, _unpack(tenant, d["out"]))


@dataclass(frozen=True, slots=True)
class Held:
    """``h/{tenant}/{offset}``: a CDR or funds event held until its tenant's first settings.

    ``lo``: the ledger offset it arrived at; ``at``: when (epoch seconds), for the hold's
    deadline; ``env``: the message. ``legacy_rejection``: state version 2 kept a tick's
    rejection of the message here (``rej``), read to republish a replay of that tick; never
    written."""

    lo: int
    at: int | None
    env: Envelope | None
    legacy_rejection: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "lo": self.lo,
            "at": self.at,
            "env": None if self.env is None else self.env.to_dict(),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Held:
        env = d.get("env")
        at = d.get("at")
        return cls(
            lo=int(d["lo"]),
            at=None if at is None else int(at),
            env=None if env is None else Envelope.from_dict(env),
            legacy_rejection=d.get("rej"),
        )


def rejected(rej: Rejection, key: bytes | None) -> Result:
    """The Result that publishes ``rej`` (keyed ``key``, the rejected message's own key)."""
    return Result(
        outcome=Outcome.REJECTED,
        reason=rej.reason,
        topic=rej.source_topic,
        outputs=[Output(Role.REJECTED, key, rej.model_dump_json().encode())],
    )


def held_id(offset: int, index: int) -> str:
    """The id of the ``index``-th message a ledger record holds for one tenant: its offset,
    then ``.00001``...: ids of one record sort in arrival order, after the record's first."""
    return str(offset) if index == 0 else f"{offset}.{index:05d}"


def _epoch(t: datetime) -> int:
    return int(t.timestamp())


def _effects_outputs(tenant: str, effects: Effects) -> list[Output]:
    key = tenant.encode()
    out = [
        Output(Role.RECHARGE, key, c.model_dump_json().encode()) for c in effects.recharge_commands
    ]
    out += [Output(Role.BALANCE, key, e.model_dump_json().encode()) for e in effects.balance_events]
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
    outbox: list[Output] = field(default_factory=list)  # outputs to keep until published
    marks: dict[str, Marker | Held] = field(default_factory=dict)
    save_lo: int | None = None  # set when the account changed: the ``lo`` to store
    deletes: list[str] = field(default_factory=list)
    # Stale markers of this record's own earlier attempt (a message that no longer charges):
    # deleted before the account is written, so no prefix counts them as charged.
    unmarks: list[str] = field(default_factory=list)
    # Messages of this record held so far (their keys: ``held_id``).
    held: int = 0
    # Whether this record's outbox entry was republished already (one entry per tenant and
    # record, however many of the record's messages are replays).
    republished: bool = False
    # Markers applied by this record (written, or repaired): a second message with the same
    # id within one record (held duplicates) is a duplicate, never a second repair.
    applied: set[str] = field(default_factory=set)
    # Usage and recent activity of this record, written once per row by _commit.
    charges: list[ChargeFields] = field(default_factory=list)
    funds: list[tuple[FundsEvent, datetime]] = field(default_factory=list)
    activity_lo: int = -1  # the ledger offset those changes belong to

    def set_account(self, account: Account, lo: int) -> None:
        self.account = account
        self.save_lo = lo

    def add_activity(
        self, lo: int, charge: ChargeFields | None = None, funds: FundsEvent | None = None
    ) -> None:
        # One record's changes all belong to one ledger offset: the record's own, or (for a
        # repair) that of the record whose account write was lost; a held batch shares it.
        self.activity_lo = lo
        if charge is not None:
            self.charges.append(charge)
        if funds is not None:
            self.funds.append((funds, self.now))


class _MessageError(Exception):
    """A bug met while applying the ``index``-th message of a tenant's share of a record."""

    def __init__(self, index: int, error: Exception) -> None:
        super().__init__(index, error)
        self.index = index
        self.error = error


class Ledger:
    """Applies ledger messages of the partitions this process owns to ``store``."""

    def __init__(
        self,
        store: MutableMapping[str, Any],
        rates: Callable[[], RateBook],
        policy: RechargePolicy,
        horizon: timedelta,
        hold: HoldPolicy | None = None,
        *,
        expiry: ExpiryIndex | None = None,
    ) -> None:
        self.store = store
        self._rates = rates
        self.policy = policy
        self.horizon = horizon
        self.hold = hold or HoldPolicy()
        # In-memory indexes, rebuilt from the store after a rebalance (see rebuild_index).
        self._due: dict[int, dict[str, datetime]] = {}
        # tenant -> its figures for the gauges.
        self._status: dict[str, TenantStatus] = {}
        # (exp, key) of the keys that expire (rating.expiry: in RAM, or the store's own).
        self.expiry: ExpiryIndex = MemoryExpiry() if expiry is None else expiry
        # partition -> tenant -> [(ledger offset, key, deadline epoch)] of held messages.
        self._held: dict[int, dict[str, list[tuple[int, str, int]]]] = {}
        # partition -> ledger offset -> outbox keys in the store (deleted by ``published``).
        self._outbox: dict[int, dict[int, set[str]]] = {}
        # partition -> tick offset -> held keys a version-2 tick rejected (state version 2
        # kept the rejection in the held key; a replayed tick republishes it).
        self._legacy_rejected: dict[int, dict[int, list[str]]] = {}
        # tenant -> (the account record last written or read, its decoded Account)
        self._decoded: dict[str, tuple[Any, Account]] = {}

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
        # The Account this ledger wrote, while the store still holds that very record (a
        # batch debits a tenant ~10 times): no dict -> Account per message. A record read
        # back from RocksDB or recovered is a new object, so it is decoded.
        known = self._decoded.get(tenant)
        if known is not None and known[0] is rec:
            return known[1], int(rec["lo"])
        account = Account.from_dict(rec["acct"])
        self._remember(tenant, rec, account)
        return account, int(rec["lo"])

    def _remember(self, tenant: str, rec: Any, account: Account) -> None:
        if len(self._decoded) >= DECODED_ACCOUNTS_MAX:
            self._decoded.clear()  # a bound, not an LRU: a batch refills what it uses
        self._decoded[tenant] = (rec, account)

    def _begin(self, partition: int, offset: int, now: datetime, tenant: str) -> _Writes:
        account, lo = self._load(tenant)
        return _Writes(partition, offset, now, tenant, account, lo)

    def _marker(self, w: _Writes, key: str) -> Marker | None:
        """The marker at ``key``: this record's own (not written yet), else the stored one."""
        mine = w.marks.get(key)
        if isinstance(mine, Marker):
            return mine
        raw = self.store.get(key)
        return None if raw is None else Marker.from_dict(raw)

    def _held_entry(self, key: str, w: _Writes | None = None) -> Held | None:
        mine = None if w is None else w.marks.get(key)
        if isinstance(mine, Held):  # held by this very record, not written yet
            return mine
        raw = self.store.get(key)
        return None if raw is None else Held.from_dict(raw)

    def _commit(self, w: _Writes) -> None:
        if w.outbox:
            okey = outbox_key(w.tenant, w.offset)
            self.store[okey] = OutboxEntry(w.tenant, w.outbox).to_dict()
            self._outbox.setdefault(w.partition, {}).setdefault(w.offset, set()).add(okey)
        for key, value in w.marks.items():
            self._mark(w.partition, key, value)
        for key in w.unmarks:
            if key in self.store:
                del self.store[key]
        if w.charges or w.funds:
            for exp, key in record_activity(self.store, w.charges, w.funds, w.activity_lo):
                self.expiry.add(w.partition, exp, key)
        if w.save_lo is not None and w.account is not None:
            rec = {"acct": w.account.to_dict(), "lo": w.save_lo}
            self.store[account_key(w.tenant)] = rec
            self._remember(w.tenant, rec, w.account)
            self._track(w.partition, w.account)
        for key in w.deletes:
            if key in self.store:
                del self.store[key]
        if w.deletes:
            self._unhold(w.partition, w.tenant, set(w.deletes))

    def published(self, partition: int, upto: int) -> None:
        """The outputs of ``partition``'s records up to ledger offset ``upto`` are acked by
        the broker: delete their outbox entries (module docstring, "The outbox"). Entries of
        later offsets stay: their records are still to be redelivered and republish them."""
        pending = self._outbox.get(partition)
        if not pending:
            return
        for offset in sorted(o for o in pending if o <= upto):
            for key in sorted(pending.pop(offset)):
                if key in self.store:
                    del self.store[key]

    def outbox_size(self, partition: int) -> int:
        """Outbox entries of ``partition`` not yet deleted (for tests and diagnostics)."""
        return sum(len(keys) for keys in self._outbox.get(partition, {}).values())

    def _track(self, partition: int, account: Account) -> None:
        below = account.auto_recharge_enabled and account.balance < account.trigger_balance
        self._status[account.tenant_id] = TenantStatus(
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

    def _mark(self, partition: int, key: str, marker: Marker | Held) -> None:
        self.store[key] = marker.to_dict()
        if isinstance(marker, Marker) and marker.exp is not None:
            self.expiry.add(partition, marker.exp, key)

    # --- messages -------------------------------------------------------------------------

    def handle(self, env: Envelope, partition: int, offset: int, now: datetime) -> Result:
        """One ledger record carrying one message (see :meth:`handle_record`)."""
        return self.handle_record([env], partition, offset, now)[0]

    def handle_record(
        self, envs: Sequence[Envelope], partition: int, offset: int, now: datetime
    ) -> list[Result]:
        """One ledger record carrying ``envs`` (ingest batches a partition's messages into
        one record): one Result per message, in their order.

        Each tenant's messages of the record are one unit, like one message: applied in
        order to the account in memory, then written once (its outbox entry, markers,
        usage, the account), all at the record's offset. So everything the docstring says of
        "a record" holds for a tenant's share of one: a crash keeps a prefix of it, a
        redelivery charges it afresh or republishes its outbox entry, once."""
        if len(envs) == 1:
            return self._tenant_share(envs[0].tenant_id, envs, partition, offset, now)
        shares: dict[str, list[int]] = {}
        for i, env in enumerate(envs):
            shares.setdefault(env.tenant_id, []).append(i)
        results: list[Result] = [Result()] * len(envs)
        for tenant, positions in shares.items():
            share = [envs[i] for i in positions]
            for i, result in zip(
                positions, self._tenant_share(tenant, share, partition, offset, now), strict=True
            ):
                results[i] = result
        return results

    def _tenant_share(
        self, tenant: str, envs: Sequence[Envelope], partition: int, offset: int, now: datetime
    ) -> list[Result]:
        parked: dict[int, Result] = {}
        while True:
            try:
                w = self._begin(partition, offset, now, tenant)
                results = [
                    parked[i] if i in parked else self._message(w, env, i)
                    for i, env in enumerate(envs)
                ]
                if w.save_lo is not None:
                    # Every output of this tenant's share, held parts' too.
                    w.outbox = [out for result in results for out in result.outputs]
                self._commit(w)
                return results
            except _MessageError as failed:
                # Parked (rating.error_policy), with its original message; the share is
                # applied again without it: nothing was written, and a half-applied message
                # (settings that applied some held messages) must not be.
                parked[failed.index] = self._park(envs[failed.index], failed.error, now)
                if len(parked) == len(envs):
                    return [parked[i] for i in range(len(envs))]
            except Exception as exc:  # while writing: the whole share is parked
                return [self._park(env, exc, now) for env in envs]

    def _message(self, w: _Writes, env: Envelope, index: int) -> Result:
        try:
            model = self._parse(env, w.now)
            if isinstance(model, Result):
                return model
            if model.tenant_id != w.tenant:
                raise ValueError(
                    f"message of tenant {model.tenant_id!r} in the share of {w.tenant!r}"
                )
            if isinstance(model, TenantSettings):
                return self._settings(w, env, model)
            if w.account is None:
                return self._hold(w, env)
            if isinstance(model, CDRFields):
                return self._cdr(w, env, model)
            return self._funds(w, env, model)
        except Exception as exc:
            raise _MessageError(index, exc) from exc

    def _park(self, env: Envelope, exc: Exception, now: datetime) -> Result:
        rej = park("ledger", exc, env.source, env.payload, now, context="internal error ")
        return rejected(rej, env.source.key)

    def _reject(self, env: Envelope, reason: RejectReason, detail: str, now: datetime) -> Result:
        rej = make_rejection(env.source, env.payload, reason, detail, now)
        return rejected(rej, env.source.key)

    def _parse(self, env: Envelope, now: datetime) -> Message | Result:
        parsed = parse_message(env.kind, env.payload)
        if isinstance(parsed, Invalid):  # ingest validated it; only a version skew gets here
            return self._reject(env, parsed.reason, parsed.detail, now)
        return parsed

    def _replayed(self, w: _Writes, legacy: list[list[str | None]] | None) -> Result:
        """This very record again, fully applied (its offset <= the account's ``lo``): its
        outputs from its outbox entry; none if the entry is gone (published and acked).
        ``legacy``: what a version-2 marker stored, for state written before the outbox."""
        if w.republished:  # another message of this share republished the entry
            return Result(outcome=Outcome.REPLAYED)
        w.republished = True
        okey = outbox_key(w.tenant, w.offset)
        entry = self.store.get(okey)
        if entry is not None:
            # Deleted with this batch's entries once published (the index may predate it).
            self._outbox.setdefault(w.partition, {}).setdefault(w.offset, set()).add(okey)
            outputs = OutboxEntry.from_dict(entry, w.tenant).outputs
            return Result(outcome=Outcome.REPLAYED, outputs=outputs)
        return Result(outcome=Outcome.REPLAYED, outputs=_unpack(w.tenant, legacy or []))

    def _seen(self, w: _Writes, mkey: str, marker: Marker, duplicate_outcome: Outcome) -> Result:
        """A marker the account has caught up with: a replay of its record, or a duplicate."""
        if marker.lo == w.offset and mkey not in w.applied:
            return self._replayed(w, marker.legacy)
        return Result(outcome=duplicate_outcome)

    # --- holding messages of tenants without settings -------------------------------------

    def _hold(self, w: _Writes, env: Envelope) -> Result:
        key = held_key(w.tenant, held_id(w.offset, w.held))
        w.held += 1
        if self.store.get(key) is not None:
            return Result(outcome=Outcome.HELD_AGAIN, topic=env.source.topic)  # a replay
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
        held = Held(w.offset, _epoch(w.now), env)
        w.marks[key] = held
        self._index_held(w.partition, key, held.lo, held.at)
        return Result(outcome=Outcome.HELD, topic=env.source.topic)

    def _index_held(self, partition: int, key: str, lo: int, at: int | None) -> None:
        if at is None:  # only version-2 rejected entries lack it, and they are not indexed
            raise ValueError(f"held message {key!r} has no arrival time")
        entries = self._held.setdefault(partition, {}).setdefault(tenant_of(key), [])
        if any(e[1] == key for e in entries):  # a share applied again (_tenant_share)
            return
        entries.append((lo, key, at + self.hold.seconds))
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
            held = self._held_entry(key, w)
            w.deletes.append(key)
            if held is None or held.env is None:
                continue
            env = held.env
            model = self._parse(env, w.now)
            if isinstance(model, CDRFields):
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

    def _cdr(self, w: _Writes, env: Envelope, cdr: CDRFields) -> Result:
        tenant, account, lo, now = w.tenant, w.account, w.lo, w.now
        assert account is not None  # held otherwise
        mkey = charge_key(tenant, cdr.cdr_id)
        marker = self._marker(w, mkey)
        if marker is not None and (marker.lo <= lo or mkey in w.applied):
            result = self._seen(w, mkey, marker, Outcome.DUPLICATE)
            result.product = cdr.product.value
            return result
        # No marker, or one ahead of the account (docstring, 3): charge it afresh. If this is
        # the marker's own record and it no longer charges, its stale marker goes.
        own = marker is not None and marker.lo == w.offset
        if cdr.call_start + self.horizon < now:
            if own:
                w.unmarks.append(mkey)
            return self._reject(
                env,
                RejectReason.STALE,
                f"call_start {cdr.call_start.isoformat()} is older than the dedup horizon "
                f"({self.horizon}); charging it could double-charge, so it is parked",
                now,
            )
        priced = price_cdr(cdr, self._rates(), plan=account.plan, currency=account.currency)
        if isinstance(priced, RatingError):
            # Re-emitted on a replay too: a rejection is published at least once.
            if own:
                w.unmarks.append(mkey)
            return self._reject(env, priced.reason, priced.detail, now)
        if marker is None and w.offset <= lo:
            # Applied by an earlier delivery whose marker has since expired.
            return Result(outcome=Outcome.DUPLICATE, product=cdr.product.value)
        account, effects = apply_charge(account, priced.amount, now, self.policy)
        charge = priced.charge(rated_at=now, balance_after=account.balance)
        charge_json = encode_charge(charge, priced.tariff.charge_text)
        outputs = [Output(Role.CHARGES, tenant.encode(), charge_json)]
        outputs += _effects_outputs(tenant, effects)
        expires = _epoch(cdr.call_start + self.horizon + EXPIRY_GRACE)
        w.marks[mkey] = Marker(w.offset, priced.amount, expires)
        w.applied.add(mkey)
        w.set_account(account, w.offset)
        w.add_activity(w.offset, charge=charge)
        call_end = cdr.call_start + timedelta(seconds=cdr.duration_seconds)
        # "repaired": this record's first attempt landed its marker but not the account.
        return Result(
            outcome=Outcome.REPAIRED if own else Outcome.CHARGED,
            outputs=outputs,
            charge=charge,
            call_end=call_end,
            effects=[effects],
        )

    def _funds(self, w: _Writes, env: Envelope, event: FundsEvent) -> Result:
        tenant, account, lo = w.tenant, w.account, w.lo
        assert account is not None  # held otherwise
        mkey = funds_key(tenant, event.event_id)
        marker = self._marker(w, mkey)
        if marker is not None and (marker.lo <= lo or mkey in w.applied):
            result = self._seen(w, mkey, marker, Outcome.FUNDS_DUPLICATE)
            result.funds = event
            return result
        # No marker, or one ahead of the account: apply afresh (as for CDRs).
        applied = apply_funds(account, event, w.now, self.policy)
        if isinstance(applied, Refusal):
            if marker is not None and marker.lo == w.offset:
                w.unmarks.append(mkey)
            return self._reject(env, applied.reason, applied.detail, w.now)
        if marker is None and w.offset <= lo:
            return Result(outcome=Outcome.FUNDS_DUPLICATE, funds=event)
        account, effects = applied
        outputs = _effects_outputs(tenant, effects)
        # Funds markers never expire: a funds event has no time of its own to call it stale
        # by, re-reading billing.funds must never credit twice, and funds are few.
        w.marks[mkey] = Marker(w.offset)
        w.applied.add(mkey)
        w.set_account(account, w.offset)
        w.add_activity(w.offset, funds=event)
        return Result(outcome=Outcome.FUNDS, outputs=outputs, effects=[effects], funds=event)

    def _settings(self, w: _Writes, env: Envelope, settings: TenantSettings) -> Result:
        tenant = w.tenant
        applied = open_or_update(w.account, settings, w.now, self.policy)
        if isinstance(applied, Refusal):
            return self._reject(env, applied.reason, applied.detail, w.now)
        skey = settings_key(tenant)  # state version 2 kept the latest outputs there
        if w.offset <= w.lo:
            # Held messages of an existing tenant were applied when it was created.
            w.deletes += [e[1] for e in self._held.get(w.partition, {}).get(tenant, [])]
            legacy = self.store.get(skey)
            replay = self._replayed(
                w, legacy["out"] if legacy is not None and legacy.get("lo") == w.offset else None
            )
            return replay if replay.outputs else Result(outcome=Outcome.IGNORED)
        if skey in self.store:
            w.deletes.append(skey)
        created = w.account is None
        account, effects = applied
        w.set_account(account, w.offset)
        result = Result(
            outcome=Outcome.SETTINGS, outputs=_effects_outputs(tenant, effects), effects=[effects]
        )
        if created:
            self._apply_held(w, result)
        return result

    # --- the clock ------------------------------------------------------------------------

    def tick(self, partition: int, offset: int, now: datetime) -> Result:
        """Recharge retries/timeouts for due tenants, held messages, then expire markers."""
        result = Result(outcome=Outcome.TICK)
        # Outbox entries of an earlier attempt of this tick (a replay): republished below
        # unless this attempt writes them again.
        earlier = set(self._outbox.get(partition, {}).get(offset, ()))
        due = self._due.get(partition, {})
        for tenant in [t for t, at in due.items() if at <= now]:
            account, lo = self._load(tenant)
            if account is None or offset <= lo:
                continue
            account, effects = on_tick(account, now, self.policy)
            w = _Writes(partition, offset, now, tenant, account, lo)
            w.set_account(account, offset)
            w.outbox = _effects_outputs(tenant, effects)
            self._commit(w)
            earlier.discard(outbox_key(tenant, offset))
            result.effects.append(effects)
            result.outputs += w.outbox
        self._expire_held(partition, offset, now, result, earlier)
        for key in sorted(earlier):
            entry = self.store.get(key)
            tenant = tenant_of(key)
            lo = self._load(tenant)[1]
            # Republish only what landed: the tenant's account caught up with this tick, or
            # a tenant without account (held messages this tick rejected).
            if entry is not None and (lo == -1 or lo >= offset):
                result.outputs += OutboxEntry.from_dict(entry, tenant).outputs
        for exp, key in self.expiry.due(partition, _epoch(now), MAX_EXPIRE_PER_TICK):
            value = self.store.get(key)
            if value is not None and value.get("exp") == exp:  # not rewritten since
                del self.store[key]
        return result

    def _expire_held(
        self, partition: int, offset: int, now: datetime, result: Result, earlier: set[str]
    ) -> None:
        """Reject held messages whose tenant got no settings in time (unknown_tenant)."""
        legacy = self._legacy_rejected.setdefault(partition, {})
        for tick_offset in [o for o in legacy if o <= offset]:
            for key in legacy.pop(tick_offset):
                held = self._held_entry(key)
                if (
                    tick_offset == offset
                    and held is not None
                    and held.env is not None
                    and held.legacy_rejection is not None
                ):
                    # A replay of a tick that a version-2 worker applied: publish it again.
                    key_of = held.env.source.key
                    out = Output(Role.REJECTED, key_of, held.legacy_rejection.encode())
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
            if not late:
                continue
            # The rejections go to this tick's outbox entry, then the held keys are deleted.
            w = _Writes(partition, offset, now, tenant, None, -1)
            for _, key, _ in late:
                held = self._held_entry(key)
                w.deletes.append(key)
                if held is None or held.env is None:
                    continue
                env = held.env
                detail = (
                    f"tenant_id {tenant!r} has no settings (no account): held "
                    f"{self.hold.seconds}s (RATING_UNKNOWN_TENANT_HOLD_SECONDS) without settings"
                )
                part = self._reject(env, RejectReason.UNKNOWN_TENANT, detail, now)
                w.outbox += part.outputs
                result.outputs += part.outputs
                result.parts.append(part)
            self._commit(w)
            earlier.discard(outbox_key(tenant, offset))

    def rebuild_index(self, partition: int, items: Iterable[tuple[str, Any]]) -> None:
        """Rebuild the in-memory indexes of one partition from its stored keys: those of
        :attr:`index_kinds`, or all of them."""
        expiring: list[tuple[int, str]] = []
        self._due[partition] = {}
        self._held[partition] = {}
        self._outbox[partition] = {}
        self._legacy_rejected[partition] = {}
        for key, value in items:
            if is_kind(key, KeyKind.ACCOUNT):
                self._track(partition, Account.from_dict(value["acct"]))
                continue
            if is_kind(key, KeyKind.OUTBOX):
                offset = int(split_key(key)[2][0])
                self._outbox[partition].setdefault(offset, set()).add(key)
                continue
            if "exp" in value:
                expiring.append((value["exp"], key))
            if is_kind(key, KeyKind.HELD):
                if "rej" in value:  # state version 2: a rejection kept for a replayed tick
                    self._legacy_rejected[partition].setdefault(value["lo"], []).append(key)
                else:
                    at = value.get("at")
                    lo = int(value["lo"])
                    self._index_held(partition, key, lo, None if at is None else int(at))
        self.expiry.rebuild(partition, expiring)

    @property
    def index_kinds(self) -> frozenset[KeyKind] | None:
        """The kinds of keys :meth:`rebuild_index` needs (None: every key). With an expiry
        index the store keeps itself, not markers nor usage rows: a restart then reads
        accounts, outbox and held entries only, however long the history."""
        if self.expiry.persistent:
            return frozenset({KeyKind.ACCOUNT, KeyKind.OUTBOX, KeyKind.HELD})
        return None

    def forget(self, partition: int) -> None:
        self._decoded.clear()
        self._due.pop(partition, None)
        self.expiry.forget(partition)
        self._held.pop(partition, None)
        self._outbox.pop(partition, None)
        self._legacy_rejected.pop(partition, None)
        for tenant in [t for t, s in self._status.items() if s.partition == partition]:
            del self._status[tenant]

    def tenants(self, partitions: set[int]) -> list[str]:
        """The tenants of ``partitions`` this ledger has indexed (for the admin list)."""
        return sorted(t for t, s in self._status.items() if s.partition in partitions)

    def status(self, partitions: set[int]) -> StatusTotals:
        """Tenants, below trigger, exhausted, outstanding commands in ``partitions``."""
        rows = [s for s in self._status.values() if s.partition in partitions]
        return StatusTotals(
            len(rows),
            sum(s.below_trigger for s in rows),
            sum(s.exhausted for s in rows),
            sum(s.outstanding for s in rows),
        )

    def held_total(self, partitions: set[int]) -> int:
        """Messages held now (tenants without settings) in ``partitions``."""
        return sum(len(entries) for p in partitions for entries in self._held.get(p, {}).values())


__all__ = [
    "Held",
    "HoldPolicy",
    "Ledger",
    "Marker",
    "OutboxEntry",
    "Outcome",
    "Output",
    "Result",
    "Role",
    "StatusTotals",
    "TenantStatus",
    "rejected",
]
