"""Builders shared by the ledger's unit tests (test_ledger, test_ledger_hold, test_usage):
message documents, Envelopes as ingest makes them, a rate book, ledgers, a changelog that
logs its writes, crash scenarios and the ledger agent's batch loop. Pure: no broker."""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator, MutableMapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from hypothesis import strategies as st

from rating.coalescing import CoalescingLog
from rating.contracts import CDR, Charge, Rate, RateCard
from rating.domain.account import RechargePolicy
from rating.domain.ratecard import RateBook
from rating.domain.rating import rate_cdr
from rating.ingest import Envelope, Kind, Source, validate
from rating.ledger import Ledger, Result
from rating.testing import cdr_body, funds_body, settings_body

T0 = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)
HORIZON = timedelta(days=7)
POLICY = RechargePolicy()
TOPICS: dict[Kind, str] = {
    "cdr": "cdr.audio-conferencing",
    "settings": "rating.tenant-settings",
    "funds": "billing.funds",
}


def _rate(product: str, prefix: str, per_minute: str, first: int, nxt: int, **kw: Any) -> Rate:
    return Rate.model_validate(
        {
            "product": product,
            "prefix": prefix,
            "zone": f"zone-{prefix}",
            "per_minute": per_minute,
            "first_increment": first,
            "next_increment": nxt,
            **kw,
        }
    )


BOOK = RateBook.from_cards(
    [
        RateCard(
            rate_card_id="std-usd",
            plan="standard",
            currency="USD",
            effective_from=datetime(2026, 11, 1, tzinfo=UTC),
            precision=4,
            rates=[
                _rate("conferencing_dialout", "1", "0.0240", 60, 60),
                _rate("conferencing_dialout", "44", "0.0180", 30, 6),
                _rate(
                    "tollfree_inbound",
                    "1",
                    "0.0220",
                    1,
                    1,
                    minimum_seconds=10,
                    connection_fee="0.0050",
                ),
            ],
        )
    ]
)


def settings_doc(
    tenant: str = "t1",
    currency: str = "USD",
    *,
    enabled: bool = False,
    amount: str = "0",
    trigger: str = "0",
    alert: str | None = None,
    plan: str = "standard",
) -> dict[str, Any]:
    return settings_body(
        tenant, currency, plan, enabled=enabled, amount=amount, trigger=trigger, low=alert
    )


def cdr_doc(
    cdr_id: str,
    tenant: str = "t1",
    *,
    duration: int = 90,
    destination: str = "+14155550199",
    call_start: datetime = T0 - timedelta(hours=1),
    product: str = "conferencing_dialout",
) -> dict[str, Any]:
    return cdr_body(
        tenant,
        cdr_id,
        product=product,
        duration=duration,
        origin="+14155550100",
        destination=destination,
        call_start=call_start.isoformat().replace("+00:00", "Z"),
    )


def funds_doc(
    event_id: str,
    tenant: str = "t1",
    *,
    amount: str = "10.00",
    kind: str = "manual_add",
    currency: str = "USD",
    command_id: str | None = None,
) -> dict[str, Any]:
    return funds_body(tenant, event_id, amount, currency=currency, kind=kind, command_id=command_id)


def envelope(kind: Kind, doc: dict[str, Any], src_offset: int, partition: int = 0) -> Envelope:
    """What ingest puts on the ledger topic for a record at ``src_offset`` of the input topic."""
    source = Source(TOPICS[kind], partition, src_offset, doc["tenant_id"].encode())
    env = validate(kind, source, json.dumps(doc).encode(), T0)
    assert isinstance(env, Envelope), env
    return env


def new_ledger(store: MutableMapping[str, Any] | None = None) -> Ledger:
    return Ledger({} if store is None else store, lambda: BOOK, POLICY, HORIZON)


def roles(result: Result) -> list[str]:
    return [o.role for o in result.outputs]


def only(result: Result, role: str) -> bytes:
    values = [o.value for o in result.outputs if o.role == role]
    assert len(values) == 1, result.outputs
    return values[0]


def balance(ledger: Ledger, tenant: str = "t1") -> Decimal:
    account = ledger.account(tenant)
    assert account is not None
    return account.balance


def expected_charge(doc: dict[str, Any], now: datetime = T0) -> Charge:
    charge = rate_cdr(CDR.model_validate(doc), BOOK, plan="standard", currency="USD", rated_at=now)
    assert isinstance(charge, Charge)
    return charge


