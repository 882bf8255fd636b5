"""Which state keys are due to expire: the index the ledger's clock tick sweeps.

Charge markers and usage rows carry ``exp`` (epoch seconds). A partition's clock tick deletes
the keys whose ``exp`` has passed, a bounded number per tick (ledger.py, rule 7). Finding
them needs an index ordered by ``exp``; where it lives depends on the store:

- :class:`MemoryExpiry`: a heap per partition, rebuilt from the partition's keys after a
  rebalance: one entry in RAM per remembered CDR (~170 bytes). Right for the memory store
  (tests, demo), which holds every key in RAM anyway.
- ``streaming.store.RocksExpiry``: the RocksDB store keeps the index on disk, in the
  partition database's ``expiry`` column family, derived from each value with an ``exp`` as
  it is written or recovered (``streaming/rocks.py``). Nothing per remembered CDR in RAM and
  nothing to rebuild after a restart, so the dedup horizon costs disk, not memory.

An entry is a hint, never the truth: the ledger deletes a key only if its stored value still
carries that ``exp`` (a marker rewritten with a later expiry has its own, later entry; a
deleted key has none). An entry that is lost only keeps its key longer, and a late deletion
is always safe: a CDR is rejected as stale by its ``call_start`` before its marker is due.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable
from typing import Protocol


class ExpiryIndex(Protocol):
    #: True if the index survives a restart on its own, so ``rebuild`` needs no keys.
    persistent: bool

    def add(self, partition: int, exp: int, key: str) -> None:
        """``key`` of ``partition`` was written with ``exp``."""

    def due(self, partition: int, cutoff: int, limit: int) -> list[tuple[int, str]]:
        """Up to ``limit`` entries with ``exp < cutoff``, earliest first. Each is handed out
        once: the caller deletes the keys that still carry that ``exp``."""
        ...

    def rebuild(self, partition: int, entries: Iterable[tuple[int, str]]) -> None:
        """After a rebalance: the (exp, key) of the partition's stored keys."""

    def forget(self, partition: int) -> None:
        """The partition was revoked."""


class MemoryExpiry:
    """An in-memory heap per partition."""

    persistent = False

    def __init__(self) -> None:
        self._heaps: dict[int, list[tuple[int, str]]] = {}

    def add(self, partition: int, exp: int, key: str) -> None:
        heapq.heappush(self._heaps.setdefault(partition, []), (exp, key))

    def due(self, partition: int, cutoff: int, limit: int) -> list[tuple[int, str]]:
        heap = self._heaps.get(partition, [])
        out: list[tuple[int, str]] = []
        while heap and heap[0][0] < cutoff and len(out) < limit:
            out.append(heapq.heappop(heap))
        return out

    def rebuild(self, partition: int, entries: Iterable[tuple[int, str]]) -> None:
        heap = list(entries)
        heapq.heapify(heap)
        self._heaps[partition] = heap

    def forget(self, partition: int) -> None:
        self._heaps.pop(partition, None)
