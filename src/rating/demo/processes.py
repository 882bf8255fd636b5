"""The demo's processes: Kafka (embedded, or the cluster in RATING_KAFKA_BOOTSTRAP), one
`rating worker` and one `rating billing-sim`, each in its own session, logging to a temp
directory; started, watched and always stopped again by PID (SIGTERM, then SIGKILL after a
deadline).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import IO

from rating.broker import BrokerError, EmbeddedBroker, free_port
from rating.errors import RatingBaseError
from rating.testing import (
    billing_sim_command,
    http_json,
    prefixed_topics,
    rating_command,
    sample_rate_cards,
    start_process,
    stop_process,
    tail,
    worker_env,
)

BILLING_FAILURE_RATE = 0.2
BILLING_SEED = 7
BILLING_LATENCY = 0.3
READY_TIMEOUT = 90.0
STOP_TIMEOUT = 20.0


class DemoError(RatingBaseError, RuntimeError):
    """The demo cannot go on; the message says why (and where the logs are)."""


class Printer:
    """The demo's output: plain lines, and the aligned "who  tenant  what" rows."""

    def __init__(self, out: IO[str] | None = None) -> None:
        self.out = out or sys.stdout

    def say(self, text: str = "") -> None:
        print(text, file=self.out, flush=True)

    def line(self, what: str, tenant: str, text: str) -> None:
        self.say(f"  {what:<9} {tenant:<9} {text}")

    def info(self, what: str, text: str) -> None:
        self.say(f"  {what:<9} {text}")


class Processes:
    """Everything the demo starts, and how to reach it (bootstrap, topics, the worker's URL)."""

    def __init__(self, out: Printer) -> None:
        self.out = out
        self.workdir = Path(tempfile.mkdtemp(prefix="rating-demo-"))
        self.broker: EmbeddedBroker | None = None
        self.worker: subprocess.Popen[bytes] | None = None
        self.billing: subprocess.Popen[bytes] | None = None
        self.bootstrap = ""
        self.external = False
        self.topics = prefixed_topics("")
        self.port = 0
        self.env: dict[str, str] = {}

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def worker_log(self) -> Path:
        return self.workdir / "worker.log"

    def worker_tail(self, n: int = 30) -> str:
        return tail(self.worker_log, n, missing="(no worker log)")

    def start(self) -> None:
        cards = sample_rate_cards()
        if cards is None:
            raise DemoError(
                "cannot find ratecards/sample.json next to the package; set RATING_RATE_CARDS"
            )
        self.out.say("rating demo: Kafka, one rating worker, simulated platform and billing")
        self.out.say()
        self.out.say("Starting")
        external = os.environ.get("RATING_KAFKA_BOOTSTRAP")
        prefix, app_id = "", "rating-demo"
        if external:
            run = uuid.uuid4().hex[:6]
            self.external = True
            self.bootstrap = external
            prefix, app_id = f"demo-{run}.", f"rating-demo-{run}"
            self.out.info("kafka", f"{external} (RATING_KAFKA_BOOTSTRAP)")
            self.out.info("", f"this run's topics start with {prefix!r}, app id {app_id}")
        else:
            try:
                self.broker = EmbeddedBroker(log=self.workdir / "broker.log").start()
            except BrokerError as exc:
                raise DemoError(str(exc)) from exc
            self.bootstrap = self.broker.bootstrap
            self.out.info("kafka", f"embedded broker on {self.bootstrap} (Tansu, in memory)")
        self.topics = prefixed_topics(prefix)
        self.port = free_port()
        self.env = worker_env(
            self.bootstrap,
            app_id,
            self.topics,
            cards,
            4,
            RATING_WEB_PORT=str(self.port),
            RATING_WEB_HOST="127.0.0.1",
            RATING_DATA_DIR=str(self.workdir / "data"),
            RATING_RECHARGE_TIMEOUT_SECONDS="10",
            RATING_RECHARGE_BACKOFF_SECONDS="1",
            RATING_ADMIN_TOKEN=secrets.token_urlsafe(24),
        )
        # Own sessions: Ctrl-C reaches the demo only; it stops the rest.
        self.worker = start_process(rating_command("worker"), self.worker_log, self.env)
        self.billing = start_process(
            billing_sim_command(
                BILLING_FAILURE_RATE,
                BILLING_SEED,
                BILLING_LATENCY,
                f"{app_id}-billing",
                self.bootstrap,
            ),
            self.workdir / "billing.log",
            self.env,
        )
        self.out.info("worker", f"starting, log: {self.worker_log}")
        self.out.info(
            "billing",
            f"simulated: {BILLING_FAILURE_RATE:.0%} of attempts declined, "
            f"answers after {BILLING_LATENCY} s",
        )
        broker_pid = self.broker.proc.pid if self.broker and self.broker.proc else "external"
        self.out.say(
            f"  pids: broker={broker_pid} worker={self.worker.pid} billing={self.billing.pid}"
        )
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
                self.out.info("worker", f"ready after {time.monotonic() - t0:.1f} s: {self.url}")
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
                self.out.say()
                self.out.say("Stopping")
            for name, proc in (("billing", self.billing), ("worker", self.worker)):
                if proc is not None:
                    code = stop_process(proc, STOP_TIMEOUT, STOP_TIMEOUT)
                    self.out.info(name, f"stopped (pid {proc.pid}, exit code {code})")
            self.billing = self.worker = None
            if self.broker is not None:
                pid = self.broker.proc.pid if self.broker.proc else "?"
                self.broker.stop()
                self.broker = None
                self.out.info("kafka", f"embedded broker stopped (pid {pid})")
            shutil.rmtree(self.workdir / "data", ignore_errors=True)
            self.out.say(f"  logs kept in {self.workdir}")
        finally:
            for sig, handler in ignored.items():
                signal.signal(sig, handler)
