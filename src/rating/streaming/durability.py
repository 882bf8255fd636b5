"""Two small, explicit corrections to Faust's Kafka plumbing, applied by create_app.

1. Make "flush before commit" mean what it says. Faust commits an input offset only after
   ``producer.flush()``, but ``ProducerBuffer.flush`` gives up as soon as no message leaves
   the buffer within 100 ms (e.g. while the Kafka client applies back-pressure) and returns
   with table changelog records still queued. An offset could then be committed ahead of the
   state it produced. We drain the buffer until it is empty.

2. Make the consumer's fetch wait configurable. Faust hard-codes ``fetch_max_wait_ms=1500``.
   Apache Kafka answers a long poll as soon as data arrives, but the embedded Tansu broker
   waits out the full time, which put ~0.7 s of latency on each of the pipeline's two hops.
"""

from __future__ import annotations

from typing import Any

from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread
from faust.transport.producer import ProducerBuffer

_original_create_consumer = AIOKafkaConsumerThread._create_worker_consumer
_fetch_max_wait_ms = 1500


async def _drain(self: Any) -> None:
    while self.size:
        await self.flush_atmost(None)


def _create_consumer_with_fetch_wait(self: Any, transport: Any) -> Any:
    consumer = _original_create_consumer(self, transport)
    consumer._fetch_max_wait_ms = _fetch_max_wait_ms  # read by the fetcher at start()
    return consumer


def drain_producer_buffer_before_commit() -> None:
    """Idempotent; called by create_app so the fix travels with the app, not an import."""
    ProducerBuffer.flush = _drain  # type: ignore[method-assign]


def set_fetch_max_wait(milliseconds: int) -> None:
    global _fetch_max_wait_ms  # noqa: PLW0603 - one process, one app: a module setting is honest
    _fetch_max_wait_ms = milliseconds
    AIOKafkaConsumerThread._create_worker_consumer = _create_consumer_with_fetch_wait  # type: ignore[method-assign]
