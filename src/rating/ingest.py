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

import msgspec
from pydantic import BaseModel, ValidationError

from rating.contracts import (
    CDR,
    CDRFields,
    FundsEvent,
    Product,
    Rejection,
    RejectReason,
    TenantSettings,
    parse_utc,
)
from rating.domain.validation import summarize_validation_error

Kind = Literal["cdr", "settings", "funds"]
M = TypeVar("M", bound=BaseModel)


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


class _CDRShape(msgspec.Struct, gc=False):
    """A CDR's JSON types only; :func:`_fast_cdr` checks the rest."""

    cdr_id: str
    tenant_id: str
    product: Product
    call_start: str
    duration_seconds: int
    origin: str
    destination: str
    user_id: str | None = None
    conference_id: str | None = None
    toll_free_number: str | None = None


_decode_shape = msgspec.json.Decoder(_CDRShape).decode
_MAX_DURATION = 7 * 24 * 3600  # CDR.duration_seconds' bound


def _e164(number: str) -> bool:
    """``^\\+[1-9][0-9]{1,14}$`` without a regex: ASCII digits only (``isdigit`` alone
    takes other scripts' digits too)."""
    return (
        3 <= len(number) <= 16
        and number[0] == "+"
        and number[1] != "0"
        and number.isascii()
        and number[1:].isdigit()
    )


def _identifier(value: str | None) -> bool:
    return value is None or 1 <= len(value) <= 256


def _fast_cdr(raw: bytes | str) -> CDRFields | None:
    """The common CDR, several times faster than pydantic: ``None`` unless :class:`CDR`
    accepts ``raw`` with these very values. It declines (``None``) whatever it does not
    prove valid: bad input, and rarer valid forms such as a non-ASCII tenant_id; pydantic
    then decides and classifies. Every check is as strict as the model's or stricter
    (tests/unit/test_fast_cdr.py compares the two on generated input)."""
    try:
        # Decoded first: msgspec skips unknown fields without checking their UTF-8.
        shape = _decode_shape(raw.decode() if isinstance(raw, bytes) else raw)
    except (msgspec.DecodeError, ValueError, RecursionError):  # pydantic classifies it
        return None
    tenant = shape.tenant_id
    # TenantId is ^[^\s]+$ (1..128): printable ASCII without the space has no whitespace.
    if not (1 <= len(tenant) <= 128 and tenant.isascii() and tenant.isprintable()):
        return None
    if " " in tenant or not 0 <= shape.duration_seconds <= _MAX_DURATION:
        return None
    if not (_e164(shape.origin) and _e164(shape.destination)):
        return None
    tf = shape.toll_free_number
    if tf is not None and not _e164(tf):
        return None
    if not (
        1 <= len(shape.cdr_id) <= 256
        and _identifier(shape.user_id)
        and _identifier(shape.conference_id)
    ):
        return None
    try:
        start = parse_utc(shape.call_start)  # the model's own parser: the same datetime
    except ValueError:
        return None
    return CDRFields(
        shape.cdr_id,
        tenant,
        shape.product,
        start,
        shape.duration_seconds,
        shape.origin,
        shape.destination,
        shape.user_id,
        shape.conference_id,
        tf,
    )


def parse_cdr(raw: bytes | str | None) -> CDRFields | Invalid:
    """:func:`parse_value` for CDRs, fast: the same verdicts, values and reasons."""
    if raw is not None:
        fast = _fast_cdr(raw)
        if fast is not None:
            return fast
    parsed = parse_value(CDR, raw)
    return parsed if isinstance(parsed, Invalid) else CDRFields.of(parsed)


Message = CDRFields | TenantSettings | FundsEvent


def parse_message(kind: Kind, raw: bytes | str | None) -> Message | Invalid:
    """One input message of ``kind``: what ingest checks and the ledger reads back."""
    if kind == "cdr":
        return parse_cdr(raw)
    if kind == "settings":
        return parse_value(TenantSettings, raw)
    return parse_value(FundsEvent, raw)


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
    # Decoded once, here: the envelope carries the text. Bytes that are not UTF-8 go to the
    # classifier as they are, which says where they break.
    try:
        text = None if raw is None else raw.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    parsed = parse_message(kind, raw if text is None else text)
    if isinstance(parsed, Invalid):
        return make_rejection(source, raw or b"", parsed.reason, parsed.detail, now)
    assert text is not None  # the model parsed it: UTF-8
    tenant_id = parsed.tenant_id
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
