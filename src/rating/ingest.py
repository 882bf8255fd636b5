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
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ValidationError

from rating.contracts import CDR, FundsEvent, Rejection, RejectReason, TenantSettings
from rating.domain.validation import summarize_validation_error

Kind = Literal["cdr", "settings", "funds"]
M = TypeVar("M", bound=BaseModel)
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

    def encode(self) -> bytes:
        """The envelope as ledger records carry it (compact JSON of :meth:`to_dict`)."""
        return json.dumps(self.to_dict(), separators=(",", ":")).encode()

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


@dataclass(frozen=True, slots=True)
class Invalid:
    """Why an input value is not a valid message: ``malformed`` or ``schema``, and where."""

    reason: RejectReason
    detail: str


def parse_value(model: type[M], raw: bytes | str | None) -> M | Invalid:
    """THE bad-input classifier, for the streaming path and ``rating rate`` alike.

    ``malformed``: no value (a tombstone), not UTF-8, or not JSON (truncated, too deeply
    nested to parse). ``schema``: valid JSON that fails the model, a non-object included.
    """
    if raw is None:
        return Invalid(RejectReason.MALFORMED, "empty message value (tombstone) on an input topic")
    try:
        return model.model_validate_json(raw)
    except ValidationError as exc:
        return _classify(raw, exc)


def _classify(raw: bytes | str, exc: ValidationError) -> Invalid:
    if isinstance(raw, bytes):
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError as bad:
            return Invalid(RejectReason.MALFORMED, f"value is not UTF-8 (byte {bad.start})")
    errors = exc.errors(include_url=False)
    invalid_json = [e for e in errors if e["type"] == "json_invalid"]
    if invalid_json:
        return Invalid(RejectReason.MALFORMED, f"{invalid_json[0]['msg']} (value is not JSON)")
    if any(e["type"] == "model_type" and not e["loc"] for e in errors):
        return Invalid(RejectReason.SCHEMA, "value is JSON but not an object")
    return Invalid(RejectReason.SCHEMA, summarize_validation_error(exc))


def validate(kind: Kind, source: Source, raw: bytes | None, now: datetime) -> Envelope | Rejection:
    """Decode and validate one input record: malformed, schema and key_mismatch happen here."""
    parsed = parse_value(MODELS[kind], raw)
    if isinstance(parsed, Invalid):
        return make_rejection(source, raw or b"", parsed.reason, parsed.detail, now)
    assert raw is not None
    text = raw.decode("utf-8")  # valid: the model parsed it
    tenant_id: str = parsed.tenant_id  # type: ignore[attr-defined]
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
