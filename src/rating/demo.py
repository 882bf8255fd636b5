"""`rating demo`: broker, one worker, simulated billing and platform, all in one; shows the flow.

1. Kafka: the embedded broker on a free port (or the cluster in RATING_KAFKA_BOOTSTRAP, with
   topic names and app id unique to this run so nothing already there is touched).
2. One `rating worker` and one `rating billing-sim` subprocess, logging to a temp directory.
3. Two tenants, funds, then CDRs from the simulated platform (plus a malformed line and a
   duplicate), while the output topics are read and told as a story.
4. A final table that checks balance = funds + recharges - charges, exactly.

Every process it starts is stopped again (SIGTERM, then SIGKILL after a deadline), also on
Ctrl-C and SIGTERM.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from types import FrameType
from typing import IO, Any

import rating
from rating.broker import BrokerError, EmbeddedBroker, free_port
from rating.contracts import FundsEvent, FundsKind, TenantSettings, format_money
from rating.errors import RatingBaseError
from rating.platform_sim import encode, generate_cdrs, topic_for
from rating.settings import Topics

BILLING_FAILURE_RATE = 0.2
BILLING_SEED = 7
BILLING_LATENCY = 0.3
PLATFORM_SEED = 7
#: contoso is the busy tenant: three of every four calls.
TRAFFIC_PATTERN = ("contoso", "contoso", "fabrikam", "contoso")
PUBLISH_SECONDS = 10.0  # calls "end" over about this long, so the story unfolds
READY_TIMEOUT = 90.0
SETTLE_TIMEOUT = 60.0
STOP_TIMEOUT = 20.0
REORDER_MS = 400  # how long a message waits for earlier ones from other partitions

TENANTS: tuple[TenantSettings, ...] = (
    TenantSettings.model_validate(
        {
            "tenant_id": "contoso",
            "currency": "USD",
            "auto_recharge": {
                "enabled": True,
                "recharge_amount": "20.00",
                "trigger_balance": "5.00",
            },
            "low_balance_alert": "8.00",
        }
    ),
    TenantSettings.model_validate(
        {
            "tenant_id": "fabrikam",
            "currency": "EUR",
            "auto_recharge": {"enabled": False, "recharge_amount": "0", "trigger_balance": "0"},
            "low_balance_alert": "1.00",
        }
    ),
)
FUNDS = {"contoso": Decimal("10.00"), "fabrikam": Decimal("3.00")}

PRODUCT_LABEL = {
    "conferencing_dialout": "dial-out",
    "conferencing_tollfree_dialin": "TF dial-in",
    "tollfree_inbound": "toll-free",
}


def with_auto_recharge(settings: TenantSettings, *, enabled: bool) -> TenantSettings:
    doc = settings.model_dump(mode="json")
    doc["auto_recharge"]["enabled"] = enabled
    return TenantSettings.model_validate(doc)


class DemoError(RatingBaseError, RuntimeError):
    """The demo cannot go on; the message says why (and where the logs are)."""


def repo_rate_cards() -> Path | None:
    """ratecards/sample.json next to the package (a source checkout), else RATING_RATE_CARDS."""
    candidate = Path(rating.__file__).resolve().parents[2] / "ratecards" / "sample.json"
    if candidate.is_file():
        return candidate
    env = os.environ.get("RATING_RATE_CARDS")
    if env and Path(env).is_file():
        return Path(env).resolve()
    return None


def http_json(url: str, timeout: float = 5.0) -> tuple[int, Any]:
    """(status, parsed body); status 0 when nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 - our worker
            body = resp.read()
            status = resp.status
    except urllib.error.HTTPError as exc:
        status, body = exc.code, exc.read()
    except (urllib.error.URLError, OSError):
        return 0, None
    try:
        return status, json.loads(body)
    except ValueError:
        return status, body.decode(errors="replace")


