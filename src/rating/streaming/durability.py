"""A small, explicit correction to Faust's Kafka plumbing, applied by create_app.

Make "flush before commit" mean what it says. Faust commits an input offset only after
``producer.flush()``, but ``ProducerBuffer.flush`` gives up as soon as no message leaves
the buffer within 100 ms (e.g. while the Kafka client applies back-pressure) and returns
with table changelog records still queued. An offset could then be committed ahead of the
state it produced. We drain the buffer until it is empty.

(The consumer's fetch wait used to be patched here as well; it is now an option of the
rating transport, streaming/transport.py.)
"""

from __future__ import annotations

from typing import Any

from faust.transport.producer import ProducerBuffer


async def _drain(self: Any) -> None:
    while self.size:
        await self.flush_atmost(None)


def drain_producer_buffer_before_commit() -> None:
    """Idempotent; called by create_app so the fix travels with the app, not an import."""
    ProducerBuffer.flush = _drain  # type: ignore[method-assign]
