"""Helpers shared by the tests, the benchmarks and the demo: processes, HTTP, metrics, Kafka.

One home for what used to be written three times (``tests/integration/harness.py``,
``bench/``, ``rating.demo``): start a process in its own session and stop it by its process
group, ask a worker over HTTP, read a Prometheus sample, build a worker's environment with
topic names derived from :class:`rating.settings.Topics`, wait on a condition with a
deadline, produce and read topics with the real clients.

Not used by the worker itself. It expects a source checkout (an editable install, as
``make`` does) where it needs the sample rate cards.
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
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import quote

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition  # type: ignore[import-untyped]
from aiokafka.admin import AIOKafkaAdminClient, NewTopic  # type: ignore[import-untyped]

import rating
from rating.broker import free_port
from rating.settings import Topics

#: The source checkout this package runs from (``make`` installs it editable).
REPO = Path(rating.__file__).resolve().parents[2]
SAMPLE_CARDS = REPO / "ratecards" / "sample.json"


def sample_rate_cards() -> Path | None:
    """ratecards/sample.json of the checkout, else RATING_RATE_CARDS if it names a file."""
    if SAMPLE_CARDS.is_file():
        return SAMPLE_CARDS
    env = os.environ.get("RATING_RATE_CARDS")
    if env and Path(env).is_file():
        return Path(env).resolve()
    return None


# --- waiting ------------------------------------------------------------------------------


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


# --- processes ----------------------------------------------------------------------------


def rating_command(*args: str) -> list[str]:
    """``rating ARGS...`` run by this interpreter (no PATH lookup, the same venv)."""
    return [sys.executable, "-m", "rating", *args]


def start_foreground(*args: str) -> subprocess.Popen[str]:
    """``rating ARGS...`` as an interactive shell runs a foreground command: in its own
    session (the test signals it alone), output piped as text, and SIGINT not ignored. A
    suite started in the background by a non-interactive shell ignores SIGINT, a child would
    inherit that, and a Python started with it ignored never raises KeyboardInterrupt; a
    handled signal is reset at exec, so it is handled here while the child starts."""
    inherited = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        return subprocess.Popen(
            rating_command(*args),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
    finally:
        signal.signal(signal.SIGINT, inherited)


def billing_sim_command(
    failure_rate: float, seed: int, latency: float, group: str, bootstrap: str | None = None
) -> list[str]:
    """`rating billing-sim` with a seeded failure rate, its own consumer group and (unless
    None: RATING_KAFKA_BOOTSTRAP) a broker."""
    cmd = rating_command(
        "billing-sim",
        "--failure-rate",
        str(failure_rate),
        "--seed",
        str(seed),
        "--latency",
        str(latency),
        "--group",
        group,
    )
    return cmd if bootstrap is None else [*cmd, "--bootstrap", bootstrap]


def start_process(
    cmd: list[str],
    log_path: Path,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> subprocess.Popen[bytes]:
    """Start ``cmd`` in its own session (process group), stdout and stderr appended to
    ``log_path``, no stdin. A Ctrl-C meant for the caller is not also the child's: the
    caller stops it with :func:`stop_process`."""
    with log_path.open("ab") as log:
        return subprocess.Popen(
            cmd,
            env=None if env is None else dict(env),
            cwd=cwd,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )


def stop_process(
    proc: subprocess.Popen[bytes], timeout: float = 20.0, kill_timeout: float = 10.0
) -> int | None:
    """SIGTERM the process group, wait ``timeout``, then SIGKILL it; always reap.

    Returns the exit code (negative: the signal that ended it)."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            kill_process(proc, kill_timeout)
    return proc.returncode


def kill_process(proc: subprocess.Popen[Any], timeout: float = 10.0) -> None:
    """SIGKILL the process group: no flush, no commit, no goodbye."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout)


def tail(path: Path, n: int = 60, missing: str = "(no log)") -> str:
    """The last ``n`` lines of a log file."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return missing


# --- HTTP and metrics ---------------------------------------------------------------------


