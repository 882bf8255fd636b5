"""The simulated platform's CDRs: contract-valid, all products, and ratable by the sample card."""

from __future__ import annotations

import argparse
import json
import random
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from rating.contracts import CDR, Charge, Product
from rating.domain.ratecard import load_rate_cards
from rating.domain.rating import rate_cdr, rated_number
from rating.platform_sim import (
    NUMBER_PLANS,
    add_arguments,
    encode,
    generate_cdrs,
    run_platform_sim,
    topic_for,
)
from rating.settings import Topics

SAMPLE = Path(__file__).resolve().parents[2] / "ratecards" / "sample.json"
NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
CURRENCY = {"contoso": "USD", "fabrikam": "EUR"}


@pytest.fixture(scope="module")
def cdrs() -> list[dict[str, object]]:
    return generate_cdrs(["contoso", "fabrikam"], 400, rng=random.Random(1), now=NOW)


def test_every_cdr_is_valid_against_the_contract(cdrs: list[dict[str, object]]) -> None:
    for raw in cdrs:
        cdr = CDR.model_validate(raw)  # E.164 numbers, RFC 3339 time, product, duration
        assert cdr.origin.startswith("+")
        assert cdr.destination.startswith("+")
        # The wire form round-trips through the contract model as the platform sends it.
        key, value = encode(raw)
        assert key == str(raw["tenant_id"]).encode()
        assert CDR.model_validate_json(value) == cdr


def test_products_tenants_and_ids(cdrs: list[dict[str, object]]) -> None:
    assert {c["product"] for c in cdrs} == {p.value for p in Product}
    assert Counter(c["tenant_id"] for c in cdrs) == {"contoso": 200, "fabrikam": 200}
    assert len({c["cdr_id"] for c in cdrs}) == len(cdrs)
    for c in cdrs:
        if c["product"] == Product.CONFERENCING_DIALOUT:
            assert "toll_free_number" not in c
        else:
            assert c["toll_free_number"] == c["destination"]


def test_durations_and_times(cdrs: list[dict[str, object]]) -> None:
    durations = [int(str(c["duration_seconds"])) for c in cdrs]
    assert all(0 <= d <= 1800 for d in durations)
    assert 0 in durations  # some calls are not answered
    assert max(durations) > 600
    for raw in cdrs:
        cdr = CDR.model_validate(raw)
        assert NOW - timedelta(hours=1) <= cdr.call_start
        assert cdr.call_start + timedelta(seconds=cdr.duration_seconds) <= NOW


def test_rated_numbers_come_from_priced_countries(cdrs: list[dict[str, object]]) -> None:
    prefixes = tuple(prefix.removeprefix("+") for _, _, prefix, _, _ in NUMBER_PLANS)
    for raw in cdrs:
        assert rated_number(CDR.model_validate(raw)).startswith(prefixes)


def test_every_cdr_is_ratable_for_its_tenants_currency(cdrs: list[dict[str, object]]) -> None:
    book = load_rate_cards(SAMPLE)
    zones: set[str] = set()
    for raw in cdrs:
        cdr = CDR.model_validate(raw)
        currency = CURRENCY[cdr.tenant_id]
        charge = rate_cdr(cdr, book, plan="standard", currency=currency, rated_at=NOW)
        assert isinstance(charge, Charge), (raw, charge)
        assert charge.currency == currency
        if cdr.duration_seconds == 0:
            assert charge.amount == 0
        else:
            assert charge.amount > 0
        zones.add(charge.zone)
    # Landlines and mobiles of several countries, rated on the right side of the call.
    assert {"UK mobile", "Netherlands mobile", "Germany mobile", "Denmark", "US/CA"} <= zones


def test_every_cdr_is_ratable_in_both_currencies(cdrs: list[dict[str, object]]) -> None:
    book = load_rate_cards(SAMPLE)
    for raw in cdrs:
        cdr = CDR.model_validate(raw)
        for currency in ("USD", "EUR"):
            charge = rate_cdr(cdr, book, plan="standard", currency=currency, rated_at=NOW)
            assert isinstance(charge, Charge), (raw, currency, charge)


def test_seeded_generation_repeats() -> None:
    a = generate_cdrs(["t1"], 20, rng=random.Random(5), now=NOW)
    b = generate_cdrs(["t1"], 20, rng=random.Random(5), now=NOW)
    assert a == b


def test_a_repeated_tenant_gets_a_bigger_share() -> None:
    cdrs = generate_cdrs(["a", "a", "b", "a"], 40, rng=random.Random(2), now=NOW)
    assert Counter(c["tenant_id"] for c in cdrs) == {"a": 30, "b": 10}


def test_no_tenants_is_an_error() -> None:
    with pytest.raises(ValueError, match="tenant"):
        generate_cdrs([], 3)


def test_topics_follow_the_contract() -> None:
    t = Topics()
    assert topic_for(Product.CONFERENCING_DIALOUT, t) == "cdr.audio-conferencing"
    assert topic_for("conferencing_tollfree_dialin", t) == "cdr.audio-conferencing"
    assert topic_for(Product.TOLLFREE_INBOUND, t) == "cdr.toll-free"


def _args(*argv: str) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    add_arguments(p)
    return p.parse_args(list(argv))


def test_cli_dry_run_prints_json_lines(capsys: pytest.CaptureFixture[str]) -> None:
    code = run_platform_sim(_args("--cdrs", "7", "--tenants", "x,y", "--seed", "3", "--dry-run"))
    assert code == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 7
    assert {json.loads(line)["tenant_id"] for line in lines} == {"x", "y"}
    for line in lines:
        CDR.model_validate_json(line)


def test_cli_refuses_bad_arguments(capsys: pytest.CaptureFixture[str]) -> None:
    assert run_platform_sim(_args("--tenants", " , ", "--dry-run")) == 2
    assert run_platform_sim(_args("--cdrs", "-1", "--dry-run")) == 2
    assert "platform-sim" in capsys.readouterr().err
