"""The accounts table as the ledger's MutableMapping, with an explicit changelog partition.

Writes update the table's local store at once (later messages of the same batch read them)
and are recorded; ``durable()`` then sends the batch's records to the changelog in
``changelog_order`` (markers as written, then each touched account once) straight through
the producer, and waits for the broker's acks before the ledger publishes the batch's
outputs. Going around Faust's per-record send path (one future, one buffer hop and one
codec call chain per record) is where most of a batch's CPU went.

Every record goes to the changelog partition of the tenant's ledger partition, which is
what recovery reads back for whoever owns that partition next. (Faust would pick the
partition from the "current event", which does not exist inside a ``take_events`` batch.)

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
from typing import Any

from faust.serializers import codecs
from faust.types import TP

from rating.ledger import changelog_order

#: Keys of seal records; not ledger state (see the module docstring).
SEAL_PREFIX = "~seal/"


class TableStore(MutableMapping[str, Any]):
    def __init__(self, table: Any, producer: Callable[[], Any]) -> None:
        self.table = table
        self._producer = producer
        self.partition = 0
        self.seal = True
        self._writes: list[tuple[str, tuple[int, Any]]] = []

    def __getitem__(self, key: str) -> Any:
        return self.table.data[key]

    def __setitem__(self, key: str, value: Any) -> None:
        self.table.data[key] = value
        self._writes.append((key, (self.partition, value)))

    def __delitem__(self, key: str) -> None:
        del self.table.data[key]
        self._writes.append((key, (self.partition, None)))

    def __iter__(self) -> Iterator[str]:
        return iter(self.table.data)

    def __len__(self) -> int:
        return len(self.table.data)

    async def durable(self) -> None:
        """Send this batch's records to the changelog and wait until the broker has them."""
        writes, self._writes = self._writes, []
        if not writes:
            return
        records = [(partition, key, value) for key, (partition, value) in changelog_order(writes)]
        await self._send_all(records)
        if self.seal:
            touched = sorted({partition for partition, _, _ in records})
            await self._send_all([(p, f"{SEAL_PREFIX}{p}", {"sealed": True}) for p in touched])

    async def _send_all(self, records: list[tuple[int, str, Any]]) -> None:
        topic = self.table.changelog_topic.get_topic_name()
        key_codec, value_codec = self.table.key_serializer, self.table.value_serializer
        producer = self._producer()
        futures = []
        for partition, key, value in records:  # in order: Kafka keeps it per partition
            data = None if value is None else codecs.dumps(value_codec, value)
            futures.append(
                await producer.send(
                    topic, codecs.dumps(key_codec, key), data, partition, None, None
                )
            )
        for meta in await asyncio.gather(*futures):
            # What Faust's own send callback records (a no-op for the memory store).
            self.table.data.set_persisted_offset(TP(meta.topic, meta.partition), meta.offset)
