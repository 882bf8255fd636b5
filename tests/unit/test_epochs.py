"""Owner epochs on the accounts changelog (streaming/epochs.py): headers, the recovery filter
of the memory store, and TableStore's fence and repair (no broker: a fake Kafka client that
puts other writers' records between this worker's, and a fake reader of those records)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from types import SimpleNamespace
from typing import Any

import faust
from faust.stores import by_url
from faust.types import TP

from rating.keys import SEAL_PREFIX
from rating.streaming import memory
from rating.streaming.epochs import HEADER, EpochFilter, epoch_of, headers_of
from rating.streaming.store import (
    Foreign,
    TableStore,
    decode_key,
    encode_key,
    foreign_records,
    gaps,
)

CHANGELOG = "app-accounts-changelog"


def test_epoch_headers_round_trip_and_records_without_one_are_epoch_0() -> None:
    assert headers_of(7) == [(HEADER, b"7")]
    assert epoch_of(headers_of(7)) == 7
    assert epoch_of([]) == 0
    assert epoch_of(None) == 0
    assert epoch_of([("other", b"9")]) == 0
    assert epoch_of([(HEADER, b"not a number")]) == 0


def test_the_filter_drops_a_lower_epoch_once_a_higher_one_was_seen_per_partition() -> None:
    f = EpochFilter()
    assert [f.admit(0, e) for e in (0, 3, 3, 2, 5, 4, 5)] == [
        True,
        True,
        True,
        False,
        True,
        False,
        True,
    ]
    assert f.admit(1, 2)  # another partition has its own history
    f.reset(0)
    assert f.admit(0, 1)
    f.seen(0, 9)
    assert not f.admit(0, 8)


def test_gaps_are_the_ranges_between_this_writers_offsets() -> None:
    assert gaps(10, [10, 11, 12]) == []
    assert gaps(10, [12, 13]) == [(10, 11)]
    assert gaps(10, [10, 13, 15]) == [(11, 12), (14, 14)]
    assert gaps(5, [3, 4, 5]) == []


def test_foreign_records_decode_keys_and_epochs() -> None:
    recs = [
        SimpleNamespace(offset=4, key=encode_key("a/t1"), headers=headers_of(3)),
        SimpleNamespace(offset=5, key=b"\xff", headers=[]),
    ]
    assert foreign_records(recs) == [Foreign(4, "a/t1", 3), Foreign(5, None, 0)]
    assert decode_key(None) is None
    assert decode_key(b"12") is None  # JSON, but not a key this store writes


# --- the memory store's recovery ----------------------------------------------------------


def test_memory_urls_get_the_store_whose_recovery_honours_epochs() -> None:
    assert by_url("memory://") is memory.Store
    app = faust.App("epochs-memory", store="memory://", autodiscover=False)
    assert isinstance(app.Table("accounts", key_type=str).data, memory.Store)


def _event(partition: int, offset: int, key: str, value: Any, epoch: int | None) -> Any:
    headers = [] if epoch is None else headers_of(epoch)
    message = SimpleNamespace(
        tp=TP(CHANGELOG, partition),
        partition=partition,
        offset=offset,
        key=encode_key(key),
        value=value,
        headers=headers,
    )
    return SimpleNamespace(message=message, key=key, value=value)


def _memory_store() -> memory.Store:
    app = faust.App("epochs-memory-store", store="memory://", autodiscover=False)
    data = app.Table("accounts", key_type=str).data
    assert isinstance(data, memory.Store)
    return data


def test_memory_store_get_returns_the_value_or_the_default() -> None:
    store = _memory_store()
    store["k"] = {"v": 1}
    assert store.get("k") == {"v": 1}
    assert store.get("missing") is None
    assert store.get("missing", 7) == 7


def test_memory_recovery_drops_a_deposed_owners_late_records_and_remembers_their_keys() -> None:
    store = _memory_store()
    batch = [
        _event(2, 0, "a/t1", {"lo": 10}, None),  # written before epochs existed
        _event(2, 1, "a/t1", {"lo": 20}, 4),  # the deposed owner, epoch 4
        _event(2, 2, "a/t1", {"lo": 30}, 5),  # its successor
        _event(2, 3, "c/t1/x", {"lo": 31}, 5),
        _event(2, 4, "a/t1", {"lo": 20, "stale": True}, 4),  # the deposed owner, woken
        _event(2, 5, "o/t1/25", {"out": []}, 4),
        _event(2, 6, f"{SEAL_PREFIX}2", {"sealed": True}, 4),  # no state: nothing to repair
    ]
    store.apply_changelog_batch(batch, lambda k: k, lambda v: v)
    assert store["a/t1"] == {"lo": 30}
    assert "o/t1/25" not in store
    assert store.highest_epoch(2) == 5
    assert store.pending_repairs(2) == {"a/t1", "o/t1/25"}
    # A later admitted record of a key (the live owner wrote it again): no repair needed.
    store.apply_changelog_batch([_event(2, 7, "a/t1", {"lo": 40}, 5)], lambda k: k, lambda v: v)
    assert store.pending_repairs(2) == {"o/t1/25"}
    store.written(2, 6, ["o/t1/25"])
    assert store.pending_repairs(2) == set()
    assert store.highest_epoch(2) == 6


def test_memory_recovery_starts_afresh_for_a_newly_assigned_partition() -> None:
    store = _memory_store()
    store.apply_changelog_batch([_event(1, 0, "a/t", {"lo": 1}, 8)], lambda k: k, lambda v: v)
    assert store.highest_epoch(1) == 8
    tp = TP(CHANGELOG, 1)
    asyncio.run(store.on_rebalance({tp}, set(), {tp}, 9))
    assert store.highest_epoch(1) == 0  # the replay from the start sets it again


# --- TableStore: epochs on the wire, the fence and the repair ------------------------------


class FakeKafka:
    """Assigns offsets per partition like a broker; ``intrude`` appends another writer's
    records (with their epoch) before this worker's next ones."""

    def __init__(self) -> None:
        self.log: dict[int, list[tuple[str, Any, int]]] = {}  # partition -> (key, value, epoch)
        self.reads: list[tuple[int, list[tuple[int, int]]]] = []

    def append(self, partition: int, key: str, value: Any, epoch: int) -> int:
        records = self.log.setdefault(partition, [])
        records.append((key, value, epoch))
        return len(records) - 1

    def intrude(self, partition: int, key: str, epoch: int) -> None:
        self.append(partition, key, {"lo": -1}, epoch)

    async def send(self, partition: int, key: str, value: Any, epoch: int) -> Any:
        offset = self.append(partition, key, value, epoch)
        fut = asyncio.get_running_loop().create_future()
        fut.set_result(SimpleNamespace(partition=partition, offset=offset))
        return fut

    async def read(self, partition: int, ranges: Sequence[tuple[int, int]]) -> list[Foreign]:
        self.reads.append((partition, list(ranges)))
        records = self.log[partition]
        return [
            Foreign(o, records[o][0], records[o][2]) for lo, hi in ranges for o in range(lo, hi + 1)
        ]


