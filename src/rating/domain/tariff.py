"""Rule 6 in integers: a rate prepared once, when its rate book is built, so pricing a CDR
costs a multiply-add and an integer division instead of a chain of 50-digit ``Decimal`` operations.

``connection_fee + per_minute * billable / 60``, rounded once, half up, to the card's
``precision``: with both prices scaled to integers by ``10**s`` (``s`` = the more decimals of
the two), the amount in units of ``10**-precision`` is ``N / D`` with
``N = (fee * 60 * 10**s + per_minute * 10**s * billable) * 10**precision`` and
``D = 60 * 10**s``, and half up of a non-negative ``N / D`` is ``(2N + D) // 2D``. Python's
integers are exact at any size, so no rounding happens but that one.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from rating.contracts import Rate, RateCard, charge_rate_text
from rating.domain.money import decimals, from_units, to_units


@dataclass(frozen=True, slots=True)
class Rule6:
    """Rule 6 for one rate at one precision, as the integers of the module docstring."""

    precision: int
    base: int  # 2 * 10**precision * fee * 60 * 10**s + D
    step: int  # 2 * 10**precision * per_minute * 10**s
    divisor: int  # 2 * D
    zero: Decimal

    @classmethod
    def of(cls, rate: Rate, precision: int) -> Rule6:
        places = max(decimals(rate.per_minute), decimals(rate.connection_fee))
        denominator = 60 * 10**places
        twice = 2 * 10**precision
        return cls(
            precision=precision,
            base=twice * to_units(rate.connection_fee, places) * 60 + denominator,
            step=twice * to_units(rate.per_minute, places),
            divisor=2 * denominator,
            zero=from_units(0, precision),
        )

    def amount(self, billable: int) -> Decimal:
        """The charge for ``billable`` seconds, with exactly ``precision`` decimals.

        ``billable == 0`` only happens for an unanswered call (increments are >= 1), and
        rule 4 says that costs nothing, so no connection fee either."""
        if billable == 0:
            return self.zero
        return from_units((self.base + self.step * billable) // self.divisor, self.precision)


@dataclass(frozen=True, slots=True)
class Tariff:
    """One rate of one card, ready to price: what a rate book's index holds."""

    rate: Rate
    card: RateCard
    rule6: Rule6
    charge_text: str  # what every Charge of this rate says of it (encode_charge's rate_text)

    @classmethod
    def of(cls, rate: Rate, card: RateCard) -> Tariff:
        text = charge_rate_text(rate.prefix, rate.zone, card.rate_card_id, rate.per_minute)
        return cls(rate, card, Rule6.of(rate, card.precision), text)
