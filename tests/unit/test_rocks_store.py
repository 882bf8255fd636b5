"""The RocksDB store seam (streaming/rocks.py, streaming/store.py) against the real Faust store.

Pins the Faust internals the seam relies on: the store class and its private members, that
recovery writes records and their offset directly, and that a live write's acked offset is
stored only together with its state (write-behind)."""

from __future__ import annotations

import asyncio
import inspect
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import faust
import pytest
from faust.stores import rocksdb as faust_rocksdb
from faust.types import TP

from rating.keys import SEAL_PREFIX
from rating.streaming import rocks
from rating.streaming.epochs import headers_of
from rating.streaming.store import TableStore, key_partitioner
from rating.testing import wait_until

PARTITIONS = 4


def params(function: object) -> list[str]:
    return list(inspect.signature(function).parameters)  # type: ignore[arg-type]


@pytest.fixture
def table(tmp_path: Path) -> Any:
    app = faust.App("pin", store="rocksdict://", datadir=str(tmp_path))
    return app.Table(
        "accounts", partitions=PARTITIONS, key_type=str, options={"write_buffer_size": 1 << 20}
    )


def test_rocksdict_scheme_is_our_store_with_bounded_options(table: Any) -> None:
    store = table.data
    assert isinstance(store, rocks.Store)
    assert isinstance(store, faust_rocksdb.Store)
    assert store.use_rocksdict
    assert store.rocksdb_options.write_buffer_size == 1 << 20  # ours, from the table
    assert isinstance(store.memory, rocks.MemoryBudget)  # a default budget, none given
    for name in ("_dbs", "_key_index", "offset_key", "_encode_key", "_decode_value"):
        assert hasattr(store, name), name
    assert callable(store._db_for_partition)
    # Faust opens a partition's database through this method; ours applies the budget.
    assert "_open_for_partition" in inspect.getsource(faust_rocksdb.Store._db_for_partition)
    assert params(faust_rocksdb.Store._open_for_partition) == ["self", "partition"]


def test_all_partition_databases_share_one_memtable_budget_and_block_cache(
    tmp_path: Path,
) -> None:
    # Memtables of 64 MiB each, but 1 MiB for all of them: writing ~12 MB into each of two
    # partitions flushes both to disk, which 64 MiB memtables alone never would, and keeps
    # the memtables near the budget (the manager flushes the database being written, so it
    # is a target, not a hard cap: 6.02 MiB seen once with three column families per
    # database), far below the 24 MB written.
    memory = rocks.MemoryBudget(memtable_bytes=1 << 20, block_cache_bytes=4 << 20)
    app = faust.App("budget", store="rocksdict://", datadir=str(tmp_path))
    store = app.Table(
        "accounts",
        partitions=PARTITIONS,
        key_type=str,
        options={"write_buffer_size": 64 << 20, rocks.MEMORY_OPTION: memory},
    ).data
    assert store.memory is memory
    value = {"note": "x" * 1000}
    for p in (1, 2):
        store._db_for_partition(p)
    for i in range(12000):
        store.commit_batch({1: {f"a/{i}": value}, 2: {f"a/{i}": value}})
    assert 0 < memory.memtable_usage() <= 8 << 20
    for p in (1, 2):
        # RocksDB flushes in a background thread.
        wait_until(
            lambda p=p: any(Path(store.partition_path(p)).glob("*.sst")), 30, f"flush of {p}"
        )
    # The flushed files' index and filter blocks are in the one shared cache, and reads of
    # flushed data add their data blocks to it.
    indexes = memory.block_cache_usage()
    assert indexes > 0
    # Reads spread over the flushed data: ~400 data blocks (~1.6 MB), far more than the few
    # KB a background compaction may free meanwhile (one read each raced with it in CI).
    for i in range(0, 12000, 60):
        assert store.get_in(1, f"a/{i}") == value
        assert store.get_in(2, f"a/{i + 1}") == value
    assert indexes < memory.block_cache_usage() <= memory.block_cache_bytes


