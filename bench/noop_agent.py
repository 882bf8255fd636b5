"""The floor of the pipeline benchmark: a Faust agent that only counts raw messages.

    python -m bench.noop_agent BOOTSTRAP TOPIC COUNT OUT_FILE

Faust's default settings and its own ``kafka://`` transport. Writes
``{"count": n, "seconds": t}`` (first message to the COUNT-th) to OUT_FILE as JSON, then
waits to be stopped (a file: the Faust worker redirects stdout to its log).
"""

from __future__ import annotations

import json
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import faust


def report(out: str, figures: dict[str, float]) -> None:
    tmp = Path(out + ".tmp")
    tmp.write_text(json.dumps(figures))
    tmp.replace(out)  # the parent polls for OUT_FILE: it appears whole


def main() -> None:
    bootstrap, topic_name, count, out = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    app = faust.App(
        f"bench-noop-{uuid.uuid4().hex[:8]}",
        broker=f"kafka://{bootstrap}",
        store="memory://",
        datadir=str(Path(out).parent / "noop-data"),  # next to its report, not in the cwd
        web_enabled=False,
        autodiscover=False,
    )
    topic = app.topic(topic_name, key_serializer="raw", value_serializer="raw")
    seen = 0
    first = 0.0

    @app.agent(topic, name="count")
    async def counter(stream: Any) -> None:
        nonlocal seen, first
        async for _ in stream:
            if seen == 0:
                first = time.perf_counter()
            seen += 1
            if seen == count:
                figures = {"count": seen, "seconds": time.perf_counter() - first}
                report(out, figures)

    sys.argv = [sys.argv[0], "worker", "--loglevel=warn"]
    app.main()


if __name__ == "__main__":
    main()