def _table_store(kafka: FakeKafka) -> TableStore:
    app = faust.App("epochs-table-store", store="memory://", autodiscover=False)
    table = app.Table("accounts", partitions=4, key_type=str)
    return TableStore(table, lambda key: 0, send=kafka.send, read=kafka.read)


def _round(store: TableStore, epoch: int, writes: dict[str, Any]) -> set[int]:
    async def go() -> set[int]:
        store.epoch = epoch
        store.partition = 0
        for key, value in writes.items():
            store[key] = value
        return await store.durable()

    return asyncio.run(go())


def test_records_carry_the_batch_generation_and_never_less_than_what_was_recovered() -> None:
    kafka = FakeKafka()
    store = _table_store(kafka)
    assert _round(store, 3, {"a/t": {"lo": 1}}) == set()
    assert [e for _, _, e in kafka.log[0]] == [3, 3]  # the record and its seal
    store.table.data.apply_changelog_batch(
        [_event(0, 99, "a/u", {"lo": 2}, 7)], lambda k: k, lambda v: v
    )
    _round(store, 4, {"a/t": {"lo": 3}})
    assert [e for _, _, e in kafka.log[0][2:]] == [7, 7]


def test_no_read_while_this_workers_records_follow_on_from_each_other() -> None:
    kafka = FakeKafka()
    store = _table_store(kafka)
    for lo in range(3):
        assert _round(store, 5, {"a/t": {"lo": lo}, f"c/t/{lo}": {"lo": lo}}) == set()
    assert kafka.reads == []


