"""One error policy for both stages: what an unexpected exception on one message becomes.

The decision, in one place (like quix-streams' processing-error callbacks): the message is
*parked*. An ``internal_error`` Rejection carrying the original bytes and coordinates goes to
``rating.rejected``, the exception is logged with its traceback, and the partition moves on:
a bug must never stall a tenant's partition, and nothing is lost (replay it after the fix,
``rating rejected replay --reason internal_error``).

Parking is the only answer because only bugs get here. Bad input is a value, never an
exception (``ingest.Invalid``, ``domain.account.Refusal``, ``domain.rating.RatingError``),
and what the project raises on purpose (:class:`rating.errors.RatingBaseError`: bad settings
or rate cards, a missing broker) stops the worker at start-up, before a message is read. A
failure to *publish* is not parked either: it crashes the agent before its input offsets are
committed, so the batch is redelivered (``Pipeline.send_all``).

Used by ``Pipeline.ingest`` (a failure validating an input message), ``Pipeline.apply`` (a
failure around the ledger: decoding its record, indexing, a tick) and ``Ledger.handle`` (a
failure applying one message: parked with the original input message, so a replay goes back
to its source topic). Pure: no Faust.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Literal

from rating.contracts import Rejection, RejectReason
from rating.ingest import Source, make_rejection

log = logging.getLogger("rating.worker")

#: Where the exception happened: the label of ``rating_internal_errors_total``.
Stage = Literal["ingest", "ledger"]


def park(
    stage: Stage,
    exc: Exception,
    source: Source,
    raw: bytes | str | None,
    now: datetime,
    *,
    context: str = "",
) -> Rejection:
    """The Rejection that parks the message at ``source`` (value ``raw``) because processing
    it raised ``exc``; logs the traceback. Call it from the ``except`` block.

    ``context`` starts the Rejection's detail (e.g. "ledger record: "), then the exception's
    type and message."""
    log.exception("%s failed at %s: parked as internal_error", stage, source.ref)
    detail = f"{context}{type(exc).__name__}: {exc}"
    return make_rejection(source, raw or b"", RejectReason.INTERNAL_ERROR, detail, now)


__all__ = ["Stage", "park"]
