"""State at scale: changelog bytes, RSS and restart time as remembered CDRs grow (a benchmark).

    python -m bench.bench_state [--small 20000] [--large 120000] [--tenants 50]
                                [--store rocksdict://] [--restarts 3] [--worker-env K=V]

One worker on the embedded broker. After ``--small`` and again after ``--large`` charged
CDRs it prints: changelog bytes per remembered CDR (live: the latest value of each key, what
a compacted changelog and the local store keep; written: every record, what a replay of an
uncompacted changelog reads), the data dir's size, the worker's RSS (and that of the same
worker restarted on its data dir) and its RocksDB memory (``rating_rocksdb_memory_bytes``),
the restart time with the data dir intact and with it deleted (records replayed per second;
median of ``--restarts`` each), the rate at which a bare aiokafka consumer reads the same
changelog from the same broker (the floor a replay cannot beat), and the slopes between the
two points. Restart time = process start to ``/ready`` (recovery done), so it includes
~seconds of Python and Faust start-up that do not depend on history.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from bench.bench_pipeline import cdr_records, publish
from rating.broker import EmbeddedBroker
from rating.testing import (
    Env,
    Worker,
    http_get,
    metric_value,
    produce,
    read_records,
    settings_msg,
    wait_until,
)


@dataclass
class Point:
    cdrs: int
    markers: int
    live_bytes: int
    written_bytes: int
    records: int
    rss: int
    disk: int
    rss_restarted: int
    restart_kept: float
    restart_lost: float
    read_seconds: float  # a bare consumer reading the whole changelog: the broker's floor
    rocksdb_memory: tuple[float, float]  # memtables, block cache in use before the restarts


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def changelog_figures(env: Env) -> tuple[int, int, int, int, float]:
    """(charge markers, live bytes, written bytes, records, seconds to read them) of the
    accounts changelog."""
    latest: dict[bytes, bytes | None] = {}
    written = records = 0
    began = time.perf_counter()
    changelog = read_records(env.bootstrap, f"{env.app_id}-accounts-changelog", timeout=120)
    read_seconds = time.perf_counter() - began
    for r in changelog:
        records += 1
        written += len(r.key or b"") + len(r.value or b"")
        latest[r.key or b""] = r.value
    live = {k: v for k, v in latest.items() if v is not None and not k.startswith(b'"~seal')}
    markers = sum(1 for k in live if k.startswith(b'"c/'))
    live_bytes = sum(len(k) + len(v or b"") for k, v in live.items())
    return markers, live_bytes, written, records, read_seconds


def timed_restart(worker: Worker, lose_data: bool) -> float:
    worker.stop()
    if lose_data:
        shutil.rmtree(worker.data_dir, ignore_errors=True)
    began = time.perf_counter()
    worker.start(wait_ready=False)
    worker.wait_ready(600)
    return time.perf_counter() - began


def charged(worker: Worker) -> float:
    return metric_value(worker.metrics(), "rating_cdrs_charged_total")


def measure(env: Env, worker: Worker, cdrs: int, restarts: int) -> Point:
    markers, live, written, records, read_seconds = changelog_figures(env)
    assert worker.proc is not None
    rss = rss_bytes(worker.proc.pid)
    text = worker.metrics()
    memory = (
        metric_value(text, "rating_rocksdb_memory_bytes", kind="memtables"),
        metric_value(text, "rating_rocksdb_memory_bytes", kind="block_cache"),
    )
    kept_runs = [timed_restart(worker, lose_data=False) for _ in range(restarts)]
    assert worker.proc is not None
    restarted = rss_bytes(worker.proc.pid)  # a fresh process on the same history
    disk = dir_bytes(Path(worker.data_dir))
    lost_runs = [timed_restart(worker, lose_data=True) for _ in range(restarts)]
    kept, lost = statistics.median(kept_runs), statistics.median(lost_runs)
    return Point(
        cdrs,
        markers,
        live,
        written,
        records,
        rss,
        disk,
        restarted,
        kept,
        lost,
        read_seconds,
        memory,
    )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--small", type=int, default=20000)
    ap.add_argument("--large", type=int, default=120000)
    ap.add_argument("--tenants", type=int, default=50)
    ap.add_argument("--store", default="rocksdict://")
    ap.add_argument("--restarts", type=int, default=3, help="restarts timed (median) per point")
    ap.add_argument(
        "--worker-env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a setting for the worker, e.g. RATING_ROCKSDB_MEMTABLE_BYTES=16777216",
    )
    args = ap.parse_args()
    overrides = dict(item.split("=", 1) for item in args.worker_env)
    tenants = [f"bench-{i}" for i in range(args.tenants)]
    records = cdr_records(args.large, tenants)
    points: list[Point] = []
    with EmbeddedBroker() as broker, tempfile.TemporaryDirectory() as tmp:
        env = Env(broker.bootstrap)
        env.create_topics()
        worker = Worker(
            env, Path(tmp), RATING_LOG_LEVEL="WARNING", RATING_STORE=args.store, **overrides
        )
        try:
            worker.start()
            produce(
                broker.bootstrap, env.topic("tenant_settings"), [settings_msg(t) for t in tenants]
            )
            wait_until(
                lambda: all(http_get(f"{worker.url}/tenants/{t}")[0] == 200 for t in tenants),
                60,
                "tenants",
            )
            done = 0
            for target in (args.small, args.large):
                # The counter restarts with the worker: count what this process charges from
                # here (read before publishing: the worker charges while the publisher runs).
                base = charged(worker)
                publish(broker.bootstrap, env.topic("cdr_audio"), records[done:target])
                wait_until(
                    lambda t=target, d=done, b=base: charged(worker) - b >= t - d,
                    3600,
                    f"{target} CDRs charged",
                    interval=1.0,
                )
                done = target
                points.append(measure(env, worker, target, args.restarts))
        finally:
            worker.stop()
    print(
        f"store {args.store}, tenants {args.tenants}, one worker, {env.partitions} ledger"
        f" partitions, embedded broker {' '.join(args.worker_env)}"
    )
    print(f"(a shared 2-core machine: restart times are the median of {args.restarts})")
    for p in points:
        print(
            f"{p.cdrs:>7} CDRs: {p.markers} markers; changelog live {p.live_bytes / p.markers:.0f}"
            f" B/remembered CDR, written {p.written_bytes / p.cdrs:.0f} B/CDR"
            f" ({p.records} records); data dir {p.disk / p.markers:.0f} B/remembered CDR;"
            f" RSS {p.rss / 2**20:.0f} MiB ({p.rss_restarted / 2**20:.0f} MiB after a restart;"
            f" RocksDB memtables {p.rocksdb_memory[0] / 2**20:.1f} MiB, block cache"
            f" {p.rocksdb_memory[1] / 2**20:.1f} MiB);"
            f" restart with data dir {p.restart_kept:.1f} s,"
            f" without {p.restart_lost:.1f} s ({p.records / p.restart_lost:.0f} records/s"
            " incl. start-up); a bare consumer reads the changelog at"
            f" {p.records / p.read_seconds:.0f} records/s"
        )
    if len(points) == 2:
        a, b = points
        n = b.markers - a.markers
        print(f"RSS slope:                 {(b.rss - a.rss) / n:8.0f} B per remembered CDR")
        print(
            f"RSS slope after a restart: {(b.rss_restarted - a.rss_restarted) / n:8.0f} B per"
            " remembered CDR"
        )
        print(
            f"restart slope, data dir:   {(b.restart_kept - a.restart_kept) / n * 1e6:8.1f} us"
            " per remembered CDR"
        )
        extra = max(1e-9, b.restart_lost - a.restart_lost)
        print(
            f"restart slope, no data dir:{(b.restart_lost - a.restart_lost) / n * 1e6:8.1f} us"
            f" per remembered CDR; replay {(b.records - a.records) / extra:.0f}"
            " records/s (marginal)"
        )


if __name__ == "__main__":
    main()
