"""The ledger's hand-written Charge encoder and the time codec's fast paths, held equal to
what pydantic does with the same model (the contract's own serializer and parser)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rating.contracts import (
    Charge,
    ChargeFields,
    Product,
    charge_rate_text,
    encode_charge,
    format_time,
)

# Field order of the encoder; a field added to Charge must be added to the encoder too.
ENCODED_FIELDS = [
    "cdr_id",
    "tenant_id",
    "product",
    "call_start",
    "duration_seconds",
    "billable_seconds",
    "rated_number",
    "prefix",
    "zone",
    "rate_card_id",
    "per_minute",
    "amount",
    "currency",
    "balance_after",
    "rated_at",
]

# hypothesis takes naive bounds and attaches the zone itself.
times = st.datetimes(
    min_value=datetime(1970, 1, 1),  # noqa: DTZ001
    max_value=datetime(2200, 1, 1),  # noqa: DTZ001
    timezones=st.just(UTC),
)
money = st.decimals(
    min_value=Decimal("-1000000"), max_value=Decimal("1000000"), places=4, allow_nan=False
)
identifiers = st.text(min_size=1, max_size=40)  # any text: quotes, control chars, non-ASCII


@st.composite
def charges(draw: st.DrawFn) -> Charge:
    return Charge(
        cdr_id=draw(identifiers),
        tenant_id=draw(st.from_regex(r"^[^\s]{1,20}$", fullmatch=True)),
        product=draw(st.sampled_from(list(Product))),
        call_start=draw(times),
        duration_seconds=draw(st.integers(0, 10**6)),
        billable_seconds=draw(st.integers(0, 10**6)),
        rated_number=draw(st.from_regex(r"^[0-9]{2,15}$", fullmatch=True)),
        prefix=draw(st.from_regex(r"^[0-9]{1,15}$", fullmatch=True)),
        zone=draw(st.text(max_size=30)),
        rate_card_id=draw(identifiers),
        per_minute=draw(money),
        amount=draw(money),
        currency=draw(st.from_regex(r"^[A-Z]{3}$", fullmatch=True)),
        balance_after=draw(st.none() | money),
        rated_at=draw(times),
    )


def test_the_encoder_knows_every_field_of_charge() -> None:
    assert list(Charge.model_fields) == ENCODED_FIELDS


def test_charge_fields_are_the_fields_of_charge_in_order() -> None:
    assert list(ChargeFields._fields) == ENCODED_FIELDS


def _fields_of(charge: Charge) -> ChargeFields:
    return ChargeFields(*(getattr(charge, name) for name in ChargeFields._fields))


@given(charges())
def test_encode_charge_is_pydantics_json_byte_for_byte(charge: Charge) -> None:
    expected = charge.model_dump_json(exclude_none=True).encode()
    assert encode_charge(charge) == expected
    # The ledger's unvalidated tuple of the same values encodes to the same bytes, and so
    # does the rate's text written once (a rate book's Tariff.charge_text).
    assert encode_charge(_fields_of(charge)) == expected
    rate_text = charge_rate_text(charge.prefix, charge.zone, charge.rate_card_id, charge.per_minute)
    assert encode_charge(_fields_of(charge), rate_text) == expected


def test_rated_at_is_formatted_afresh_for_every_new_value() -> None:
    # The encoder remembers the last rated_at's text (a batch shares one): alternating
    # values, and an equal value in a new object, must each be written as themselves.
    first = datetime(2026, 11, 1, 10, 0, tzinfo=UTC)
    second = datetime(2026, 11, 1, 10, 0, 0, 250000, tzinfo=UTC)
    for rated_at in (first, second, first, datetime(2026, 11, 1, 10, 0, tzinfo=UTC), second):
        charge = _a_charge(rated_at=rated_at)
        assert encode_charge(charge) == charge.model_dump_json(exclude_none=True).encode()


def test_encode_charge_escapes_like_pydantic() -> None:
    charge = _a_charge(
        cdr_id='a"b\\c\nd\te\x01f\x7f',
        tenant_id="t-ø-日本",
        call_start=datetime(2026, 11, 1, 0, 0, 0, 120000, tzinfo=UTC),
        zone="Danmark — mobil \u2028",
        rate_card_id="std/usd",
        amount=Decimal("1E+1"),  # exponent notation in, fixed point out
        balance_after=Decimal("-0.0001"),
    )
    encoded = encode_charge(charge)
    assert encoded == charge.model_dump_json(exclude_none=True).encode()
    assert b'"amount":"10"' in encoded
    assert Charge.model_validate_json(encoded) == charge


@given(times)
def test_format_time_reads_back_as_the_same_instant(value: datetime) -> None:
    text = format_time(value)
    assert text.endswith("Z")
    assert "+" not in text
    assert (
        Charge.model_validate_json(encode_charge(_a_charge(call_start=value))).call_start == value
    )


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (datetime(2026, 11, 1, tzinfo=UTC), "2026-11-01T00:00:00Z"),
        (datetime(2026, 11, 1, 1, 2, 3, 450000, tzinfo=UTC), "2026-11-01T01:02:03.45Z"),
        (datetime(2026, 11, 1, 1, 2, 3, 1, tzinfo=UTC), "2026-11-01T01:02:03.000001Z"),
        (datetime(2026, 11, 1, 2, tzinfo=timezone(timedelta(hours=1))), "2026-11-01T01:00:00Z"),
    ],
)
def test_format_time(value: datetime, text: str) -> None:
    assert format_time(value) == text


def test_the_usual_time_form_parses_to_the_utc_singleton() -> None:
    raw = _a_charge().model_dump_json()
    assert '"call_start":"2026-11-01T08:30:00Z"' in raw
    parsed = Charge.model_validate_json(raw)
    assert parsed.call_start.tzinfo is UTC
    assert parsed.call_start == datetime(2026, 11, 1, 8, 30, tzinfo=UTC)


@pytest.mark.parametrize("bad", ["2026-13-01T00:00:00Z", "2026-02-30T00:00:00Z"])
def test_an_impossible_date_in_the_usual_form_is_refused(bad: str) -> None:
    raw = _a_charge().model_dump_json().replace("2026-11-01T08:30:00Z", bad)
    with pytest.raises(ValueError, match="not a valid time"):
        Charge.model_validate_json(raw)


def _a_charge(**overrides: Any) -> Charge:
    fields: dict[str, Any] = {
        "cdr_id": "cdr-1",
        "tenant_id": "t-1",
        "product": Product.CONFERENCING_DIALOUT,
        "call_start": datetime(2026, 11, 1, 8, 30, tzinfo=UTC),
        "duration_seconds": 60,
        "billable_seconds": 60,
        "rated_number": "4520123456",
        "prefix": "45",
        "zone": "DK",
        "rate_card_id": "std",
        "per_minute": Decimal("0.0240"),
        "amount": Decimal("0.0240"),
        "currency": "USD",
        "rated_at": datetime(2026, 12, 1, tzinfo=UTC),
    }
    return Charge(**(fields | overrides))