def test_a_newer_owners_records_among_this_workers_fence_the_partition() -> None:
    kafka = FakeKafka()
    store = _table_store(kafka)
    _round(store, 5, {"a/t": {"lo": 1}})
    kafka.intrude(0, "a/t", 6)  # the successor wrote while this worker was frozen
    fenced = _round(store, 5, {"a/t": {"lo": 2}, "c/t/x": {"lo": 2}})
    assert fenced == {0}
    assert kafka.reads == [(0, [(2, 2)])]
    assert store.fenced(0)
    # The round's writes are gone from the memory store (a replay says what they are), and
    # neither the epoch nor anything else of that round was taken as this worker's.
    assert "a/t" not in store.table.data
    assert "c/t/x" not in store.table.data
    assert store.table.data.highest_epoch(0) == 5
    store.epoch = 7  # assigned again, in a later generation: no longer fenced
    assert not store.fenced(0)


def test_a_batch_fenced_after_the_worker_rejoined_leaves_the_recovered_state_alone() -> None:
    # It woke, rejoined (generation 7) and recovered the partition before this batch's acks
    # came back: the table now holds the recovered state, which the fence must not touch.
    kafka = FakeKafka()
    generation = [5]
    app = faust.App("epochs-rejoined", store="memory://", autodiscover=False)
    table = app.Table("accounts", partitions=4, key_type=str)
    store = TableStore(
        table, lambda key: 0, send=kafka.send, read=kafka.read, generation=lambda: generation[0]
    )
    _round(store, 5, {"a/t": {"lo": 1}})
    kafka.intrude(0, "a/t", 6)
    generation[0] = 7
    assert _round(store, 5, {"a/t": {"lo": 2}}) == {0}
    assert "a/t" in table.data


def test_a_batch_of_a_later_generation_never_writes_under_the_last_rounds_epoch() -> None:
    # The outbox deletes a batch flushes after publishing stay in an open round. The worker
    # then froze, lost the partition to a successor (epoch 6), rejoined (generation 7) and
    # got it back: its next batch must write at epoch 7, not join the epoch-5 round and find
    # itself "deposed" in generation 7 (every later batch of the partition dropped).
    kafka = FakeKafka()
    store = _table_store(kafka)
    _round(store, 5, {"a/t": {"lo": 1}})

    async def outbox_deletes_then_rejoin() -> set[int]:
        store["o/t/1"] = {"out": []}
        await store.flush()  # what clear_outbox does: sent, acked with the next round
        kafka.intrude(0, "a/t", 6)
        return await store.begin(7)

    assert asyncio.run(outbox_deletes_then_rejoin()) == {0}  # deposed, in generation 5
    assert store.epoch == 7
    assert not store.fenced(0)
    written = len(kafka.log[0])
    assert _round(store, 7, {"a/t": {"lo": 2}}) == set()
    assert not store.fenced(0)
    assert [e for _, _, e in kafka.log[0][written:]] == [7, 7]  # the record and its seal


def test_begin_in_the_same_generation_leaves_the_round_open() -> None:
    kafka = FakeKafka()
    store = _table_store(kafka)
    _round(store, 5, {"a/t": {"lo": 1}})

    async def go() -> set[int]:
        store["o/t/1"] = {"out": []}
        await store.flush()
        return await store.begin(5)

    sent = len(kafka.log[0])
    assert asyncio.run(go()) == set()
    assert len(kafka.log[0]) == sent + 1  # no seal: nothing was made durable early


