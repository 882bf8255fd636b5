"""Integration fixtures: one broker per test session, the embedded Tansu or Apache Kafka.

RATING_TEST_BROKER selects it: ``tansu`` (default, `make test`) or ``kafka`` (`make
test-kafka`: Apache Kafka from Maven Central, see rating.kafka_local). RATING_TEST_BOOTSTRAP
points the suite at a running cluster instead of starting one; RATING_TEST_BROKER then says
what that cluster is. Tests marked ``kafka_only`` (transactions, ...) run only against Kafka
and are reported as deselected elsewhere, never silently skipped.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from rating.broker import EmbeddedBroker
from rating.kafka_local import LocalKafka
from tests.integration.harness import Env, Worker, broker_under_test, http_get


@pytest.fixture(scope="session")
def broker_kind() -> str:
    return broker_under_test()


@pytest.fixture(scope="session")
def bootstrap(broker_kind: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    external = os.environ.get("RATING_TEST_BOOTSTRAP")
    if external:
        yield external
        return
    log = tmp_path_factory.mktemp("broker") / f"{broker_kind}.log"
    if broker_kind == "kafka":
        # A failure to start (no Java, no Maven) is an error of every test, not a skip.
        with LocalKafka(log=log) as kafka:
            yield kafka.bootstrap
        return
    with EmbeddedBroker(log=log) as broker:
        yield broker.bootstrap


@pytest.fixture
def pipeline_env(bootstrap: str) -> Env:
    env = Env(bootstrap)
    env.create_topics()
    return env


@pytest.fixture
def workers(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[list[Worker]]:
    """Tests append the workers they start; all are stopped by PID afterwards. When the test
    failed, the end of each worker's log goes into the report (CI keeps nothing else)."""
    started: list[Worker] = []
    yield started
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed:  # before the stop floods the log
        for w in started:
            report.sections.append((f"worker log {w.log_path.name}", _log_digest(w)))
    for w in started:
        w.stop()


def _log_digest(worker: Worker) -> str:
    """A failed test's view of a worker: its last warnings and errors, then its last lines."""
    lines = worker.tail(100_000).splitlines()
    levels = ("] [WARNING] ", "] [ERROR] ", "] [CRITICAL] ")
    loud = [line[:400] for line in lines if any(level in line for level in levels)]
    status, body = http_get(f"{worker.url}/metrics")
    gauges = (
        "rating_partitions_owned",
        "rating_consumer_lag_messages",
        "rating_ledger_batch_size_count",
        "rating_ledger_fenced_total",
        "rating_tenants ",
        "rating_tenant_settings_applied_total",
        "rating_cdrs_consumed_total",
        "rating_cdrs_rejected_total",
        "rating_held_messages",
        "rating_internal_errors_total",
    )
    shown = [m for m in body.splitlines() if m.startswith(gauges)] if status == 200 else []
    return "\n".join(
        [
            "warnings and errors (last 20):",
            *loud[-20:],
            "metrics:",
            *shown,
            "last lines:",
            *lines[-15:],
        ]
    )


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    # The call phase's report, for fixtures' teardown to look at (pytest's documented recipe).
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    kafka = broker_under_test() == "kafka"
    kept: list[pytest.Item] = []
    deselected: list[pytest.Item] = []
    for item in items:
        if "tests/integration" in str(item.fspath):
            item.add_marker(pytest.mark.integration)
        if not kafka and item.get_closest_marker("kafka_only") is not None:
            deselected.append(item)
        else:
            kept.append(item)
    if deselected:
        config.hook.pytest_deselected(items=deselected)
        items[:] = kept