class Feed:
    """Feeds a ledger with consecutive ledger offsets, like the ledger topic would."""

    def __init__(self, ledger: Ledger, partition: int = 0) -> None:
        self.ledger = ledger
        self.partition = partition
        self.offset = 0
        self.src = 1000  # source offsets differ from ledger offsets on purpose

    def send(
        self, kind: Kind, doc: dict[str, Any], now: datetime = T0
    ) -> tuple[Envelope, int, Result]:
        env = envelope(kind, doc, self.src, self.partition)
        self.src += 1
        return env, self.offset, self.deliver(env, now)

    def deliver(self, env: Envelope, now: datetime = T0) -> Result:
        """One new ledger message (a new ledger offset) carrying ``env``."""
        result = self.ledger.handle(env, self.partition, self.offset, now)
        self.offset += 1
        return result

    def tick(self, now: datetime) -> Result:
        result = self.ledger.tick(self.partition, self.offset, now)
        self.offset += 1
        return result


def opened(**kw: Any) -> tuple[Ledger, Feed]:
    ledger = new_ledger()
    feed = Feed(ledger)
    feed.send("settings", settings_doc(**kw))
    return ledger, feed


def funded(amount: str = "10.00", **kw: Any) -> tuple[Ledger, Feed]:
    ledger, feed = opened(**kw)
    feed.send("funds", funds_doc("seed", amount=amount))
    return ledger, feed


class Changelog(MutableMapping[str, Any]):
    """A dict that records every write and delete, like a table's changelog topic.

    Values are stored and logged as JSON round trips: that is what survives a real changelog,
    and it catches a value that Faust could not serialise.

    ``coalesce=True`` is the worker's TableStore: writes are visible at once but reach the
    log only at :meth:`flush`, through :class:`rating.coalescing.CoalescingLog` (each key
    once, in its order). Without it every write is logged as it is made.
    """

    def __init__(self, log: list[tuple[str, Any]] | None = None, coalesce: bool = False) -> None:
        self.log: list[tuple[str, Any]] = []
        self.data: dict[str, Any] = {}
        self.coalesce = coalesce
        self._pending: CoalescingLog[Any] = CoalescingLog()
        for key, value in log or []:
            self.log.append((key, value))
            self._set(key, value)

    def _set(self, key: str, value: Any) -> None:
        if value is None:
            self.data.pop(key, None)
        else:
            self.data[key] = value

    def _apply(self, key: str, value: Any) -> None:
        self._set(key, value)
        if not self.coalesce:
            self.log.append((key, value))
        elif value is None:
            self._pending.delete(key, None)
        else:
            self._pending.put(key, value)

    def flush(self) -> None:
        """Send what the batch wrote (a no-op unless ``coalesce``)."""
        for key, value in self._pending.drain():
            self.log.append((key, value))

    def __getitem__(self, key: str) -> Any:
        return copy.deepcopy(self.data[key])

    def __setitem__(self, key: str, value: Any) -> None:
        self._apply(key, json.loads(json.dumps(value)))

    def __delitem__(self, key: str) -> None:
        if key not in self.data:
            raise KeyError(key)
        self._apply(key, None)

    def __iter__(self) -> Iterator[str]:
        return iter(list(self.data))

    def __len__(self) -> int:
        return len(self.data)

    def crashed(self, keep: int) -> Changelog:
        """The store recovered from the first ``keep`` changelog records (what was sent)."""
        return Changelog(self.log[:keep], coalesce=self.coalesce)


@dataclass
class Scenario:
    """Ledger messages in order: (ledger offset, envelope); the ledger offset is the index."""

    messages: list[Envelope] = field(default_factory=list)
    credits: dict[tuple[str, str], Decimal] = field(default_factory=dict)
    cdrs: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)

    def add(self, kind: Kind, doc: dict[str, Any]) -> None:
        self.messages.append(envelope(kind, doc, src_offset=5000 + len(self.messages)))
        tenant = doc["tenant_id"]
        if kind == "funds":
            self.credits.setdefault((tenant, doc["event_id"]), Decimal(doc["amount"]))
        elif kind == "cdr":
            self.cdrs.setdefault((tenant, doc["cdr_id"]), doc)

    def expected_balance(self, tenant: str) -> Decimal:
        credit = sum((a for (t, _), a in self.credits.items() if t == tenant), Decimal(0))
        debit = sum(
            (expected_charge(d).amount for (t, _), d in self.cdrs.items() if t == tenant),
            Decimal(0),
        )
        return credit - debit

    @property
    def tenants(self) -> set[str]:
        return {env.tenant_id for env in self.messages}


Record = list[Envelope]


def records_of(messages: list[Envelope], size: int) -> list[Record]:
    """The messages as ingest batches them: ledger records of ``size`` messages each."""
    return [messages[i : i + size] for i in range(0, len(messages), size)]


def apply_record(ledger: Ledger, record: Record, offset: int, now: datetime) -> list[Result]:
    if len(record) == 1:
        return [ledger.handle(record[0], 0, offset, now)]
    return ledger.handle_record(record, 0, offset, now)


