"""The accounts table in memory (``RATING_STORE=memory://``): Faust's memory store whose
changelog recovery honours owner epochs (:mod:`rating.streaming.epochs`).

Registered under the ``memory`` URL scheme (entry point ``faust.stores`` in pyproject), in
place of Faust's own, so ``memory://`` always means this store. The memory store replays a
partition's changelog from its start whenever the partition is newly assigned, so the
highest epoch and the keys of dropped records are kept in RAM only.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable
from typing import Any

from faust.stores import memory
from faust.types import TP

from rating.keys import is_seal
from rating.streaming.epochs import EpochFilter, epoch_of


class Store(memory.Store[str, Any]):
    """Faust's memory store with the epoch filter on its recovery path."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self._epochs = EpochFilter()
        self._repairs: dict[int, set[str]] = {}

    async def on_rebalance(
        self, assigned: set[TP], revoked: set[TP], newly_assigned: set[TP], generation_id: int = 0
    ) -> None:
        await super().on_rebalance(assigned, revoked, newly_assigned, generation_id)
        for tp in revoked | newly_assigned:  # replayed from the start when assigned
            self._epochs.reset(tp.partition)
            self._repairs.pop(tp.partition, None)

    def apply_changelog_batch(
        self, batch: Iterable[Any], to_key: Callable[[Any], Any], to_value: Callable[[Any], Any]
    ) -> None:
        admitted = []
        for event in batch:
            msg = event.message
            repairs = self._repairs.setdefault(msg.partition, set())
            if self._epochs.admit(msg.partition, epoch_of(msg.headers)):
                admitted.append(event)
                if repairs:
                    repairs.discard(to_key(event.key))
            elif not is_seal(key := to_key(event.key)):  # a seal holds no state
                repairs.add(key)
        super().apply_changelog_batch(admitted, to_key, to_value)

    def get(self, key: str, default: Any = None) -> Any:
        # The mapping's own get (Mapping.get) raises and catches a KeyError per miss.
        return self.data.get(key, default)

    def highest_epoch(self, partition: int) -> int:
        return self._epochs.highest.get(partition, 0)

    def pending_repairs(self, partition: int) -> set[str]:
        return set(self._repairs.get(partition, ()))

    def written(self, partition: int, epoch: int, repaired: Collection[str]) -> None:
        self._epochs.seen(partition, epoch)
        keys = self._repairs.get(partition)
        if keys:
            keys.difference_update(repaired)
