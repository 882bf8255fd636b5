"""Input records -> validated messages or Rejections. No Kafka, no Faust: values in, values out.

Every input message either becomes an :class:`Envelope` for the ledger (repartitioned by
tenant) or a :class:`~rating.contracts.Rejection` carrying the original bytes, so nothing is
lost and nothing crashes a worker.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ValidationError

from rating.contracts import CDR, FundsEvent, Rejection, RejectReason, TenantSettings
from rating.domain.validation import summarize_validation_error

Kind = Literal["cdr", "settings", "funds"]
MODELS: dict[Kind, type[BaseModel]] = {"cdr": CDR, "settings": TenantSettings, "funds": FundsEvent}


@dataclass(frozen=True, slots=True)
class Source:
    """Where a message came from: the coordinates a Rejection must carry."""

    topic: str
    partition: int
    offset: int
    key: bytes | None

    @property
    def ref(self) -> str:
        return f"{self.topic}:{self.partition}:{self.offset}"


@dataclass(frozen=True, slots=True)
class Envelope:
    """A validated input message on its way to the ledger partition of its tenant."""

    kind: Kind
    tenant_id: str
    source: Source
    payload: str  # the original text, re-validated by the ledger (it may still be rejected)

    def to_dict(self) -> dict[str, object]:
        s = self.source
        key = None if s.key is None else s.key.decode("utf-8", "backslashreplace")
        return {
            "k": self.kind,
            "t": self.tenant_id,
            "st": s.topic,
            "sp": s.partition,
            "so": s.offset,
            "sk": key,
            "p": self.payload,
        }

    def encode(self, **extra: object) -> bytes:
        """The ledger record; ``extra`` adds fields (e.g. the ingest time) beside the keys."""
        return json.dumps({**self.to_dict(), **extra}, separators=(",", ":")).encode()

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Envelope:
        key = None if d["sk"] is None else d["sk"].encode()
        return cls(
            kind=d["k"],
            tenant_id=d["t"],
            source=Source(d["st"], d["sp"], d["so"], key),
            payload=d["p"],
        )

    @classmethod
    def decode(cls, data: bytes) -> Envelope:
        return cls.from_dict(json.loads(data))


def make_rejection(
    source: Source, raw: bytes | str, reason: RejectReason, detail: str, now: datetime
) -> Rejection:
    """A Rejection with the original bytes: as text when UTF-8, else base64."""
    encoding: Literal["base64"] | None = None
    if isinstance(raw, str):
        text = raw
    else:
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            text, encoding = base64.b64encode(raw).decode("ascii"), "base64"
    key = None
    if source.key is not None:
        key = source.key.decode("utf-8", "backslashreplace")
    return Rejection(
        reason=reason,
        detail=detail,
        source_topic=source.topic,
        partition=source.partition,
        offset=source.offset,
        key=key,
        payload=text,
        payload_encoding=encoding,
        rejected_at=now,
    )


def validate(kind: Kind, source: Source, raw: bytes | None, now: datetime) -> Envelope | Rejection:
    """Decode and validate one input record: malformed, schema and key_mismatch happen here."""
    if raw is None:
        return make_rejection(
            source,
            b"",
            RejectReason.MALFORMED,
            "empty message value (tombstone) on an input topic",
            now,
        )
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return make_rejection(
            source, raw, RejectReason.MALFORMED, f"value is not UTF-8 (byte {exc.start})", now
        )
    try:
        model = MODELS[kind].model_validate_json(text)
    except ValidationError as exc:
        if any(e["type"] == "json_invalid" for e in exc.errors()):
            return make_rejection(
                source,
                text,
                RejectReason.MALFORMED,
                f"value is not JSON: {exc.errors()[0]['msg']}",
                now,
            )
        if any(e["type"] == "model_type" and not e["loc"] for e in exc.errors()):
            return make_rejection(
                source, text, RejectReason.MALFORMED, "value is JSON but not an object", now
            )
        return make_rejection(
            source, text, RejectReason.SCHEMA, summarize_validation_error(exc), now
        )
    tenant_id: str = model.tenant_id  # type: ignore[attr-defined]
    if source.key is not None and source.key != tenant_id.encode():
        shown = source.key.decode("utf-8", "backslashreplace")
        return make_rejection(
            source,
            text,
            RejectReason.KEY_MISMATCH,
            f"message key {shown!r} differs from tenant_id {tenant_id!r}",
            now,
        )
    return Envelope(kind=kind, tenant_id=tenant_id, source=source, payload=text)
