"""round_half_up: exact, half away from zero, always the requested number of places."""

from decimal import ROUND_HALF_EVEN, Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rating.contracts import format_money
from rating.domain.money import quantum, round_half_up


@pytest.mark.parametrize(
    ("value", "places", "expected"),
    [
        # halves go up where banker's rounding would go down to the even digit
        ("0.00025", 4, "0.0003"),
        ("0.00125", 4, "0.0013"),
        ("0.025", 2, "0.03"),
        ("2.5", 0, "3"),
        ("0.0000025", 6, "0.000003"),
        # halves that banker's rounding also rounds up
        ("0.00015", 4, "0.0002"),
        # not a half: ordinary rounding
        ("0.00024999", 4, "0.0002"),
        ("0.000166666666", 4, "0.0002"),
        ("0.000166666666", 6, "0.000167"),
        # negative values round away from zero (refunds, adjustments)
        ("-0.00025", 4, "-0.0003"),
        # padding to the places asked for
        ("0", 4, "0.0000"),
        ("1", 2, "1.00"),
        ("12345678901234567890123456789.5", 0, "12345678901234567890123456790"),
        ("12345678901234567890123456789.123456789", 6, "12345678901234567890123456789.123457"),
    ],
)
def test_round_half_up(value: str, places: int, expected: str) -> None:
    result = round_half_up(Decimal(value), places)
    assert format_money(result) == expected
    assert result.as_tuple().exponent == -places


@pytest.mark.parametrize(
    ("value", "places"), [("0.00025", 4), ("0.025", 2), ("2.5", 0), ("0.0000025", 6)]
)
def test_differs_from_bankers_rounding_on_even_halves(value: str, places: int) -> None:
    bankers = Decimal(value).quantize(quantum(places), rounding=ROUND_HALF_EVEN)
    assert round_half_up(Decimal(value), places) > bankers


def test_negative_places_refused() -> None:
    with pytest.raises(ValueError, match="places"):
        round_half_up(Decimal(1), -1)


def test_quantum() -> None:
    assert quantum(4) == Decimal("0.0001")
    assert quantum(0) == Decimal(1)


@given(
    st.decimals(
        allow_nan=False, allow_infinity=False, places=12, min_value=-(10**9), max_value=10**9
    ),
    st.integers(min_value=0, max_value=10),
)
def test_rounding_is_within_half_a_unit_and_has_exact_places(value: Decimal, places: int) -> None:
    result = round_half_up(value, places)
    assert isinstance(result, Decimal)
    assert result.as_tuple().exponent == -places
    error = abs(result - value)
    assert error <= quantum(places) / 2
    if error == quantum(places) / 2:
        assert abs(result) > abs(value)  # a half moves away from zero
