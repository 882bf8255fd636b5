"""End-to-end throughput of one `rating worker` on the embedded broker (a benchmark, not a test).

    python bench/bench_pipeline.py [--cdrs 20000] [--tenants 50] [--batch-max 500]

Prints: how fast the platform side can publish (the denominator), how fast the worker charges
(consume -> validate -> repartition -> rate -> debit -> changelog -> charge), and the ratio.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from aiokafka import AIOKafkaProducer  # noqa: E402
from tests.integration.harness import (  # noqa: E402
    Env,
    Worker,
    http_get,
    metric_value,
    produce,
    recent_call_start,
    settings_msg,
    wait_until,
)

from rating.broker import EmbeddedBroker  # noqa: E402

NUMBERS = ["+14155550100", "+447700900123", "+4520123456", "+31612345678", "+4915112345678"]
PRODUCTS = ["conferencing_dialout", "conferencing_tollfree_dialin", "tollfree_inbound"]


def cdr_lines(n: int, tenants: list[str]) -> list[tuple[bytes, bytes]]:
    rng = random.Random(1)
    start = recent_call_start()
    out = []
    for i in range(n):
        t = rng.choice(tenants)
        number = rng.choice(NUMBERS)
        body = {
            "cdr_id": f"b{i}",
            "tenant_id": t,
            "product": rng.choice(PRODUCTS),
            "call_start": start,
            "duration_seconds": rng.randrange(0, 1800),
            "origin": number,
            "destination": number,
        }
        out.append((t.encode(), json.dumps(body).encode()))
    return out


async def publish(bootstrap: str, topic: str, records: list[tuple[bytes, bytes]]) -> float:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5, max_batch_size=256 * 1024)
    await producer.start()
    try:
        began = time.perf_counter()
        futures = [await producer.send(topic, key=k, value=v) for k, v in records]
        await asyncio.gather(*futures)
        return time.perf_counter() - began
    finally:
        await producer.stop()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cdrs", type=int, default=20000)
    ap.add_argument("--tenants", type=int, default=50)
    ap.add_argument("--batch-max", type=int, default=500)
    args = ap.parse_args()
    tenants = [f"bench-{i}" for i in range(args.tenants)]
    records = cdr_lines(args.cdrs, tenants)
    size = sum(len(v) for _, v in records) / len(records)
    with EmbeddedBroker() as broker, tempfile.TemporaryDirectory() as tmp:
        env = Env(broker.bootstrap)
        env.create_topics()
        worker = Worker(
            env, Path(tmp), RATING_BATCH_MAX=str(args.batch_max), RATING_LOG_LEVEL="WARNING"
        )
        try:
            worker.start()
            produce(
                broker.bootstrap,
                env.topic("tenant_settings"),
                [settings_msg(t, "USD") for t in tenants],
            )
            wait_until(
                lambda: all(http_get(f"{worker.url}/tenants/{t}")[0] == 200 for t in tenants[-3:]),
                60,
                "tenants",
            )
            # The denominator: the same records into a topic nobody consumes.
            raw = asyncio.run(publish(broker.bootstrap, f"{env.name}.sink", records))
            began = time.perf_counter()
            asyncio.run(publish(broker.bootstrap, env.topic("cdr_audio"), records))
            wait_until(
                lambda: metric_value(worker.metrics(), "rating_cdrs_charged_total") >= args.cdrs,
                1800,
                "every CDR charged",
                interval=0.5,
            )
            elapsed = time.perf_counter() - began
            latency = metric_value(worker.metrics(), "rating_processing_latency_seconds_sum")
        finally:
            worker.stop()
    produce_rate = args.cdrs / raw
    charge_rate = args.cdrs / elapsed
    print(
        f"CDRs: {args.cdrs} (~{size:.0f} B), tenants: {args.tenants}, "
        f"ledger batch max: {args.batch_max}"
    )
    print(f"publish only (denominator): {produce_rate:10.0f} CDRs/s")
    print(f"one worker, end to end:     {charge_rate:10.0f} CDRs/s")
    print(f"ratio worker/publish:       {charge_rate / produce_rate:10.3f}")
    print(f"mean consume->charge:       {latency / args.cdrs * 1000:10.1f} ms")


if __name__ == "__main__":
    main()
