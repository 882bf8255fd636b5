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

Owner epochs (:mod:`rating.streaming.epochs`): every record is sent with its writer's epoch
(``epoch``: the batch's consumer group generation, never below the highest the store has
read or written on that partition). ``durable`` checks that the acked offsets of a
partition's records follow on from its previous ones; records in a gap are someone else's
and are read back (``read``). One of a higher epoch fences the partition: this worker was
deposed, so the round's writes there are dropped (never written to RocksDB, removed from the
memory store) and ``durable`` returns the partition, whose outputs the adapter then
withholds. Keys of a lower epoch's records, and the keys recovery dropped (``pending_repairs``), are
written again with this worker's values (:meth:`TableStore.repair`), so that the last record
of each is the live owner's whatever log compaction keeps.

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
import logging
from collections.abc import (
    Awaitable,
    Callable,
    Collection,
    Iterable,
    Iterator,
    MutableMapping,
    Sequence,
)
from functools import lru_cache
from typing import Any, NamedTuple, Protocol, cast

import aiokafka  # type: ignore[import-untyped]
from faust.types import TP

from rating.coalescing import CoalescingLog
from rating.keys import SEAL_PREFIX, KeyKind, is_seal, tenant_of
from rating.partitioning import partition_of
from rating.streaming import rocks
from rating.streaming.epochs import epoch_of, headers_of

log = logging.getLogger(__name__)


def key_partitioner(partitions: int) -> Callable[[str], int]:
    """State key -> the ledger partition of its tenant (``partition_of`` caches per tenant)."""
    return lambda key: partition_of(tenant_of(key), partitions)


class Acked(Protocol):
    """What the Kafka client answers for an acked record (aiokafka's RecordMetadata)."""

    @property
    def partition(self) -> int: ...

    @property
    def offset(self) -> int: ...


#: Sends one changelog record (partition, key, value (None: a tombstone), the writer's epoch)
#: to the Kafka client and returns once it is queued there, with the future of its ack.
ChangelogSend = Callable[[int, str, Any, int], Awaitable[Awaitable[Acked]]]


class Foreign(NamedTuple):
    """A changelog record in a gap between this worker's own: its offset, key and epoch."""

    offset: int
    key: str | None  # None: not a key this store could have written
    epoch: int


#: Reads the records of one changelog partition at the given offset ranges (inclusive).
ChangelogRead = Callable[[int, Sequence[tuple[int, int]]], Awaitable[list[Foreign]]]


class EpochStore(Protocol):
    """What TableStore asks of the table's store about owner epochs (memory.py, rocks.py)."""

    def highest_epoch(self, partition: int) -> int: ...

    def pending_repairs(self, partition: int) -> set[str]: ...

    def written(self, partition: int, epoch: int, repaired: Collection[str]) -> None: ...


def gaps(start: int, offsets: Sequence[int]) -> list[tuple[int, int]]:
    """The offset ranges (inclusive) from ``start`` to the last of ``offsets`` (sorted) that
    hold none of them."""
    out: list[tuple[int, int]] = []
    expected = start
    for offset in offsets:
        if offset > expected:
            out.append((expected, offset - 1))
        expected = max(expected, offset + 1)
    return out


def decode_key(raw: bytes | None) -> str | None:
    """A changelog key's bytes -> the state key (:func:`encode_key`'s inverse), or None."""
    try:
        key = json.loads(raw) if raw is not None else None
    except ValueError:
        return None
    return key if isinstance(key, str) else None


def encode_key(key: str) -> bytes:
    """A state key as Faust's JSON codec writes it on the changelog (a JSON string)."""
    return json.dumps(key).encode()


def encode_value(value: Any) -> bytes:
    """A state value (JSON types only) as Faust's JSON codec writes it: compact JSON."""
    return json.dumps(value, separators=(",", ":")).encode()


def raw_sender(table: Any) -> ChangelogSend:
    """Changelog records straight to the app's producer, encoded as Faust would."""
    name = table.changelog_topic.get_topic_name()  # once, not per record

    headers = lru_cache(maxsize=8)(headers_of)  # one epoch per batch: built once

    async def send(partition: int, key: str, value: Any, epoch: int) -> Awaitable[Acked]:
        raw_value = None if value is None else encode_value(value)
        ack: Awaitable[Acked] = await table.app.producer.send(
            name, encode_key(key), raw_value, partition, None, headers(epoch)
        )
        return ack

    return send


def foreign_records(records: Iterable[Any]) -> list[Foreign]:
    """Fetched changelog records (aiokafka's) as :class:`Foreign` records."""
    return [Foreign(r.offset, decode_key(r.key), epoch_of(r.headers)) for r in records]