def http_exchange(
    method: str,
    url: str,
    body: Any = None,
    headers: dict[str, str] | None = None,
    timeout: float = 10.0,
) -> tuple[int, dict[str, str], str]:
    """(status, response headers, body text); an HTTP error status is an answer; status 0
    when nothing answers. ``body``, when given, is sent as JSON."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(  # noqa: S310 - our own workers, http:// only
        url, data=data, method=method, headers=headers or {}
    )
    if data is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:  # noqa: S310 - our workers
            return resp.status, dict(resp.headers), resp.read().decode(errors="replace")
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read().decode(errors="replace")
    except (urllib.error.URLError, OSError):
        return 0, {}, ""


def http_request(
    method: str,
    url: str,
    body: Any = None,
    headers: dict[str, str] | None = None,
    timeout: float = 10.0,
) -> tuple[int, str]:
    """(status, body text): :func:`http_exchange` without the response headers."""
    status, _, text = http_exchange(method, url, body, headers, timeout)
    return status, text


def http_call(
    method: str,
    url: str,
    body: Any = None,
    headers: dict[str, str] | None = None,
    timeout: float = 10.0,
) -> tuple[int, dict[str, str], Any]:
    """(status, response headers, parsed JSON body: None when empty), for JSON APIs; an HTTP
    error status is an answer; (0, {}, None) when nothing answers."""
    status, response_headers, text = http_exchange(method, url, body, headers, timeout)
    return status, response_headers, (json.loads(text or "null") if status else None)


def http_get(
    url: str, headers: dict[str, str] | None = None, timeout: float = 10.0
) -> tuple[int, str]:
    return http_request("GET", url, headers=headers, timeout=timeout)


def http_json(url: str, timeout: float = 5.0) -> tuple[int, Any]:
    """GET: (status, parsed JSON body, or the text when it is not JSON); (0, None) when
    nothing answers."""
    status, text = http_get(url, timeout=timeout)
    if status == 0:
        return 0, None
    try:
        return status, json.loads(text)
    except ValueError:
        return status, text


def metric_value(text: str, name: str, **labels: str) -> float:
    """Sum of the samples of ``name`` (Prometheus text) whose labels include ``labels``."""
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


# --- topics and worker settings -----------------------------------------------------------

#: Topics field -> contract topic name (the defaults of rating.settings.Topics).
CONTRACT_TOPICS: dict[str, str] = {
    name: str(spec.default) for name, spec in Topics.model_fields.items()
}


def prefixed_topics(prefix: str) -> Topics:
    """Every contract topic name with ``prefix`` in front (``""``: the contract names)."""
    return Topics.model_validate({name: prefix + t for name, t in CONTRACT_TOPICS.items()})


def topic_env(topics: Topics) -> dict[str, str]:
    """The RATING_TOPIC_* variables that make a worker use ``topics``."""
    return {f"RATING_TOPIC_{name.upper()}": getattr(topics, name) for name in CONTRACT_TOPICS}


#: Group and clock timing for short-lived local workers: a dead worker's partitions move in
#: seconds, offsets are committed often, the clock ticks every second.
FAST_WORKER = {
    "RATING_SESSION_TIMEOUT_SECONDS": "6",
    "RATING_REBALANCE_TIMEOUT_SECONDS": "6",
    "RATING_HEARTBEAT_SECONDS": "1",
    "RATING_COMMIT_INTERVAL_SECONDS": "0.5",
    "RATING_TICK_SECONDS": "1",
}


def worker_env(
    bootstrap: str,
    app_id: str,
    topics: Topics,
    rate_cards: Path,
    partitions: int,
    **extra: str,
) -> dict[str, str]:
    """The environment of a `rating worker` (or a tool run like one) for local runs.

    This process's environment without its own RATING_* variables, then the broker, app id,
    rate cards, ledger partitions, :data:`FAST_WORKER` timing, INFO logs, unbuffered
    output, ``topics``, and ``extra`` last (it overrides any of them)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RATING_")}
    env.update(
        {
            "RATING_KAFKA_BOOTSTRAP": bootstrap,
            "RATING_APP_ID": app_id,
            "RATING_RATE_CARDS": str(rate_cards),
            "RATING_PARTITIONS": str(partitions),
            **FAST_WORKER,
            "RATING_LOG_LEVEL": "INFO",
            "PYTHONUNBUFFERED": "1",
            **topic_env(topics),
        }
    )
    env.update(extra)
    return env


# --- Kafka clients ------------------------------------------------------------------------


def create_topics(
    bootstrap: str, partitions: Mapping[str, int], *, compacted: Collection[str] = ()
) -> None:
    """Create the topics ``partitions`` names (replication 1); those in ``compacted`` with
    ``cleanup.policy=compact``."""

    async def go() -> None:
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
        await admin.start()
        try:
            await admin.create_topics(
                [
                    NewTopic(
                        name,
                        count,
                        1,
                        topic_configs={"cleanup.policy": "compact"} if name in compacted else None,
                    )
                    for name, count in partitions.items()
                ]
            )
        finally:
            await admin.close()

    asyncio.run(go())


def produce(
    bootstrap: str,
    topic: str,
    records: Iterable[tuple[bytes | None, bytes]],
    **producer_options: Any,
) -> None:
    """Publish ``records`` (key, value) and wait for every ack. ``producer_options`` go to
    AIOKafkaProducer (default ``linger_ms=5``)."""

    async def go() -> None:
        producer = AIOKafkaProducer(
            bootstrap_servers=bootstrap, **{"linger_ms": 5, **producer_options}
        )
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
    headers: tuple[tuple[str, bytes], ...] = ()


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
                            tuple(m.headers or ()),
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


# --- one isolated pipeline and its workers ------------------------------------------------


