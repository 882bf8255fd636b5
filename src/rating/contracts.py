"""Wire models: every message and file in shared/CONTRACTS.md.

These models *are* the JSON Schemas in ``schemas/`` (``rating schemas --write`` regenerates
them; a test fails when they drift). Field names are the contract other teams integrate
against: extend with optional fields, never rename.

Strictness follows the contract: an integer is an integer (not ``"60"``), money is a decimal
*string* (a JSON number is refused, so no float ever reaches the arithmetic), times are
RFC 3339 in UTC, phone numbers are E.164. Unknown extra fields are ignored so producers can
add optional fields without breaking us.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from enum import StrEnum
from typing import Annotated, Any, Literal, NamedTuple

import msgspec
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    StrictBool,
    StrictInt,
    WithJsonSchema,
)

from rating.memo import RememberLast

# --- scalar types -------------------------------------------------------------------------

_DECIMAL_RE = re.compile(r"^-?\d+(\.\d+)?$")
DECIMAL_PATTERN = _DECIMAL_RE.pattern


def _parse_money(value: Any) -> Decimal:
    if isinstance(value, Decimal):
        if not value.is_finite():
            raise ValueError("money must be a finite decimal")
        return value
    if not isinstance(value, str):
        raise ValueError(
            f'money must be a decimal string such as "0.0240", got {type(value).__name__}'
        )
    if not _DECIMAL_RE.match(value):
        raise ValueError(f'money must be a plain decimal string such as "0.0240", got {value!r}')
    try:
        return Decimal(value)
    except InvalidOperation as exc:  # pragma: no cover - the regex already guards this
        raise ValueError(f"not a decimal: {value!r}") from exc


def format_money(value: Decimal) -> str:
    """Fixed-point text, never exponent notation ("1E+1" is not a contract decimal)."""
    return format(value, "f")


Money = Annotated[
    Decimal,
    BeforeValidator(_parse_money),
    PlainSerializer(format_money, return_type=str),
    WithJsonSchema({"type": "string", "pattern": DECIMAL_PATTERN, "examples": ["0.0240"]}),
]
"""Exact money: a decimal string on the wire, a ``Decimal`` in Python."""

_RFC3339_RE = re.compile(r"^\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(\.\d{1,9})?([Zz]|[+-]00:00)$")
RFC3339_UTC_PATTERN = _RFC3339_RE.pattern


def parse_utc(value: Any) -> datetime:
    if isinstance(value, datetime):
        if value.tzinfo is UTC:  # the common case (our own values): nothing to check
            return value
        if value.tzinfo is None or value.utcoffset() != UTC.utcoffset(None):
            raise ValueError("time must be timezone-aware UTC")
        return value.astimezone(UTC)
    if not isinstance(value, str) or not _RFC3339_RE.match(value):
        raise ValueError(f'time must be RFC 3339 UTC such as "2026-11-22T10:00:00Z", got {value!r}')
    if len(value) == 20 and value[19] == "Z":  # "YYYY-MM-DDTHH:MM:SSZ", the usual form
        # fromisoformat reads the "Z" itself (3.11+) as the UTC singleton: several times
        # faster than parsing without it and replacing tzinfo.
        try:
            return datetime.fromisoformat(value)
        except ValueError as exc:
            raise ValueError(f"not a valid time: {value!r}") from exc
    text = value.upper().replace("Z", "+00:00")
    # fromisoformat takes at most microseconds; nanosecond digits beyond that are dropped.
    if "." in text:
        head, rest = text.split(".", 1)
        frac, tz = rest[:-6], rest[-6:]
        text = f"{head}.{frac[:6].ljust(6, '0')}{tz}"
    try:
        return datetime.fromisoformat(text).astimezone(UTC)
    except ValueError as exc:
        raise ValueError(f"not a valid time: {value!r}") from exc


def format_time(value: datetime) -> str:
    """RFC 3339 UTC with a ``Z``; microseconds only when present (trailing zeros dropped)."""
    if value.tzinfo is not UTC:
        value = value.astimezone(UTC)
    # isoformat is C code (strftime was the cost): "YYYY-MM-DDTHH:MM:SS[.ffffff]+00:00" in
    # UTC; cutting the offset off is cheaper than a naive copy (replace) to format.
    text = value.isoformat()[:-6]
    if value.microsecond:
        text = text.rstrip("0")  # a non-zero digit follows the "." so the seconds stay
    return text + "Z"


UtcTime = Annotated[
    datetime,
    BeforeValidator(parse_utc),
    PlainSerializer(format_time, return_type=str),
    WithJsonSchema(
        {
            "type": "string",
            "format": "date-time",
            "pattern": RFC3339_UTC_PATTERN,
            "examples": ["2026-11-22T10:00:00Z"],
        }
    ),
]

E164_PATTERN = r"^\+[1-9][0-9]{1,14}$"
E164 = Annotated[str, Field(pattern=E164_PATTERN, examples=["+14155550100"])]
Currency = Annotated[str, Field(pattern=r"^[A-Z]{3}$", examples=["USD"])]
Identifier = Annotated[str, Field(min_length=1, max_length=256)]
TenantId = Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[^\s]+$")]
Prefix = Annotated[str, Field(pattern=r"^[0-9]{1,15}$")]


class Product(StrEnum):
    CONFERENCING_DIALOUT = "conferencing_dialout"
    CONFERENCING_TOLLFREE_DIALIN = "conferencing_tollfree_dialin"
    TOLLFREE_INBOUND = "tollfree_inbound"


class RejectReason(StrEnum):
    MALFORMED = "malformed"
    SCHEMA = "schema"
    UNKNOWN_TENANT = "unknown_tenant"
    NO_RATE_CARD = "no_rate_card"
    NO_RATE = "no_rate"
    KEY_MISMATCH = "key_mismatch"
    # Extension: a CDR older than the dedup horizon can no longer be proven unique,
    # so it is parked for an operator instead of risking a double charge.
    STALE = "stale"
    # Extension: funds (or a settings change) in another currency than the tenant's.
    CURRENCY_MISMATCH = "currency_mismatch"
    # Extension: processing this message raised an unexpected error (a bug). It is parked
    # here, with its bytes, instead of stalling the partition; replay it after the fix.
    INTERNAL_ERROR = "internal_error"
    # Extension: a recharge result (recharge_succeeded/failed) for a command that is not the
    # tenant's outstanding one: resolved before, never issued, or another tenant's. One
    # command is one recharge, so it credits nothing; billing and rating disagree.
    COMMAND_NOT_OUTSTANDING = "command_not_outstanding"


class FundsKind(StrEnum):
    MANUAL_ADD = "manual_add"
    RECHARGE_SUCCEEDED = "recharge_succeeded"
    RECHARGE_FAILED = "recharge_failed"
    ADJUSTMENT = "adjustment"


class BalanceEventKind(StrEnum):
    LOW_BALANCE = "low_balance"
    EXHAUSTED = "exhausted"
    RESTORED = "restored"
    RECHARGE_FAILING = "recharge_failing"


class _Wire(BaseModel):
    """Base for messages we read: ignore unknown fields, validate strictly."""

    model_config = ConfigDict(extra="ignore", frozen=True, str_strip_whitespace=False)


class _Emitted(BaseModel):
    """Base for messages we write: we never invent fields by accident."""

    model_config = ConfigDict(extra="forbid", frozen=True)


# --- inputs -------------------------------------------------------------------------------


class CDR(_Wire):
    """A call-detail record: one leg of a call. ``cdr_id`` is the idempotency key."""

    cdr_id: Identifier
    tenant_id: TenantId
    product: Product
    call_start: UtcTime
    duration_seconds: Annotated[StrictInt, Field(ge=0, le=7 * 24 * 3600)]
    origin: E164
    destination: E164
    user_id: Identifier | None = None
    conference_id: Identifier | None = None
    toll_free_number: E164 | None = None


class CDRFields(msgspec.Struct, frozen=True, gc=False):
    """A :class:`CDR`'s values, decoded but not a pydantic model: what the rating core takes
    per CDR (built in ~0.2 us; a validated CDR costs ~4). ``ingest.parse_cdr`` builds it only
    from text that :class:`CDR` accepts, with the same values (a property test holds the two
    equal), so it carries the same guarantees. ``gc=False``: its values are atoms."""

    cdr_id: str
    tenant_id: str
    product: Product
    call_start: datetime
    duration_seconds: int
    origin: str
    destination: str
    user_id: str | None = None
    conference_id: str | None = None
    toll_free_number: str | None = None

    @classmethod
    def of(cls, cdr: CDR) -> CDRFields:
        return cls(
            cdr.cdr_id,
            cdr.tenant_id,
            cdr.product,
            cdr.call_start,
            cdr.duration_seconds,
            cdr.origin,
            cdr.destination,
            cdr.user_id,
            cdr.conference_id,
            cdr.toll_free_number,
        )


class AutoRecharge(_Wire):
    enabled: StrictBool
    recharge_amount: Money
    trigger_balance: Money


class TenantSettings(_Wire):
    """Per-tenant settings; a tenant exists from its first settings message, balance 0."""

    tenant_id: TenantId
    currency: Currency
    plan: Annotated[str, Field(min_length=1, max_length=64)] = "standard"
    auto_recharge: AutoRecharge = AutoRecharge(
        enabled=False, recharge_amount=Decimal(0), trigger_balance=Decimal(0)
    )
    low_balance_alert: Money | None = None


class FundsEvent(_Wire):
    """From billing: credits, recharge results and adjustments. ``event_id`` is idempotent."""

    event_id: Identifier
    tenant_id: TenantId
    kind: FundsKind
    amount: Money
    currency: Currency
    command_id: Identifier | None = None
    reason: Annotated[str, Field(max_length=1024)] | None = None


# --- outputs ------------------------------------------------------------------------------


class Charge(_Emitted):
    """The rated call. Published at least once; consumers dedupe by ``cdr_id``."""

    cdr_id: Identifier
    tenant_id: TenantId
    product: Product
    call_start: UtcTime
    duration_seconds: Annotated[StrictInt, Field(ge=0)]
    billable_seconds: Annotated[StrictInt, Field(ge=0)]
    rated_number: Annotated[str, Field(pattern=r"^[0-9]{2,15}$")]
    prefix: Prefix
    zone: str
    rate_card_id: Identifier
    per_minute: Money
    amount: Money
    currency: Currency
    balance_after: Money | None = None
    rated_at: UtcTime


class ChargeFields(NamedTuple):
    """A :class:`Charge`'s fields as a plain tuple, not validated: what the ledger builds per
    CDR (~0.5 us; a validated Charge costs ~6). Each value comes from a validated CDR, a
    loaded rate card or exact arithmetic, so ``Charge(**fields._asdict())`` holds (tests
    check it); :func:`encode_charge` writes both the same way."""

    cdr_id: str
    tenant_id: str
    product: Product
    call_start: datetime
    duration_seconds: int
    billable_seconds: int
    rated_number: str
    prefix: str
    zone: str
    rate_card_id: str
    per_minute: Decimal
    amount: Decimal
    currency: str
    balance_after: Decimal | None
    rated_at: datetime


# "..." with JSON's escapes and non-ASCII kept as is, as pydantic writes strings (C code).
_quote = json.encoder.encode_basestring


# Every Charge of a batch has the same rated_at.
_rated_at_text = RememberLast(format_time)


def charge_rate_text(prefix: str, zone: str, rate_card_id: str, per_minute: Decimal) -> str:
    """The four fields a Charge takes from its rate, as :func:`encode_charge` writes them: the
    same for every Charge of one rate, so a rate book writes it once per rate."""
    return (
        f'"prefix":"{prefix}","zone":{_quote(zone)},"rate_card_id":{_quote(rate_card_id)},'
        f'"per_minute":"{format_money(per_minute)}"'
    )


def encode_charge(c: Charge | ChargeFields, rate_text: str | None = None) -> bytes:
    """``Charge(...).model_dump_json(exclude_none=True).encode()``, byte for byte, in a
    fraction of the time: one Charge per CDR is the ledger's hot path, and pydantic's
    serializer calls back into Python for every time and money field anyway. A unit test
    holds the two equal. ``rate_text``: :func:`charge_rate_text` of ``c``, when known."""
    if rate_text is None:
        rate_text = charge_rate_text(c.prefix, c.zone, c.rate_card_id, c.per_minute)
    balance = (
        "" if c.balance_after is None else f',"balance_after":"{format_money(c.balance_after)}"'
    )
    return (
        f'{{"cdr_id":{_quote(c.cdr_id)},"tenant_id":{_quote(c.tenant_id)},'
        f'"product":"{c.product.value}","call_start":"{format_time(c.call_start)}",'
        f'"duration_seconds":{c.duration_seconds},"billable_seconds":{c.billable_seconds},'
        f'"rated_number":"{c.rated_number}",{rate_text},'
        f'"amount":"{format_money(c.amount)}","currency":"{c.currency}"{balance},'
        f'"rated_at":"{_rated_at_text(c.rated_at)}"}}'
    ).encode()


class RechargeCommand(_Emitted):
    """Ask billing to charge the tenant's payment method. ``command_id`` is deterministic."""

    command_id: Identifier
    tenant_id: TenantId
    amount: Money
    currency: Currency
    trigger_balance: Money
    balance: Money
    issued_at: UtcTime
    # Extension: 1 for the first send, >1 for retries of the same command.
    attempt: Annotated[StrictInt, Field(ge=1)] = 1


