"""The accounts table on RocksDB (``RATING_STORE=rocksdict://``), one database per partition.

Faust's RocksDB store (``faust.stores.rocksdb.Store``, driver rocksdict) picks the database
of a write or a read from the *current event*'s partition. The ledger writes inside
``take_events``, where the current event is just the last one taken (any partition of the
batch), and the web views read outside any event. So this subclass adds reads and writes
at an explicit partition (the tenant's ledger partition: :class:`TableStore` knows it) and
iteration over one partition's database. Everything else (opening and closing databases on
rebalance, changelog recovery into the right database, the persisted changelog offset that
lets a restart replay only the tail) is Faust's, unchanged.

Write-behind, so the local database never runs ahead of the changelog: the ledger's writes
of a batch are held by :class:`TableStore` until the broker has acked their changelog
records, then written here in ONE RocksDB write batch per partition together with the
changelog offset they reach (:meth:`commit_batch`; a RocksDB write batch is atomic). Faust
would store that offset as each record is acked, before the state it covers. So after a
SIGKILL the database holds exactly a prefix of the changelog and the offset where that
prefix ends, and a restart replays only the tail. A database ahead of its changelog would be
wrong for good: redelivered records would look applied and never reach the changelog.

The expiry index (:mod:`rating.expiry`): every value with an ``exp`` also gets an entry in
the database's ``expiry`` column family, key = ``exp`` (8 bytes, big-endian, so entries sort
by time) + the state key's bytes, written in the same write batch as the value (live writes)
or before it (recovery, standbys). The ledger's clock tick reads the due entries in order
(:meth:`Store.expired_in`) and the next commit deletes the entries it handed out. So no
remembered CDR costs RAM, and a restart rebuilds nothing. An entry is a hint: the ledger
checks the key's current value before it deletes (rating.expiry).

Memory (:class:`MemoryBudget`): one memtable budget (a RocksDB write buffer manager) and one
block cache per worker process, shared by every partition database and column family it
opens, so the worker's RocksDB memory is bounded by two settings, not multiplied by its
partition count. Index and filter blocks are kept in that cache too (Faust's default holds
them outside any bound, growing with the data on disk). So this subclass opens the databases
itself (:meth:`Store._open_for_partition`), with the expiry family declared up front.

Owner epochs (:mod:`rating.streaming.epochs`): both recovery paths drop a deposed owner's
records (:class:`EpochFilter`), and each database keeps, in its ``rating-meta`` column family,
the highest epoch it has read or written (so a restart from the data dir goes on filtering
where it stopped) and the keys of the records it dropped, until the live owner has written
them again (:meth:`Store.pending_repairs`). Both are written in the same write batch as the
records and the offset they go with.

Registered under the ``rocksdict`` URL scheme (entry point ``faust.stores`` in pyproject):
Faust's own ``rocksdb://`` would write batch state into the wrong partition's database.

Faust internals relied on (pinned by ``tests/unit/test_rocks_store.py``): ``_dbs`` (open
databases by partition), ``_db_for_partition``, ``_open_for_partition``, ``_key_index``,
``offset_key``, ``_encode_key`` / ``_encode_value`` / ``_decode_key`` / ``_decode_value``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from typing import Any

import rocksdict
from faust.stores import rocksdb
from faust.types import TP

from rating.keys import is_seal
from rating.streaming.epochs import EpochFilter, epoch_of

#: A deletion in :meth:`Store.commit_batch`'s writes.
DELETED: Any = object()

#: Bounded defaults per memtable (Faust's are 64 MiB x 3 memtables and a 2 GiB block cache
#: per partition database); the worker-wide bounds are :class:`MemoryBudget`'s.
DEFAULT_OPTIONS: Mapping[str, int] = {
    "write_buffer_size": 4 * 1024 * 1024,
    "max_write_buffer_number": 2,
    "target_file_size_base": 16 * 1024 * 1024,
}
#: The table option that carries the worker's :class:`MemoryBudget`.
MEMORY_OPTION = "memory"


class MemoryBudget:
    """The RocksDB memory of one worker process, shared by all its partition databases:
    memtables (all of them, every family) flushed when they reach ``memtable_bytes``, and
    one LRU ``block_cache_bytes`` read cache that also holds index and filter blocks."""

    def __init__(
        self, memtable_bytes: int = 32 * 1024 * 1024, block_cache_bytes: int = 32 * 1024 * 1024
    ) -> None:
        self.memtable_bytes = memtable_bytes
        self.block_cache_bytes = block_cache_bytes
        self.write_buffers = rocksdict.WriteBufferManager(memtable_bytes, False)  # no stall
        self.block_cache = rocksdict.Cache(block_cache_bytes)

    def memtable_usage(self) -> int:
        return int(self.write_buffers.get_usage())

    def block_cache_usage(self) -> int:
        return int(self.block_cache.get_usage())

    def options(self, write_buffer_size: int, max_write_buffers: int) -> rocksdict.Options:
        """Options of a database or column family under this budget."""
        options = rocksdict.Options(raw_mode=True)
        options.create_if_missing(True)
        options.create_missing_column_families(True)
        options.set_write_buffer_manager(self.write_buffers)
        options.set_write_buffer_size(write_buffer_size)
        options.set_max_write_buffer_number(max_write_buffers)
        table = rocksdict.BlockBasedOptions()
        table.set_block_cache(self.block_cache)
        table.set_cache_index_and_filter_blocks(True)
        table.set_pin_l0_filter_and_index_blocks_in_cache(True)  # the hot ones stay
        table.set_bloom_filter(10, True)  # markers are mostly looked up absent
        options.set_block_based_table_factory(table)
        return options


#: The column family of the expiry index.
EXPIRY_FAMILY = "expiry"
#: Its memtables: an entry is ~50 bytes, so a small buffer holds many.
EXPIRY_WRITE_BUFFER = 1024 * 1024


#: The column family of this project's bookkeeping (see the module docstring).
META_FAMILY = "rating-meta"
EPOCH_META = b"epoch"
REPAIR_META = b"repair/"  # + the raw key of a dropped record


def expiry_entry(exp: int, raw_key: bytes) -> bytes:
    return exp.to_bytes(8, "big") + raw_key


def exp_of(value: Any) -> int | None:
    """The ``exp`` a state value carries, if any (the values are JSON objects)."""
    exp = value.get("exp") if isinstance(value, dict) else None
    return exp if isinstance(exp, int) else None


def raw_exp_of(raw_value: bytes) -> int | None:
    """:func:`exp_of` of an encoded value; most values have no ``exp`` and are not decoded."""
    return exp_of(json.loads(raw_value)) if b'"exp":' in raw_value else None


class Store(rocksdb.Store):
    """Faust's RocksDB store (rocksdict driver) with explicit-partition access."""

    def __init__(self, *args: Any, options: Mapping[str, Any] | None = None, **kw: Any) -> None:
        opts = {**DEFAULT_OPTIONS, **(options or {}), "driver": "rocksdict"}
        self.memory: MemoryBudget = opts.pop(MEMORY_OPTION, None) or MemoryBudget()
        super().__init__(*args, options=opts, **kw)
        self._recovering = False
        self._acked: dict[int, int] = {}  # partition -> highest acked live changelog offset
        # Bulk recovery (load_changelog), by partition: written live since assigned; the
        # highest offset loaded in bulk; handed to Faust and the highest Faust has written.
        self._live: set[int] = set()
        self._loaded: dict[int, int] = {}
        self._handed: dict[int, int] = {}
        self._applied: dict[int, int] = {}
        # Owner epochs, by partition: read from the database when first needed.
        self._epochs = EpochFilter()
        self._epochs_read: set[int] = set()
        self._repairs: dict[int, set[str]] = {}
        self._meta_due: dict[int, tuple[int, Collection[str]]] = {}  # for commit_batch

    async def on_rebalance(
        self, assigned: set[TP], revoked: set[TP], newly_assigned: set[TP], generation_id: int = 0
    ) -> None:
        await super().on_rebalance(assigned, revoked, newly_assigned, generation_id)
        for tp in revoked | newly_assigned:
            self._live.discard(tp.partition)  # recovered afresh before it is written again
            self._forget_epochs(tp.partition)  # read again from its database when needed

    def _open_for_partition(self, partition: int) -> Any:
        # Faust's RocksDBOptions.open gives each database its own cache and no memtable bound.
        conf = self.rocksdb_options
        options = self.memory.options(conf.write_buffer_size, conf.max_write_buffer_number)
        if conf.max_open_files is not None:
            options.set_max_open_files(conf.max_open_files)
        options.set_target_file_size_base(conf.target_file_size_base)
        return rocksdict.Rdict(
            str(self.partition_path(partition)),
            options=options,
            column_families={
                EXPIRY_FAMILY: self.memory.options(EXPIRY_WRITE_BUFFER, 2),
                META_FAMILY: self.memory.options(EXPIRY_WRITE_BUFFER, 2),
            },
            access_type=rocksdict.AccessType.read_write(),
        )

    def load_changelog(self, partition: int, records: Sequence[Any]) -> bool:
        """Bulk recovery: write changelog records fetched for ``partition`` (recovery or
        standby, in offset order) straight into its database, with their expiry entries and
        the offset they reach, in one write batch, and return True; Faust's recovery is then
        handed only the last one (for its offsets and end of recovery) and skips it here.
        Called by the consumer thread (``streaming/transport.py``) as it fetches, so a record
        costs none of Faust's per-event work. Returns False, leaving the records to Faust, for
        a partition written live since it was assigned (nothing changes there) or while Faust
        still holds records of it it has not written (so nothing is written out of order)."""
        if partition in self._live or self._handed.get(partition, -1) > self._applied.get(
            partition, -1
        ):
            self._handed[partition] = max(records[-1].offset, self._handed.get(partition, -1))
            return False
        db = self._db_for_partition(partition)  # a standby's opens here, as on Faust's path
        family = self._expiry_family(db)
        batch = rocksdict.WriteBatch(raw_mode=True)
        self._read_epochs(partition, db)
        meta = db.get_column_family_handle(META_FAMILY)
        for record in records:
            if not self._admit(batch, meta, partition, record.key, epoch_of(record.headers)):
                continue
            value = record.value
            if value is None:
                batch.delete(record.key)
                continue
            batch.put(record.key, value)
            exp = raw_exp_of(value)
            if exp is not None:
                batch.put(expiry_entry(exp, record.key), b"", family)
        batch.put(self.offset_key, str(records[-1].offset).encode())
        batch.put(EPOCH_META, str(self.highest_epoch(partition)).encode(), meta)
        db.write(batch)
        self._loaded[partition] = records[-1].offset
        return True

    def _admit(self, batch: Any, meta: Any, partition: int, raw_key: bytes, epoch: int) -> bool:
        """Whether a recovered record counts (epochs.py); a dropped one's key awaits repair,
        a counted one's no longer does."""
        if self._epochs.admit(partition, epoch):
            repairs = self._repairs.get(partition)
            if repairs:
                key = self._decode_key(raw_key)
                if key in repairs:
                    repairs.discard(key)
                    batch.delete(REPAIR_META + raw_key, meta)
            return True
        key = self._decode_key(raw_key)
        if not is_seal(key):  # a seal holds no state: nothing to write again
            self._repairs.setdefault(partition, set()).add(key)
            batch.put(REPAIR_META + raw_key, b"", meta)
        return False

    def _read_epochs(self, partition: int, db: Any) -> None:
        if partition in self._epochs_read:
            return
        self._epochs_read.add(partition)
        meta = db.get_column_family(META_FAMILY)
        raw = meta.get(EPOCH_META)
        if raw is not None:
            self._epochs.seen(partition, int(raw))
        it = meta.iter()
        it.seek(REPAIR_META)
        keys = self._repairs.setdefault(partition, set())
        while it.valid() and it.key().startswith(REPAIR_META):
            keys.add(self._decode_key(it.key()[len(REPAIR_META) :]))
            it.next()
        del it, meta

    def _forget_epochs(self, partition: int) -> None:
        self._epochs.reset(partition)
        self._epochs_read.discard(partition)
        self._repairs.pop(partition, None)
        self._meta_due.pop(partition, None)

    def highest_epoch(self, partition: int) -> int:
        """The highest owner epoch read or written on ``partition`` (0: none, or not open)."""
        db = self._dbs.get(partition)
        if db is not None:
            self._read_epochs(partition, db)
        return self._epochs.highest.get(partition, 0)

    def pending_repairs(self, partition: int) -> set[str]:
        """Keys of dropped records (a deposed owner's) not written again since."""
        db = self._dbs.get(partition)
        if db is not None:
            self._read_epochs(partition, db)
        return set(self._repairs.get(partition, ()))

    def written(self, partition: int, epoch: int, repaired: Collection[str]) -> None:
        """The live owner's writes at ``epoch`` (and of the ``repaired`` keys) were acked; the
        next :meth:`commit_batch` stores both with them."""
        self._epochs.seen(partition, epoch)
        keys = self._repairs.get(partition)
        if keys:
            keys.difference_update(repaired)
        due = self._meta_due.get(partition)
        self._meta_due[partition] = (epoch, [*(due[1] if due else ()), *repaired])

    def apply_changelog_batch(
        self, batch: Iterable[Any], to_key: Callable[[Any], Any], to_value: Callable[[Any], Any]
    ) -> None:
        # Recovery and standbys: Faust writes the records, then their offset. Unchanged but
        # for two things: records load_changelog wrote are skipped, and the expiry entries of
        # the values are written first (an entry without its key is harmless).
        events = [e for e in batch if e.message.offset > self._loaded.get(e.message.partition, -1)]
        # Owner epochs first (epochs.py): what is dropped is never written. The epoch and the
        # dropped keys are stored after Faust's write: a crash in between reads the same
        # records again and drops them again.
        metas: dict[int, rocksdict.WriteBatch] = {}
        admitted = []
        for event in events:
            msg = event.message
            db = self._db_for_partition(msg.partition)
            self._read_epochs(msg.partition, db)
            wb = metas.setdefault(msg.partition, rocksdict.WriteBatch(raw_mode=True))
            meta = db.get_column_family_handle(META_FAMILY)
            if self._admit(wb, meta, msg.partition, msg.key, epoch_of(msg.headers)):
                admitted.append(event)
        events = admitted
        entries: dict[int, tuple[rocksdict.WriteBatch, Any]] = {}  # batch, family
        for event in events:
            msg = event.message
            exp = None if msg.value is None else raw_exp_of(msg.value)
            if exp is None:
                continue
            if msg.partition not in entries:
                db = self._db_for_partition(msg.partition)
                entries[msg.partition] = (
                    rocksdict.WriteBatch(raw_mode=True),
                    self._expiry_family(db),
                )
            wb, family = entries[msg.partition]
            wb.put(expiry_entry(exp, msg.key), b"", family)
        for partition, (wb, _) in entries.items():
            self._db_for_partition(partition).write(wb)
        self._recovering = True
        try:
            super().apply_changelog_batch(events, to_key, to_value)
        finally:
            self._recovering = False
        for event in events:
            p = event.message.partition
            self._applied[p] = max(event.message.offset, self._applied.get(p, -1))
        for partition, wb in metas.items():
            db = self._db_for_partition(partition)
            meta = db.get_column_family_handle(META_FAMILY)
            wb.put(EPOCH_META, str(self.highest_epoch(partition)).encode(), meta)
            db.write(wb)

    def set_persisted_offset(self, tp: TP, offset: int) -> None:
        if self._recovering:
            super().set_persisted_offset(tp, offset)
            return
        # A live changelog write was acked; its state is not in the database yet. The offset
        # is stored with that state by commit_batch.
        if offset > self._acked.get(tp.partition, -1):
            self._acked[tp.partition] = offset

    def commit_batch(
        self,
        writes: Mapping[int, Mapping[str, Any]],
        swept: Mapping[int, Collection[tuple[int, str]]] | None = None,
    ) -> None:
        """Write acked state (key -> value or :data:`DELETED`, by partition), the expiry
        entries of its values, and the changelog offset it reaches, atomically per partition;
        delete the expiry entries the ledger has swept (``swept``: (exp, key) by partition).
        Partitions not open here (revoked meanwhile) are skipped whole: their next owner
        recovers them from the changelog."""
        swept = swept or {}
        for partition in set(writes) | set(self._acked) | set(swept) | set(self._meta_due):
            offset = self._acked.pop(partition, None)
            meta_due = self._meta_due.pop(partition, None)
            db = self._dbs.get(partition)
            if db is None:
                continue
            self._live.add(partition)
            batch = rocksdict.WriteBatch(raw_mode=True)
            family = self._expiry_family(db)
            for due, key in swept.get(partition, ()):  # before the puts: a put wins
                batch.delete(expiry_entry(due, self._encode_key(key)), family)
            for key, value in writes.get(partition, {}).items():
                raw_key = self._encode_key(key)
                if value is DELETED:
                    batch.delete(raw_key)
                    continue
                batch.put(raw_key, self._encode_value(value))
                exp = exp_of(value)
                if exp is not None:
                    batch.put(expiry_entry(exp, raw_key), b"", family)
            if offset is not None:
                batch.put(self.offset_key, str(offset).encode())
            if meta_due is not None:
                meta = db.get_column_family_handle(META_FAMILY)
                batch.put(EPOCH_META, str(self.highest_epoch(partition)).encode(), meta)
                for key in meta_due[1]:
                    batch.delete(REPAIR_META + self._encode_key(key), meta)
            db.write(batch)

    def get_in(self, partition: int, key: str) -> Any | None:
        """The value of ``key`` in ``partition``'s database; None if absent or not open here
        (a read never opens, so never locks, the database of a partition owned elsewhere)."""
        db = self._dbs.get(partition)
        if db is None:
            return None
        raw = db.get(self._encode_key(key))
        return None if raw is None else self._decode_value(raw)

    def items_in(
        self, partition: int, prefixes: Iterable[str] | None = None
    ) -> Iterator[tuple[str, Any]]:
        """The (key, value) of one partition's database (not the other partitions'): every
        key, or those that start with one of ``prefixes`` (read by seeking: keys are sorted,
        so the other keys cost nothing)."""
        db = self._dbs.get(partition)
        if db is None:
            return
        if prefixes is None:
            for raw_key, raw_value in db.items():
                if raw_key == self.offset_key or raw_value is None:
                    continue
                yield self._decode_key(raw_key), self._decode_value(raw_value)
            return
        for prefix in prefixes:
            raw_prefix = self._encode_key(prefix).rstrip(b'"')  # a JSON string, unclosed
            it = db.iter()
            it.seek(raw_prefix)
            while it.valid() and it.key().startswith(raw_prefix):
                yield self._decode_key(it.key()), self._decode_value(it.value())
                it.next()
            del it  # an open iterator keeps the database open

    def expired_in(
        self, partition: int, cutoff: int, start: int, limit: int
    ) -> list[tuple[int, str]]:
        """Up to ``limit`` expiry entries of ``partition`` with ``start <= exp < cutoff``,
        earliest first (none if the partition is not open here)."""
        db = self._dbs.get(partition)
        if db is None:
            return []
        out: list[tuple[int, str]] = []
        self._expiry_family(db)
        family = db.get_column_family(EXPIRY_FAMILY)
        it = family.iter()
        it.seek(start.to_bytes(8, "big"))
        while it.valid() and len(out) < limit:
            raw = it.key()
            exp = int.from_bytes(raw[:8], "big")
            if exp >= cutoff:
                break
            out.append((exp, self._decode_key(raw[8:])))
            it.next()
        del it, family
        return out

    def _expiry_family(self, db: Any) -> Any:
        """The expiry column family of ``db`` (declared when the database is opened). Looked
        up per call, not kept: a handle held here would keep a revoked partition's database
        open (locked)."""
        return db.get_column_family_handle(EXPIRY_FAMILY)
