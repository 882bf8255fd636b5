"""A simulated telephony platform: realistic CDRs for a list of tenants, and a publisher.

Used by `rating demo`, by `rating platform-sim` (docker-compose, load by hand) and by tests.
Every CDR is valid against the contract and ratable by ``ratecards/sample.json`` in USD and
EUR: numbers come from the countries that card prices (US, UK, Denmark, the Netherlands,
Germany), landline and mobile.

- ``conferencing_dialout``: the meeting bridge calls a participant; rated on the destination.
- ``conferencing_tollfree_dialin``: a participant calls the meeting's toll-free number;
  rated on the caller (origin).
- ``tollfree_inbound``: a customer calls the tenant's toll-free service number; rated on the
  caller (origin).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import uuid
from collections import Counter
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from rating.contracts import Product, format_time
from rating.settings import SettingsError, Topics, load_settings

#: (country, kind, E.164 prefix with "+", digits to append, weight). Prefixes are chosen
#: inside zones of the sample rate cards (and away from narrower ones, e.g. +1415, not +1876).
NUMBER_PLANS: tuple[tuple[str, str, str, int, int], ...] = (
    ("US", "landline", "+1415555", 4, 14),
    ("US", "landline", "+1212555", 4, 8),
    ("US", "mobile", "+1646555", 4, 6),
    ("UK", "landline", "+44207946", 4, 7),
    ("UK", "mobile", "+447700900", 3, 9),
    ("DK", "landline", "+4533", 6, 6),
    ("DK", "mobile", "+4520", 6, 6),
    ("NL", "landline", "+3120", 7, 6),
    ("NL", "mobile", "+316", 8, 9),
    ("DE", "landline", "+4930", 8, 7),
    ("DE", "mobile", "+49151", 8, 8),
)

#: The platform's own numbers: the meeting bridge that dials out and the toll-free numbers
#: (conference dial-in and service lines). They are never the rated side.
BRIDGE_NUMBERS = ("+14255550100", "+442079460100", "+31205550100")
CONFERENCE_TOLLFREE = ("+18005550100", "+448000590100", "+318000220100")
SERVICE_TOLLFREE = ("+18885550123", "+18665550199", "+448081570123")

#: Product mix: conference dial-out dominates, then toll-free dial-in, then service lines.
PRODUCT_WEIGHTS: tuple[tuple[Product, int], ...] = (
    (Product.CONFERENCING_DIALOUT, 50),
    (Product.CONFERENCING_TOLLFREE_DIALIN, 30),
    (Product.TOLLFREE_INBOUND, 20),
)


def topic_for(product: Product | str, topics: Topics | None = None) -> str:
    """The contract topic a CDR of ``product`` is published on."""
    t = topics or Topics()
    return t.cdr_tollfree if Product(product) is Product.TOLLFREE_INBOUND else t.cdr_audio


def random_number(rng: random.Random) -> str:
    """A subscriber number (landline or mobile) from a country the sample card prices."""
    plan = rng.choices(NUMBER_PLANS, weights=[p[4] for p in NUMBER_PLANS])[0]
    _, _, prefix, digits, _ = plan
    return prefix + "".join(str(rng.randrange(10)) for _ in range(digits))


def random_duration(rng: random.Random) -> int:
    """Answered seconds, 0..1800: some unanswered, some short, most a real meeting's length."""
    roll = rng.random()
    if roll < 0.10:
        return 0  # not answered
    if roll < 0.25:
        return rng.randint(3, 180)  # dropped off, wrong number, a quick check-in
    return round(rng.triangular(300, 1800, 1500))  # stayed for the meeting


