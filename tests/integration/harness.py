"""Real processes for integration tests: the embedded broker, `rating worker`s, Kafka clients.

Every wait has a deadline and polls a condition; every process started is stopped by PID.
Each test gets its own topic names (a unique prefix) so tests never see each other's data.

The helpers themselves live in :mod:`rating.testing` (shared with the benchmarks and the
demo); this module adds what is the test suite's own: which broker it runs on, and the
worker settings that follow from that.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from rating import testing
from rating.testing import (
    ROCKSDB,
    Record,
    Worker,
    cdr_msg,
    funds_msg,
    http_call,
    http_exchange,
    http_get,
    http_request,
    metric_value,
    produce,
    rating_command,
    read_json,
    read_records,
    read_topic,
    recent_call_start,
    settings_msg,
    wait_until,
)

REPO = Path(__file__).resolve().parents[2]
SAMPLE_CARDS = REPO / "ratecards" / "sample.json"

BROKERS = ("tansu", "kafka")


def broker_under_test() -> str:
    """Which broker the suite runs on (RATING_TEST_BROKER): ``tansu`` or ``kafka``."""
    kind = os.environ.get("RATING_TEST_BROKER", "tansu").strip().lower() or "tansu"
    if kind not in BROKERS:
        raise ValueError(f"RATING_TEST_BROKER={kind!r}: expected one of {', '.join(BROKERS)}")
    return kind


def broker_worker_env() -> dict[str, str]:
    """Worker settings that depend on the broker, as deployed on it.

    The changelog seal only works around Tansu's end offsets; on Apache Kafka the workers run
    without it (README, "Running on Apache Kafka"). RATING_TEST_CHANGELOG_SEAL overrides.
    """
    seal = os.environ.get("RATING_TEST_CHANGELOG_SEAL")  # to compare both ways on one broker
    if seal is None:
        seal = "false" if broker_under_test() == "kafka" else "true"
    return {"RATING_CHANGELOG_SEAL": seal}


@dataclass
class Env(testing.Env):
    """:class:`rating.testing.Env` with the worker settings of the broker under test."""

    broker_env: dict[str, str] = field(default_factory=broker_worker_env)


def reconcile(
    env: testing.Env, *args: str, urls: Iterable[str] = (), timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    """`rating reconcile` as an operator runs it, on ``env``'s topics, asking ``urls``."""
    cmd = rating_command("reconcile", *args)
    for url in urls:
        cmd += ["--url", url]
    return subprocess.run(
        cmd, env=env.worker_env(), capture_output=True, text=True, timeout=timeout, check=False
    )


__all__ = [
    "REPO",
    "ROCKSDB",
    "SAMPLE_CARDS",
    "Env",
    "Record",
    "Worker",
    "broker_under_test",
    "broker_worker_env",
    "cdr_msg",
    "funds_msg",
    "http_call",
    "http_exchange",
    "http_get",
    "http_request",
    "metric_value",
    "produce",
    "read_json",
    "read_records",
    "read_topic",
    "recent_call_start",
    "reconcile",
    "settings_msg",
    "wait_until",
]