def metric_sum(text: str, name: str, label: str = "") -> float:
    """Sum of the samples of ``name`` in Prometheus text (whose labels contain ``label``)."""
    total = 0.0
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        head, _, value = line.rpartition(" ")
        metric, _, labels = head.partition("{")
        if metric == name and label in labels:
            with contextlib.suppress(ValueError):
                total += float(value)
    return total


def money(value: Decimal) -> str:
    return "0.00" if value == 0 else format_money(value)


def minutes(seconds: int) -> str:
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds else "no answer"


@dataclass
class Tally:
    """What the output topics said so far, deduplicated the way consumers must."""

    charged: dict[str, Decimal] = field(default_factory=lambda: defaultdict(Decimal))
    calls: Counter[str] = field(default_factory=Counter)
    charged_ids: set[str] = field(default_factory=set)
    funds: dict[str, Decimal] = field(default_factory=lambda: defaultdict(Decimal))
    recharges: dict[str, Decimal] = field(default_factory=lambda: defaultdict(Decimal))
    funds_ids: set[str] = field(default_factory=set)
    commands: set[tuple[str, int]] = field(default_factory=set)
    declined: int = 0
    rejected: Counter[str] = field(default_factory=Counter)
    balance_events: Counter[str] = field(default_factory=Counter)
    charge_messages: Counter[str] = field(default_factory=Counter)

    def expected(self, tenant: str) -> Decimal:
        """What the balance must be: funds + recharges - charges."""
        return self.funds[tenant] + self.recharges[tenant] - self.charged[tenant]


