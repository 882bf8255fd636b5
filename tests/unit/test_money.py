"""Integer money units: exact both ways, at any size, with the places asked for."""

from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rating.contracts import format_money
from rating.domain.money import decimals, from_units, to_units


@pytest.mark.parametrize(
    ("value", "places", "units"),
    [
        ("0.0240", 4, 240),
        ("0.024", 6, 24_000),
        ("12", 2, 1200),
        ("0", 10, 0),
        ("-0.0003", 4, -3),
        ("12345678901234567890123456789.123456789", 9, 12345678901234567890123456789123456789),
    ],
)
def test_to_units(value: str, places: int, units: int) -> None:
    assert to_units(Decimal(value), places) == units


def test_to_units_refuses_to_round() -> None:
    with pytest.raises(ValueError, match="more than 2 decimal places"):
        to_units(Decimal("0.125"), 2)


def test_not_finite_is_refused() -> None:
    with pytest.raises(ValueError, match="finite"):
        decimals(Decimal("NaN"))
    with pytest.raises(ValueError, match="finite"):
        to_units(Decimal("Infinity"), 2)


@pytest.mark.parametrize(
    ("units", "places", "text"),
    [
        (240, 4, "0.0240"),
        (0, 4, "0.0000"),
        (3, 0, "3"),
        (-5, 2, "-0.05"),
        (10**30, 2, "1" + "0" * 28 + ".00"),
    ],
)
def test_from_units_keeps_the_places(units: int, places: int, text: str) -> None:
    value = from_units(units, places)
    assert format_money(value) == text
    assert value.as_tuple().exponent == -places


@given(
    st.integers(0, 30).flatmap(
        lambda places: st.decimals(places=places, allow_nan=False, allow_infinity=False)
    )
)
def test_round_trip(value: Decimal) -> None:
    places = decimals(value)
    assert from_units(to_units(value, places), places) == value
    assert from_units(to_units(value, places + 3), places + 3) == value