def test_commit_batch_writes_state_and_offset_per_partition(table: Any) -> None:
    store = table.data
    store._db_for_partition(1)
    store._db_for_partition(2)
    tp = TP("changelog", 2)
    store.set_persisted_offset(tp, 7)  # a live ack: held, not written
    assert store.persisted_offset(tp) is None
    store.commit_batch({2: {"a/t": {"lo": 1}}})
    assert store.persisted_offset(tp) == 7
    assert store.get_in(2, "a/t") == {"lo": 1}
    assert store.get_in(1, "a/t") is None  # the other partition's database
    assert list(store.items_in(2)) == [("a/t", {"lo": 1})]
    store.set_persisted_offset(tp, 9)
    store.commit_batch({2: {"a/t": rocks.DELETED}})
    assert store.get_in(2, "a/t") is None
    assert store.persisted_offset(tp) == 9


def test_recovery_writes_offsets_directly(table: Any) -> None:
    store = table.data

    class Msg:
        def __init__(self, offset: int, key: bytes, value: bytes | None) -> None:
            self.tp, self.partition, self.offset = TP("changelog", 3), 3, offset
            self.key, self.value, self.headers = key, value, []

    class Ev:
        def __init__(self, message: Msg) -> None:
            self.message = message

    batch = [
        Ev(Msg(4, b'"a/x"', b'{"lo": 4}')),
        Ev(Msg(5, b'"c/x/1"', b'{"lo":5,"amt":"0.01","exp":900}')),
        Ev(Msg(6, b'"c/x/2"', None)),
    ]
    store.apply_changelog_batch(iter(batch), lambda k: k, lambda v: v)
    assert store.persisted_offset(TP("changelog", 3)) == 6
    assert store.get_in(3, "a/x") == {"lo": 4}
    # Recovery indexes what it writes: a worker without its data dir still expires markers.
    assert store.expired_in(3, 901, 0, 10) == [(900, "c/x/1")]


def test_values_with_an_expiry_are_indexed_in_expiry_order(table: Any) -> None:
    store = table.data
    store._db_for_partition(1)
    store.commit_batch(
        {1: {"c/t/b": {"lo": 1, "exp": 200}, "c/t/a": {"lo": 2, "exp": 100}, "a/t": {"lo": 2}}}
    )
    assert store.expired_in(1, 201, 0, 10) == [(100, "c/t/a"), (200, "c/t/b")]
    assert store.expired_in(1, 200, 0, 10) == [(100, "c/t/a")]  # only exp < cutoff
    assert store.expired_in(1, 201, 150, 10) == [(200, "c/t/b")]  # from a start
    assert store.expired_in(1, 201, 0, 1) == [(100, "c/t/a")]  # at most limit
    assert store.expired_in(0, 201, 0, 10) == []  # a partition not open here
    # Swept entries are deleted with the commit that deletes their keys.
    store.commit_batch({1: {"c/t/a": rocks.DELETED}}, {1: [(100, "c/t/a")]})
    assert store.expired_in(1, 1000, 0, 10) == [(200, "c/t/b")]
    # A key rewritten with the expiry being swept keeps its entry: the put wins.
    store.commit_batch({1: {"c/t/b": {"lo": 3, "exp": 200}}}, {1: [(200, "c/t/b")]})
    assert store.expired_in(1, 1000, 0, 10) == [(200, "c/t/b")]


def test_the_expiry_index_survives_closing_the_database(table: Any) -> None:
    # Nothing here keeps a handle on the column family: the database closes and reopens
    # (a handle kept would hold RocksDB's lock and the reopen would fail).
    store = table.data
    store._db_for_partition(2)
    store.commit_batch({2: {"c/t/a": {"lo": 1, "exp": 50}}})
    assert store.expired_in(2, 51, 0, 10) == [(50, "c/t/a")]
    db = store._dbs.pop(2)
    db.close()
    del db
    store._db_for_partition(2)
    assert store.expired_in(2, 51, 0, 10) == [(50, "c/t/a")]
    assert store.get_in(2, "c/t/a") == {"lo": 1, "exp": 50}