class Demo:
    def __init__(self, cdrs: int, keep_running: bool, out: IO[str] | None = None) -> None:
        self.n = cdrs
        self.keep_running = keep_running
        self.out = out or sys.stdout
        self.workdir = Path(tempfile.mkdtemp(prefix="rating-demo-"))
        self.broker: EmbeddedBroker | None = None
        self.worker: subprocess.Popen[bytes] | None = None
        self.billing: subprocess.Popen[bytes] | None = None
        self.bootstrap = ""
        self.external = False
        self.topics = Topics()
        self.port = 0
        self.env: dict[str, str] = {}
        self.tally = Tally()
        self.verbose_charges = cdrs <= 120
        self.duplicate_id: str | None = None
        self.producer: Any = None
        self.reader: asyncio.Task[None] | None = None
        self.reader_idle = False
        self.started = time.monotonic()

    # --- output ---------------------------------------------------------------------------

    def say(self, text: str = "") -> None:
        print(text, file=self.out, flush=True)

    def line(self, what: str, tenant: str, text: str) -> None:
        self.say(f"  {what:<9} {tenant:<9} {text}")

    def info(self, what: str, text: str) -> None:
        self.say(f"  {what:<9} {text}")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def worker_log(self) -> Path:
        return self.workdir / "worker.log"

    def worker_tail(self, n: int = 30) -> str:
        try:
            lines = self.worker_log.read_text(errors="replace").splitlines()
        except OSError:
            return "(no worker log)"
        return "\n".join(lines[-n:])

    # --- processes ------------------------------------------------------------------------

    def start(self) -> None:
        cards = repo_rate_cards()
        if cards is None:
            raise DemoError(
                "cannot find ratecards/sample.json next to the package; set RATING_RATE_CARDS"
            )
        self.say("rating demo: Kafka, one rating worker, simulated platform and billing")
        self.say()
        self.say("Starting")
        external = os.environ.get("RATING_KAFKA_BOOTSTRAP")
        prefix, app_id = "", "rating-demo"
        if external:
            run = uuid.uuid4().hex[:6]
            self.external = True
            self.bootstrap = external
            prefix, app_id = f"demo-{run}.", f"rating-demo-{run}"
            self.info("kafka", f"{external} (RATING_KAFKA_BOOTSTRAP)")
            self.info("", f"this run's topics start with {prefix!r}, app id {app_id}")
        else:
            try:
                self.broker = EmbeddedBroker(log=self.workdir / "broker.log").start()
            except BrokerError as exc:
                raise DemoError(str(exc)) from exc
            self.bootstrap = self.broker.bootstrap
            self.info("kafka", f"embedded broker on {self.bootstrap} (Tansu, in memory)")
        self.topics = Topics.model_validate(
            {name: prefix + str(f.default) for name, f in Topics.model_fields.items()}
        )
        self.port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("RATING_")}
        env.update(
            {
                "RATING_KAFKA_BOOTSTRAP": self.bootstrap,
                "RATING_RATE_CARDS": str(cards),
                "RATING_WEB_PORT": str(self.port),
                "RATING_WEB_HOST": "127.0.0.1",
                "RATING_DATA_DIR": str(self.workdir / "data"),
                "RATING_APP_ID": app_id,
                "RATING_PARTITIONS": "4",
                "RATING_SESSION_TIMEOUT_SECONDS": "6",
                "RATING_REBALANCE_TIMEOUT_SECONDS": "6",
                "RATING_HEARTBEAT_SECONDS": "1",
                "RATING_COMMIT_INTERVAL_SECONDS": "0.5",
                "RATING_TICK_SECONDS": "1",
                "RATING_RECHARGE_TIMEOUT_SECONDS": "10",
                "RATING_RECHARGE_BACKOFF_SECONDS": "1",
                "RATING_ADMIN_TOKEN": secrets.token_urlsafe(24),
                "RATING_LOG_LEVEL": "INFO",
                "PYTHONUNBUFFERED": "1",
            }
        )
        for name in Topics.model_fields:
            env[f"RATING_TOPIC_{name.upper()}"] = getattr(self.topics, name)
        self.env = env

        with self.worker_log.open("ab") as log:
            self.worker = subprocess.Popen(
                [sys.executable, "-m", "rating", "worker"],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # Ctrl-C reaches the demo only; it stops the rest
            )
        billing_cmd = [
            sys.executable,
            "-m",
            "rating",
            "billing-sim",
            "--failure-rate",
            str(BILLING_FAILURE_RATE),
            "--seed",
            str(BILLING_SEED),
            "--latency",
            str(BILLING_LATENCY),
            "--group",
            f"{app_id}-billing",
            "--bootstrap",
            self.bootstrap,
        ]
        with (self.workdir / "billing.log").open("ab") as log:
            self.billing = subprocess.Popen(
                billing_cmd,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        self.info("worker", f"starting, log: {self.worker_log}")
        self.info(
            "billing",
            f"simulated: {BILLING_FAILURE_RATE:.0%} of attempts declined, "
            f"answers after {BILLING_LATENCY} s",
        )
        broker_pid = self.broker.proc.pid if self.broker and self.broker.proc else "external"
        self.say(f"  pids: broker={broker_pid} worker={self.worker.pid} billing={self.billing.pid}")
        self.wait_ready()

    def check_alive(self) -> None:
        if self.worker is not None and self.worker.poll() is not None:
            raise DemoError(
                f"the worker exited with code {self.worker.returncode}; "
                f"last lines of {self.worker_log}:\n{self.worker_tail()}"
            )
        if self.billing is not None and self.billing.poll() is not None:
            raise DemoError(
                f"the billing simulator exited with code {self.billing.returncode}; "
                f"see {self.workdir / 'billing.log'}"
            )

    def wait_ready(self) -> None:
        t0 = time.monotonic()
        deadline = t0 + READY_TIMEOUT
        while time.monotonic() < deadline:
            self.check_alive()
            status, _ = http_json(f"{self.url}/ready", timeout=2)
            if status == 200:
                self.info("worker", f"ready after {time.monotonic() - t0:.1f} s: {self.url}")
                return
            time.sleep(0.25)
        raise DemoError(
            f"the worker was not ready after {READY_TIMEOUT:.0f} s; last lines of "
            f"{self.worker_log}:\n{self.worker_tail()}"
        )

    def shutdown(self) -> None:
        """Stop everything we started, by PID, whatever happened before."""
        ignored = {}
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(ValueError):  # not the main thread
                ignored[sig] = signal.signal(sig, signal.SIG_IGN)
        try:
            if self.worker or self.billing or self.broker:
                self.say()
                self.say("Stopping")
            for name, proc in (("billing", self.billing), ("worker", self.worker)):
                if proc is not None:
                    code = stop_process(proc, STOP_TIMEOUT)
                    self.info(name, f"stopped (pid {proc.pid}, exit code {code})")
            self.billing = self.worker = None
            if self.broker is not None:
                pid = self.broker.proc.pid if self.broker.proc else "?"
                self.broker.stop()
                self.broker = None
                self.info("kafka", f"embedded broker stopped (pid {pid})")
            shutil.rmtree(self.workdir / "data", ignore_errors=True)
            self.say(f"  logs kept in {self.workdir}")
        finally:
            for sig, handler in ignored.items():
                signal.signal(sig, handler)

    # --- the story ------------------------------------------------------------------------

    async def get_tenant(self, tenant: str) -> tuple[int, Any]:
        return await asyncio.to_thread(http_json, f"{self.url}/tenants/{tenant}")

    async def wait_for(self, what: str, seconds: float, check: Any, *, quiet: bool = False) -> bool:
        """Poll ``check`` until true (True) or ``seconds`` pass (False); fail if a part died."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            self.check_alive()
            if self.reader is not None and self.reader.done():
                self.reader.result()  # raises what broke the reader
                raise DemoError("the topic reader stopped")
            if await check():
                return True
            await asyncio.sleep(0.3)
        if not quiet:
            self.say(f"  ! gave up waiting for {what} after {seconds:.0f} s")
        return False

    async def flow(self) -> int:
        from aiokafka import (  # type: ignore[import-untyped]
            AIOKafkaConsumer,
            AIOKafkaProducer,
            TopicPartition,
        )

        loop = asyncio.get_running_loop()
        main = asyncio.current_task()
        assert main is not None
        loop.add_signal_handler(signal.SIGTERM, main.cancel)
        t = self.topics
        watched = [
            t.charges,
            t.recharge_commands,
            t.funds,
            t.balance_events,
            t.rejected,
        ]
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
        )
        producer = AIOKafkaProducer(bootstrap_servers=self.bootstrap, acks="all", linger_ms=5)
        await consumer.start()
        await producer.start()
        try:
            tps: list[TopicPartition] = []
            deadline = time.monotonic() + 30
            while True:
                await consumer._client.force_metadata_update()
                tps = [
                    TopicPartition(topic, p)
                    for topic in watched
                    for p in sorted(consumer.partitions_for_topic(topic) or ())
                ]
                if {tp.topic for tp in tps} == set(watched) or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.5)
            consumer.assign(tps)
            await consumer.seek_to_beginning(*tps)
            reader = asyncio.create_task(self.read_topics(consumer))
            try:
                return await self.story(producer, reader)
            finally:
                reader.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await reader
        finally:
            loop.remove_signal_handler(signal.SIGTERM)
            await consumer.stop()
            await producer.stop()

    async def send(self, topic: str, key: str, value: bytes) -> None:
        await self.producer.send_and_wait(topic, key=key.encode(), value=value)

    async def story(self, producer: Any, reader: asyncio.Task[None]) -> int:
        self.producer, self.reader = producer, reader
        await self.create_tenants()
        await self.add_funds()
        valid_ids = await self.make_calls()

        async def settled() -> bool:
            if not valid_ids <= self.tally.charged_ids or not self.tally.rejected:
                return False
            status, body = await self.get_tenant("contoso")
            if status != 200 or body.get("outstanding_command") is not None:
                return False
            status, text = await asyncio.to_thread(http_json, f"{self.url}/metrics")
            return status == 200 and metric_sum(str(text), "rating_cdrs_duplicate_total") >= 1

        await self.wait_for(
            "every CDR to be charged and recharges to settle", SETTLE_TIMEOUT, settled
        )

        async def told() -> bool:
            return self.reader_idle

        # Tell the last alerts (e.g. "restored" after the final credit) before the table.
        await asyncio.sleep(REORDER_MS / 1000 + 0.2)
        await self.wait_for("the last messages", 5, told, quiet=True)
        missing = len(valid_ids - self.tally.charged_ids)
        ok = await self.print_result(missing)
        await self.print_metrics()
        if not ok or missing:
            return 1
        if self.keep_running:
            await self.linger()
        return 0

    async def create_tenants(self) -> None:
        t = self.topics
        self.say()
        self.say(f"Tenants (admin portal -> {t.tenant_settings})")
        for final in TENANTS:
            # Auto-recharge goes on once there are funds (see add_funds): a tenant starts at
            # 0, below any trigger, and would otherwise recharge the moment it is created.
            s = with_auto_recharge(final, enabled=False)
            alert = (
                f", low-balance alert at {money(s.low_balance_alert)}"
                if s.low_balance_alert is not None
                else ""
            )
            self.line("tenant", s.tenant_id, f"{s.currency}, auto-recharge off{alert}")
            await self.send(t.tenant_settings, s.tenant_id, s.model_dump_json().encode())

        async def tenants_exist() -> bool:
            for s in TENANTS:
                status, _ = await self.get_tenant(s.tenant_id)
                if status != 200:
                    return False
            return True

        if not await self.wait_for("the tenants", 30, tenants_exist):
            raise DemoError("the worker never created the tenants")
        self.say("  the worker knows both tenants; a new tenant starts with balance 0")

        async def created() -> bool:
            return self.tally.balance_events["exhausted"] >= len(TENANTS)

        # Let the "balance 0" events of the creation be told under this heading.
        await self.wait_for("the creation events", 5, created, quiet=True)

    async def add_funds(self) -> None:
        t = self.topics
        self.say()
        self.say(f"Funds (an admin adds credits -> {t.funds})")
        for s in TENANTS:
            event = FundsEvent(
                event_id=f"demo-manual-{s.tenant_id}-{uuid.uuid4().hex[:8]}",
                tenant_id=s.tenant_id,
                kind=FundsKind.MANUAL_ADD,
                amount=FUNDS[s.tenant_id],
                currency=s.currency,
                reason="demo: initial credits",
            )
            await self.send(t.funds, s.tenant_id, event.model_dump_json().encode())

        balances: dict[str, Decimal] = {}

        async def funded() -> bool:
            # Credited, and every recharge billing paid meanwhile is in the balance too.
            for s in TENANTS:
                tid = s.tenant_id
                if self.tally.funds[tid] != FUNDS[tid]:
                    return False
                status, body = await self.get_tenant(tid)
                if status != 200:
                    return False
                balances[tid] = Decimal(body["balance"])
                if balances[tid] != self.tally.expected(tid):
                    return False
            return True

        await self.wait_for("the funds", 30, funded)
        for s in TENANTS:
            ar = s.auto_recharge
            if not ar.enabled:
                continue
            self.line(
                "tenant",
                s.tenant_id,
                f"turns auto-recharge on: {money(ar.recharge_amount)} {s.currency} "
                f"whenever the balance falls below {money(ar.trigger_balance)}",
            )
            await self.send(t.tenant_settings, s.tenant_id, s.model_dump_json().encode())

        async def enabled() -> bool:
            for s in TENANTS:
                status, body = await self.get_tenant(s.tenant_id)
                if status != 200 or body["auto_recharge"]["enabled"] != s.auto_recharge.enabled:
                    return False
            return True

        await self.wait_for("auto-recharge to be on", 30, enabled)
        self.say(
            "  balances now: "
            + ", ".join(
                f"{s.tenant_id} {money(balances.get(s.tenant_id, Decimal(0)))} {s.currency}"
                for s in TENANTS
            )
        )

    async def make_calls(self) -> set[str]:
        """The platform's CDRs, paced like calls ending, plus a malformed line and a duplicate."""
        t = self.topics
        cdrs = generate_cdrs(
            TRAFFIC_PATTERN,
            self.n,
            rng=random.Random(PLATFORM_SEED),  # noqa: S311 - a simulation
        )
        per_tenant = Counter(c["tenant_id"] for c in cdrs)
        interval = min(0.25, PUBLISH_SECONDS / max(1, self.n))
        self.say()
        self.say(f"Calls (platform -> {t.cdr_audio}, {t.cdr_tollfree})")
        self.say(
            f"  {self.n} CDRs ({', '.join(f'{n} {k}' for k, n in per_tenant.items())}) "
            f"over ~{self.n * interval:.0f} s, plus one malformed line and one duplicate"
        )
        bad_at = max(1, len(cdrs) // 3)
        dup_at = max(1, (2 * len(cdrs)) // 3)
        published = time.monotonic()
        for i, cdr in enumerate(cdrs):
            key, value = encode(cdr)
            await self.send(topic_for(cdr["product"], t), key.decode(), value)
            if i + 1 == bad_at:
                self.line("platform", "contoso", f"sends a cut-off JSON line to {t.cdr_audio}")
                await self.send(t.cdr_audio, "contoso", b'{"cdr_id": "cut-off-')
            if i + 1 == dup_at:
                first = cdrs[0]
                self.duplicate_id = first["cdr_id"]
                self.line(
                    "platform",
                    first["tenant_id"],
                    f"sends {first['cdr_id'][:12]}... again (a duplicate: charge it once)",
                )
                k, v = encode(first)
                await self.send(topic_for(first["product"], t), k.decode(), v)
            await asyncio.sleep(interval)
        self.say(f"  (all {self.n} CDRs published in {time.monotonic() - published:.1f} s)")
        return {c["cdr_id"] for c in cdrs}

    async def print_result(self, missing: int) -> bool:
        """The final table; True when every balance equals funds + recharges - charges."""
        docs: dict[str, Any] = {}
        expected: dict[str, Decimal] = {}

        async def balanced() -> bool:
            # The balance comes from the worker; the topics may lag a moment behind it.
            for s in TENANTS:
                _, docs[s.tenant_id] = await self.get_tenant(s.tenant_id)
                expected[s.tenant_id] = self.tally.expected(s.tenant_id)
            return all(
                isinstance(docs[tid], dict) and Decimal(docs[tid]["balance"]) == expected[tid]
                for tid in expected
            )

        ok = await self.wait_for("the balances", 10, balanced, quiet=True)
        tally = self.tally
        self.say()
        self.say(f"Result after {time.monotonic() - self.started:.1f} s")
        self.say(
            f"  {'tenant':<9} {'cur':<4} {'calls':>5} {'funds':>9} {'recharges':>10} "
            f"{'charged':>10} {'balance':>10} {'expected':>10}"
        )
        for s in TENANTS:
            tid = s.tenant_id
            doc = docs[tid]
            balance = doc["balance"] if isinstance(doc, dict) else "?"
            self.say(
                f"  {tid:<9} {s.currency:<4} {tally.calls[tid]:>5} "
                f"{money(tally.funds[tid]):>9} {money(tally.recharges[tid]):>10} "
                f"{money(tally.charged[tid]):>10} {balance:>10} {money(expected[tid]):>10}"
            )
        verdict = "OK" if ok else "MISMATCH"
        self.say(f"  balance = funds + recharges - charges: {verdict}")
        rejected = ", ".join(f"{n} {r}" for r, n in tally.rejected.items()) or "none"
        paid = sum(1 for i in tally.funds_ids if i.endswith(":succeeded"))
        self.say(
            f"  {len(tally.charged_ids)} of {self.n} CDRs charged; rejected: {rejected}; "
            f"recharge requests: {len(tally.commands)}, {tally.declined} declined, {paid} paid"
        )
        if self.duplicate_id is not None:
            times = tally.charge_messages[self.duplicate_id]
            self.say(
                f"  the duplicate {self.duplicate_id[:12]}... was sent twice, "
                f"charged {'once' if times == 1 else f'{times} times'}"
            )
        if missing:
            self.say(f"  ! not everything settled in time: {missing} CDRs not charged")
        return ok

    async def print_metrics(self) -> None:
        status, text = await asyncio.to_thread(http_json, f"{self.url}/metrics")
        self.say()
        self.say(f"Metrics: {self.url}/metrics")
        if status != 200:
            self.say("  (the worker did not answer)")
            return
        for name, label in (
            ("rating_cdrs_charged_total", ""),
            ("rating_cdrs_rejected_total", ""),
            ("rating_cdrs_duplicate_total", ""),
            ("rating_recharge_commands_total", 'outcome="issued"'),
            ("rating_recharge_commands_total", 'outcome="failed"'),
        ):
            value = metric_sum(str(text), name, label)
            shown = f"{name}{{{label}}}" if label else name
            self.say(f"  {shown} {value:g}")

    async def linger(self) -> None:
        self.say()
        self.say("Everything keeps running; press Ctrl-C to stop. Meanwhile, try:")
        if self.external:
            self.say(f"  topics of this run: {self.topics.cdr_audio}, {self.topics.charges}, ...")
        else:
            boot = f"RATING_KAFKA_BOOTSTRAP={self.bootstrap}"
            self.say(f"  {boot} rating tenants show contoso --url {self.url}")
            self.say(f"  {boot} rating funds add fabrikam 5.00 --currency EUR")
            self.say(f"  {boot} rating platform-sim --cdrs 20")
        self.say(f"  curl -s {self.url}/metrics | grep ^rating_cdrs")
        while True:
            self.check_alive()
            await asyncio.sleep(1)

    # --- reading the output topics --------------------------------------------------------

    @property
    def topic_order(self) -> dict[str, int]:
        t = self.topics
        return {
            t.funds: 0,
            t.charges: 1,
            t.balance_events: 2,
            t.recharge_commands: 3,
            t.rejected: 4,
        }

    async def read_topics(self, consumer: Any) -> None:
        """Tell the output topics' messages in the order they were produced.

        They come from several topics and partitions, fetched separately; holding each one
        for a moment and sorting by timestamp keeps a charge before the alert it caused.
        """
        order = self.topic_order
        held: list[Any] = []
        while True:
            batch = await consumer.getmany(timeout_ms=100)
            held.extend(m for part in batch.values() for m in part)
            self.reader_idle = not batch and not held
            # Effects of one input share a timestamp: tell the cause (the charge) first.
            held.sort(key=lambda m: (max(m.timestamp or 0, 0), order.get(m.topic, 9), m.offset))
            cutoff = time.time() * 1000 - REORDER_MS
            n = 0
            while n < len(held) and max(held[n].timestamp or 0, 0) <= cutoff:
                n += 1
            ready, held = held[:n], held[n:]
            for topic, body in self.causal_order(ready):
                self.on_message(topic, body)

    def causal_order(self, msgs: list[Any]) -> list[tuple[str, dict[str, Any]]]:
        """Put each alert and recharge command right after the charge that caused it.

        The worker publishes in batches, so a batch's charges and alerts share a timestamp;
        an effect carries the balance the charge left, which finds its cause.
        """
        t = self.topics
        decoded: list[tuple[str, dict[str, Any]]] = []
        for m in msgs:
            with contextlib.suppress(ValueError):
                decoded.append((m.topic, json.loads(m.value)))
        effects = {t.balance_events, t.recharge_commands}
        out: list[tuple[str, dict[str, Any]]] = []
        anchored: set[int] = set()
        for i, (topic, body) in enumerate(decoded):
            if i in anchored:
                continue
            out.append((topic, body))
            if topic != t.charges:
                continue
            for j in range(i + 1, len(decoded)):
                other_topic, other = decoded[j]
                if (
                    j not in anchored
                    and other_topic in effects
                    and other.get("tenant_id") == body.get("tenant_id")
                    and other.get("balance") == body.get("balance_after")
                ):
                    anchored.add(j)
                    out.append((other_topic, other))
        return out

    def on_message(self, topic: str, b: dict[str, Any]) -> None:
        t, tally = self.topics, self.tally
        tenant = str(b.get("tenant_id", ""))
        if topic == t.charges:
            tally.charge_messages[b["cdr_id"]] += 1
            if b["cdr_id"] in tally.charged_ids:
                return  # at-least-once delivery: a republished charge
            tally.charged_ids.add(b["cdr_id"])
            amount = Decimal(b["amount"])
            tally.charged[tenant] += amount
            tally.calls[tenant] += 1
            if self.verbose_charges:
                label = PRODUCT_LABEL.get(b["product"], b["product"])
                self.line(
                    "charge",
                    tenant,
                    f"{label:<10} {b['zone'][:18]:<18} {minutes(b['duration_seconds']):>9} "
                    f"{b['amount']:>8} {b['currency']}  balance {b.get('balance_after')}",
                )
            elif len(tally.charged_ids) % max(1, self.n // 10) == 0:
                self.info("charges", f"{len(tally.charged_ids)} of {self.n} charged")
        elif topic == t.recharge_commands:
            key = (b["command_id"], int(b.get("attempt", 1)))
            if key in tally.commands:
                return
            tally.commands.add(key)
            again = f", attempt {key[1]}" if key[1] > 1 else ""
            self.line(
                "RECHARGE",
                tenant,
                f"balance {b['balance']} < {b['trigger_balance']}: asks billing for "
                f"{b['amount']} {b['currency']}{again}",
            )
        elif topic == t.funds:
            self.on_funds(tenant, b)
        elif topic == t.balance_events:
            kind = b["kind"]
            tally.balance_events[kind] += 1
            text = {
                "low_balance": f"low balance: {b['balance']} is below {b['threshold']}",
                "exhausted": f"credits exhausted: balance {b['balance']}"
                " (the platform blocks paid calls)",
                "restored": f"credits restored: balance {b['balance']} (calls unblocked)",
                "recharge_failing": f"recharges keep failing: balance {b['balance']}",
            }.get(kind, f"{kind}: balance {b['balance']}")
            self.line("ALERT", tenant, text)
        elif topic == t.rejected:
            reason = b.get("reason", "?")
            tally.rejected[reason] += 1
            detail = str(b.get("detail", ""))
            if len(detail) > 70:
                detail = detail[:67] + "..."
            self.line("REJECTED", str(b.get("key") or ""), f"{reason}: {detail}")

    def on_funds(self, tenant: str, b: dict[str, Any]) -> None:
        tally = self.tally
        if b["event_id"] in tally.funds_ids:
            return  # billing repeats an answer it already gave: credited once
        tally.funds_ids.add(b["event_id"])
        kind, amount = b["kind"], Decimal(b["amount"])
        if kind == "recharge_succeeded":
            tally.recharges[tenant] += amount
            self.line("billing", tenant, f"recharge paid: +{b['amount']} {b['currency']}")
        elif kind == "recharge_failed":
            tally.declined += 1
            self.line("billing", tenant, f"recharge declined ({b.get('reason')}); retry soon")
        else:
            tally.funds[tenant] += amount
            self.line("funds", tenant, f"+{b['amount']} {b['currency']} ({kind})")


def stop_process(proc: subprocess.Popen[bytes], timeout: float) -> int | None:
    """SIGTERM the process group, wait, then SIGKILL; always reap."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout)
    return proc.returncode


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def run_demo(cdrs: int, keep_running: bool) -> int:
    if cdrs < 1:
        print("rating demo: --cdrs must be at least 1", file=sys.stderr)
        return 2
    import logging

    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    demo = Demo(cdrs, keep_running)
    try:
        demo.start()
        return asyncio.run(demo.flow())
    except (KeyboardInterrupt, asyncio.CancelledError):
        demo.say()
        demo.say("interrupted")
        return 130
    except DemoError as exc:
        print(f"rating demo: {exc}", file=sys.stderr, flush=True)
        return 1
    finally:
        demo.shutdown()
        signal.signal(signal.SIGTERM, previous)