def changelog_reader(table: Any, bootstrap: str, timeout: float = 30.0) -> ChangelogRead:
    """Reads gaps of ``table``'s changelog with a consumer of its own (no group), started
    for the read: gaps come only from a deposed owner's writes, so this is rare. Raises if
    the records cannot be read within ``timeout`` seconds (the batch then fails and the
    worker stops: it cannot tell whether it was deposed)."""
    name = table.changelog_topic.get_topic_name()

    async def read(partition: int, ranges: Sequence[tuple[int, int]]) -> list[Foreign]:
        tp = aiokafka.TopicPartition(name, partition)
        consumer = aiokafka.AIOKafkaConsumer(
            bootstrap_servers=bootstrap.split(","), enable_auto_commit=False
        )
        await consumer.start()
        try:
            consumer.assign([tp])
            out: list[Foreign] = []
            async with asyncio.timeout(timeout):
                for first, last in ranges:
                    consumer.seek(tp, first)
                    while await consumer.position(tp) <= last:
                        fetched = await consumer.getmany(tp, timeout_ms=500)
                        records = [r for r in fetched.get(tp, []) if r.offset <= last]
                        out += foreign_records(records)
            return out
        finally:
            await consumer.stop()

    return read


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
        read: ChangelogRead | None = None,
        generation: Callable[[], int] | None = None,
    ) -> None:
        self.table = table
        self.partition = 0  # the changelog partition of writes: the record being applied
        self.partition_for = partition_for
        self.seal = True
        #: The consumer group generation of the batch being applied (set by the adapter).
        self.epoch = 0
        self._send = send or raw_sender(table)
        self._read = read  # None: gaps between this worker's records are not looked into
        # The worker's current consumer group generation (None: always the batch's).
        self._generation = generation
        # Owner epochs, by partition: (epoch, offset) of the last record acked in the last
        # round; epochs of this round's sends; keys to write again; where this worker was
        # found deposed (the generation it was in); keys sent this round.
        self._last: dict[int, tuple[int, int]] = {}
        self._round_epoch: dict[int, int] = {}
        self._repairs: dict[int, set[str]] = {}
        self._repairing: dict[int, set[str]] = {}
        self._fenced: dict[int, int] = {}
        self._round_keys: dict[int, set[str]] = {}
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
        value = self.get(key)
        if value is None:  # no value is stored as None: a deletion removes the key
            raise KeyError(key)
        return value

    def _get_in(self, partition: int, key: str) -> Any:
        """The value of ``key`` in ``partition`` (None: none), for keys that may name no
        tenant."""
        db = self.rocks
        if db is None:
            return self.table.data.get(key)
        value = self._overlay.get(key)
        if value is None:
            value = db.get_in(partition, key)
        return None if value is rocks.DELETED else value

    def get(self, key: str, default: Any = None) -> Any:
        # Not via __getitem__: most reads miss (a new CDR's marker), and a KeyError per miss
        # was ~4% of a worker's time.
        if self.rocks is None:
            return self.table.data.get(key, default)
        value = self._get_in(self.partition_for(key), key)
        return default if value is None else value

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

    @property
    def _epochs(self) -> EpochStore:
        return cast(EpochStore, self.table.data)

    def epoch_of(self, partition: int) -> int:
        """The epoch this worker writes ``partition``'s records at (epochs.py)."""
        return max(self.epoch, self._epochs.highest_epoch(partition))

    def fenced(self, partition: int) -> bool:
        """Whether this worker was found deposed on ``partition`` in the current generation:
        it must not apply that partition's records until it is assigned it again."""
        return self._fenced.get(partition) == self.epoch

    async def begin(self, epoch: int) -> set[int]:
        """Start applying a batch of consumer group generation ``epoch``.

        A round's records all carry one epoch, fixed when its first record of a partition is
        flushed, and a round stays open after :meth:`durable` for what the batch writes
        once its outputs are acked (the outbox deletes): the next batch's records join it.
        If the worker rejoined the group in between (it was frozen past its session
        timeout), those records would go out under the old generation's epoch, and once
        the new owner's records showed up in between, this worker would find itself
        "deposed" in its *current* generation: every later batch of that partition dropped
        until the next rebalance (seen as a stall in the zombie test). So the open round is
        made durable first, under its own epoch; returns the partitions where that round
        found this worker deposed (in the old generation)."""
        fenced: set[int] = set()
        if epoch != self.epoch and (self._pending or self._touched):
            fenced = await self.durable()
        self.epoch = epoch
        return fenced

    def repair(self, partitions: Iterable[int]) -> int:
        """Write again, with this worker's values (a tombstone where it has none), the keys
        of a deposed owner's records found in ``partitions``' changelog; returns how many."""
        count = 0
        for partition in partitions:
            if self.fenced(partition):
                continue
            keys = self._repairs.pop(partition, set()) | self._epochs.pending_repairs(partition)
            keys -= self._repairing.get(partition, set())
            keys = {k for k in keys if not is_seal(k)}  # a seal holds no state to restore
            if not keys:
                continue
            self.partition = partition
            for key in sorted(keys):
                value = self._get_in(partition, key)
                if value is None:
                    self._log.delete(key, (partition, None))
                else:
                    self._log.put(key, (partition, value))
            self._repairing.setdefault(partition, set()).update(keys)
            count += len(keys)
        return count

    async def flush(self) -> None:
        """Send every changelog record written so far (coalesced) to the Kafka client."""
        for key, (partition, value) in self._log.drain():
            epoch = self._round_epoch.get(partition)
            if epoch is None:
                epoch = self._round_epoch[partition] = self.epoch_of(partition)
            self._pending.append(await self._send(partition, key, value, epoch))
            self._touched.add(partition)
            self._round_keys.setdefault(partition, set()).add(key)

    async def durable(self) -> set[int]:
        """Wait until every changelog record written so far is acked by the broker.

        Returns the partitions on which this worker was found deposed (a newer owner's
        records among its own): their writes of this round are not kept, and the adapter
        publishes none of their outputs."""
        await self.flush()
        pending, self._pending = self._pending, []
        touched, self._touched = self._touched, set()
        acked: list[Acked] = list(await asyncio.gather(*pending)) if pending else []
        if self.seal and touched:
            seals = [
                await self._send(p, f"{SEAL_PREFIX}{p}", {"sealed": True}, self._round_epoch[p])
                for p in sorted(touched)
            ]
            acked += await asyncio.gather(*seals)
        landed: dict[int, list[int]] = {}
        for ack in acked:
            landed.setdefault(ack.partition, []).append(ack.offset)
        round_epoch, self._round_epoch = self._round_epoch, {}
        round_keys, self._round_keys = self._round_keys, {}
        repairing, self._repairing = self._repairing, {}
        fenced = await self._check(landed, round_epoch)
        name = self.table.changelog_topic.get_topic_name()
        for partition, offsets in landed.items():
            if partition in fenced:
                continue
            # What Faust's own send callback does for each record (rocks.py keeps it with the
            # state it covers); the memory store ignores it.
            self.table.data.set_persisted_offset(TP(name, partition), max(offsets))
            self._epochs.written(
                partition, round_epoch.get(partition, 0), repairing.get(partition, ())
            )
        db = self.rocks
        if db is None:
            # What a replay from the changelog will say instead. Not if the worker joined a
            # later generation while this batch waited (it woke, rejoined): its partitions
            # were then recovered afresh, after this batch's writes, which must stay.
            current = self.epoch if self._generation is None else self._generation()
            for partition in fenced if current == self.epoch else ():
                for key in round_keys.get(partition, ()):
                    self.table.data.pop(key, None)
            return fenced
        overlay, self._overlay = self._overlay, {}
        writes: dict[int, dict[str, Any]] = {}
        for key, value in overlay.items():
            partition = self.partition_for(key)
            if partition not in fenced:
                writes.setdefault(partition, {})[key] = value
        swept, self._swept = self._swept, {}
        db.commit_batch(writes, {p: s for p, s in swept.items() if p not in fenced})
        return fenced

    async def _check(self, landed: dict[int, list[int]], round_epoch: dict[int, int]) -> set[int]:
        """Look into the gaps between this round's records and the last round's (same epoch),
        partition by partition: returns the fenced partitions."""
        fenced: set[int] = set()
        for partition, offsets in landed.items():
            offsets.sort()
            epoch = round_epoch.get(partition, 0)
            last = self._last.get(partition)
            start = last[1] + 1 if last is not None and last[0] == epoch else offsets[0]
            if await self._judge(partition, epoch, gaps(start, offsets)):
                fenced.add(partition)
            else:
                self._last[partition] = (epoch, offsets[-1])
        return fenced

    async def _judge(self, partition: int, epoch: int, holes: list[tuple[int, int]]) -> bool:
        """Read the records in ``holes`` (not this worker's): True if one has a higher epoch
        (this worker was deposed: the partition is fenced); the keys of lower ones go to
        repair."""
        if not holes or self._read is None:
            return False
        foreign = await self._read(partition, holes)
        newer = [f for f in foreign if f.epoch > epoch]
        if newer:
            log.warning(
                "changelog partition %d: %d records of epoch %d among this worker's (epoch %d): "
                "deposed; its batch there is dropped, outputs withheld",
                partition,
                len(newer),
                max(f.epoch for f in newer),
                epoch,
            )
            self._fenced[partition] = self.epoch
            self._last.pop(partition, None)
            return True
        keys = {f.key for f in foreign if f.key and not is_seal(f.key)}
        if keys:
            log.warning(
                "changelog partition %d: %d records of a deposed owner (epochs < %d) among "
                "this worker's; writing %d keys again",
                partition,
                len(foreign),
                epoch,
                len(keys),
            )
            self._repairs.setdefault(partition, set()).update(keys)
        return False

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
                return not is_seal(key)
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
