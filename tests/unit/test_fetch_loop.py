"""The fetch loop of ``transport.Consumer``: one race per fetch, Faust's bookkeeping per record.

No broker: the loop's methods run on a small mode Service that stands in for the consumer
(its ``wait_first`` is mode's own), fed by an async generator like Faust's ``getmany``.
The last test pins the Faust source the loop mirrors.
"""

from __future__ import annotations

import asyncio
import hashlib
import inspect
from collections import defaultdict
from collections.abc import AsyncIterator, Iterable
from types import SimpleNamespace
from typing import Any

from faust.transport.consumer import Consumer as FaustConsumer
from faust.types import TP
from mode import Service
from mode.utils.tracebacks import format_task_stack

from rating.streaming import transport

TP0 = TP("cdr.audio-conferencing", 0)
TP1 = TP("cdr.audio-conferencing", 1)


class Loop(Service):
    """What the fetch loop reads of its consumer, recording what it does."""

    def __init__(self, *, commit_every: int | None = None, block_at: int | None = None) -> None:
        super().__init__()
        self._read_offset: defaultdict[TP, int | None] = defaultdict(lambda: None)
        self._commit_every = commit_every
        self._n_acked = 0
        self.suspend_flow = asyncio.Event()
        self.app = SimpleNamespace(topics=SimpleNamespace(acks_enabled_for=lambda _t: True))
        self.delivered: list[tuple[TP, int]] = []
        self.events: list[str] = []
        self.races = 0
        self.block_at = block_at
        self.waiting = asyncio.Event()

    async def callback(self, message: Any) -> None:
        if message.offset == self.block_at and not self.suspend_flow.is_set():
            self.waiting.set()
            await asyncio.Event().wait()  # a stream with no room: waits until abandoned
        if self.suspend_flow.is_set():
            await asyncio.Event().wait()  # Faust's conductor waits for the flow
        self.delivered.append((message.tp, message.offset))
        self.events.append(f"deliver {message.offset}")
        self._n_acked += 1

    async def commit(self) -> bool:
        self.events.append("commit")
        return True

    async def _add_gap(self, tp: TP, start: int, end: int) -> None:
        self.events.append(f"gap {tp.partition} {start}-{end}")

    async def wait_first(self, *coros: Any, **kw: Any) -> Any:
        self.races += 1
        return await super().wait_first(*coros, **kw)


for _name in (
    "_deliver_fetch",
    "_deliver_all",
    "_deliverable",
    "_gap_before",
    "_commit_due",
    "_bookkeeping_due",
    "_gap_and_commit",
):
    setattr(Loop, _name, getattr(transport.Consumer, _name))


async def fetch(records: Iterable[tuple[TP, int]]) -> AsyncIterator[tuple[TP, Any]]:
    for tp, offset in records:
        yield tp, SimpleNamespace(tp=tp, offset=offset, topic=tp.topic)


def drain(loop: Loop, records: Iterable[tuple[TP, int]]) -> None:
    async def go() -> None:
        await loop._deliver_fetch(fetch(records))  # type: ignore[attr-defined]

    asyncio.run(go())


def test_a_fetch_is_delivered_in_order_under_one_race() -> None:
    loop = asyncio.run(_make())
    records = [(TP0, 0), (TP1, 0), (TP0, 1), (TP1, 1)] + [(TP0, i) for i in range(2, 300)]
    drain(loop, records)
    assert loop.delivered == records
    assert loop.races == 1  # Faust: one per record
    assert (loop._read_offset[TP0], loop._read_offset[TP1]) == (299, 1)


def test_a_record_below_the_read_offset_is_dropped_as_delivered() -> None:
    loop = asyncio.run(_make())
    loop._read_offset[TP0] = 5
    drain(loop, [(TP0, 4), (TP0, 5), (TP0, 6)])
    assert loop.delivered == [(TP0, 5), (TP0, 6)]


def test_commits_and_gaps_happen_between_deliveries_outside_the_race() -> None:
    loop = asyncio.run(_make(commit_every=2))
    drain(loop, [(TP0, 0), (TP0, 1), (TP0, 2), (TP0, 5), (TP0, 6)])
    assert loop.events == [
        "deliver 0",
        "deliver 1",
        "commit",  # two acked: Faust commits before the next delivery
        "deliver 2",
        "gap 0 3-5",  # offsets 3-4 never came (transaction markers): not waited for
        "deliver 5",
        "commit",
        "deliver 6",
    ]
    # A race per stretch between pauses, not per record.
    assert loop.races == 4


def test_a_delivery_waiting_when_the_flow_stops_is_abandoned_with_the_rest_of_the_fetch() -> None:
    async def scenario() -> Loop:
        loop = Loop(block_at=2)
        records = [(TP0, i) for i in range(6)]
        task = asyncio.ensure_future(loop._deliver_fetch(fetch(records)))  # type: ignore[attr-defined]
        await loop.waiting.wait()
        loop.suspend_flow.set()  # a rebalance stops the flow
        async with asyncio.timeout(5):
            await task
        return loop

    loop = asyncio.run(scenario())
    assert loop.delivered == [(TP0, 0), (TP0, 1)]
    # The abandoned record and the rest are marked read, as Faust's loop marks them; the
    # seek after the rebalance has them fetched again.
    assert loop._read_offset[TP0] == 5
    assert loop.races == 1 + 3  # one for the fetch, then Faust's own per record


def test_modes_task_dump_can_walk_the_loop_while_it_waits_for_records() -> None:
    # SIGUSR1 makes mode's worker dump every task's stack (``cry``), the tool for a stall.
    # Its traceback walker knows coroutines and async-generator steps, not the awaitable
    # of the ``anext`` builtin: with ``await anext(records, None)`` the dump itself
    # crashed the worker.
    async def scenario() -> str:
        loop = Loop()
        started = asyncio.Event()

        async def slow_fetch() -> AsyncIterator[tuple[TP, Any]]:
            started.set()
            await asyncio.Event().wait()  # getmany waiting for the broker
            yield TP0, None

        task = asyncio.ensure_future(loop._deliver_fetch(slow_fetch()))  # type: ignore[attr-defined]
        await started.wait()
        try:
            return format_task_stack(task)
        finally:
            task.cancel()

    assert "_deliver_fetch" in asyncio.run(scenario())


async def _make(**kw: Any) -> Loop:
    return Loop(**kw)


def test_faust_fetch_loop_is_the_one_this_mirrors() -> None:
    # transport.Consumer._drain_messages replaces Faust's loop, record by record the same
    # bookkeeping. If Faust changes its loop, read the new one and update ours, then this.
    source = inspect.getsource(FaustConsumer._drain_messages)
    assert "callback(message), self.suspend_flow.wait()" in source
    assert "await self._add_gap(tp, r_offset + 1, offset)" in source
    assert "if self._n_acked >= commit_every:" in source
    assert "yield_every = 100" in source
    digest = hashlib.sha256(source.encode()).hexdigest()
    assert digest == FAUST_DRAIN_SHA256, digest
    # Faust's getmany checks the flow and the generation before every record: what ends a
    # fetch in a rebalance while one task delivers it.
    getmany = inspect.getsource(FaustConsumer.getmany)
    assert "if not self.flow_active:" in getmany
    assert "if new_generation_id != generation_id:" in getmany


FAUST_DRAIN_SHA256 = "44a2500309e83c630493f6828af50166ec8d96a0b3e4fb2bab735f704ae93417"