class BalanceEvent(_Emitted):
    """Emitted on crossings only, so the platform can block and unblock calls."""

    tenant_id: TenantId
    kind: BalanceEventKind
    balance: Money
    threshold: Money
    at: UtcTime


class Rejection(_Emitted):
    """Anything we could not charge, with the original bytes so it can be replayed."""

    reason: RejectReason
    detail: str
    source_topic: str
    partition: Annotated[StrictInt, Field(ge=0)]
    offset: Annotated[StrictInt, Field(ge=0)]
    key: str | None
    payload: str
    payload_encoding: Literal["base64"] | None = None
    rejected_at: UtcTime


# --- HTTP documents -----------------------------------------------------------------------

Day = Annotated[str, Field(pattern=r"^\d{4}-\d{2}-\d{2}$", examples=["2026-11-20"])]


class UsageFigures(_Emitted):
    calls: Annotated[StrictInt, Field(ge=0)]
    billable_seconds: Annotated[StrictInt, Field(ge=0)]
    amount: Money


class UsageRow(UsageFigures):
    """One tenant's usage of one product on one UTC day (of the calls' ``call_start``)."""

    day: Day
    product: Product


class UsageReport(_Emitted):
    """``GET /tenants/{tenant_id}/usage?from=&to=``: the sums of the tenant's Charges.

    ``totals.amount`` equals the sum of the ``amount`` of the tenant's Charges whose
    ``call_start`` falls in the period (UTC days, both ends included), to the last decimal."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    tenant_id: TenantId
    currency: Currency
    from_: Annotated[Day, Field(alias="from")]
    to: Day
    rows: list[UsageRow]
    by_product: dict[Product, UsageFigures]
    totals: UsageFigures


# --- rate-card file -----------------------------------------------------------------------


class Rate(_Emitted):
    product: Product
    prefix: Prefix
    zone: Annotated[str, Field(min_length=1, max_length=128)]
    per_minute: Annotated[Money, Field(ge=0)]
    first_increment: Annotated[StrictInt, Field(ge=1, le=3600)]
    next_increment: Annotated[StrictInt, Field(ge=1, le=3600)]
    minimum_seconds: Annotated[StrictInt, Field(ge=0, le=86400)] = 0
    connection_fee: Annotated[Money, Field(ge=0)] = Decimal(0)


class RateCard(_Emitted):
    rate_card_id: Identifier
    plan: Annotated[str, Field(min_length=1, max_length=64)]
    currency: Currency
    effective_from: UtcTime
    effective_to: UtcTime | None = None
    precision: Annotated[StrictInt, Field(ge=0, le=10)] = 4
    rates: list[Rate]


class RateCardFile(_Emitted):
    rate_cards: list[RateCard]


# --- offline rating output ----------------------------------------------------------------


class OfflineRejection(_Emitted):
    """A line of ``rating rate`` output for a CDR that could not be rated."""

    cdr_id: str | None
    reason: RejectReason
    detail: str


#: Every schema in ``schemas/``: file stem -> model.
SCHEMA_MODELS: dict[str, type[BaseModel]] = {
    "cdr": CDR,
    "tenant-settings": TenantSettings,
    "funds-event": FundsEvent,
    "charge": Charge,
    "recharge-command": RechargeCommand,
    "balance-event": BalanceEvent,
    "rejection": Rejection,
    "rate-card-file": RateCardFile,
    "offline-rejection": OfflineRejection,
    "usage-report": UsageReport,
}