def test_items_in_reads_only_the_key_ranges_asked_for(table: Any) -> None:
    store = table.data
    store._db_for_partition(1)
    keys = ["a/t", "a/\u00e6", "c/t/1", "h/t/3", "o/t/4", "u/t/2026-12-01/p", "r/t"]
    store.commit_batch({1: {k: {"lo": i} for i, k in enumerate(keys)}})
    assert sorted(k for k, _ in store.items_in(1, ["a/", "o/"])) == ["a/t", "a/\u00e6", "o/t/4"]
    assert sorted(k for k, _ in store.items_in(1)) == sorted(keys)


def test_unopened_partition_is_never_opened_by_a_read(table: Any) -> None:
    store = table.data
    assert store.get_in(0, "a/t") is None
    assert 0 not in store._dbs


def test_table_store_holds_writes_until_the_changelog_is_acked(table: Any) -> None:
    partition_for = key_partitioner(PARTITIONS)
    tenant_key = "a/tenant-1"
    p = partition_for(tenant_key)
    table.data._db_for_partition(p)
    sent: list[tuple[int, str, Any]] = []

    async def scenario() -> None:
        store = TableStore(table, partition_for, _recording_sender(sent))
        store.seal = False
        store.partition = p
        store[tenant_key] = {"lo": 1}
        assert store[tenant_key] == {"lo": 1}  # the overlay
        assert table.data.get_in(p, tenant_key) is None  # not before the ack
        assert table.data.persisted_offset(TP("changelog", p)) is None
        await store.durable()
        assert table.data.get_in(p, tenant_key) == {"lo": 1}
        assert table.data.persisted_offset(TP("changelog", p)) == 1
        del store[tenant_key]
        assert tenant_key not in store
        assert dict(store.items_of(p)) == {}
        await store.durable()
        assert table.data.get_in(p, tenant_key) is None

    asyncio.run(scenario())
    assert sent == [(p, tenant_key, {"lo": 1}), (p, tenant_key, None)]


# --- bulk recovery ----------------------------------------------------------------------------


class Rec:
    """What aiokafka fetches: a ConsumerRecord's key, value, offset (raw bytes) and headers
    (the writer's epoch, if given)."""

    def __init__(
        self, offset: int, key: bytes, value: bytes | None, epoch: int | None = None
    ) -> None:
        self.offset, self.key, self.value = offset, key, value
        self.headers = [] if epoch is None else headers_of(epoch)


class Ev:
    """A changelog event as Faust's recovery hands it to ``apply_changelog_batch``."""

    def __init__(self, partition: int, rec: Rec) -> None:
        self.message = SimpleNamespace(
            tp=TP("changelog", partition),
            partition=partition,
            offset=rec.offset,
            key=rec.key,
            value=rec.value,
            headers=rec.headers,
        )


def test_bulk_recovery_writes_fetched_records_their_expiry_and_offset(table: Any) -> None:
    store = table.data
    fetched = [
        Rec(10, b'"a/t"', b'{"lo":10}'),
        Rec(11, b'"c/t/1"', b'{"lo":11,"amt":"0.01","exp":500}'),
        Rec(12, b'"o/t/11"', b'{"out":[]}'),
        Rec(13, b'"o/t/11"', None),
    ]
    assert store.load_changelog(1, fetched)  # a standby's database opens here
    assert store.get_in(1, "a/t") == {"lo": 10}
    assert store.get_in(1, "c/t/1") == {"lo": 11, "amt": "0.01", "exp": 500}
    assert store.get_in(1, "o/t/11") is None
    assert store.expired_in(1, 501, 0, 10) == [(500, "c/t/1")]
    assert store.persisted_offset(TP("changelog", 1)) == 13
    # Faust's recovery is handed the last record and applies it: skipped, already written.
    stale = Rec(13, b'"a/t"', b'{"lo":-1}')
    store.apply_changelog_batch([Ev(1, stale)], lambda k: k, lambda v: v)
    assert store.get_in(1, "a/t") == {"lo": 10}
    # A later record Faust applies itself is written as before.
    store.apply_changelog_batch([Ev(1, Rec(14, b'"a/t"', b'{"lo":14}'))], lambda k: k, lambda v: v)
    assert store.get_in(1, "a/t") == {"lo": 14}
    assert store.persisted_offset(TP("changelog", 1)) == 14


