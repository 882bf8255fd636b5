"""TableStore's changelog path: the bytes it sends, coalescing, acked offsets (no broker)."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import faust
import pytest

from rating.keys import SEAL_PREFIX
from rating.streaming.store import TableStore, encode_key, encode_value

KEYS = ["a/t1", "c/t1/cdr-1", "c/\u00e6\u00f8%2F/x", 'u/"q"/2026-12-01/p', "h/t\\1/9", "o/\x01/3"]
VALUES: list[Any] = [
    {"acct": {"balance": "12.3400", "v": 3}, "lo": 17},
    {"lo": 4, "amt": "0.0100", "exp": 1767225600},
    {"out": [{"role": "charges", "key": "t1", "value": '{"a": 1}'}], "n": None, "ok": True},
    {"name": "\u00c5se \u00d8stergaard \U0001f600"},
]


@pytest.fixture(scope="module")
def changelog_topic() -> Any:
    app = faust.App("store-bytes", autodiscover=False)
    return app.Table("accounts", partitions=4, key_type=str).changelog_topic


@pytest.mark.parametrize("key", KEYS)
def test_keys_are_the_bytes_faust_writes(changelog_topic: Any, key: str) -> None:
    # Log compaction matches keys by their bytes: a key encoded differently from Faust's
    # own writes would never supersede (or delete) them.
    assert encode_key(key) == changelog_topic.prepare_key(key, None)[0]


@pytest.mark.parametrize("value", VALUES)
def test_values_are_the_bytes_faust_writes(changelog_topic: Any, value: Any) -> None:
    assert encode_value(value) == changelog_topic.prepare_value(value, None)[0]


class FakeTable:
    """Enough of a Faust table for TableStore on the memory store."""

    def __init__(self) -> None:
        self.data = _Data()
        self.changelog_topic = SimpleNamespace(get_topic_name=lambda: "app-accounts-changelog")


class _Data(dict[str, Any]):
    def __init__(self) -> None:
        super().__init__()
        self.persisted: dict[Any, int] = {}

    def set_persisted_offset(self, tp: Any, offset: int) -> None:
        self.persisted[tp] = offset

    # Owner epochs (memory.py's interface): nothing recovered here.
    def highest_epoch(self, partition: int) -> int:
        return 0

    def pending_repairs(self, partition: int) -> set[str]:
        return set()

    def written(self, partition: int, epoch: int, repaired: Any) -> None:
        return None


def run_store(ops: Any, seal: bool = True) -> tuple[list[tuple[int, str, Any]], FakeTable]:
    table = FakeTable()
    sent: list[tuple[int, str, Any]] = []

    async def go() -> None:
        loop = asyncio.get_running_loop()

        async def send(partition: int, key: str, value: Any, epoch: int) -> Any:
            sent.append((partition, key, value))
            fut = loop.create_future()
            fut.set_result(SimpleNamespace(partition=partition, offset=len(sent) - 1))
            return fut

        store = TableStore(table, lambda key: 0, send)
        store.seal = seal
        await ops(store)

    asyncio.run(go())
    return sent, table


def test_a_key_written_many_times_in_a_batch_is_sent_once_with_its_last_value() -> None:
    async def ops(store: TableStore) -> None:
        for i in range(10):
            store.partition = 2
            store[f"c/t/{i}"] = {"lo": i}
            store["a/t"] = {"lo": i}
        assert store["a/t"] == {"lo": 9}  # visible before it is sent
        await store.durable()

    sent, table = run_store(ops)
    assert [k for _, k, _ in sent if k == "a/t"] == ["a/t"]
    assert sent[-2] == (2, "a/t", {"lo": 9})
    assert sent[-1] == (2, f"{SEAL_PREFIX}2", {"sealed": True})
    assert [k for _, k, _ in sent[:-2]] == [f"c/t/{i}" for i in range(10)]
    # The acked offsets reach the store once per partition, the seal's included.
    assert list(table.data.persisted.values()) == [len(sent) - 1]


def test_a_deletion_is_sent_after_every_write_made_before_it() -> None:
    async def ops(store: TableStore) -> None:
        store["a/t"] = {"lo": 1}
        store["h/t/1"] = {"m": 1}
        del store["h/t/1"]
        store["a/t"] = {"lo": 2}
        await store.durable()

    sent, _ = run_store(ops, seal=False)
    assert [(k, v) for _, k, v in sent] == [
        ("a/t", {"lo": 1}),
        ("h/t/1", {"m": 1}),
        ("h/t/1", None),
        ("a/t", {"lo": 2}),
    ]


def test_flush_sends_without_waiting_and_durable_sends_nothing_twice() -> None:
    async def ops(store: TableStore) -> None:
        store["o/t/1"] = {"out": []}
        await store.durable()
        del store["o/t/1"]
        await store.flush()  # the outbox deletes: into the client before the commit
        await store.durable()

    sent, _ = run_store(ops, seal=False)
    assert [(k, v) for _, k, v in sent] == [("o/t/1", {"out": []}), ("o/t/1", None)]