@dataclass
class Env:
    """One isolated pipeline: unique app id and topic names on a shared broker.

    ``broker_env``: worker settings that depend on the broker (the test suite's fixture
    sets them for the broker under test)."""

    bootstrap: str
    name: str = field(default_factory=lambda: f"t{uuid.uuid4().hex[:8]}")
    input_partitions: int = 3
    partitions: int = 4
    broker_env: dict[str, str] = field(default_factory=dict)

    @property
    def app_id(self) -> str:
        return f"rating-{self.name}"

    @property
    def topics(self) -> Topics:
        return prefixed_topics(f"{self.name}.")

    def topic(self, field_name: str) -> str:
        return str(getattr(self.topics, field_name))

    def worker_env(self, **extra: str) -> dict[str, str]:
        return worker_env(
            self.bootstrap,
            self.app_id,
            self.topics,
            SAMPLE_CARDS,
            self.partitions,
            **{
                # Explicit: memory is faster to start; the crash tests and one pipeline test
                # pass ROCKSDB (each Worker has its own RATING_DATA_DIR).
                "RATING_STORE": "memory://",
                # Short, so tests of unknown tenants see the rejection in seconds; tests of
                # the hold itself set their own.
                "RATING_UNKNOWN_TENANT_HOLD_SECONDS": "3",
                **self.broker_env,
                **extra,
            },
        )

    def create_topics(self) -> None:
        """Input topics with a partition count unlike ours: the pipeline must repartition."""
        inputs = ("cdr_audio", "cdr_tollfree", "funds", "tenant_settings")
        outputs = ("charges", "recharge_commands", "balance_events", "rejected")
        create_topics(
            self.bootstrap,
            {
                **{self.topic(f): self.input_partitions for f in inputs},
                **{self.topic(f): 1 for f in outputs},
            },
            compacted={self.topic("tenant_settings")},
        )


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
        self.proc = start_process(
            rating_command("worker"), self.log_path, self.env.worker_env(**self.extra)
        )
        if wait_ready:
            self.wait_ready(timeout)
        return self

    def balance(self, tenant: str) -> Decimal | None:
        """The tenant's balance as this worker answers it (any worker forwards to the owner);
        None while the tenant is unknown or the worker cannot answer."""
        status, body = http_get(f"{self.url}/tenants/{quote(tenant, safe='')}")
        return Decimal(json.loads(body)["balance"]) if status == 200 else None

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
        if self.proc is not None:
            kill_process(self.proc)

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)

    def tail(self, n: int = 60) -> str:
        return tail(self.log_path, n)

    def metrics(self) -> str:
        status, body = http_get(f"{self.url}/metrics")
        assert status == 200, body
        return body


# --- messages -----------------------------------------------------------------------------


def settings_body(
    tenant: str,
    currency: str,
    plan: str,
    *,
    enabled: bool,
    amount: str,
    trigger: str,
    low: str | None,
) -> dict[str, Any]:
    """A tenant-settings message (the contract's shape), for tests, bench and the demo."""
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
    return body


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
    body = settings_body(
        tenant, currency, plan, enabled=enabled, amount=amount, trigger=trigger, low=low
    )
    return tenant.encode(), json.dumps(body).encode()


def funds_body(
    tenant: str,
    event_id: str,
    amount: str,
    *,
    currency: str,
    kind: str,
    command_id: str | None,
) -> dict[str, Any]:
    """A billing.funds event (the contract's shape)."""
    body: dict[str, Any] = {
        "event_id": event_id,
        "tenant_id": tenant,
        "kind": kind,
        "amount": amount,
        "currency": currency,
    }
    if command_id is not None:
        body["command_id"] = command_id
    return body


def funds_msg(
    tenant: str,
    event_id: str,
    amount: str,
    *,
    currency: str = "USD",
    kind: str = "manual_add",
    command_id: str | None = None,
) -> tuple[bytes, bytes]:
    body = funds_body(tenant, event_id, amount, currency=currency, kind=kind, command_id=command_id)
    return tenant.encode(), json.dumps(body).encode()


def recent_call_start(hours_ago: int = 1) -> str:
    """A call time inside the dedup horizon whenever the suite runs."""
    t = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(hours=hours_ago)
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


def cdr_body(
    tenant: str,
    cdr_id: str,
    *,
    product: str,
    duration: int,
    origin: str,
    destination: str,
    call_start: str,
) -> dict[str, Any]:
    """A CDR (the contract's shape)."""
    return {
        "cdr_id": cdr_id,
        "tenant_id": tenant,
        "product": product,
        "call_start": call_start,
        "duration_seconds": duration,
        "origin": origin,
        "destination": destination,
    }


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
    body = cdr_body(
        tenant,
        cdr_id,
        product=product,
        duration=duration,
        origin=origin,
        destination=destination,
        call_start=recent_call_start() if call_start is None else call_start,
    )
    return tenant.encode(), json.dumps(body).encode()
