"""End-to-end throughput and latency of `rating worker` on the embedded broker (not a test).

    python -m bench.bench_pipeline [--cdrs 60000] [--tenants 50] [--runs 3] [--skip-two]
                                   [--worker-env K=V ...]

One run of this program starts one embedded broker and measures, on the same CDRs (~230 B,
``--tenants`` tenants), median of ``--runs`` (each throughput run right after a floor
run, and each ratio taken within such a pair: the machine's speed drifts):

1. the floor: a Faust agent that only counts raw messages (bench/noop_agent.py, Faust's
   default settings, its own process), consuming the CDRs from a topic;
2. one `rating worker`, end to end: CDRs published -> ingest -> ledger -> Charges on
   rating.charges, rate = Charges / (last Charge - first Charge) by their Kafka timestamps;
3. two workers in one group, the same way;
4. latency at a steady offered load of half of (2): p50/p99 from the publish time embedded
   in each ``cdr_id`` to its Charge's Kafka timestamp, the median of ``--runs`` runs' p50s
   and of their p99s.

Prints the rates and their ratios to the floor measured in the same run. The machine may be
shared: compare ratios, not absolute rates, across runs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaProducer

from rating.broker import EmbeddedBroker
from rating.testing import (
    Env,
    Worker,
    create_topics,
    http_get,
    metric_value,
    produce,
    read_records,
    recent_call_start,
    settings_msg,
    start_process,
    stop_process,
    wait_until,
)

NUMBERS = ["+14155550100", "+447700900123", "+4520123456", "+31612345678", "+4915112345678"]
PRODUCTS = ["conferencing_dialout", "conferencing_tollfree_dialin", "tollfree_inbound"]
Records = list[tuple[bytes, bytes]]


def cdr_records(n: int, tenants: list[str], prefix: str = "b") -> Records:
    """``n`` CDRs of ~230 B; ``cdr_id`` = ``{prefix}{i}`` (padded so sizes do not vary)."""
    rng = random.Random(1)
    start = recent_call_start()
    out = []
    for i in range(n):
        t = rng.choice(tenants)
        number = rng.choice(NUMBERS)
        body = {
            "cdr_id": f"{prefix}{i:08d}",
            "tenant_id": t,
            "product": rng.choice(PRODUCTS),
            "call_start": start,
            "duration_seconds": rng.randrange(0, 1800),
            "origin": number,
            "destination": number,
            "user_id": f"user-{rng.randrange(10_000):05d}",
        }
        out.append((t.encode(), json.dumps(body).encode()))
    return out


def publish(bootstrap: str, topic: str, records: Records) -> None:
    """All of ``records``, in large produce requests."""
    produce(bootstrap, topic, records, max_batch_size=256 * 1024)


# --- the floor ----------------------------------------------------------------------------


def noop_rate(bootstrap: str, records: Records, log_dir: Path, run: int) -> float:
    topic = f"noop{run}-{time.time_ns()}"
    create_topics(bootstrap, {topic: Env(bootstrap).input_partitions})
    publish(bootstrap, topic, records)
    out = log_dir / f"noop-{run}.json"
    log = log_dir / f"noop-{run}.log"
    proc = start_process(
        [sys.executable, "-m", "bench.noop_agent", bootstrap, topic, str(len(records)), str(out)],
        log,
        cwd=Path(__file__).resolve().parents[1],
    )
    try:

        def done() -> bool:
            if proc.poll() is not None:
                raise AssertionError(f"the no-op agent exited {proc.returncode}; see {log}")
            return out.exists()

        wait_until(done, 300, "the no-op agent to count every CDR", interval=0.2)
        figures = json.loads(out.read_text())
    finally:
        stop_process(proc)
    return float(figures["count"]) / float(figures["seconds"])


# --- the workers --------------------------------------------------------------------------


def charges(env: Env, workers: list[Worker], n: int) -> list[Any]:
    """All ``n`` Charges of the run, once the workers have charged them all."""
    wait_until(lambda: charged(workers) >= n, 60 + n / 50, f"{n} CDRs charged", interval=0.5)

    def read() -> list[Any]:
        got = read_records(env.bootstrap, env.topic("charges"), timeout=60)
        return got if len(got) >= n else []

    return list(wait_until(read, 60, f"{n} Charges on rating.charges", interval=1))


def charged(workers: list[Worker]) -> float:
    return sum(metric_value(w.metrics(), "rating_cdrs_charged_total") for w in workers)


def owns_ledger(worker: Worker) -> bool:
    text = worker.metrics()
    return any(
        line.startswith("rating_partitions_owned")
        and "-ledger" in line
        and float(line.split()[-1]) > 0
        for line in text.splitlines()
    )


def start_pipeline(
    broker: EmbeddedBroker, log_dir: Path, tenants: list[str], count: int, extra: dict[str, str]
) -> tuple[Env, list[Worker]]:
    env = Env(broker.bootstrap)
    env.create_topics()
    settings = {"RATING_LOG_LEVEL": "WARNING", **extra}
    workers = [Worker(env, log_dir, index=i, **settings) for i in range(count)]
    for w in workers:
        w.start()
    wait_until(
        lambda: all(owns_ledger(w) for w in workers), 120, "every worker owning ledger partitions"
    )
    produce(
        broker.bootstrap, env.topic("tenant_settings"), [settings_msg(t, "USD") for t in tenants]
    )

    def known(t: str) -> bool:
        return any(http_get(f"{w.url}/tenants/{t}")[0] == 200 for w in workers)

    wait_until(lambda: all(known(t) for t in tenants), 120, "every tenant's settings applied")
    return env, workers


def worker_rate(
    broker: EmbeddedBroker,
    log_dir: Path,
    tenants: list[str],
    records: Records,
    count: int,
    *,
    extra: dict[str, str],
) -> float:
    env, workers = start_pipeline(broker, log_dir, tenants, count, extra)
    try:
        publish(broker.bootstrap, env.topic("cdr_audio"), records)
        got = charges(env, workers, len(records))
    finally:
        for w in workers:
            w.stop()
    stamps = sorted(r.timestamp.timestamp() for r in got)
    return (len(stamps) - 1) / max(1e-3, stamps[-1] - stamps[0])


# --- latency ------------------------------------------------------------------------------


async def _paced(bootstrap: str, topic: str, records: Records, rate: float) -> None:
    """Publish at ``rate``/s in 10 ms slices; each cdr_id gets its publish time (ms)."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=1)
    await producer.start()
    try:
        began = time.perf_counter()
        futures = []
        for i, (key, value) in enumerate(records):
            due = began + i / rate
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            stamped = value.replace(
                b'"cdr_id": "L', f'"cdr_id": "L{time.time_ns() // 1_000_000}.'.encode(), 1
            )
            futures.append(await producer.send(topic, key=key, value=stamped))
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


