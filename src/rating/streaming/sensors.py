"""A cheaper Faust Monitor: the worker's own metrics are in :mod:`rating.metrics`.

Faust's default :class:`~faust.sensors.monitor.Monitor` does bookkeeping on every message,
stream event, table access and send (counters per topic, per stream and per task, timing
samples): measured at ~30% of a no-op agent's rate. Nothing in this project reads those
per-event figures (``/metrics`` is ours), so :class:`LeanMonitor` keeps the Monitor's shape
(Faust's web views and rebalance/commit/assignment hooks still work) and turns the
per-event hooks into no-ops. Passed as ``faust.App(..., Monitor=LeanMonitor)``.

One per-event figure is kept: when a partition's stream last took an event
(``stream_inbound_time``, one clock read and one dict store). Faust's consumer reads it to
tell a stalled stream from an idle one; without it every worker logged "Stream has not
started processing" at ERROR after ``stream_processing_timeout``, for partitions it was
processing all along.
"""

from __future__ import annotations

from time import monotonic
from typing import Any

from faust.sensors.monitor import Monitor

#: The per-event hooks made no-ops. A unit test checks each still exists on Faust's Monitor,
#: so a renamed hook fails there rather than silently costing again.
PER_EVENT_HOOKS = (
    "on_message_in",
    "on_stream_event_in",
    "on_stream_event_out",
    "on_message_out",
    "on_table_get",
    "on_table_set",
    "on_table_del",
    "on_send_initiated",
    "on_send_completed",
    "on_send_error",
)


class LeanMonitor(Monitor):
    """Faust's Monitor without its per-event bookkeeping (see the module docstring)."""

    def on_message_in(self, tp: Any, offset: int, message: Any) -> None:
        return None

    def on_stream_event_in(self, tp: Any, offset: int, stream: Any, event: Any) -> None:
        self.stream_inbound_time[tp] = monotonic()  # Faust's stall check reads it

    def on_stream_event_out(
        self, tp: Any, offset: int, stream: Any, event: Any, state: Any = None
    ) -> None:
        return None

    def on_message_out(self, tp: Any, offset: int, message: Any) -> None:
        return None

    def on_table_get(self, table: Any, key: Any) -> None:
        return None

    def on_table_set(self, table: Any, key: Any, value: Any) -> None:
        return None

    def on_table_del(self, table: Any, key: Any) -> None:
        return None

    def on_send_initiated(
        self, producer: Any, topic: str, message: Any, keysize: int, valsize: int
    ) -> None:
        return None

    def on_send_completed(self, producer: Any, state: Any, metadata: Any) -> None:
        return None

    def on_send_error(self, producer: Any, exc: BaseException, state: Any) -> None:
        return None
