"""A batch's input offsets are released only when the batch's work succeeded.

Faust's ``take_events`` acks a batch's events in a ``finally``, also when the agent's body
raised; ``settle`` holds one reference per message so that ack does not count. These tests
use Faust's own refcounted message class and play the part of ``take_events``'s ``finally``.
"""

from __future__ import annotations

import asyncio

import pytest
from faust.types.tuples import ConsumerMessage

from rating.streaming.app import settle


class Consumer:
    def __init__(self) -> None:
        self.acked: list[int] = []

    def ack(self, message: ConsumerMessage) -> bool:
        self.acked.append(message.offset)
        return True


class App:
    def __init__(self) -> None:
        self.consumer = Consumer()
        self.crashed: list[BaseException] = []

    async def crash(self, exc: BaseException) -> None:
        self.crashed.append(exc)


class Event:
    """Faust's Event.ack, minus the rest of the event."""

    def __init__(self, app: App, offset: int) -> None:
        self.app = app
        self.message = ConsumerMessage("t", 0, offset, 0.0, 0, None, b"k", b"v", None)
        self.message.incref()  # what Faust's conductor does when it delivers to one stream

    def ack(self) -> bool:
        return self.message.ack(self.app.consumer)


def _batch(app: App) -> list[Event]:
    return [Event(app, offset) for offset in range(3)]


def _take_events_finally(events: list[Event]) -> None:
    for event in events:
        event.ack()


def test_a_batch_that_succeeds_releases_its_offsets() -> None:
    app = App()
    events = _batch(app)

    async def work() -> None:
        return None

    asyncio.run(settle(app, events, work()))
    _take_events_finally(events)
    assert app.consumer.acked == [0, 1, 2]
    assert app.crashed == []


def test_a_batch_that_fails_keeps_its_offsets_and_crashes_the_worker() -> None:
    app = App()
    events = _batch(app)
    failure = RuntimeError("send failed after retries")

    async def work() -> None:
        raise failure

    with pytest.raises(RuntimeError):
        asyncio.run(settle(app, events, work()))
    _take_events_finally(events)  # Faust acks anyway...
    assert app.consumer.acked == []  # ...but no offset is released for commit
    assert app.crashed == [failure]


def test_without_settle_faust_would_release_a_failed_batch() -> None:
    # The behaviour settle guards against: the finally's ack is the last reference.
    app = App()
    events = _batch(app)
    _take_events_finally(events)
    assert app.consumer.acked == [0, 1, 2]
