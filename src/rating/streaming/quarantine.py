"""What the worker does with a record batch it cannot decode (see streaming/transport.py).

- **Input topics** (the platform's and billing's): the batch is *parked*. One Rejection with
  reason ``malformed`` goes to ``rating.rejected`` (acknowledged before the consumer moves on),
  naming the topic, partition and the batch's offset range; the consumer then seeks past the
  batch and the partition keeps moving. The records stay on the source topic (for its
  retention), where the Rejection says to find them; the payload is empty because the bytes of
  an undecodable batch are not available to the worker. ``rating rejected replay`` does not
  replay ``malformed``.
- **Internal topics** (the ledger topic, the changelogs): only this worker writes them, and
  skipping a changelog batch would silently lose account state, so that partition *stops*
  (the others go on) until an operator looks.

Either way it is logged at ERROR with the coordinates and counted in
``rating_undecodable_batches_total`` (alert ``RatingUndecodableBatches``), and stopped
partitions in ``rating_partitions_stopped`` (alert ``RatingPartitionStopped``).
All codecs are installed (``aiokafka[snappy,lz4,zstd]``) and checked at start-up, so a missing
codec library is a start-up error, never a parked batch.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from rating.contracts import RejectReason
from rating.ingest import Source, make_rejection
from rating.ledger import Role
from rating.streaming.transport import Action, UndecodableBatch, UndecodableHandler

if TYPE_CHECKING:
    from rating.streaming.app import Pipeline

log = logging.getLogger("rating.worker")


def undecodable_handler(p: Pipeline) -> UndecodableHandler:
    stopped: set[tuple[str, int]] = set()
    # Batches parked by this process: a re-read from a committed offset below one (after a
    # rebalance) meets it again, and it is skipped without a second Rejection.
    parked: set[tuple[str, int, int]] = set()

    async def handle(batch: UndecodableBatch) -> Action:
        where = (batch.topic, batch.partition, batch.base_offset)
        if where in parked:
            log.warning("skipping %s again: parked already", batch.ref)
            return Action.SKIP
        m = p.metrics
        m.undecodable_batches.labels(batch.topic, str(batch.partition)).inc()
        if batch.topic not in p.kind_by_topic or batch.next_offset is None:
            stopped.add((batch.topic, batch.partition))
            m.partitions_stopped.set(len(stopped))
            return Action.STOP
        detail = (
            f"undecodable record batch at {batch.ref} (codec {batch.codec}): {batch.error}; "
            f"its records were not read: fetch offsets {batch.base_offset}..{batch.last_offset} "
            f"of {batch.topic} partition {batch.partition} from the source"
        )
        source = Source(batch.topic, batch.partition, batch.base_offset, None)
        rejection = make_rejection(source, b"", RejectReason.MALFORMED, detail, p.clock.now())
        # Durable before the consumer seeks past the batch: never silently lost.
        topic = p.sinks[Role.REJECTED].get_topic_name()
        value = rejection.model_dump_json().encode()
        await p.app.producer.send_and_wait(topic, None, value, None, None, None)
        m.cdrs_rejected.labels(batch.topic, RejectReason.MALFORMED.value).inc()
        log.error("PARKED in %s: %s", topic, detail)
        parked.add(where)
        return Action.SKIP

    return handle
