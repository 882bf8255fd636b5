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

Registered under the ``rocksdict`` URL scheme (entry point ``faust.stores`` in pyproject):
Faust's own ``rocksdb://`` would write batch state into the wrong partition's database.

Faust internals relied on (pinned by ``tests/unit/test_rocks_store.py``): ``_dbs`` (open
databases by partition), ``_db_for_partition``, ``_key_index``, ``offset_key``,
``_encode_key`` / ``_encode_value`` / ``_decode_key`` / ``_decode_value``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import rocksdict
from faust.stores import rocksdb
from faust.types import TP

#: A deletion in :meth:`Store.commit_batch`'s writes.
DELETED: Any = object()

#: Bounded defaults (Faust's are 64 MiB x 3 memtables and a 2 GiB block cache per
#: partition database); see README "State" for the memory arithmetic.
DEFAULT_OPTIONS: Mapping[str, int] = {
    "write_buffer_size": 4 * 1024 * 1024,
    "max_write_buffer_number": 2,
    "block_cache_size": 8 * 1024 * 1024,
    "target_file_size_base": 16 * 1024 * 1024,
}


class Store(rocksdb.Store):
    """Faust's RocksDB store (rocksdict driver) with explicit-partition access."""

    def __init__(self, *args: Any, options: Mapping[str, Any] | None = None, **kw: Any) -> None:
        opts = {**DEFAULT_OPTIONS, **(options or {}), "driver": "rocksdict"}
        super().__init__(*args, options=opts, **kw)
        self._recovering = False
        self._acked: dict[int, int] = {}  # partition -> highest acked live changelog offset

    def apply_changelog_batch(
        self, batch: Iterable[Any], to_key: Callable[[Any], Any], to_value: Callable[[Any], Any]
    ) -> None:
        # Recovery and standbys: Faust writes the records, then their offset. Unchanged.
        self._recovering = True
        try:
            super().apply_changelog_batch(batch, to_key, to_value)
        finally:
            self._recovering = False

    def set_persisted_offset(self, tp: TP, offset: int) -> None:
        if self._recovering:
            super().set_persisted_offset(tp, offset)
            return
        # A live changelog write was acked; its state is not in the database yet. The offset
        # is stored with that state by commit_batch.
        if offset > self._acked.get(tp.partition, -1):
            self._acked[tp.partition] = offset

    def commit_batch(self, writes: Mapping[int, Mapping[str, Any]]) -> None:
        """Write acked state (key -> value or :data:`DELETED`, by partition) and the changelog
        offset it reaches, atomically per partition. Partitions not open here (revoked
        meanwhile) are skipped whole: their next owner recovers them from the changelog."""
        for partition in set(writes) | set(self._acked):
            offset = self._acked.pop(partition, None)
            db = self._dbs.get(partition)
            if db is None:
                continue
            batch = rocksdict.WriteBatch(raw_mode=True)
            for key, value in writes.get(partition, {}).items():
                if value is DELETED:
                    batch.delete(self._encode_key(key))
                else:
                    batch.put(self._encode_key(key), self._encode_value(value))
            if offset is not None:
                batch.put(self.offset_key, str(offset).encode())
            db.write(batch)

    def get_in(self, partition: int, key: str) -> Any | None:
        """The value of ``key`` in ``partition``'s database; None if absent or not open here
        (a read never opens, so never locks, the database of a partition owned elsewhere)."""
        db = self._dbs.get(partition)
        if db is None:
            return None
        raw = db.get(self._encode_key(key))
        return None if raw is None else self._decode_value(raw)

    def items_in(self, partition: int) -> Iterator[tuple[str, Any]]:
        """Every (key, value) of one partition's database (not the other partitions')."""
        db = self._dbs.get(partition)
        if db is None:
            return
        for raw_key, raw_value in db.items():
            if raw_key == self.offset_key or raw_value is None:
                continue
            yield self._decode_key(raw_key), self._decode_value(raw_value)
