"""How much the rating core costs per CDR, next to a bare ``json.loads`` of the same line.

    python bench/bench_rating.py [--n 200000] [--prefixes 30000]

Builds a realistic mix of CDR JSON lines in memory (all three products, several countries,
durations 0..3600 s, ~5% unanswered), loads ratecards/sample.json plus a synthetic card with
tens of thousands of prefixes, and prints lines per second for each stage. Not a test: it
prints figures and asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

from rating.contracts import CDR, Charge, Product, Rate, RateCard, TenantSettings, encode_charge
from rating.domain.account import (
    Account,
    RechargePolicy,
    Refusal,
    apply_charge,
    open_or_update,
)
from rating.domain.ratecard import RateBook, load_rate_cards
from rating.domain.rating import Priced, price_cdr, rate_cdr, rated_number
from rating.ingest import Invalid, parse_cdr

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "ratecards" / "sample.json"
RATED_AT = datetime(2026, 12, 1, tzinfo=UTC)

# E.164 numbers the sample cards price: NANP, UK, DK, NL, DE, FR, SE, IE, AU, JP.
COUNTRY_STEMS = [
    "1415555", "1212555", "1876555", "4420794", "4477009", "4520123", "3120123", "3161234",
    "4930123", "4915112", "4917012", "3314012", "3361234", "4681234", "4670123", "3531234",
    "3538712", "6121234", "6141234", "8131234", "8190123",
]  # fmt: skip


def make_lines(n: int, rng: random.Random, big_prefixes: list[str]) -> list[bytes]:
    start = datetime(2026, 11, 1, tzinfo=UTC)
    products = list(Product)
    lines = []
    for i in range(n):
        product = products[i % 3]
        if i % 4 == 3 and big_prefixes:  # a quarter dial numbers priced only by the big card
            number = rng.choice(big_prefixes) + "".join(rng.choices("0123456789", k=4))
            number = "+" + number[:15]
        else:
            number = "+" + rng.choice(COUNTRY_STEMS) + f"{rng.randrange(10_000):04d}"
        toll_free = "+18005550100"
        origin, destination = (
            (toll_free, number)
            if product is Product.CONFERENCING_DIALOUT
            else (
                number,
                toll_free,
            )
        )
        duration = 0 if rng.random() < 0.05 else rng.randint(1, 3600)
        call_start = start + timedelta(seconds=rng.randrange(29 * 86400))
        record = {
            "cdr_id": f"cdr-{i:09d}",
            "tenant_id": f"tenant-{rng.randrange(500):04d}",
            "product": product.value,
            "call_start": call_start.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "duration_seconds": duration,
            "origin": origin,
            "destination": destination,
            "user_id": f"user-{rng.randrange(10_000)}",
            "conference_id": f"conf-{rng.randrange(100_000)}",
        }
        lines.append(json.dumps(record).encode())
    return lines


def big_card(n_prefixes: int, rng: random.Random) -> RateCard:
    """A wholesale-style card: many long prefixes (country + area/operator codes), 1/1."""
    prefixes: set[str] = set()
    while len(prefixes) < n_prefixes:
        prefixes.add(
            rng.choice("23456789") + "".join(rng.choices("0123456789", k=rng.randint(2, 7)))
        )
    rates = [
        Rate(
            product=product,
            prefix=prefix,
            zone=f"wholesale-{prefix[:3]}",
            per_minute=Decimal(rng.randrange(10, 5000)).scaleb(-4),
            first_increment=1,
            next_increment=1,
        )
        for prefix in sorted(prefixes)
        for product in Product
    ]
    return RateCard.model_validate(
        {
            "rate_card_id": "wholesale-usd-2026-11",
            "plan": "wholesale",
            "currency": "USD",
            "effective_from": "2026-11-01T00:00:00Z",
            "rates": rates,
        }
    )


def measure(label: str, n: int, fn: Callable[[], object]) -> float:
    fn()  # warm up caches and lazily built validators
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    rate = n / best
    print(f"  {label:<42} {rate:>12,.0f} lines/s  {best / n * 1e6:8.2f} us/line")
    return rate


# Half the tenants on the standard USD card, half on the big wholesale card.
PLANS = (("standard", "USD"), ("wholesale", "USD"))

Lookup = tuple[RateCard, Product, str]


def prepare_lookups(lines: list[bytes], book: RateBook) -> list[Lookup]:
    """The (card, product, digits) of every line, so stage (4) times the lookup alone."""
    lookups = []
    charged = 0
    for i, line in enumerate(lines):
        cdr = CDR.model_validate_json(line)
        card = book.find_card(*PLANS[i & 1], cdr.call_start)
        if card is None:
            continue
        lookups.append((card, cdr.product, rated_number(cdr)))
        result = rate_cdr(cdr, book, plan=card.plan, currency=card.currency, rated_at=RATED_AT)
        charged += isinstance(result, Charge)
    print(f"mix: {charged / len(lines):.0%} rated, the rest no_rate (as in real traffic)\n")
    return lookups


def stages(
    lines: list[bytes], book: RateBook, lookups: list[Lookup]
) -> dict[str, Callable[[], None]]:
    def bare_json() -> None:
        loads = json.loads
        for line in lines:
            loads(line)

    def validate() -> None:
        parse = CDR.model_validate_json
        for line in lines:
            parse(line)

    def fast_validate() -> None:
        parse = parse_cdr
        for line in lines:
            parse(line)

    def validate_and_rate() -> None:
        parse = CDR.model_validate_json
        for i, line in enumerate(lines):
            plan, currency = PLANS[i & 1]
            rate_cdr(parse(line), book, plan=plan, currency=currency, rated_at=RATED_AT)

    def validate_rate_serialize() -> None:
        parse = CDR.model_validate_json
        for i, line in enumerate(lines):
            plan, currency = PLANS[i & 1]
            result = rate_cdr(parse(line), book, plan=plan, currency=currency, rated_at=RATED_AT)
            if isinstance(result, Charge):
                result.model_dump_json(exclude={"balance_after"})

    def pure_core() -> None:
        # What the ledger does per CDR (Ledger._cdr), state kept as objects (no store, no
        # markers): validate once (ingest.parse_cdr: what the pipeline uses), price, debit
        # the account, build and encode the Charge with the new balance.
        parse = parse_cdr
        policy = RechargePolicy()
        accounts: dict[str, Account] = {}
        for i, line in enumerate(lines):
            cdr = parse(line)
            assert not isinstance(cdr, Invalid), cdr
            account = accounts.get(cdr.tenant_id)
            if account is None:
                plan, currency = PLANS[i & 1]
                settings = TenantSettings(tenant_id=cdr.tenant_id, currency=currency, plan=plan)
                opened = open_or_update(None, settings, RATED_AT, policy)
                assert not isinstance(opened, Refusal), opened
                account = opened[0]
            priced = price_cdr(cdr, book, plan=account.plan, currency=account.currency)
            if isinstance(priced, Priced):
                account, _ = apply_charge(account, priced.amount, RATED_AT, policy)
                charge = priced.charge(rated_at=RATED_AT, balance_after=account.balance)
                encode_charge(charge, priced.tariff.charge_text)
            accounts[cdr.tenant_id] = account

    def lookup_only() -> None:
        find = book.lookup
        for card, product, digits in lookups:
            find(card, product, digits)

    return {
        "(1) json.loads": bare_json,
        "(2) CDR.model_validate_json": validate,
        "(2b) ingest.parse_cdr (same verdicts)": fast_validate,
        "(3) validate + rate_cdr": validate_and_rate,
        "(3b) validate + rate_cdr + Charge JSON": validate_rate_serialize,
        "(4) longest-prefix lookup alone": lookup_only,
        "(5) pure core: validate+rate+debit+Charge": pure_core,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200_000, help="CDR lines (default 200000)")
    parser.add_argument("--prefixes", type=int, default=30_000, help="synthetic card prefixes")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    rng = random.Random(args.seed)

    t0 = time.perf_counter()
    wholesale = big_card(args.prefixes, rng)
    book = RateBook.from_cards([*load_rate_cards(SAMPLE).cards, wholesale], source="sample+big")
    build = time.perf_counter() - t0
    n_rates = sum(len(c.rates) for c in book.cards)
    print(f"rate book: {len(book)} cards, {n_rates:,} rates, built in {build:.2f} s")

    lines = make_lines(args.n, rng, sorted({r.prefix for r in wholesale.rates}))
    print(f"{len(lines):,} CDR lines, {sum(map(len, lines)) / len(lines):.0f} B on average")
    lookups = prepare_lookups(lines, book)

    print(f"  {'stage':<42} {'throughput':>18}  {'per line':>11}")
    rates = {
        label: measure(label, len(lines), fn) for label, fn in stages(lines, book, lookups).items()
    }
    base = rates["(1) json.loads"]
    validated = rates["(2) CDR.model_validate_json"]
    rated = rates["(3) validate + rate_cdr"]
    print()
    fast = rates["(2b) ingest.parse_cdr (same verdicts)"]
    print(f"(2) / (1): validation costs {base / validated:.2f}x a bare json.loads")
    print(f"(2b) / (1): the fast path costs {base / fast:.2f}x a bare json.loads")
    print(f"(3) / (1): parse+validate+rate costs {base / rated:.2f}x a bare json.loads")
    core = rates["(5) pure core: validate+rate+debit+Charge"]
    print(
        f"(5) pure core: {core:,.0f} CDRs/s on one core (target >= 50,000); {base / core:.2f}x (1)"
    )


if __name__ == "__main__":
    main()
