"""Real processes for integration tests: the embedded broker, `rating worker`s, Kafka clients.

Every wait has a deadline and polls a condition; every process started is stopped by PID.
Each test gets its own topic names (a unique prefix) so tests never see each other's data.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from rating.broker import free_port

REPO = Path(__file__).resolve().parents[2]
SAMPLE_CARDS = REPO / "ratecards" / "sample.json"

TOPIC_FIELDS = {
    "cdr_audio": "cdr.audio-conferencing",
    "cdr_tollfree": "cdr.toll-free",
    "tenant_settings": "rating.tenant-settings",
    "funds": "billing.funds",
    "charges": "rating.charges",
    "recharge_commands": "billing.recharge-commands",
    "balance_events": "rating.balance-events",
    "rejected": "rating.rejected",
}


def wait_until(
    predicate: Callable[[], Any],
    timeout: float,
    what: str,
    interval: float = 0.1,
    *,
    fail: bool = True,
) -> Any:
    """Poll ``predicate`` until it returns something truthy; fail naming ``what``.

    With ``fail=False`` the last value is returned instead, for a richer assertion.
    """
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    if not fail:
        return last
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what} (last: {last!r})")


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
class Env:
    """One isolated pipeline: unique app id and topic names on a shared broker."""

    bootstrap: str
    name: str = field(default_factory=lambda: f"t{uuid.uuid4().hex[:8]}")
    input_partitions: int = 3
    partitions: int = 4
    broker_env: dict[str, str] = field(default_factory=broker_worker_env)

    @property
    def app_id(self) -> str:
        return f"rating-{self.name}"

    def topic(self, field_name: str) -> str:
        return f"{self.name}.{TOPIC_FIELDS[field_name]}"

    def worker_env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("RATING_")}
        env.update(
            {
                "RATING_KAFKA_BOOTSTRAP": self.bootstrap,
                "RATING_APP_ID": self.app_id,
                "RATING_RATE_CARDS": str(SAMPLE_CARDS),
                "RATING_PARTITIONS": str(self.partitions),
                "RATING_SESSION_TIMEOUT_SECONDS": "6",
                "RATING_REBALANCE_TIMEOUT_SECONDS": "6",
                "RATING_HEARTBEAT_SECONDS": "1",
                "RATING_COMMIT_INTERVAL_SECONDS": "0.5",
                "RATING_TICK_SECONDS": "1",
                # Explicit: memory is faster to start; the crash tests and one pipeline test
                # pass ROCKSDB (each Worker has its own RATING_DATA_DIR).
                "RATING_STORE": "memory://",
                # Short, so tests of unknown tenants see the rejection in seconds; tests of
                # the hold itself set their own.
                "RATING_UNKNOWN_TENANT_HOLD_SECONDS": "3",
                "RATING_LOG_LEVEL": "INFO",
                "PYTHONUNBUFFERED": "1",
            }
        )
        for f in TOPIC_FIELDS:
            env[f"RATING_TOPIC_{f.upper()}"] = self.topic(f)
        env.update(self.broker_env)
        env.update(extra)
        return env

    def create_topics(self) -> None:
        """Input topics with a partition count unlike ours: the pipeline must repartition."""

        async def go() -> None:
            admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap)
            await admin.start()
            try:
                topics = [
                    NewTopic(self.topic(f), self.input_partitions, 1)
                    for f in ("cdr_audio", "cdr_tollfree", "funds")
                ]
                topics.append(
                    NewTopic(
                        self.topic("tenant_settings"),
                        self.input_partitions,
                        1,
                        topic_configs={"cleanup.policy": "compact"},
                    )
                )
                topics += [
                    NewTopic(self.topic(f), 1, 1)
                    for f in ("charges", "recharge_commands", "balance_events", "rejected")
                ]
                await admin.create_topics(topics)
            finally:
                await admin.close()

        asyncio.run(go())


#: Worker(..., **ROCKSDB): the persistent store (the production default).
ROCKSDB = {"RATING_STORE": "rocksdict://"}


class Worker:
    """A real `rating worker` process."""

    def __init__(self, env: Env, log_dir: Path, index: int = 0, **extra: str) -> None:
        self.env = env
        self.port = free_port()
        self.log_path = log_dir / f"worker-{env.name}-{index}-{self.port}.log"
        self.extra = {
            "RATING_WEB_PORT": str(self.port),
            "RATING_DATA_DIR": str(log_dir / f"data-{env.name}-{index}-{self.port}"),
            **extra,
        }
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def data_dir(self) -> Path:
        return Path(self.extra["RATING_DATA_DIR"])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, wait_ready: bool = True, timeout: float = 60) -> Worker:
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "rating", "worker"],
            env=self.env.worker_env(**self.extra),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        if wait_ready:
            self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float = 60) -> None:
        def ready() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"worker exited {self.proc.returncode}:\n{self.tail()}")
            status, _ = http_get(f"{self.url}/ready")
            return status == 200

        wait_until(ready, timeout, f"worker on :{self.port} to be ready")

    def kill(self) -> None:
        """SIGKILL: no flush, no commit, no goodbye."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.kill()

    def tail(self, n: int = 60) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return "(no log)"

    def metrics(self) -> str:
        status, body = http_get(f"{self.url}/metrics")
        assert status == 200, body
        return body


