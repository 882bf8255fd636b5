"""`rating demo`: broker, one worker, simulated billing and platform, all in one; shows the flow.

1. Kafka: the embedded broker on a free port (or the cluster in RATING_KAFKA_BOOTSTRAP, with
   topic names and app id unique to this run so nothing already there is touched).
2. One `rating worker` and one `rating billing-sim` subprocess, logging to a temp directory.
3. Two tenants, funds, then CDRs from the simulated platform (plus a malformed line and a
   duplicate), while the output topics are read and told as a story.
4. A final table that checks balance = funds + recharges - charges, exactly.

Every process it starts is stopped again (SIGTERM, then SIGKILL after a deadline), also on
Ctrl-C and SIGTERM.

Two parts: :mod:`rating.demo.processes` starts, watches and stops the processes (1, 2);
:mod:`rating.demo.story` is what it publishes, reads and prints (3, 4).
"""

from __future__ import annotations

import asyncio
import signal
import sys
from types import FrameType

from rating.demo.processes import DemoError, Printer, Processes
from rating.demo.story import Story

__all__ = ["DemoError", "run_demo"]


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def run_demo(cdrs: int, keep_running: bool) -> int:
    if cdrs < 1:
        print("rating demo: --cdrs must be at least 1", file=sys.stderr)
        return 2
    import logging

    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    out = Printer()
    procs = Processes(out)
    story = Story(procs, out, cdrs, keep_running)
    try:
        procs.start()
        return asyncio.run(story.flow())
    except (KeyboardInterrupt, asyncio.CancelledError):
        out.say()
        out.say("interrupted")
        return 130
    except DemoError as exc:
        print(f"rating demo: {exc}", file=sys.stderr, flush=True)
        return 1
    finally:
        procs.shutdown()
        signal.signal(signal.SIGTERM, previous)