def test_a_deposed_owners_records_are_written_again_with_this_workers_values() -> None:
    kafka = FakeKafka()
    store = _table_store(kafka)
    _round(store, 6, {"a/t": {"lo": 1}, "c/t/x": {"lo": 1}})
    kafka.intrude(0, "a/t", 5)  # the deposed owner's late writes
    kafka.intrude(0, "o/t/9", 5)  # a key this worker does not have
    kafka.intrude(0, f"{SEAL_PREFIX}0", 5)
    assert _round(store, 6, {"c/t/y": {"lo": 2}}) == set()
    assert kafka.reads == [(0, [(3, 5)])]
    assert not store.fenced(0)
    assert store.repair([0]) == 2

    async def flush() -> set[int]:
        return await store.durable()

    assert asyncio.run(flush()) == set()
    rewritten = {key: (value, epoch) for key, value, epoch in kafka.log[0][8:]}
    assert rewritten["a/t"] == ({"lo": 1}, 6)  # this worker's value, its epoch
    assert rewritten["o/t/9"] == (None, 6)  # a tombstone: this worker has no such key
    assert store.repair([0]) == 0  # once


def test_repair_writes_the_keys_recovery_dropped_until_they_are_durable() -> None:
    kafka = FakeKafka()
    store = _table_store(kafka)
    data = store.table.data
    data.apply_changelog_batch(
        [_event(0, 0, "a/t", {"lo": 3}, 6), _event(0, 1, "a/t", {"lo": 2}, 5)],
        lambda k: k,
        lambda v: v,
    )
    assert data.pending_repairs(0) == {"a/t"}
    store.epoch = 7
    assert store.repair([0]) == 1
    assert store.repair([0]) == 0  # in flight: not written twice

    async def flush() -> set[int]:
        return await store.durable()

    asyncio.run(flush())
    assert ("a/t", {"lo": 3}, 7) in kafka.log[0]
    assert data.pending_repairs(0) == set()


# --- the adapter: a deposed worker publishes nothing of the batch and never commits it ---


class _Producer:
    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes | None, bytes]] = []

    async def send(self, topic: str, key: bytes | None, value: bytes, *_rest: Any) -> Any:
        self.sent.append((topic, key, value))
        fut = asyncio.get_running_loop().create_future()
        fut.set_result(None)
        return fut


class _Consumer:
    """What the ledger adapter asks of the transport's consumer (streaming/transport.py)."""

    def __init__(self) -> None:
        self.fenced: list[tuple[TP, int]] = []
        self.starts: dict[TP, int] = {}  # where each partition is read from (committed)
        self.earliest: dict[TP, int] = {}  # the log start of each partition (0 if not set)
        self.disregarded: list[int] = []  # offsets of messages whose acks are left out
        self.reads: list[tuple[TP, int]] = []  # partitions read again, from where

    def fence(self, tp: TP, generation: int) -> None:
        self.fenced.append((tp, generation))

    def start_of(self, tp: TP) -> int | None:
        return self.starts.get(tp)

    async def starts_known(self) -> None:
        return None

    def disregard(self, message: Any) -> None:
        self.disregarded.append(message.offset)

    def read_again(self, tp: TP, offset: int) -> None:
        self.reads.append((tp, offset))

    async def earliest_offsets(self, *tps: TP) -> dict[TP, int]:
        return {tp: self.earliest.get(tp, 0) for tp in tps}


def _ledger_pipeline(kafka: FakeKafka) -> Any:
    from rating.ledger import Role
    from rating.metrics import Metrics
    from rating.settings import Settings
    from rating.streaming.app import Pipeline
    from rating.streaming.clock import ManualClock
    from tests.unit.builders import T0, new_ledger

    store = _table_store(kafka)
    topic = SimpleNamespace(get_topic_name=lambda: "app-ledger")
    app = SimpleNamespace(
        producer=_Producer(),
        consumer=_Consumer(),
        consumer_generation_id=5,
        assignor=SimpleNamespace(assigned_actives=lambda: {TP("app-ledger", 0)}),
    )
    p = Pipeline(
        settings=Settings(),
        metrics=Metrics(),
        app=app,  # type: ignore[arg-type]
        rates=None,  # type: ignore[arg-type]
        ledger=new_ledger(store),
        store=store,
        clock=ManualClock(T0),
    )
    p.topics["ledger"] = topic
    p.sinks = {role: SimpleNamespace(get_topic_name=lambda r=role: r.value) for role in Role}
    return p


