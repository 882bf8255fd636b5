"""Exact money as integers: a ``Decimal`` amount is ``units * 10**-places``.

Floats never enter: the wire models refuse JSON numbers for money, and durations are ints.
Arithmetic on integer units is exact at any size, so the only rounding is the one a caller
writes out (rule 6 in :mod:`rating.domain.tariff`).
"""

from __future__ import annotations

from decimal import Decimal


def decimals(value: Decimal) -> int:
    """How many decimal places ``value`` carries (``Decimal("0.0240")``: 4)."""
    exponent = value.as_tuple().exponent
    if not isinstance(exponent, int):
        raise ValueError(f"not a finite amount: {value}")
    return max(0, -exponent)


def to_units(value: Decimal, places: int) -> int:
    """``value * 10**places`` as an int. ``places`` must be >= :func:`decimals` (exact)."""
    sign, digits, exponent = value.as_tuple()
    if not isinstance(exponent, int):
        raise ValueError(f"not a finite amount: {value}")
    if exponent + places < 0:
        raise ValueError(f"{value} has more than {places} decimal places")
    factor: int = 10 ** (exponent + places)
    units = int("".join(map(str, digits))) * factor
    return -units if sign else units


def from_units(units: int, places: int) -> Decimal:
    """``units * 10**-places`` with exactly ``places`` decimals (``0.0000``, not ``0``)."""
    return Decimal(f"{units}E-{places}")
