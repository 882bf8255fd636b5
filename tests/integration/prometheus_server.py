"""A real Prometheus server for integration tests (Debian's `prometheus`, see `make tools`).

Started in its own session with a throw-away config and TSDB; always stopped by PID.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import urllib.parse
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest

from rating.broker import free_port
from rating.testing import http_get, start_process, stop_process, tail, wait_until


def prometheus_binary() -> str:
    """The server binary; a missing one fails the test: CI must never skip this silently."""
    found = shutil.which("prometheus")
    if found is None:
        pytest.fail(
            "the `prometheus` server is not installed; run `make tools` "
            "(installs Debian's prometheus package: server + promtool)",
            pytrace=False,
        )
    return found


class Prometheus:
    """One `prometheus` process scraping ``targets`` as job ``job`` every second."""

    def __init__(
        self,
        workdir: Path,
        targets: Iterable[str],
        rule_files: Iterable[Path] = (),
        job: str = "rating",
    ) -> None:
        self.binary = prometheus_binary()
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.config_path = workdir / "prometheus.yml"
        self.log_path = workdir / "prometheus.log"
        # JSON is YAML: no templating, no quoting surprises.
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(p) for p in rule_files],
            "scrape_configs": [
                {
                    "job_name": job,
                    "metrics_path": "/metrics",
                    "scrape_timeout": "1s",
                    "static_configs": [{"targets": list(targets)}],
                }
            ],
        }
        self.config_path.write_text(json.dumps(config, indent=2))
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 20) -> Prometheus:
        self.proc = start_process(
            [
                self.binary,
                f"--config.file={self.config_path}",
                f"--storage.tsdb.path={self.workdir / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--web.enable-lifecycle",
                "--log.level=info",
            ],
            self.log_path,
            cwd=self.workdir,
        )
        self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float) -> None:
        def ready() -> bool:
            self.check_alive()
            status, _ = http_get(f"{self.url}/-/ready")
            return status == 200

        wait_until(ready, timeout, f"prometheus on :{self.port} to be ready")

    def check_alive(self) -> None:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"prometheus exited {self.proc.returncode}:\n{self.tail()}")

    def stop(self, timeout: float = 10) -> None:
        """SIGTERM the process group, SIGKILL it after ``timeout`` seconds."""
        if self.proc is not None:
            stop_process(self.proc, timeout)

    def tail(self, n: int = 40) -> str:
        return tail(self.log_path, n)

    # --- HTTP API -----------------------------------------------------------------------

    def api(self, path: str, **params: str) -> Any:
        """GET /api/v1/<path>; the ``data`` of a successful answer, else an AssertionError."""
        self.check_alive()
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        status, body = http_get(f"{self.url}/api/v1/{path}{query}")
        if status == 0:
            raise AssertionError(f"prometheus did not answer /api/v1/{path}")
        answer = json.loads(body)
        if status != 200 or answer.get("status") != "success":
            raise AssertionError(f"/api/v1/{path}{query} -> {status}: {body}")
        return answer["data"]

    def query(self, promql: str) -> list[dict[str, Any]]:
        """An instant query's vector: [{"metric": {...}, "value": [ts, "str"]}, ...]."""
        data = self.api("query", query=promql)
        assert data["resultType"] == "vector", data
        return list(data["result"])

    def scalar(self, promql: str) -> float | None:
        """The one sample of an instant vector query; None while it has no result yet."""
        result = self.query(promql)
        if not result:
            return None
        assert len(result) == 1, f"{promql} has {len(result)} series: {result}"
        return float(result[0]["value"][1])

    def targets(self) -> list[dict[str, Any]]:
        return list(self.api("targets", state="active")["activeTargets"])

    def rule_groups(self) -> list[dict[str, Any]]:
        return list(self.api("rules")["groups"])