def generate_cdrs(
    tenants: Sequence[str],
    count: int,
    *,
    rng: random.Random | None = None,
    now: datetime | None = None,
) -> list[dict[str, Any]]:
    """``count`` CDR dicts (contract field names), spread round-robin over ``tenants``
    (repeat a tenant in the list to give it a bigger share of the traffic).

    Calls started within the last hour and have ended by ``now``; ``cdr_id`` is unique
    (random, or repeatable for a seeded ``rng``).
    """
    if not tenants:
        raise ValueError("at least one tenant is needed")
    rng = rng or random.Random()  # noqa: S311 - a simulation, not a secret
    now = (now or datetime.now(UTC)).astimezone(UTC).replace(microsecond=0)
    products = [p for p, _ in PRODUCT_WEIGHTS]
    weights = [w for _, w in PRODUCT_WEIGHTS]
    out: list[dict[str, Any]] = []
    for i in range(count):
        tenant = tenants[i % len(tenants)]
        product = rng.choices(products, weights=weights)[0]
        duration = random_duration(rng)
        # Ended before now, started at most an hour ago.
        start = now - timedelta(seconds=rng.randint(duration + 1, 3600))
        cdr: dict[str, Any] = {
            "cdr_id": f"cdr-{uuid.UUID(int=rng.getrandbits(128), version=4)}",
            "tenant_id": tenant,
            "product": product.value,
            "call_start": format_time(start),
            "duration_seconds": duration,
        }
        if product is Product.CONFERENCING_DIALOUT:
            cdr["origin"] = rng.choice(BRIDGE_NUMBERS)
            cdr["destination"] = random_number(rng)
        else:
            tollfree = rng.choice(
                CONFERENCE_TOLLFREE
                if product is Product.CONFERENCING_TOLLFREE_DIALIN
                else SERVICE_TOLLFREE
            )
            cdr["origin"] = random_number(rng)
            cdr["destination"] = tollfree
            cdr["toll_free_number"] = tollfree
        if product is not Product.TOLLFREE_INBOUND:
            cdr["conference_id"] = f"conf-{tenant}-{rng.randrange(1, 6)}"
            cdr["user_id"] = f"user-{rng.randrange(1, 40):03d}@{tenant}"
        out.append(cdr)
    return out


def encode(cdr: dict[str, Any]) -> tuple[bytes, bytes]:
    """(key, value) as the platform publishes it: key = tenant id, value = JSON."""
    return str(cdr["tenant_id"]).encode(), json.dumps(cdr, separators=(",", ":")).encode()


async def publish_cdrs(
    bootstrap: str,
    cdrs: Iterable[dict[str, Any]],
    *,
    topics: Topics | None = None,
    interval: float = 0.0,
) -> Counter[str]:
    """Publish CDRs keyed by tenant on their product's topic; returns messages per topic.

    ``interval`` seconds between CDRs spreads them out like calls ending over time.
    """
    from aiokafka import AIOKafkaProducer  # type: ignore[import-untyped]

    sent: Counter[str] = Counter()
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    await producer.start()
    try:
        pending = []
        for cdr in cdrs:
            topic = topic_for(cdr["product"], topics)
            key, value = encode(cdr)
            pending.append(await producer.send(topic, key=key, value=value))
            sent[topic] += 1
            if interval > 0:
                await asyncio.sleep(interval)
        await asyncio.gather(*pending)
    finally:
        await producer.stop()
    return sent


# --- `rating platform-sim` ----------------------------------------------------------------


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--cdrs", type=int, default=100, help="how many CDRs to send")
    p.add_argument(
        "--tenants", default="contoso,fabrikam", help="comma-separated tenant ids (must exist)"
    )
    p.add_argument("--seed", type=int, default=None, help="random seed (repeatable CDRs)")
    p.add_argument(
        "--rate", type=float, default=0.0, help="CDRs per second (default: as fast as possible)"
    )
    p.add_argument(
        "--bootstrap", default=None, help="Kafka bootstrap (default: RATING_KAFKA_BOOTSTRAP)"
    )
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="print the CDRs as JSON lines instead of publishing (e.g. for `rating rate`)",
    )


def run_platform_sim(args: argparse.Namespace) -> int:
    tenants = [t.strip() for t in str(args.tenants).split(",") if t.strip()]
    if not tenants:
        print("rating platform-sim: --tenants is empty", file=sys.stderr)
        return 2
    if args.cdrs < 0 or args.rate < 0:
        print("rating platform-sim: --cdrs and --rate must be >= 0", file=sys.stderr)
        return 2
    rng = random.Random(args.seed)  # noqa: S311 - a simulation
    cdrs = generate_cdrs(tenants, args.cdrs, rng=rng)
    if args.dry_run:
        for cdr in cdrs:
            print(json.dumps(cdr, separators=(",", ":")))
        return 0
    try:
        settings = load_settings()
    except SettingsError as exc:
        print(f"rating platform-sim: {exc}", file=sys.stderr)
        return 2
    bootstrap = args.bootstrap or settings.kafka_bootstrap
    interval = 1.0 / args.rate if args.rate > 0 else 0.0
    sent = asyncio.run(publish_cdrs(bootstrap, cdrs, topics=settings.topics, interval=interval))
    per_topic = ", ".join(f"{n} on {topic}" for topic, n in sorted(sent.items()))
    print(f"rating platform-sim: published {len(cdrs)} CDRs to {bootstrap}: {per_topic}")
    return 0
