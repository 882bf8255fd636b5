"""Which ledger partition a tenant lives on: Kafka's default partitioner on the tenant key."""

from __future__ import annotations

from functools import lru_cache

from aiokafka.partitioner import murmur2  # type: ignore[import-untyped]


@lru_cache(maxsize=65536)
def partition_of(tenant: str, partitions: int) -> int:
    # Cached: murmur2 is pure Python, and ingest and the table store ask per message / key.
    return int(murmur2(tenant.encode()) & 0x7FFFFFFF) % partitions
