"""The ledger's marker expiry on the RocksDB store (rating.expiry, streaming/rocks.py):
the index is on disk, so a restart reads no marker and expiry still finds every one."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import faust
import pytest

from rating.keys import KeyKind
from rating.ledger import EXPIRY_GRACE, Ledger
from rating.streaming.store import RocksExpiry, TableStore, key_partitioner
from tests.unit.builders import BOOK, HORIZON, POLICY, T0, Feed, cdr_doc, settings_doc

PARTITIONS = 4
PART = key_partitioner(PARTITIONS)("a/t1")  # tenant t1's ledger partition
DUE = T0 + HORIZON + EXPIRY_GRACE + timedelta(hours=2)  # every marker of T0 has expired


@pytest.fixture
def table(tmp_path: Path) -> Any:
    app = faust.App("expiry", store="rocksdict://", datadir=str(tmp_path))
    table = app.Table("accounts", partitions=PARTITIONS, key_type=str)
    table.data._db_for_partition(PART)
    return table


def worker(table: Any) -> tuple[TableStore, Ledger]:
    """A TableStore (changelog acked at once) and a ledger on it, as `rating worker` wires them."""
    sent: list[Any] = []

    async def send(partition: int, key: str, value: Any, epoch: int) -> Any:
        sent.append((partition, key, value))
        fut = asyncio.get_running_loop().create_future()
        fut.set_result(SimpleNamespace(partition=partition, offset=len(sent)))
        return fut

    store = TableStore(table, key_partitioner(PARTITIONS), send)
    store.seal = False
    store.partition = PART
    ledger = Ledger(store, lambda: BOOK, POLICY, HORIZON, expiry=RocksExpiry(store))
    return store, ledger


def charged(ledger: Ledger) -> Feed:
    """Tenant t1 opened and CDR c1 charged on ``ledger`` (not durable yet)."""
    feed = Feed(ledger, partition=PART)
    feed.send("settings", settings_doc())
    feed.send("cdr", cdr_doc("c1"))
    return feed


def test_markers_expire_from_the_index_on_disk_also_after_a_restart(table: Any) -> None:
    async def scenario() -> None:
        store, ledger = worker(table)
        feed = charged(ledger)
        feed.send("cdr", cdr_doc("c2", call_start=T0 - timedelta(minutes=30)))
        await store.durable()
        ledger.published(PART, feed.offset)  # outputs acked: the outbox entries go
        await store.durable()
        assert table.data.get_in(PART, "c/t1/c1") is not None
        assert table.data.get_in(PART, "c/t1/c2") is not None

        # Restart: a new store and ledger on the same database. The ledger's index is
        # rebuilt from the account (and outbox, held) keys only: no marker is read.
        store, ledger = worker(table)
        assert ledger.index_kinds == {KeyKind.ACCOUNT, KeyKind.OUTBOX, KeyKind.HELD}
        read = [k for k, _ in store.items_of(PART, ledger.index_kinds)]
        assert read == ["a/t1"]
        ledger.rebuild_index(PART, store.items_of(PART, ledger.index_kinds))
        feed = Feed(ledger, partition=PART)
        feed.offset = 10
        ledger.tick(PART, feed.offset, T0 + timedelta(hours=1))  # nothing due yet
        await store.durable()
        assert table.data.get_in(PART, "c/t1/c1") is not None
        ledger.tick(PART, feed.offset + 1, DUE)
        await store.durable()
        assert table.data.get_in(PART, "c/t1/c1") is None
        assert table.data.get_in(PART, "c/t1/c2") is None
        # The swept entries went with the markers; the usage rows' (400 days) stay.
        left = table.data.expired_in(PART, int(DUE.timestamp()) + 10**9, 0, 100)
        assert [k for _, k in left if k.startswith("c/")] == []
        assert left, "usage rows are indexed too"

    asyncio.run(scenario())


def test_an_entry_is_handed_out_once_until_its_deletion_is_committed(table: Any) -> None:
    async def scenario() -> None:
        store, ledger = worker(table)
        charged(ledger)
        await store.durable()
        cutoff = int(DUE.timestamp())
        first = store.expiry_due(PART, cutoff, 10)
        assert [k for _, k in first] == ["c/t1/c1"]
        assert store.expiry_due(PART, cutoff, 10) == []  # handed out, not committed yet
        await store.durable()
        assert table.data.expired_in(PART, cutoff, 0, 10) == []
        store.forget_expiry(PART)
        assert store.expiry_due(PART, cutoff, 10) == []

    asyncio.run(scenario())


def test_a_marker_rewritten_with_a_later_expiry_is_kept(table: Any) -> None:
    async def scenario() -> None:
        store, ledger = worker(table)
        store["c/t1/x"] = {"lo": 1, "amt": "0.01", "exp": 100}
        await store.durable()
        store["c/t1/x"] = {"lo": 2, "amt": "0.01", "exp": 10**10}
        await store.durable()
        ledger.tick(PART, 5, DUE)
        await store.durable()
        assert table.data.get_in(PART, "c/t1/x") == {"lo": 2, "amt": "0.01", "exp": 10**10}
        assert table.data.expired_in(PART, 10**10 + 1, 0, 10) == [(10**10, "c/t1/x")]

    asyncio.run(scenario())
