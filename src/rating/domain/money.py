"""Exact money: ``Decimal`` only, with rounding done once and explicitly.

Floats never enter: the wire models refuse JSON numbers for money, and durations are ints.
"""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Context, Decimal

#: Working precision for intermediate results. A per-minute price times a week of seconds,
#: divided by 60, needs about 25 significant digits; 50 leaves room so that the only rounding
#: that matters is the final, explicit one.
WORKING_PRECISION = 50

#: A private context rather than ``localcontext()``: it never depends on (or changes) the
#: thread's current context, and is cheaper on the per-CDR path. Never mutated.
MONEY_CONTEXT = Context(prec=WORKING_PRECISION, rounding=ROUND_HALF_UP)

ZERO = Decimal(0)

_QUANTA = tuple(Decimal(1).scaleb(-places) for places in range(19))


def quantum(places: int) -> Decimal:
    """``Decimal('0.0001')`` for 4 places: the exponent a rounded amount carries."""
    return _QUANTA[places] if places < len(_QUANTA) else Decimal(1).scaleb(-places)


def round_half_up(value: Decimal, places: int) -> Decimal:
    """Round to ``places`` decimals, halves away from zero (not banker's rounding).

    The result always carries exactly ``places`` decimals, so ``format_money`` prints them
    (``"0.0000"``, not ``"0"``). ``quantize`` fails rather than round twice when the
    context has too few digits for the result, so huge values get a wider context.
    """
    if places < 0:
        raise ValueError(f"places must be >= 0, got {places}")
    needed = value.adjusted() + places + 2
    context = MONEY_CONTEXT if needed <= WORKING_PRECISION else Context(prec=needed)
    return value.quantize(quantum(places), rounding=ROUND_HALF_UP, context=context)