def _ledger_event(offset: int, kind: str, doc: dict[str, Any]) -> Any:
    from tests.unit.builders import envelope

    message = SimpleNamespace(
        topic="app-ledger",
        partition=0,
        offset=offset,
        key=doc["tenant_id"].encode(),
        value=envelope(kind, doc, offset).encode(),  # type: ignore[arg-type]
        timestamp=None,
        generation_id=5,
    )
    return SimpleNamespace(message=message)


def test_a_deposed_worker_withholds_the_batchs_charges_and_fences_its_commit() -> None:
    from prometheus_client import generate_latest

    from tests.integration.harness import metric_value
    from tests.unit.builders import cdr_doc, funds_doc, settings_doc

    kafka = FakeKafka()
    p = _ledger_pipeline(kafka)

    async def scenario() -> None:  # one event loop: acks of one batch are awaited by the next
        first = [
            _ledger_event(0, "settings", settings_doc()),
            _ledger_event(1, "funds", funds_doc("f1", amount="10.00")),
            _ledger_event(2, "cdr", cdr_doc("c1")),
        ]
        await p.ledger_batch(first)
        charges = [s for s in p.app.producer.sent if s[0] == "charges"]
        assert len(charges) == 1
        assert p.app.consumer.fenced == []

        kafka.intrude(0, "a/t1", 6)  # the partition's new owner wrote meanwhile
        # ...and this worker has rejoined (generation 6) while its generation-5 batch waited:
        # the batch's generation is fenced (its acks in generation 6 are not recorded at all:
        # transport.Consumer.ack), generation 6 is not: it reads those records again.
        p.app.consumer_generation_id = 6
        await p.ledger_batch([_ledger_event(3, "cdr", cdr_doc("c2"))])
        assert [s for s in p.app.producer.sent if s[0] == "charges"] == charges  # withheld
        ledger0 = TP("app-ledger", 0)
        assert p.app.consumer.fenced == [(ledger0, 5)]
        body = generate_latest(p.metrics.registry).decode()
        assert metric_value(body, "rating_ledger_fenced_total", partition="0") == 1

        # Later records of that partition in the same generation are not applied at all.
        written = sum(len(r) for r in kafka.log.values())
        await p.ledger_batch([_ledger_event(4, "cdr", cdr_doc("c3"))])
        assert sum(len(r) for r in kafka.log.values()) == written
        assert [s for s in p.app.producer.sent if s[0] == "charges"] == charges

    asyncio.run(scenario())


def test_a_worker_that_rejoined_and_got_its_partition_back_charges_there_again() -> None:
    # Frozen after a batch of generation 5 (its outbox deletes still in an open round), the
    # worker lost partition 0 to a successor (epoch 6), rejoined in generation 7 and got it
    # back. Its generation-7 batch is charged and published; only generation 5 is fenced.
    from tests.unit.builders import cdr_doc, funds_doc, settings_doc

    kafka = FakeKafka()
    p = _ledger_pipeline(kafka)

    async def scenario() -> None:
        await p.ledger_batch(
            [
                _ledger_event(0, "settings", settings_doc()),
                _ledger_event(1, "funds", funds_doc("f1", amount="10.00")),
                _ledger_event(2, "cdr", cdr_doc("c1")),
            ]
        )
        kafka.intrude(0, "a/t1", 6)
        p.app.consumer_generation_id = 7
        event = _ledger_event(3, "cdr", cdr_doc("c2"))
        event.message.generation_id = 7
        await p.ledger_batch([event])
        charged = [json.loads(s[2])["cdr_id"] for s in p.app.producer.sent if s[0] == "charges"]
        assert charged == ["c1", "c2"]
        assert p.app.consumer.fenced == [(TP("app-ledger", 0), 5)]
        assert not p.store.fenced(0)

    asyncio.run(scenario())
