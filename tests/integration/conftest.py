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

import pytest

from rating.broker import EmbeddedBroker
from rating.kafka_local import LocalKafka
from tests.integration.harness import Env, Worker, broker_under_test


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
def workers(tmp_path: Path) -> Iterator[list[Worker]]:
    """Tests append the workers they start; all are stopped by PID afterwards."""
    started: list[Worker] = []
    yield started
    for w in started:
        w.stop()


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