def test_bulk_recovery_leaves_live_partitions_and_pending_records_to_faust(table: Any) -> None:
    store = table.data
    store._db_for_partition(2)
    store.commit_batch({2: {"a/t": {"lo": 1}}})  # written live: Faust's path, unchanged
    assert not store.load_changelog(2, [Rec(5, b'"a/t"', b'{"lo":5}')])
    assert store.get_in(2, "a/t") == {"lo": 1}
    # Reassigned: recovered afresh. But Faust still holds offset 5, unwritten: a bulk write
    # of later records now would be overwritten by it, so they go to Faust too.
    tp = TP("accounts-changelog", 2)
    asyncio.run(store.on_rebalance({tp}, {tp}, {tp}))
    assert not store.load_changelog(2, [Rec(6, b'"a/t"', b'{"lo":6}')])
    store.apply_changelog_batch(
        [Ev(2, Rec(5, b'"a/t"', b'{"lo":5}')), Ev(2, Rec(6, b'"a/t"', b'{"lo":6}'))],
        lambda k: k,
        lambda v: v,
    )
    assert store.load_changelog(2, [Rec(7, b'"a/t"', b'{"lo":7}')])  # caught up: bulk again
    assert store.get_in(2, "a/t") == {"lo": 7}


def test_faust_recovery_keeps_the_highest_offset_and_writes_through_the_store() -> None:
    # Bulk recovery hands Faust's recovery one record per fetched batch: its bookkeeping
    # must take the offset of the record it sees as the partition's progress.
    from faust.tables.recovery import Recovery

    slurp = inspect.getsource(Recovery._slurp_changelogs.fun)  # a Service task
    assert "if seen_offset is None or offset > seen_offset:" in slurp
    assert "offsets[tp] = offset" in slurp
    assert "table.apply_changelog_batch(buf)" in slurp
    assert params(faust_rocksdb.Store.on_rebalance) == [
        "self",
        "assigned",
        "revoked",
        "newly_assigned",
        "generation_id",
    ]


# --- owner epochs (streaming/epochs.py) ------------------------------------------------------


def test_bulk_recovery_drops_a_deposed_owners_records_and_remembers_it_on_disk(
    tmp_path: Path,
) -> None:
    def open_table() -> Any:
        app = faust.App("epochs", store="rocksdict://", datadir=str(tmp_path))
        return app.Table("accounts", partitions=PARTITIONS, key_type=str).data

    def restart(store: Any) -> Any:
        # Revoked, which closes the partition's database (Faust drops it), then a new store
        # on the same data dir, as a restarted worker would open.
        tp = TP("epochs-accounts-changelog", 1)
        asyncio.run(store.on_rebalance(set(), {tp}, set()))
        assert 1 not in store._dbs
        store = open_table()
        store._db_for_partition(1)  # assigned again: Faust opens it
        return store

    store = open_table()
    fetched = [
        Rec(10, b'"a/t"', b'{"lo":10}', epoch=4),
        Rec(11, b'"a/t"', b'{"lo":11}', epoch=5),  # the successor
        Rec(12, b'"a/t"', b'{"lo":10,"stale":1}', epoch=4),  # the deposed owner, woken
        Rec(13, b'"o/t/12"', b'{"out":[]}', epoch=4),
    ]
    assert store.load_changelog(1, fetched)
    assert store.get_in(1, "a/t") == {"lo": 11}
    assert store.get_in(1, "o/t/12") is None
    assert store.persisted_offset(TP("changelog", 1)) == 13
    assert store.highest_epoch(1) == 5
    assert store.pending_repairs(1) == {"a/t", "o/t/12"}

    # Restarted on its data dir: the epoch and the keys awaiting repair are still known, so
    # a deposed owner's record after the persisted offset is still dropped.
    store = restart(store)
    assert store.highest_epoch(1) == 5
    assert store.pending_repairs(1) == {"a/t", "o/t/12"}
    assert store.load_changelog(1, [Rec(14, b'"a/t"', b'{"lo":9}', epoch=4)])
    assert store.get_in(1, "a/t") == {"lo": 11}
    # A later record of a key by the live owner: that key needs no repair any more.
    assert store.load_changelog(1, [Rec(15, b'"o/t/12"', None, epoch=5)])
    assert store.pending_repairs(1) == {"a/t"}
    # The live owner's repair is acked: stored with its batch, gone after a restart too.
    store.written(1, 6, ["a/t"])
    store.commit_batch({1: {"a/t": {"lo": 11}}})
    assert store.pending_repairs(1) == set()
    store = restart(store)
    assert store.pending_repairs(1) == set()
    assert store.highest_epoch(1) == 6