def run(
    ledger: Ledger, messages: list[Envelope], start: int, now: datetime, group: int = 1
) -> dict[str, set[bytes]]:
    """Deliver records[start:] at their ledger offsets (``group`` messages per record); the
    Charge contents seen per cdr_id.

    ``rated_at`` is left out of the content: it is the processing clock, so a CDR whose
    writes were all lost and that is charged afresh on redelivery carries the new time
    (see test_recharged_after_total_loss_keeps_content_but_not_rated_at).
    """
    charges: dict[str, set[str]] = {}
    records = records_of(messages, group)
    for offset in range(start, len(records)):
        for result in apply_record(ledger, records[offset], offset, now):
            assert result.outcome != "rejected", result
            for out in result.outputs:
                if out.role == "charges":
                    content = json.loads(out.value)
                    del content["rated_at"]
                    charges.setdefault(content["cdr_id"], set()).add(
                        json.dumps(content, sort_keys=True)
                    )
    return charges


def fixed_scenario() -> Scenario:
    s = Scenario()
    s.add("settings", settings_doc("t1"))
    s.add("settings", settings_doc("t2", alert="3"))
    s.add("funds", funds_doc("f1", "t1", amount="10.00"))
    s.add("cdr", cdr_doc("a", "t1", duration=61))
    s.add("cdr", cdr_doc("b", "t2", duration=31, destination="+447700900123"))
    s.add("cdr", cdr_doc("a", "t1", duration=61))  # re-published duplicate
    s.add("funds", funds_doc("f2", "t2", amount="5"))
    s.add("cdr", cdr_doc("c", "t1", duration=3, product="tollfree_inbound"))
    s.add("funds", funds_doc("f1", "t1", amount="10.00"))  # duplicate credit
    s.add("cdr", cdr_doc("z", "t1", duration=0))
    s.add("cdr", cdr_doc("b", "t2", duration=31, destination="+447700900123"))
    s.add("cdr", cdr_doc("d", "t1", duration=600))  # drives t1 negative
    return s


@st.composite
def scenarios(draw: st.DrawFn) -> Scenario:
    s = Scenario()
    tenants = draw(
        st.lists(st.sampled_from(["t1", "t2", "t3"]), min_size=1, max_size=3, unique=True)
    )
    for tenant in tenants:
        s.add("settings", settings_doc(tenant, alert=draw(st.sampled_from([None, "1", "50"]))))
    ops = draw(
        st.lists(
            st.tuples(
                st.sampled_from(["cdr", "cdr", "funds", "settings"]),
                st.sampled_from(tenants),
                st.integers(0, 5),  # small id pool: duplicates are common
                st.integers(0, 900),
            ),
            max_size=14,
        )
    )
    for kind, tenant, n, amount in ops:
        if kind == "cdr":
            # The content of a cdr_id is fixed per id: a duplicate is the same call.
            s.add("cdr", cdr_doc(f"c{n}", tenant, duration=n * 47))
        elif kind == "funds":
            s.add("funds", funds_doc(f"f{n}", tenant, amount=f"{n + 1}.{amount % 100:02d}"))
        else:
            s.add("settings", settings_doc(tenant, alert=str(amount)))
    return s


@dataclass
class Batch:
    """One batch of the ledger agent, as the changelog saw it (see streaming/app.py)."""

    start: int  # its first ledger offset
    durable: int  # changelog length once its state was written (then: publish)
    cleared: int  # changelog length once its outbox entries were deleted (then: ack)
    charges: dict[tuple[str, str], set[bytes]]  # the Charges it published, per tenant and id


def run_batches(
    ledger: Ledger,
    messages: list[Envelope],
    start: int,
    size: int,
    log: Changelog,
    *,
    group: int = 1,
) -> list[Batch]:
    """Deliver records[start:] (``group`` messages per record) like the ledger agent: apply
    a batch of ``size`` records, (flush,) publish its outputs, then ``published`` deletes
    its outbox entries. ``now`` is T0 for every record: the record timestamp, so a
    reprocessed record must give the same bytes."""
    batches = []
    records = records_of(messages, group)
    for first in range(start, len(records), size):
        charges: dict[tuple[str, str], set[bytes]] = {}
        last = min(first + size, len(records))
        for offset in range(first, last):
            for result in apply_record(ledger, records[offset], offset, T0):
                assert result.outcome != "rejected", result
                for out in result.outputs:
                    if out.role == "charges":
                        doc = json.loads(out.value)
                        key = (doc["tenant_id"], doc["cdr_id"])
                        charges.setdefault(key, set()).add(out.value)
        log.flush()
        durable = len(log.log)
        ledger.published(0, last - 1)
        log.flush()
        batches.append(Batch(first, durable, len(log.log), charges))
    return batches


Seen = dict[tuple[str, str], set[bytes]]


def merge(into: Seen, batches: list[Batch]) -> Seen:
    for b in batches:
        for charge, values in b.charges.items():
            into.setdefault(charge, set()).update(values)
    return into