def latency(
    broker: EmbeddedBroker,
    log_dir: Path,
    tenants: list[str],
    n: int,
    rate: float,
    *,
    extra: dict[str, str],
) -> tuple[float, float]:
    env, workers = start_pipeline(broker, log_dir, tenants, 1, extra)
    records = cdr_records(n, tenants, prefix="L")
    try:
        asyncio.run(_paced(broker.bootstrap, env.topic("cdr_audio"), records, rate))
        got = charges(env, workers, n)
    finally:
        for w in workers:
            w.stop()
    lat = []
    for r in got:
        published_ms = int(json.loads(r.value)["cdr_id"][1:].split(".")[0])
        lat.append(r.timestamp.timestamp() * 1000 - published_ms)
    lat.sort()
    return lat[len(lat) // 2], lat[min(len(lat) - 1, int(len(lat) * 0.99))]


def paired(
    runs: int, floor: Callable[[int], float], other: Callable[[int], float]
) -> tuple[list[float], list[float], list[float]]:
    """``runs`` pairs measured back to back (floor, then the other), and each pair's ratio:
    the machine's speed drifts within minutes, so a ratio within one pair is the steadier
    figure (both medians are printed too)."""
    floors, others = [], []
    for i in range(runs):
        floors.append(floor(i))
        others.append(other(i))
    return floors, others, [o / f for o, f in zip(others, floors, strict=True)]


def say(text: str) -> None:
    print(text, flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cdrs", type=int, default=60_000)
    ap.add_argument("--tenants", type=int, default=50)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--skip-two", action="store_true", help="skip the two-worker figure")
    ap.add_argument("--latency-seconds", type=float, default=10.0)
    ap.add_argument(
        "--latency-at",
        type=float,
        metavar="RATE",
        help="only the latency figure, at RATE CDRs/s offered (no throughput runs)",
    )
    ap.add_argument(
        "--worker-env",
        action="append",
        default=[],
        metavar="K=V",
        help="a setting for every worker, e.g. RATING_FETCH_MAX_WAIT_MS=20 (repeatable)",
    )
    args = ap.parse_args()
    extra = dict(item.split("=", 1) for item in args.worker_env)
    tenants = [f"bench-{i}" for i in range(args.tenants)]
    records = cdr_records(args.cdrs, tenants)
    size = sum(len(v) for _, v in records) / len(records)
    say(
        f"CDRs: {args.cdrs} (~{size:.0f} B), tenants: {args.tenants}, median of {args.runs}"
        + (f", workers with {' '.join(args.worker_env)}" if extra else "")
    )
    with EmbeddedBroker() as broker, tempfile.TemporaryDirectory() as tmp:
        log_dir = Path(tmp)

        if args.latency_at:
            at, seconds = args.latency_at, args.latency_seconds
            say_latency(broker, log_dir, tenants, at, seconds=seconds, extra=extra, runs=args.runs)
            return

        def noop(i: int) -> float:
            return noop_rate(broker.bootstrap, records, log_dir, i)

        def workers(count: int) -> Callable[[int], float]:
            return lambda _: worker_rate(broker, log_dir, tenants, records, count, extra=extra)

        floors, ones, ratios = paired(args.runs, noop, workers(1))
        floor, one = statistics.median(floors), statistics.median(ones)
        say(f"no-op Faust agent (floor):  {floor:8.0f} msg/s   runs {[round(f) for f in floors]}")
        say(f"one worker, end to end:     {one:8.0f} CDRs/s  runs {[round(f) for f in ones]}")
        say(
            f"  ratio one worker / floor: {statistics.median(ratios):8.3f}   (target >= 0.35, "
            f"aim 0.5; median of the runs' ratios {[round(r, 3) for r in ratios]}; "
            f"ratio of the medians {one / floor:.3f})"
        )
        if not args.skip_two:
            twos_and_ones = [(workers(2)(i), workers(1)(i)) for i in range(args.runs)]
            twos = [t for t, _ in twos_and_ones]
            two = statistics.median(twos)
            scale = [t / o for t, o in twos_and_ones]
            say(f"two workers, end to end:    {two:8.0f} CDRs/s  runs {[round(f) for f in twos]}")
            say(
                f"  ratio two / one worker:   {statistics.median(scale):8.3f}   (target >= 1.6; "
                f"each run against one worker right after it {[round(r, 2) for r in scale]})"
            )
            say(f"  ratio two workers / floor:{two / floor:8.3f}")
        offered = one / 2
        say_latency(
            broker,
            log_dir,
            tenants,
            offered,
            seconds=args.latency_seconds,
            extra=extra,
            runs=args.runs,
        )


def say_latency(
    broker: EmbeddedBroker,
    log_dir: Path,
    tenants: list[str],
    offered: float,
    *,
    seconds: float,
    extra: dict[str, str],
    runs: int = 1,
) -> None:
    n = max(100, int(offered * seconds))
    figures = [latency(broker, log_dir, tenants, n, offered, extra=extra) for _ in range(runs)]
    p50 = statistics.median(f[0] for f in figures)
    p99 = statistics.median(f[1] for f in figures)
    say(f"latency at {offered:.0f} CDRs/s offered ({n} CDRs), publish -> Charge, median of {runs}:")
    say(
        f"  p50 {p50:8.1f} ms   p99 {p99:8.1f} ms   (target p99 <= 250 ms; runs "
        f"{[(round(a), round(b)) for a, b in figures]})"
    )


if __name__ == "__main__":
    main()
