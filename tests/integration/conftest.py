"""Integration fixtures: one embedded broker per test session (or a real Kafka)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from rating.broker import EmbeddedBroker
from tests.integration.harness import Env, Worker


@pytest.fixture(scope="session")
def bootstrap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """RATING_TEST_BOOTSTRAP points the suite at a real Kafka; otherwise start Tansu."""
    external = os.environ.get("RATING_TEST_BOOTSTRAP")
    if external:
        yield external
        return
    log = tmp_path_factory.mktemp("broker") / "broker.log"
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


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/integration" in str(item.fspath):
            item.add_marker(pytest.mark.integration)
