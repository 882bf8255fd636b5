"""Rating rules 2-6 and rate_cdr, table-driven, plus hypothesis properties."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import ROUND_HALF_UP, Decimal
from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rating.contracts import CDR, Charge, Product, Rate, RateCard, RejectReason, format_money
from rating.domain.ratecard import RateBook, load_rate_cards
from rating.domain.rating import (
    RatingError,
    billable_seconds,
    charge_amount,
    rate_cdr,
    rated_number,
)
from rating.domain.tariff import Rule6

SAMPLE = Path(__file__).resolve().parents[2] / "ratecards" / "sample.json"
RATED_AT = datetime(2026, 12, 1, tzinfo=UTC)


def make_rate(
    first: int = 60,
    nxt: int = 60,
    *,
    per_minute: str = "0.0240",
    minimum: int = 0,
    fee: str = "0",
    prefix: str = "1",
    product: str = "conferencing_dialout",
) -> Rate:
    return Rate.model_validate(
        {
            "product": product,
            "prefix": prefix,
            "zone": f"zone-{prefix}",
            "per_minute": per_minute,
            "first_increment": first,
            "next_increment": nxt,
            "minimum_seconds": minimum,
            "connection_fee": fee,
        }
    )


def make_cdr(
    product: str = "conferencing_dialout",
    duration: int = 60,
    *,
    origin: str = "+14155550100",
    destination: str = "+447700900123",
    call_start: str = "2026-11-10T09:00:00Z",
    **kw: Any,
) -> CDR:
    return CDR.model_validate(
        {
            "cdr_id": "cdr-1",
            "tenant_id": "acme",
            "product": product,
            "call_start": call_start,
            "duration_seconds": duration,
            "origin": origin,
            "destination": destination,
        }
        | kw
    )


# --- rules 4 and 5: billable seconds -----------------------------------------------------

DURATIONS = (0, 1, 59, 60, 61, 119, 120, 121)


@pytest.mark.parametrize(
    ("first", "nxt", "expected"),
    [
        (60, 60, (0, 60, 60, 60, 120, 120, 120, 180)),
        (60, 1, (0, 60, 60, 60, 61, 119, 120, 121)),
        (1, 1, (0, 1, 59, 60, 61, 119, 120, 121)),
        (30, 6, (0, 30, 60, 60, 66, 120, 120, 126)),
    ],
)
def test_billable_seconds_by_increment(first: int, nxt: int, expected: tuple[int, ...]) -> None:
    rate = make_rate(first, nxt)
    assert tuple(billable_seconds(d, rate) for d in DURATIONS) == expected


@pytest.mark.parametrize(
    ("first", "nxt", "minimum", "duration", "expected"),
    [
        # minimum above the first increment
        (60, 1, 90, 0, 0),  # unanswered: nothing, whatever the minimum
        (60, 1, 90, 1, 90),
        (60, 1, 90, 60, 90),
        (60, 1, 90, 61, 90),
        (60, 1, 90, 90, 90),
        (60, 1, 90, 91, 91),
        # minimum above the duration but below the first increment: the increment rules
        (60, 60, 30, 10, 60),
        (60, 60, 30, 61, 120),
        # per-second billing with a minimum
        (1, 1, 10, 3, 10),
        (1, 1, 10, 10, 10),
        (1, 1, 10, 11, 11),
        # 30/6 with a minimum that is not a whole increment
        (30, 6, 45, 31, 45),
        (30, 6, 45, 44, 48),
    ],
)
def test_minimum_seconds(first: int, nxt: int, minimum: int, duration: int, expected: int) -> None:
    assert billable_seconds(duration, make_rate(first, nxt, minimum=minimum)) == expected


def test_long_call() -> None:
    assert billable_seconds(7 * 24 * 3600, make_rate(60, 60)) == 7 * 24 * 3600
    assert billable_seconds(7 * 24 * 3600 + 1, make_rate(30, 6)) == 7 * 24 * 3600 + 6


# --- rule 6: amount ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("per_minute", "fee", "billable", "precision", "expected"),
    [
        ("0.0240", "0", 60, 4, "0.0240"),
        ("0.0240", "0", 61, 4, "0.0244"),
        ("0.0240", "0", 180, 4, "0.0720"),
        # connection fee is added once per answered call
        ("0.0240", "0.0100", 60, 4, "0.0340"),
        ("0.0240", "0.0100", 1, 4, "0.0104"),
        # ...and not at all for an unanswered call (billable 0)
        ("0.0240", "0.0100", 0, 4, "0.0000"),
        ("0.0240", "0", 0, 2, "0.00"),
        ("0.0240", "0", 0, 6, "0.000000"),
        # exact halves round up (banker's rounding would go down to the even digit)
        ("0.0005", "0", 30, 4, "0.0003"),  # 0.00025
        ("0.05", "0", 30, 2, "0.03"),  # 0.025
        ("0.000005", "0", 30, 6, "0.000003"),  # 0.0000025
        ("0.0005", "0.00005", 24, 4, "0.0003"),  # 0.00005 + 0.0002 = 0.00025
        # repeating decimals: rounded once, at the end
        ("0.01", "0", 1, 4, "0.0002"),  # 0.000166...
        ("0.01", "0", 1, 2, "0.00"),
        ("0.01", "0", 1, 6, "0.000167"),
        ("0.0001", "0", 1, 6, "0.000002"),  # 0.00000166...
        # precision 0 and per_minute with more places than the card's precision
        ("1", "0", 90, 0, "2"),  # 1.5
        ("0.123456789", "0", 60, 4, "0.1235"),
        # a week at a high price stays exact
        ("9.9999", "1.5", 604800, 4, "100800.4920"),
    ],
)
def test_charge_amount(
    per_minute: str, fee: str, billable: int, precision: int, expected: str
) -> None:
    amount = charge_amount(billable, make_rate(per_minute=per_minute, fee=fee), precision)
    assert isinstance(amount, Decimal)
    assert format_money(amount) == expected


# --- rule 2: rated number ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("product", "expected"),
    [
        ("conferencing_dialout", "447700900123"),  # the called number
        ("conferencing_tollfree_dialin", "14155550100"),  # the caller
        ("tollfree_inbound", "14155550100"),  # the caller
    ],
)
def test_rated_number(product: str, expected: str) -> None:
    cdr = make_cdr(
        product, origin="+14155550100", destination="+447700900123", toll_free_number="+18005550100"
    )
    assert rated_number(cdr) == expected


# --- rate_cdr ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sample() -> RateBook:
    return load_rate_cards(SAMPLE)


def test_rate_cdr_builds_the_charge(sample: RateBook) -> None:
    cdr = make_cdr("conferencing_dialout", 61, destination="+447700900123")
    charge = rate_cdr(cdr, sample, plan="standard", currency="USD", rated_at=RATED_AT)
    assert isinstance(charge, Charge)
    assert charge.model_dump(mode="json") == {
        "cdr_id": "cdr-1",
        "tenant_id": "acme",
        "product": "conferencing_dialout",
        "call_start": "2026-11-10T09:00:00Z",
        "duration_seconds": 61,
        "billable_seconds": 66,  # 30/6 in Europe
        "rated_number": "447700900123",
        "prefix": "447",
        "zone": "UK mobile",
        "rate_card_id": "standard-usd-2026-11",
        "per_minute": "0.0450",
        "amount": "0.0495",
        "currency": "USD",
        "balance_after": None,
        "rated_at": "2026-12-01T00:00:00Z",
    }


def test_charge_passes_its_own_validation(sample: RateBook) -> None:
    # what rate_cdr emits survives a JSON round trip through the wire model unchanged
    for product in Product:
        charge = rate_cdr(
            make_cdr(product.value, 125),
            sample,
            plan="enterprise",
            currency="EUR",
            rated_at=RATED_AT,
        )
        assert isinstance(charge, Charge)
        assert Charge.model_validate_json(charge.model_dump_json()) == charge


@pytest.mark.parametrize("duration", [0, 1, 59, 61, 3601])
def test_every_charge_of_the_sample_validates_field_by_field(
    sample: RateBook, duration: int
) -> None:
    # rate_cdr builds the Charge without a validation pass (model_construct): whatever it
    # builds, for every rate of every card, must be exactly what validation would build.
    checked = 0
    for card in sample.cards:
        for rate in card.rates:
            number = "+" + (rate.prefix + "0000000")[:12]
            sides = (
                {"destination": number}
                if rate.product is Product.CONFERENCING_DIALOUT
                else {"origin": number, "destination": "+18005550100"}
            )
            cdr = make_cdr(
                rate.product.value,
                duration,
                call_start=card.effective_from.strftime("%Y-%m-%dT%H:%M:%SZ"),
                **sides,
            )
            charge = rate_cdr(
                cdr, sample, plan=card.plan, currency=card.currency, rated_at=RATED_AT
            )
            if not isinstance(charge, Charge):
                continue  # a longer prefix elsewhere, or another card in force: not this one
            assert Charge.model_validate(charge.model_dump()) == charge
            assert Charge.model_validate_json(charge.model_dump_json()) == charge
            assert charge.model_fields_set == set(Charge.model_fields)
            checked += 1
    assert checked > 20


def test_zero_duration_is_a_zero_charge(sample: RateBook) -> None:
    # tollfree_inbound has a connection fee and a minimum in the sample: neither applies.
    cdr = make_cdr("tollfree_inbound", 0, origin="+447700900123")
    charge = rate_cdr(cdr, sample, plan="standard", currency="USD", rated_at=RATED_AT)
    assert isinstance(charge, Charge)
    assert (charge.billable_seconds, format_money(charge.amount)) == (0, "0.0000")
    eur6 = rate_cdr(cdr, sample, plan="enterprise", currency="EUR", rated_at=RATED_AT)
    assert isinstance(eur6, Charge)
    assert format_money(eur6.amount) == "0.000000"


def test_connection_fee_and_minimum_from_the_sample(sample: RateBook) -> None:
    cdr = make_cdr("tollfree_inbound", 5, origin="+447700900123")
    charge = rate_cdr(cdr, sample, plan="standard", currency="USD", rated_at=RATED_AT)
    assert isinstance(charge, Charge)
    # 10 s minimum at 0.0850/min + 0.0100 fee = 0.0241666... -> 0.0242
    assert (charge.billable_seconds, format_money(charge.amount)) == (10, "0.0242")


NUMBERS = {
    "+14155550100": ("1", "US/CA"),
    "+447700900123": ("447", "UK mobile"),
    "+4520123456": ("45", "Denmark"),
    "+31612345678": ("316", "Netherlands mobile"),
    "+4915112345678": ("4915", "Germany mobile"),
    "+33612345678": ("336", "France mobile"),
    "+61412345678": ("614", "Australia mobile"),
    "+442079460000": ("44", "UK"),
}


@pytest.mark.parametrize("number", sorted(NUMBERS))
@pytest.mark.parametrize("product", list(Product))
@pytest.mark.parametrize(
    ("plan", "currency"),
    [("standard", "USD"), ("standard", "EUR"), ("enterprise", "USD"), ("enterprise", "EUR")],
)
def test_sample_rates_every_number_for_every_product(
    sample: RateBook, number: str, product: Product, plan: str, currency: str
) -> None:
    other = "+18005550100"
    if product is Product.CONFERENCING_DIALOUT:
        cdr = make_cdr(product.value, 95, origin=other, destination=number)
    else:
        cdr = make_cdr(product.value, 95, origin=number, destination=other)
    charge = rate_cdr(cdr, sample, plan=plan, currency=currency, rated_at=RATED_AT)
    assert isinstance(charge, Charge), charge
    assert (charge.prefix, charge.zone) == NUMBERS[number]
    assert charge.currency == currency
    assert charge.amount > 0


def test_mid_month_price_change(sample: RateBook) -> None:
    def amount(call_start: str) -> tuple[str, str]:
        cdr = make_cdr("conferencing_dialout", 60, call_start=call_start)
        charge = rate_cdr(cdr, sample, plan="standard", currency="USD", rated_at=RATED_AT)
        assert isinstance(charge, Charge)
        return charge.rate_card_id, format_money(charge.amount)

    assert amount("2026-10-31T23:59:59Z") == ("standard-usd-2026-10", "0.0480")
    assert amount("2026-11-15T23:59:59Z") == ("standard-usd-2026-11", "0.0450")
    assert amount("2026-11-16T00:00:00Z") == ("standard-usd-2026-11b", "0.0390")


@pytest.mark.parametrize(
    ("plan", "currency", "call_start"),
    [
        ("standard", "GBP", "2026-11-10T09:00:00Z"),  # no card in that currency
        ("gold", "USD", "2026-11-10T09:00:00Z"),  # no such plan
        ("standard", "EUR", "2026-10-15T09:00:00Z"),  # before the first EUR card
        ("standard", "USD", "2026-09-30T23:59:59Z"),  # before the first USD card
    ],
)
def test_no_rate_card(sample: RateBook, plan: str, currency: str, call_start: str) -> None:
    cdr = make_cdr(call_start=call_start)
    result = rate_cdr(cdr, sample, plan=plan, currency=currency, rated_at=RATED_AT)
    assert isinstance(result, RatingError)
    assert result.reason is RejectReason.NO_RATE_CARD
    assert f"plan {plan!r}" in result.detail
    assert currency in result.detail
    assert call_start in result.detail


def test_no_rate_card_after_effective_to() -> None:
    card = RateCard.model_validate(
        {
            "rate_card_id": "nov",
            "plan": "standard",
            "currency": "USD",
            "effective_from": "2026-11-01T00:00:00Z",
            "effective_to": "2026-12-01T00:00:00Z",
            "rates": [make_rate(prefix="44").model_dump()],
        }
    )
    book = RateBook.from_cards([card])
    at_end = make_cdr(call_start="2026-12-01T00:00:00Z")
    at_start = make_cdr(call_start="2026-11-01T00:00:00Z")
    ended = rate_cdr(at_end, book, plan="standard", currency="USD", rated_at=RATED_AT)
    started = rate_cdr(at_start, book, plan="standard", currency="USD", rated_at=RATED_AT)
    assert isinstance(ended, RatingError)
    assert ended.reason is RejectReason.NO_RATE_CARD
    assert isinstance(started, Charge)


@pytest.mark.parametrize(
    ("product", "origin", "destination", "number"),
    [
        ("conferencing_dialout", "+14155550100", "+99912345", "99912345"),
        ("tollfree_inbound", "+99912345", "+18005550100", "99912345"),
        ("conferencing_tollfree_dialin", "+99912345", "+18005550100", "99912345"),
    ],
)
def test_no_rate(
    sample: RateBook, product: str, origin: str, destination: str, number: str
) -> None:
    cdr = make_cdr(product, origin=origin, destination=destination)
    result = rate_cdr(cdr, sample, plan="standard", currency="USD", rated_at=RATED_AT)
    assert isinstance(result, RatingError)
    assert result.reason is RejectReason.NO_RATE
    assert product in result.detail
    assert number in result.detail
    assert "standard-usd-2026-11" in result.detail


def test_naive_rated_at_is_a_caller_bug(sample: RateBook) -> None:
    naive = RATED_AT.replace(tzinfo=None)
    with pytest.raises(ValueError, match="timezone-aware"):
        rate_cdr(make_cdr(), sample, plan="standard", currency="USD", rated_at=naive)


# --- properties --------------------------------------------------------------------------

increments = st.integers(min_value=1, max_value=3600)
minimums = st.integers(min_value=0, max_value=7200)
durations = st.integers(min_value=0, max_value=7 * 24 * 3600)
precisions = st.integers(min_value=0, max_value=10)
prices = st.decimals(min_value=0, max_value=100, places=6, allow_nan=False, allow_infinity=False)


@st.composite
def rates(draw: st.DrawFn) -> Rate:
    return make_rate(
        draw(increments),
        draw(increments),
        per_minute=format_money(draw(prices)),
        minimum=draw(minimums),
        fee=format_money(draw(prices)),
    )


@given(rates(), durations)
def test_billable_covers_the_call(rate: Rate, duration: int) -> None:
    billable = billable_seconds(duration, rate)
    assert type(billable) is int
    if duration == 0:
        assert billable == 0
    else:
        assert billable >= duration
        assert billable >= rate.minimum_seconds
        # never more than one increment of slack beyond the minimum
        assert billable < max(duration, rate.minimum_seconds) + max(
            rate.first_increment, rate.next_increment
        )


@given(rates(), durations, durations)
def test_billable_and_amount_are_monotone_in_duration(rate: Rate, d1: int, d2: int) -> None:
    short, long = sorted((d1, d2))
    b1, b2 = billable_seconds(short, rate), billable_seconds(long, rate)
    assert b1 <= b2
    assert charge_amount(b1, rate, 4) <= charge_amount(b2, rate, 4)


@given(rates(), prices, durations, precisions)
def test_amount_is_monotone_in_per_minute(
    rate: Rate, other_price: Decimal, duration: int, precision: int
) -> None:
    low, high = sorted((rate.per_minute, other_price))
    cheap = rate.model_copy(update={"per_minute": low})
    dear = rate.model_copy(update={"per_minute": high})
    billable = billable_seconds(duration, cheap)
    assert charge_amount(billable, cheap, precision) <= charge_amount(billable, dear, precision)


def reference_amount(billable: int, rate: Rate, precision: int) -> Decimal:
    """Rule 6 with exact rationals, rounded half-up by hand: an independent oracle."""
    if billable == 0:
        return Decimal(0).quantize(Decimal(1).scaleb(-precision))
    exact = Fraction(rate.connection_fee) + Fraction(rate.per_minute) * billable / 60
    scaled = exact * 10**precision
    units = scaled.numerator // scaled.denominator
    if scaled - units >= Fraction(1, 2):
        units += 1
    return (
        Decimal(units)
        .scaleb(-precision)
        .quantize(Decimal(1).scaleb(-precision), rounding=ROUND_HALF_UP)
    )


@given(rates(), durations, precisions)
def test_amount_is_exact_with_precision_places(rate: Rate, duration: int, precision: int) -> None:
    billable = billable_seconds(duration, rate)
    amount = charge_amount(billable, rate, precision)
    assert type(amount) is Decimal
    assert amount.as_tuple().exponent == -precision
    assert amount == reference_amount(billable, rate, precision)
    assert amount >= 0


@given(rates(), durations, st.sampled_from(list(Product)))
def test_charge_never_holds_a_float(rate: Rate, duration: int, product: Product) -> None:
    card = RateCard.model_validate(
        {
            "rate_card_id": "p",
            "plan": "standard",
            "currency": "USD",
            "effective_from": "2026-11-01T00:00:00Z",
            "precision": 4,
            "rates": [rate.model_copy(update={"product": product})],
        }
    )
    book = RateBook.from_cards([card])
    cdr = make_cdr(product.value, duration, origin="+12125550100", destination="+12125550100")
    charge = rate_cdr(cdr, book, plan="standard", currency="USD", rated_at=RATED_AT)
    assert isinstance(charge, Charge)
    values = {name: getattr(charge, name) for name in Charge.model_fields}
    assert not any(isinstance(v, float) for v in values.values())
    assert type(values["amount"]) is Decimal
    assert type(values["per_minute"]) is Decimal
    assert type(values["billable_seconds"]) is int
    assert Charge.model_validate_json(charge.model_dump_json()) == charge


# Wider than ``prices``: many decimals, large values, fee and price of different scales.
wide_prices = st.integers(0, 20).flatmap(
    lambda places: st.decimals(min_value=0, max_value=10**9, places=places, allow_nan=False)
)


@given(wide_prices, wide_prices, durations, precisions)
def test_rule6_amount_is_the_exact_rational_rounded_half_up(
    per_minute: Decimal, fee: Decimal, duration: int, precision: int
) -> None:
    rate = make_rate(1, 1, per_minute=format_money(per_minute), fee=format_money(fee))
    amount = Rule6.of(rate, precision).amount(duration)
    assert amount == reference_amount(duration, rate, precision)
    assert amount.as_tuple().exponent == -precision


def test_a_negative_zero_price_charges_a_plain_zero() -> None:
    rate = make_rate(per_minute="-0", fee="-0")
    assert format_money(Rule6.of(rate, 4).amount(60)) == "0.0000"
