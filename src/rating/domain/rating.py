"""Rating rules 1-6 of CONTRACTS.md: one CDR plus a rate book -> a Charge or a RatingError.

Errors are values, not exceptions: a CDR that cannot be rated becomes a rejection carrying
its reason, and the pipeline keeps going.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from rating.contracts import (
    CDR,
    Charge,
    ChargeFields,
    Product,
    Rate,
    RateCard,
    RejectReason,
    format_time,
)
from rating.domain.immutable import immutable
from rating.domain.money import MONEY_CONTEXT, round_half_up
from rating.domain.ratecard import RateBook

_SIXTY = Decimal(60)


@dataclass(frozen=True, slots=True)
class RatingError:
    """Why a CDR could not be rated: the rejection reason and a detail naming the values."""

    reason: RejectReason
    detail: str


def rated_number(cdr: CDR) -> str:
    """Rule 2: who the tenant pays for. Dial-out pays for the called number; for toll-free
    the tenant pays for the caller's access, so the caller's (origin) number is rated.
    Digits only, without the ``+``."""
    number = cdr.destination if cdr.product is Product.CONFERENCING_DIALOUT else cdr.origin
    return number.removeprefix("+")


def billable_seconds(duration: int, rate: Rate) -> int:
    """Rules 4 and 5: unanswered calls bill nothing; otherwise the first increment, then
    whole next increments, and never less than the minimum. Integer arithmetic only."""
    if duration <= 0:
        return 0
    first = rate.first_increment
    if duration <= first:
        billed = first
    else:
        billed = first + -(-(duration - first) // rate.next_increment) * rate.next_increment
    return max(rate.minimum_seconds, billed)


def charge_amount(billable: int, rate: Rate, precision: int) -> Decimal:
    """Rule 6: connection_fee + per_minute * billable / 60, rounded once, half up.

    ``billable == 0`` only happens for an unanswered call (increments are >= 1), and rule 4
    says that costs nothing, so no connection fee either. The result always carries exactly
    ``precision`` decimals.
    """
    if billable == 0:
        return round_half_up(Decimal(0), precision)
    # The product and the sum are exact at this precision; only the division by 60 can be
    # inexact, and its error (~1e-45) cannot move a rounding at <= 10 places.
    ctx = MONEY_CONTEXT
    exact = ctx.add(
        rate.connection_fee, ctx.divide(ctx.multiply(rate.per_minute, billable), _SIXTY)
    )
    return round_half_up(exact, precision)


@immutable
class Priced:
    """What rules 1-6 decide for one CDR, before any balance: the ledger debits ``amount``
    first and then builds the one Charge it publishes, balance included (no second copy)."""

    cdr: CDR
    card: RateCard
    rate: Rate
    number: str
    billable: int
    amount: Decimal

    def charge(self, *, rated_at: datetime, balance_after: Decimal | None = None) -> ChargeFields:
        """The Charge's fields (the ledger's per-CDR path; :func:`rate_cdr` validates them).
        ``rated_at`` must be timezone-aware (a caller's bug otherwise: the ledger's clock)."""
        cdr, rate, card = self.cdr, self.rate, self.card
        return ChargeFields(
            cdr.cdr_id,
            cdr.tenant_id,
            cdr.product,
            cdr.call_start,
            cdr.duration_seconds,
            self.billable,
            self.number,
            rate.prefix,
            rate.zone,
            card.rate_card_id,
            rate.per_minute,
            self.amount,
            card.currency,
            balance_after,
            rated_at,
        )


def price_cdr(cdr: CDR, book: RateBook, *, plan: str, currency: str) -> Priced | RatingError:
    """Price one CDR for a tenant on ``plan`` billing in ``currency``. Never raises on data."""
    card = book.find_card(plan, currency, cdr.call_start)
    if card is None:
        return RatingError(
            RejectReason.NO_RATE_CARD,
            f"no rate card for plan {plan!r}, currency {currency} "
            f"covering call_start {format_time(cdr.call_start)}",
        )
    number = rated_number(cdr)
    rate = book.lookup(card, cdr.product, number)
    if rate is None:
        side = "destination" if cdr.product is Product.CONFERENCING_DIALOUT else "origin"
        return RatingError(
            RejectReason.NO_RATE,
            f"no rate for product {cdr.product.value}, rated number {number} ({side}) "
            f"in rate card {card.rate_card_id!r}",
        )
    billable = billable_seconds(cdr.duration_seconds, rate)
    return Priced(cdr, card, rate, number, billable, charge_amount(billable, rate, card.precision))


def rate_cdr(
    cdr: CDR, book: RateBook, *, plan: str, currency: str, rated_at: datetime
) -> Charge | RatingError:
    """Rate one CDR for a tenant on ``plan`` billing in ``currency``. Never raises on data.

    The Charge has ``balance_after=None``: the balance is the account's business.
    """
    if rated_at.tzinfo is None:
        raise ValueError("rated_at must be timezone-aware")  # a caller bug, not bad data
    priced = price_cdr(cdr, book, plan=plan, currency=currency)
    if isinstance(priced, RatingError):
        return priced
    return Charge(**priced.charge(rated_at=rated_at)._asdict())
