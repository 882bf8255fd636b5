"""Real processes for integration tests: the embedded broker, `rating worker`s, Kafka clients.

Every wait has a deadline and polls a condition; every process started is stopped by PID.
Each test gets its own topic names (a unique prefix) so tests never see each other's data.

The helpers themselves live in :mod:`rating.testing` (shared with the benchmarks and the
demo); this module adds what is the test suite's own: which broker it runs on, and the
worker settings that follow from that.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from rating import testing
from rating.streaming.epochs import epoch_of
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


def trace_cdr(env: Env, cdr_id: str) -> str:
    """Every record that names one CDR (charged twice, or never): its input copies, its ledger
    records (with their timestamps: a Charge's rated_at is its ledger record's), its Charges,
    and on the changelog its marker, the outbox entries of its ledger records and its
    tenant's account writes next to them, each with its writer's epoch (streaming/epochs.py)."""
    try:
        lines: list[str] = []
        needle = cdr_id.encode()
        ledger = f"{env.app_id}-ledger"
        topics = [env.topic("cdr_audio"), env.topic("cdr_tollfree"), ledger, env.topic("charges")]
        tenant = None
        ledger_at: set[tuple[int, int]] = set()
        for topic in topics:
            for r in read_records(env.bootstrap, topic, timeout=30):
                value = r.value or b""
                if needle in value:
                    if topic == ledger:
                        ledger_at.add((r.partition, r.offset))
                    elif tenant is None:
                        tenant = json.loads(value)["tenant_id"]
                    lines.append(
                        f"{topic}[{r.partition}]@{r.offset} ts={r.timestamp} {value[:300]!r}"
                    )
        outbox = {(p, f'"o/{tenant}/{o}"'.encode()) for p, o in ledger_at}
        changelog = read_records(env.bootstrap, f"{env.app_id}-accounts-changelog", timeout=30)

        def mine(r: Record) -> bool:
            key = r.key or b""
            return needle in key or needle in (r.value or b"") or (r.partition, key) in outbox

        near: set[tuple[int, int]] = set()
        for r in changelog:
            if mine(r):
                near.update((r.partition, o) for o in range(r.offset - 12, r.offset + 13))
        account = f'"a/{tenant}"'.encode()
        for r in changelog:
            key = r.key or b""
            if mine(r) or (key == account and (r.partition, r.offset) in near):
                lines.append(
                    f"changelog[{r.partition}]@{r.offset} epoch={epoch_of(r.headers)} "
                    f"ts={r.timestamp} key={key!r} {(r.value or b'<tombstone>')[:160]!r}"
                )
        return "\n".join(lines)
    except Exception as exc:  # a diagnosis must never hide the failure it explains
        return f"(no trace: {type(exc).__name__}: {exc})"
