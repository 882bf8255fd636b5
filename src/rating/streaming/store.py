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

Each write's delivery future is kept, so the ledger can wait until the broker has acked
the state of a batch before it publishes that batch's outputs (see ``durable``).

Sealing: some Kafka-protocol brokers (the embedded Tansu among them) report a partition's
end offset as "base offset of the last record batch + 1". Faust's recovery reads the
changelog only up to that end, so it would miss the tail of the last batch and, for a
partition a worker keeps across a rebalance, overwrite newer state with older. After each
durable batch we therefore write one small record per touched partition, alone in its own
batch, so the reported end is the true end. Offsets are committed only after the seal.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator, MutableMapping
from functools import lru_cache
from typing import Any

from rating.keys import tenant_of
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


class TableStore(MutableMapping[str, Any]):
    def __init__(self, table: Any, partition_for: Callable[[str], int]) -> None:
        self.table = table
        self.partition = 0  # the changelog partition of writes: the record being applied
        self.partition_for = partition_for
        self.seal = True
        self._pending: list[Any] = []
        self._touched: set[int] = set()
        self._overlay: dict[str, Any] = {}  # RocksDB only: written, not yet acked

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
        self._pending.append(self.table.send_changelog(self.partition, key, value))
        self._touched.add(self.partition)

    def __delitem__(self, key: str) -> None:
        db = self.rocks
        if db is None:
            del self.table.data[key]
        else:
            self._overlay[key] = rocks.DELETED
        self._pending.append(
            self.table.send_changelog(self.partition, key, None, value_serializer="raw")
        )
        self._touched.add(self.partition)

    async def durable(self) -> None:
        """Wait until every changelog record written so far is acked by the broker."""
        pending, self._pending = self._pending, []
        touched, self._touched = self._touched, set()
        if pending:
            await asyncio.gather(*pending)
        if self.seal and touched:
            seals = [
                self.table.send_changelog(p, f"{SEAL_PREFIX}{p}", {"sealed": True})
                for p in sorted(touched)
            ]
            await asyncio.gather(*seals)
        db = self.rocks
        if db is not None:
            overlay, self._overlay = self._overlay, {}
            writes: dict[int, dict[str, Any]] = {}
            for key, value in overlay.items():
                writes.setdefault(self.partition_for(key), {})[key] = value
            db.commit_batch(writes)

    def items_of(self, partition: int) -> Iterator[tuple[str, Any]]:
        """The ledger state of one partition (seal records left out). On RocksDB only that
        partition's database is read, so indexing a partition costs its own size only."""
        db = self.rocks
        if db is None:
            for key, value in list(self.table.data.items()):
                live = value is not None and not key.startswith(SEAL_PREFIX)
                if live and self.partition_for(key) == partition:
                    yield key, value
            return
        for key, value in db.items_in(partition):
            if key not in self._overlay and not key.startswith(SEAL_PREFIX):
                yield key, value
        for key, value in list(self._overlay.items()):
            if value is not rocks.DELETED and self.partition_for(key) == partition:
                yield key, value

    def __iter__(self) -> Iterator[str]:
        return iter(self.table.data)

    def __len__(self) -> int:
        return len(self.table.data)
