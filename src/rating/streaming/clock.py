"""The adapter's wall clock, injected so time-dependent adapter code is testable.

The ledger never reads a clock (it is given each record's timestamp); the adapter needs one
for rejection times, ticks, the ingest time stamped on ledger records (the latency
histogram) and a few gauges. :func:`create_app` takes a :class:`Clock`; tests pass a
:class:`ManualClock`.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Protocol


class Clock(Protocol):
    def now(self) -> datetime:
        """The current time, timezone-aware UTC."""
        ...

    def time(self) -> float:
        """The current time in seconds since the epoch (for latency arithmetic)."""
        ...

    def monotonic(self) -> float:
        """Seconds on a clock that never goes back (for durations)."""
        ...


class SystemClock:
    def now(self) -> datetime:
        return datetime.now(UTC)

    def time(self) -> float:
        return time.time()

    def monotonic(self) -> float:
        return time.perf_counter()


class ManualClock:
    """A clock that moves only when told to."""

    def __init__(self, at: datetime) -> None:
        if at.tzinfo is None:
            raise ValueError("ManualClock needs a timezone-aware time")
        self.at = at.astimezone(UTC)

    def now(self) -> datetime:
        return self.at

    def time(self) -> float:
        return self.at.timestamp()

    def monotonic(self) -> float:
        return self.at.timestamp()

    def advance(self, seconds: float) -> None:
        self.at += timedelta(seconds=seconds)
