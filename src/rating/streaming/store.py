"""The accounts table as the ledger's MutableMapping, with an explicit changelog partition.

Faust picks a table write's changelog partition from the "current event", which does not
exist inside a batch (``take_events``). The ledger knows the partition it is applying, so
it says so: every write goes to the changelog partition of the tenant's ledger partition,
which is what recovery reads back for whoever owns that partition next.

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
from collections.abc import Iterator, MutableMapping
from typing import Any

#: Keys of seal records; not ledger state (see the module docstring).
SEAL_PREFIX = "~seal/"


class TableStore(MutableMapping[str, Any]):
    def __init__(self, table: Any) -> None:
        self.table = table
        self.partition = 0
        self.seal = True
        self._pending: list[Any] = []
        self._touched: set[int] = set()

    def __getitem__(self, key: str) -> Any:
        return self.table.data[key]

    def __setitem__(self, key: str, value: Any) -> None:
        self.table.data[key] = value
        self._pending.append(self.table.send_changelog(self.partition, key, value))
        self._touched.add(self.partition)

    def __delitem__(self, key: str) -> None:
        del self.table.data[key]
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

    def __iter__(self) -> Iterator[str]:
        return iter(self.table.data)

    def __len__(self) -> int:
        return len(self.table.data)
