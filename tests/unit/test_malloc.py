"""glibc's mmap threshold pinned (rating/malloc.py): freed large blocks leave the RSS.

Each case runs in a fresh interpreter: the threshold is process-wide."""

from __future__ import annotations

import subprocess
import sys

import pytest

from rating.malloc import pin_mmap_threshold

# After one large mmapped block is freed (glibc then raises its threshold), 100 blocks of
# 512 KiB are allocated, each followed by a small block that stays alive, and freed again:
# the figure printed is how much of them the process still holds, in MiB.
PROBE = """
import sys
from pathlib import Path
from rating.malloc import pin_mmap_threshold

def rss():
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024

if sys.argv[1] == "pin":
    assert pin_mmap_threshold()
large = bytearray(4 << 20)
del large
before = rss()
blocks, kept = [], []
for _ in range(100):
    blocks.append(bytearray(512 * 1024))
    kept.append(bytearray(1024))
blocks.clear()
print((rss() - before) / 2**20)
"""


def retained_mib(mode: str) -> float:
    out = subprocess.run(
        [sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True
    )
    return float(out.stdout)


def test_freed_large_blocks_stay_in_the_rss_with_glibcs_moving_threshold() -> None:
    # What the pin is for: without it, ~50 MiB freed is still held.
    assert retained_mib("default") > 25


def test_with_the_threshold_pinned_freed_large_blocks_are_given_back() -> None:
    assert retained_mib("pin") < 5


def test_an_operators_malloc_setting_is_left_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "262144")
    assert pin_mmap_threshold() is False


def test_the_worker_pins_it_before_anything_else(monkeypatch: pytest.MonkeyPatch) -> None:
    from rating import worker

    calls: list[str] = []
    monkeypatch.setattr(worker, "pin_mmap_threshold", lambda: calls.append("pin"))
    monkeypatch.setattr(worker, "load_settings", lambda: calls.append("settings") or 1 / 0)
    with pytest.raises(ZeroDivisionError):
        worker.run_worker()
    assert calls == ["pin", "settings"]
