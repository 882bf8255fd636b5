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
    CDRFields,
    Charge,
    ChargeFields,
    Product,
    Rate,
    RejectReason,
    format_time,
)
from rating.domain.immutable import immutable
from rating.domain.ratecard import RateBook
from rating.domain.tariff import Rule6, Tariff


@dataclass(frozen=True, slots=True)
class RatingError:
    """Why a CDR could not be rated: the rejection reason and a detail naming the values."""

    reason: RejectReason
    detail: str


def rated_number(cdr: CDR | CDRFields) -> str:
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
    """Rule 6: connection_fee + per_minute * billable / 60, rounded once, half up, with
    exactly ``precision`` decimals (see :mod:`rating.domain.tariff`; a rate book prepares
    each rate once, so :func:`price_cdr` does not come here)."""
    return Rule6.of(rate, precision).amount(billable)


@immutable
class Priced:
    """What rules 1-6 decide for one CDR, before any balance: the ledger debits ``amount``
    first and then builds the one Charge it publishes, balance included (no second copy)."""

    cdr: CDR | CDRFields
    tariff: Tariff
    number: str
    billable: int
    amount: Decimal

    def charge(self, *, rated_at: datetime, balance_after: Decimal | None = None) -> ChargeFields:
        """The Charge's fields (the ledger's per-CDR path; :func:`rate_cdr` validates them).
        ``rated_at`` must be timezone-aware (a caller's bug otherwise: the ledger's clock)."""
        cdr, tariff = self.cdr, self.tariff
        rate, card = tariff.rate, tariff.card
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


def price_cdr(
    cdr: CDR | CDRFields, book: RateBook, *, plan: str, currency: str
) -> Priced | RatingError:
    """Price one CDR for a tenant on ``plan`` billing in ``currency``. Never raises on data."""
    card = book.find_card(plan, currency, cdr.call_start)
    if card is None:
        return RatingError(
            RejectReason.NO_RATE_CARD,
            f"no rate card for plan {plan!r}, currency {currency} "
            f"covering call_start {format_time(cdr.call_start)}",
        )
    number = rated_number(cdr)
    tariff = book.tariff(card, cdr.product, number)
    if tariff is None:
        side = "destination" if cdr.product is Product.CONFERENCING_DIALOUT else "origin"
        return RatingError(
            RejectReason.NO_RATE,
            f"no rate for product {cdr.product.value}, rated number {number} ({side}) "
            f"in rate card {card.rate_card_id!r}",
        )
    billable = billable_seconds(cdr.duration_seconds, tariff.rate)
    return Priced(cdr, tariff, number, billable, tariff.rule6.amount(billable))


def rate_cdr(
    cdr: CDR | CDRFields, book: RateBook, *, plan: str, currency: str, rated_at: datetime
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