def test_faust_recovery_path_drops_a_deposed_owners_records_too(table: Any) -> None:
    store = table.data
    store._db_for_partition(2)
    store.commit_batch({2: {"a/t": {"lo": 1}}})  # written live: Faust's path
    store.apply_changelog_batch(
        [
            Ev(2, Rec(5, b'"a/t"', b'{"lo":5}', epoch=8)),
            Ev(2, Rec(6, b'"a/t"', b'{"lo":2}', epoch=7)),
            Ev(2, Rec(7, b'"c/t/1"', b'{"lo":6,"amt":"0.01","exp":900}', epoch=7)),
        ],
        lambda k: k,
        lambda v: v,
    )
    assert store.get_in(2, "a/t") == {"lo": 5}
    assert store.get_in(2, "c/t/1") is None
    assert store.expired_in(2, 901, 0, 10) == []  # no expiry entry for a dropped record
    assert store.pending_repairs(2) == {"a/t", "c/t/1"}
    assert store.highest_epoch(2) == 8


def test_a_deposed_owners_seal_record_is_dropped_without_a_repair(table: Any) -> None:
    # A seal names no tenant and holds no state: recovery drops a stale one like any record,
    # but nothing is owed for it (writing it "again" once crashed the ledger agent: its key
    # has no tenant to find a partition by).
    store = table.data
    partition_for = key_partitioner(PARTITIONS)
    p = partition_for("a/t")
    seal = f"{SEAL_PREFIX}{p}".encode()
    fetched = [
        Rec(10, b'"a/t"', b'{"lo":11}', epoch=5),
        Rec(11, b'"a/t"', b'{"lo":10}', epoch=4),  # the deposed owner, woken
        Rec(12, b'"' + seal + b'"', b'{"sealed":true}', epoch=4),
    ]
    assert store.load_changelog(p, fetched)
    assert store.pending_repairs(p) == {"a/t"}
    store.apply_changelog_batch(
        [Ev(p, Rec(13, b'"' + seal + b'"', b'{"sealed":true}', epoch=4))],
        lambda k: k,
        lambda v: v,
    )
    assert store.pending_repairs(p) == {"a/t"}

    sent: list[tuple[int, str, Any]] = []

    async def repair() -> None:
        ts = TableStore(table, partition_for, _recording_sender(sent))
        ts.seal = False
        ts.epoch = 6
        assert ts.repair([p]) == 1
        await ts.durable()

    asyncio.run(repair())
    assert sent == [(p, "a/t", {"lo": 11})]
    assert store.pending_repairs(p) == set()


def _recording_sender(sent: list[tuple[int, str, Any]]) -> Any:
    """A changelog send that records (partition, key, value) and is acked at once, at the
    next offset."""

    async def send(partition: int, key: str, value: Any, epoch: int) -> Any:
        sent.append((partition, key, value))
        fut = asyncio.get_running_loop().create_future()
        fut.set_result(SimpleNamespace(partition=partition, offset=len(sent)))
        return fut

    return send
