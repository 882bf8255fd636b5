"""`rating demo` (filled in below)."""

from __future__ import annotations


def run_demo(cdrs: int, keep_running: bool) -> int:
    raise NotImplementedError
