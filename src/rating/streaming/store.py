"""The accounts table as the ledger's MutableMapping, with an explicit changelog partition.

Faust picks a table write's changelog partition from the "current event", which does not
exist inside a batch (``take_events``). The ledger knows the partition it is applying, so
it says so: every write goes to the changelog partition of the tenant's ledger partition,
which is what recovery reads back for whoever owns that partition next.

On RocksDB (:mod:`rating.streaming.rocks`) each partition has its own database, and Faust
would pick it from the current event too; so reads and writes name the tenant's partition
(``partition_for``: the key's tenant -> its ledger partition, the same function that routes
the tenant's messages there). The memory store is one dict: the partition does not matter.
RocksDB writes are held in ``_overlay`` until the batch's changelog is acked and then
written with the offset they reach (see :mod:`rating.streaming.rocks`: write-behind, so the
local database is always a prefix of the changelog); reads see the overlay first.

Changelog records are not sent as the ledger writes: a batch's writes are coalesced
(:mod:`rating.coalescing`: each key once, at its last write, deletions as barriers) and sent
by :meth:`TableStore.flush`, which ``durable`` calls and the adapter calls after the outbox
deletes (so they are in the producer before Faust's pre-commit flush). An account that ten
CDRs of a batch debit is one changelog record, not ten. Each record's delivery future is
kept, so the ledger can wait until the broker has acked the state of a batch before it
publishes that batch's outputs (see ``durable``).

The records go to the Kafka client directly (:func:`raw_sender`: ``app.producer.send``), not
through Faust's ``send_soon`` buffer, whose per-record bookkeeping was the largest cost of
a ledger batch. Keys and values are encoded as Faust's JSON codec encodes them (the stdlib
encoder, compact; ``tests/unit/test_table_store.py`` pins the bytes against the changelog
topic's own ``prepare_key``/``prepare_value``, which cost ~7% of the worker through
Faust's serializer registry): log compaction matches keys by their bytes. What Faust's send
callback did, storing the acked changelog offset in the store (``set_persisted_offset``:
what lets a RocksDB restart replay only the tail), ``durable`` does once per partition per
batch.

Sealing: some Kafka-protocol brokers (the embedded Tansu among them) report a partition's
end offset as "base offset of the last record batch + 1". Faust's recovery reads the
changelog only up to that end, so it would miss the tail of the last batch and, for a
partition a worker keeps across a rebalance, overwrite newer state with older. After each
durable batch we therefore write one small record per touched partition, alone in its own
batch, so the reported end is the true end. Offsets are committed only after the seal.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Iterable, Iterator, MutableMapping, Sequence
from functools import lru_cache
from typing import Any, Protocol

from faust.types import TP

from rating.coalescing import CoalescingLog
from rating.keys import KeyKind, tenant_of
from rating.partitioning import partition_of
from rating.streaming import rocks

#: Keys of seal records; not ledger state (see the module docstring).
SEAL_PREFIX = "~seal/"


def key_partitioner(partitions: int) -> Callable[[str], int]:
    """State key -> the ledger partition of its tenant (cached per tenant: hashing is slow)."""

    @lru_cache(maxsize=65536)
    def of_tenant(tenant: str) -> int:
        return partition_of(tenant, partitions)

    return lambda key: of_tenant(tenant_of(key))


class Acked(Protocol):
    """What the Kafka client answers for an acked record (aiokafka's RecordMetadata)."""

    @property
    def partition(self) -> int: ...

    @property
    def offset(self) -> int: ...


#: Sends one changelog record (partition, key, value; None: a tombstone) to the Kafka client
#: and returns once it is queued there, with the future of its ack.
ChangelogSend = Callable[[int, str, Any], Awaitable[Awaitable[Acked]]]


def encode_key(key: str) -> bytes:
    """A state key as Faust's JSON codec writes it on the changelog (a JSON string)."""
    return json.dumps(key).encode()


def encode_value(value: Any) -> bytes:
    """A state value (JSON types only) as Faust's JSON codec writes it: compact JSON."""
    return json.dumps(value, separators=(",", ":")).encode()


def raw_sender(table: Any) -> ChangelogSend:
    """Changelog records straight to the app's producer, encoded as Faust would."""
    name = table.changelog_topic.get_topic_name()  # once, not per record

    async def send(partition: int, key: str, value: Any) -> Awaitable[Acked]:
        raw_value = None if value is None else encode_value(value)
        ack: Awaitable[Acked] = await table.app.producer.send(
            name, encode_key(key), raw_value, partition, None, None
        )
        return ack

    return send


def changelog_loader(table: Any) -> Callable[[TP, Sequence[Any]], bool]:
    """Bulk recovery (rocks.py ``load_changelog``) of ``table``'s changelog, for the
    transport's consumer thread; records of other topics, or on the memory store, are left
    to Faust."""
    name = table.changelog_topic.get_topic_name()

    def load(tp: TP, records: Sequence[Any]) -> bool:
        if tp.topic != name:
            return False
        data = table.data
        return isinstance(data, rocks.Store) and data.load_changelog(tp.partition, records)

    return load


class TableStore(MutableMapping[str, Any]):
    def __init__(
        self,
        table: Any,
        partition_for: Callable[[str], int],
        send: ChangelogSend | None = None,
    ) -> None:
        self.table = table
        self.partition = 0  # the changelog partition of writes: the record being applied
        self.partition_for = partition_for
        self.seal = True
        self._send = send or raw_sender(table)
        self._log: CoalescingLog[tuple[int, Any]] = CoalescingLog()  # (partition, value)
        self._pending: list[Any] = []  # sent, not known to be acked
        self._touched: set[int] = set()
        self._overlay: dict[str, Any] = {}  # RocksDB only: written, not yet acked
        # RocksDB only: expiry entries handed to the ledger (deleted by the next commit), and
        # where the next sweep of a partition starts (the index is sorted by exp).
        self._swept: dict[int, set[tuple[int, str]]] = {}
        self._sweep_from: dict[int, int] = {}

    @property
    def rocks(self) -> rocks.Store | None:
        data = self.table.data
        return data if isinstance(data, rocks.Store) else None

    def __getitem__(self, key: str) -> Any:
        db = self.rocks
        if db is None:
            return self.table.data[key]
        value = self._overlay.get(key)
        if value is None:
            value = db.get_in(self.partition_for(key), key)
        if value is None or value is rocks.DELETED:
            raise KeyError(key)
        return value

    def get(self, key: str, default: Any = None) -> Any:
        try:
            return self[key]
        except KeyError:
            return default

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and self.get(key) is not None

    def __setitem__(self, key: str, value: Any) -> None:
        db = self.rocks
        if db is None:
            self.table.data[key] = value
        else:
            self._overlay[key] = value
        self._log.put(key, (self.partition, value))

    def __delitem__(self, key: str) -> None:
        db = self.rocks
        if db is None:
            del self.table.data[key]
        else:
            self._overlay[key] = rocks.DELETED
        self._log.delete(key, (self.partition, None))

    async def flush(self) -> None:
        """Send every changelog record written so far (coalesced) to the Kafka client."""
        for key, (partition, value) in self._log.drain():
            self._pending.append(await self._send(partition, key, value))
            self._touched.add(partition)

    async def durable(self) -> None:
        """Wait until every changelog record written so far is acked by the broker."""
        await self.flush()
        pending, self._pending = self._pending, []
        touched, self._touched = self._touched, set()
        acked: list[Acked] = list(await asyncio.gather(*pending)) if pending else []
        if self.seal and touched:
            seals = [
                await self._send(p, f"{SEAL_PREFIX}{p}", {"sealed": True}) for p in sorted(touched)
            ]
            acked += await asyncio.gather(*seals)
        reached: dict[int, int] = {}
        for ack in acked:
            reached[ack.partition] = max(ack.offset, reached.get(ack.partition, -1))
        name = self.table.changelog_topic.get_topic_name()
        for partition, offset in reached.items():
            # What Faust's own send callback does for each record (rocks.py keeps it with the
            # state it covers); the memory store ignores it.
            self.table.data.set_persisted_offset(TP(name, partition), offset)
        db = self.rocks
        if db is not None:
            overlay, self._overlay = self._overlay, {}
            writes: dict[int, dict[str, Any]] = {}
            for key, value in overlay.items():
                writes.setdefault(self.partition_for(key), {})[key] = value
            swept, self._swept = self._swept, {}
            db.commit_batch(writes, swept)

    def expiry_due(self, partition: int, cutoff: int, limit: int) -> list[tuple[int, str]]:
        """RocksDB: up to ``limit`` entries of the store's expiry index with ``exp < cutoff``
        that were not handed out before (their deletion waits for the next commit)."""
        db = self.rocks
        if db is None:
            return []
        handed = self._swept.get(partition, set())
        start = self._sweep_from.get(partition, 0)
        rows = db.expired_in(partition, cutoff, start, limit + len(handed))
        due = [row for row in rows if row not in handed][:limit]
        if due:  # everything before it is handed out: the next sweep seeks past it
            self._swept.setdefault(partition, set()).update(due)
            self._sweep_from[partition] = due[-1][0]
        return due

    def forget_expiry(self, partition: int) -> None:
        self._swept.pop(partition, None)
        self._sweep_from.pop(partition, None)

    def items_of(
        self, partition: int, kinds: frozenset[KeyKind] | None = None
    ) -> Iterator[tuple[str, Any]]:
        """The ledger state of one partition (seal records left out): every key, or those of
        ``kinds``. On RocksDB only that partition's database is read, and only the key
        ranges of ``kinds``: what a restart reads does not grow with the markers."""
        prefixes = None if kinds is None else tuple(sorted(f"{k.value}/" for k in kinds))

        def wanted(key: str) -> bool:
            if prefixes is None:
                return not key.startswith(SEAL_PREFIX)
            return key.startswith(prefixes)

        db = self.rocks
        if db is None:
            for key, value in list(self.table.data.items()):
                if value is not None and wanted(key) and self.partition_for(key) == partition:
                    yield key, value
            return
        for key, value in db.items_in(partition, prefixes):
            if key not in self._overlay and wanted(key):
                yield key, value
        for key, value in list(self._overlay.items()):
            if value is not rocks.DELETED and wanted(key) and self.partition_for(key) == partition:
                yield key, value

    def __iter__(self) -> Iterator[str]:
        return iter(self.table.data)

    def __len__(self) -> int:
        return len(self.table.data)


class RocksExpiry:
    """:class:`rating.expiry.ExpiryIndex` on the RocksDB store's own index (rocks.py): on
    disk, derived from the values as they are committed or recovered."""

    persistent = True

    def __init__(self, store: TableStore) -> None:
        self.store = store

    def add(self, partition: int, exp: int, key: str) -> None:
        return  # the store indexes the value itself when it commits it

    def due(self, partition: int, cutoff: int, limit: int) -> list[tuple[int, str]]:
        return self.store.expiry_due(partition, cutoff, limit)

    def rebuild(self, partition: int, entries: Iterable[tuple[int, str]]) -> None:
        return  # on disk already

    def forget(self, partition: int) -> None:
        self.store.forget_expiry(partition)
