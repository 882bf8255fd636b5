"""A real scrape (#6): Debian's Prometheus scrapes a live `rating worker` on the embedded broker.

The unit tests check the collectors and promtool checks the rules against synthetic series;
this proves the two meet: the names, labels and values a worker exposes are what Prometheus
ingests, and the repository's recording and alert rules load and evaluate against them.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from tests.integration.harness import (
    REPO,
    Env,
    Worker,
    cdr_msg,
    funds_msg,
    http_get,
    produce,
    read_json,
    settings_msg,
    wait_until,
)
from tests.integration.prometheus_server import Prometheus

RULES_DIR = REPO / "deploy" / "prometheus"
JOB = "rating"
# The recording group evaluates every 30 s at a phase fixed by its name and file path, so its
# first evaluation can come up to 30 s after Prometheus starts; Prometheus starts first.
RULES_TIMEOUT = 40.0


def rule_files() -> list[Path]:
    files = [RULES_DIR / "alerts.yml"]
    recording = RULES_DIR / "recording.yml"
    if recording.exists():
        files.insert(0, recording)
    return files


@pytest.fixture
def scraped_worker(
    pipeline_env: Env, workers: list[Worker], tmp_path: Path
) -> Iterator[tuple[Worker, Prometheus]]:
    """A worker and a Prometheus scraping it; Prometheus is always stopped by PID."""
    worker = Worker(pipeline_env, tmp_path)  # picks its port; not started yet
    workers.append(worker)
    prom = Prometheus(tmp_path / "prometheus", [f"127.0.0.1:{worker.port}"], rule_files(), job=JOB)
    try:
        # Prometheus first: its rule groups start their clocks while the worker joins.
        prom.start()
        worker.start()
        yield worker, prom
    finally:
        prom.stop()


def tenant(worker: Worker, tenant_id: str) -> dict[str, Any] | None:
    status, body = http_get(f"{worker.url}/tenants/{tenant_id}")
    return json.loads(body) if status == 200 else None


def eventually(
    prom: Prometheus, promql: str, check: Callable[[float], bool], what: str, timeout: float = 15
) -> float:
    """Poll an instant query until its single value passes ``check``; return that value."""
    seen: list[float | None] = []

    def ok() -> bool:
        value = prom.scalar(promql)
        seen.append(value)
        return value is not None and check(value)

    try:
        wait_until(ok, timeout, what, interval=0.25)
    except AssertionError as exc:
        raise AssertionError(f"{exc}; {promql} last = {seen[-1:]}") from None
    value = seen[-1]
    assert value is not None
    return value


def test_prometheus_scrapes_worker_metrics_and_rules_evaluate(
    pipeline_env: Env, scraped_worker: tuple[Worker, Prometheus]
) -> None:
    env, (w, prom) = pipeline_env, scraped_worker
    b = env.bootstrap

    # The target is scraped before any CDR flows.
    def target_up() -> bool:
        targets = [t for t in prom.targets() if t["labels"].get("job") == JOB]
        assert len(targets) <= 1, targets  # none until service discovery has run
        return bool(targets) and targets[0]["health"] == "up"

    wait_until(target_up, 15, "the rating target to be up")

    produce(b, env.topic("tenant_settings"), [settings_msg("acme", "USD")])
    wait_until(lambda: tenant(w, "acme"), 30, "tenant acme")
    produce(b, env.topic("funds"), [funds_msg("acme", "f1", "100.00")])
    wait_until(lambda: (tenant(w, "acme") or {}).get("balance") == "100.00", 30, "acme's funds")

    good = [
        cdr_msg("acme", f"p{i}", duration=d, destination="+14155550100")
        for i, d in enumerate((61, 120, 30, 200, 59))
    ]
    bad = [
        (b"acme", b"{not json"),  # malformed
        (b"globex", cdr_msg("acme", "k1")[1]),  # key_mismatch
    ]
    produce(b, env.topic("cdr_audio"), [*good, good[1], *bad])
    ids = {f"p{i}" for i in range(len(good))}

    def charges() -> list[dict[str, Any]]:
        found = read_json(b, env.topic("charges"))
        return found if {c["cdr_id"] for c in found} >= ids else []

    charged = wait_until(charges, 30, "five charges")
    assert sorted(c["cdr_id"] for c in charged) == sorted(ids), charged
    assert {c["currency"] for c in charged} == {"USD"}
    amount = sum(Decimal(c["amount"]) for c in charged)
    assert amount > 0

    # Counters, as Prometheus ingested them.
    def equals(n: float) -> Callable[[float], bool]:
        return lambda v: v == n

    def at_least(n: float) -> Callable[[float], bool]:
        return lambda v: v >= n

    eventually(prom, "sum(rating_cdrs_charged_total)", equals(5), "5 charged")
    eventually(prom, "sum(rating_cdrs_consumed_total)", equals(8), "8 consumed")
    eventually(
        prom, 'sum(rating_cdrs_rejected_total{reason="malformed"})', equals(1), "1 malformed"
    )
    eventually(
        prom,
        'sum(rating_cdrs_rejected_total{reason="key_mismatch"})',
        equals(1),
        "1 key mismatch",
    )
    eventually(prom, "sum(rating_cdrs_rejected_total)", equals(2), "2 rejections in all")
    eventually(prom, "sum(rating_cdrs_duplicate_total)", equals(1), "1 duplicate")
    eventually(
        prom,
        "sum(rating_processing_latency_seconds_count)",
        at_least(5),
        "5 latency observations",
    )
    eventually(prom, "sum(rating_event_lag_seconds_count)", at_least(5), "5 event-lag observations")
    usd = eventually(
        prom,
        'sum(rating_charged_amount_total{currency="USD"})',
        lambda v: Decimal(str(v)).quantize(Decimal("0.0001")) == amount.quantize(Decimal("0.0001")),
        f"the charged USD amount to be {amount}",
    )
    assert usd > 0

    # Labels: every charged/rejected series names its topic, product and currency.
    charged_series = prom.query("rating_cdrs_charged_total")
    assert [s["metric"].get("product") for s in charged_series] == ["conferencing_dialout"]
    assert [s["metric"].get("currency") for s in charged_series] == ["USD"]
    rejected = {
        (s["metric"]["topic"], s["metric"]["reason"])
        for s in prom.query("rating_cdrs_rejected_total > 0")
    }
    assert rejected == {
        (env.topic("cdr_audio"), "malformed"),
        (env.topic("cdr_audio"), "key_mismatch"),
    }
    consumed = {s["metric"]["topic"] for s in prom.query("rating_cdrs_consumed_total > 0")}
    assert consumed == {env.topic("cdr_audio")}

    # Identity and rate cards.
    info = prom.query(f'rating_worker_info{{job="{JOB}"}}')
    assert len(info) == 1, info
    assert info[0]["metric"]["app_id"] == env.app_id
    assert info[0]["metric"].get("version")
    assert float(info[0]["value"][1]) == 1
    cards = prom.query("rating_ratecard_active_info")
    assert cards, "no rating_ratecard_active_info series"
    assert all(float(s["value"][1]) == 1 for s in cards)
    assert {"rate_card_id", "plan", "currency"} <= set(cards[0]["metric"])
    assert prom.scalar(f'up{{job="{JOB}"}}') == 1

    # The repository's rule files loaded, and every rule evaluated without an error.
    expected_groups = {"rating.rules"} | (
        {"rating.slo"} if (RULES_DIR / "recording.yml").exists() else set()
    )

    def rules_ok() -> bool:
        groups = prom.rule_groups()
        assert {g["name"] for g in groups} == expected_groups, groups
        bad = [
            (r["name"], r.get("lastError"))
            for g in groups
            for r in g["rules"]
            if r["health"] == "err" or r.get("lastError")
        ]
        assert not bad, f"rules failing to evaluate: {bad}"
        return all(r["health"] == "ok" for g in groups for r in g["rules"])

    wait_until(rules_ok, RULES_TIMEOUT, "every rule to have evaluated with health ok", 0.5)
    # Nothing about this healthy run is alarming; firing alerts would mean a rule is wrong.
    firing = [a for a in prom.api("alerts")["alerts"] if a["state"] == "firing"]
    assert not firing, firing
