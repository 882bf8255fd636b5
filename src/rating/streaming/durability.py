"""Make Faust's "flush before commit" mean what it says.

Faust commits an input offset only after ``producer.flush()``. But the first step of that
flush, ``ProducerBuffer.flush``, gives up as soon as no message leaves the buffer within
100 ms (e.g. while the Kafka client applies back-pressure) and returns with table changelog
records still queued. The offset would then be committed ahead of the state it produced, and
a SIGKILL in that window would lose a debit. We drain the buffer until it is empty.
"""

from __future__ import annotations

from typing import Any

from faust.transport.producer import ProducerBuffer

_original_flush = ProducerBuffer.flush


async def _drain(self: Any) -> None:
    while self.size:
        await self.flush_atmost(None)


def drain_producer_buffer_before_commit() -> None:
    """Idempotent; called by create_app so the fix travels with the app, not an import."""
    ProducerBuffer.flush = _drain  # type: ignore[method-assign]
