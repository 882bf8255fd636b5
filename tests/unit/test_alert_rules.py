"""The Prometheus rules and config pass promtool's checks and unit tests.

promtool comes from Debian's `prometheus` package, which `make tools` (part of `make test`)
installs. A missing promtool fails these tests instead of skipping them: skipped rule tests
in CI are how broken alerts reach production.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

PROMETHEUS = Path(__file__).resolve().parents[2] / "deploy" / "prometheus"


def promtool(*args: str) -> None:
    executable = shutil.which("promtool")
    if executable is None:
        pytest.fail(
            "promtool is not on PATH: run `make tools` (installs Debian's prometheus package)",
            pytrace=False,
        )
    result = subprocess.run(
        [executable, *args],
        cwd=PROMETHEUS,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, (
        f"`promtool {' '.join(args)}` exited {result.returncode}\n"
        f"--- stdout\n{result.stdout}\n--- stderr\n{result.stderr}"
    )


@pytest.mark.parametrize(
    "args",
    [
        pytest.param(("check", "rules", "recording.yml", "alerts.yml"), id="check-rules"),
        pytest.param(("check", "config", "prometheus.yml"), id="check-config"),
        pytest.param(("test", "rules", "alerts_test.yml"), id="test-rules"),
    ],
)
def test_promtool(args: tuple[str, ...]) -> None:
    promtool(*args)
