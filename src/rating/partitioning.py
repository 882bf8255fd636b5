"""Which ledger partition a tenant lives on: Kafka's default partitioner on the tenant key."""

from __future__ import annotations

from aiokafka.partitioner import murmur2  # type: ignore[import-untyped]


def partition_of(tenant: str, partitions: int) -> int:
    return int(murmur2(tenant.encode()) & 0x7FFFFFFF) % partitions