def reconcile(
    env: Env, *args: str, urls: Iterable[str] = (), timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    """`rating reconcile` as an operator runs it, on ``env``'s topics, asking ``urls``."""
    cmd = [sys.executable, "-m", "rating", "reconcile", *args]
    for url in urls:
        cmd += ["--url", url]
    return subprocess.run(
        cmd, env=env.worker_env(), capture_output=True, text=True, timeout=timeout, check=False
    )


def http_get(url: str, headers: dict[str, str] | None = None) -> tuple[int, str]:
    return http_request("GET", url, headers=headers)


def http_request(
    method: str, url: str, body: Any = None, headers: dict[str, str] | None = None
) -> tuple[int, str]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
        return 0, ""


def metric_value(text: str, name: str, **labels: str) -> float:
    """Sum of the samples of ``name`` whose labels include ``labels``."""
    total = 0.0
    for line in text.splitlines():
        if line.startswith("#") or not line.startswith(name):
            continue
        head, _, value = line.rpartition(" ")
        metric, _, rest = head.partition("{")
        if metric != name:
            continue
        if all(f'{k}="{v}"' in rest for k, v in labels.items()):
            total += float(value)
    return total


def produce(bootstrap: str, topic: str, records: Iterable[tuple[bytes | None, bytes]]) -> None:
    async def go() -> None:
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)
        await producer.start()
        try:
            futures = [await producer.send(topic, key=k, value=v) for k, v in records]
            await asyncio.gather(*futures)
        finally:
            await producer.stop()

    asyncio.run(go())


@dataclass(frozen=True)
class Record:
    partition: int
    offset: int
    timestamp: datetime
    key: bytes | None
    value: bytes


def read_records(
    bootstrap: str, topic: str, partitions: set[int] | None = None, timeout: float = 15.0
) -> list[Record]:
    """Everything in ``topic`` (or some of its partitions), with partition and timestamp."""

    async def go() -> list[Record]:
        consumer = AIOKafkaConsumer(
            bootstrap_servers=bootstrap, enable_auto_commit=False, auto_offset_reset="earliest"
        )
        await consumer.start()
        try:
            parts = consumer.partitions_for_topic(topic)
            if not parts:
                await consumer._client.force_metadata_update()
                parts = consumer.partitions_for_topic(topic) or set()
            tps = [
                TopicPartition(topic, p)
                for p in sorted(parts)
                if partitions is None or p in partitions
            ]
            if not tps:
                return []
            consumer.assign(tps)
            await consumer.seek_to_beginning(*tps)
            ends = await consumer.end_offsets(tps)
            out: list[Record] = []
            deadline = time.monotonic() + timeout
            while any([await consumer.position(tp) < ends[tp] for tp in tps]):
                if time.monotonic() > deadline:
                    raise AssertionError(f"could not read {topic} to its end in {timeout}s")
                batch = await consumer.getmany(timeout_ms=200)
                for tp, msgs in batch.items():
                    out.extend(
                        Record(
                            tp.partition,
                            m.offset,
                            datetime.fromtimestamp(m.timestamp / 1000, UTC),
                            m.key,
                            m.value,
                        )
                        for m in msgs
                    )
            return out
        finally:
            await consumer.stop()

    return asyncio.run(go())


def read_topic(
    bootstrap: str, topic: str, timeout: float = 15.0
) -> list[tuple[bytes | None, bytes]]:
    """Everything currently in ``topic`` (all partitions, from the beginning): (key, value)."""
    return [(r.key, r.value) for r in read_records(bootstrap, topic, timeout=timeout)]


def read_json(bootstrap: str, topic: str) -> list[dict[str, Any]]:
    return [json.loads(v) for _, v in read_topic(bootstrap, topic)]


def settings_msg(
    tenant: str,
    currency: str = "USD",
    plan: str = "standard",
    *,
    enabled: bool = False,
    amount: str = "50",
    trigger: str = "10",
    low: str | None = None,
) -> tuple[bytes, bytes]:
    body: dict[str, Any] = {
        "tenant_id": tenant,
        "currency": currency,
        "plan": plan,
        "auto_recharge": {
            "enabled": enabled,
            "recharge_amount": amount,
            "trigger_balance": trigger,
        },
    }
    if low is not None:
        body["low_balance_alert"] = low
    return tenant.encode(), json.dumps(body).encode()


def funds_msg(
    tenant: str,
    event_id: str,
    amount: str,
    *,
    currency: str = "USD",
    kind: str = "manual_add",
    command_id: str | None = None,
) -> tuple[bytes, bytes]:
    body: dict[str, Any] = {
        "event_id": event_id,
        "tenant_id": tenant,
        "kind": kind,
        "amount": amount,
        "currency": currency,
    }
    if command_id is not None:
        body["command_id"] = command_id
    return tenant.encode(), json.dumps(body).encode()


def recent_call_start(hours_ago: int = 1) -> str:
    """A call time inside the dedup horizon whenever the suite runs."""
    t = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(hours=hours_ago)
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


def cdr_msg(
    tenant: str,
    cdr_id: str,
    *,
    product: str = "conferencing_dialout",
    duration: int = 61,
    origin: str = "+4520123456",
    destination: str = "+14155550100",
    call_start: str | None = None,
) -> tuple[bytes, bytes]:
    if call_start is None:
        call_start = recent_call_start()
    body = {
        "cdr_id": cdr_id,
        "tenant_id": tenant,
        "product": product,
        "call_start": call_start,
        "duration_seconds": duration,
        "origin": origin,
        "destination": destination,
    }
    return tenant.encode(), json.dumps(body).encode()
