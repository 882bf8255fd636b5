"""Exactly once in effect: SIGKILL workers while thousands of CDRs flow, then audit.

Afterwards every valid CDR has exactly one effective charge (all copies of its Charge carry
the same content), and every balance equals funds minus the reference charges to the last
decimal place.
"""

from __future__ import annotations

import asyncio
import json
import random
import shutil
import threading
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from rating.contracts import CDR, Charge
from rating.domain.ratecard import load_rate_cards
from rating.domain.rating import rate_cdr
from tests.integration.harness import (
    ROCKSDB,
    SAMPLE_CARDS,
    Env,
    Worker,
    cdr_msg,
    funds_msg,
    http_get,
    produce,
    read_records,
    read_topic,
    reconcile,
    settings_msg,
    trace_cdr,
    wait_until,
)

TENANTS = {
    "t-usd-1": "USD",
    "t-usd-2": "USD",
    "t-usd-3": "USD",
    "t-usd-4": "USD",
    "t-eur-1": "EUR",
    "t-eur-2": "EUR",
}
FUNDS = Decimal("5000.00")
DESTINATIONS = [
    "+14155550100",
    "+447700900123",
    "+4520123456",
    "+31612345678",
    "+4915112345678",
    "+12125550123",
]
PRODUCTS = ["conferencing_dialout", "conferencing_tollfree_dialin", "tollfree_inbound"]


def _cdrs(n: int, rng: random.Random) -> list[tuple[bytes, bytes]]:
    out = []
    tenants = sorted(TENANTS)
    for i in range(n):
        number = rng.choice(DESTINATIONS)
        product = rng.choice(PRODUCTS)
        out.append(
            cdr_msg(
                rng.choice(tenants),
                f"cdr-{i:05d}",
                product=product,
                duration=rng.randrange(0, 1800),
                origin=number,
                destination=number,
            )
        )
    return out


def _charges(env: Env) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for _, value in read_topic(env.bootstrap, env.topic("charges"), timeout=30):
        c = json.loads(value)
        out.setdefault(c["cdr_id"], []).append(c)
    return out


def _diagnosis(worker: Worker) -> str:
    """Where a stalled pipeline stands: partitions owned, lag and counters per worker."""
    status, text = http_get(f"{worker.url}/metrics")
    wanted = (
        "rating_partitions_owned",
        "rating_consumer_lag_messages",
        "rating_cdrs_consumed_total",
        "rating_cdrs_charged_total",
        "rating_cdrs_duplicate_total",
        "rating_cdrs_rejected_total",
    )
    lines = [ln for ln in text.splitlines() if ln.startswith(wanted)]
    return f"--- worker {worker.url} (metrics {status}), log {worker.log_path}\n" + "\n".join(lines)


def _trace(env: Env, missing: list[str]) -> str:
    """Where each missing CDR is: its input coordinates, whether ingest forwarded it to the
    ledger topic, and the group's committed offset of its input partition (for the issue of
    offsets committed past records nobody processed)."""
    try:
        committed = asyncio.run(_committed(env))
    except Exception as exc:  # a diagnosis must never hide the failure it explains
        return f"(no trace: {type(exc).__name__}: {exc})"
    ledger = read_records(env.bootstrap, f"{env.app_id}-ledger", timeout=30)
    lines = []
    for field in ("cdr_audio", "cdr_tollfree"):
        topic = env.topic(field)
        for rec in read_records(env.bootstrap, topic, timeout=30):
            cdr_id = json.loads(rec.value)["cdr_id"]
            if cdr_id not in missing:
                continue
            forwarded = [f"{r.partition}:{r.offset}" for r in ledger if cdr_id.encode() in r.value]
            lines.append(
                f"{cdr_id}: {topic}[{rec.partition}]@{rec.offset}, group committed "
                f"{committed.get((topic, rec.partition), '?')}, on the ledger topic at {forwarded}"
            )
    return "\n".join(lines)


async def _committed(env: Env) -> dict[tuple[str, int], int | None]:
    consumer = AIOKafkaConsumer(
        bootstrap_servers=env.bootstrap, group_id=env.app_id, enable_auto_commit=False
    )
    await consumer.start()
    try:
        out: dict[tuple[str, int], int | None] = {}
        await consumer._client.force_metadata_update()  # as read_records does: fresh client
        for field in ("cdr_audio", "cdr_tollfree"):
            topic = env.topic(field)
            for p in sorted(consumer.partitions_for_topic(topic) or ()):
                out[(topic, p)] = await consumer.committed(TopicPartition(topic, p))
        return out
    finally:
        await consumer.stop()


@pytest.mark.parametrize(
    "data_dir",
    [
        # RocksDB: a restarted worker reopens its data dir and replays only the tail.
        "kept",
        # A lost disk: the restarted worker rebuilds its state from the changelog alone.
        "deleted",
    ],
)
def test_sigkill_mid_stream_charges_every_cdr_exactly_once(
    pipeline_env: Env, workers: list[Worker], tmp_path: Path, data_dir: str
) -> None:
    env = pipeline_env
    b = env.bootstrap
    a, c = Worker(env, tmp_path, 0, **ROCKSDB), Worker(env, tmp_path, 1, **ROCKSDB)
    workers.extend([a, c])
    a.start()
    c.start()
    produce(b, env.topic("tenant_settings"), [settings_msg(t, cur) for t, cur in TENANTS.items()])
    wait_until(lambda: all(a.balance(t) is not None for t in TENANTS), 60, "tenants exist")
    produce(
        b,
        env.topic("funds"),
        [funds_msg(t, f"fund-{t}", str(FUNDS), currency=cur) for t, cur in TENANTS.items()],
    )
    wait_until(lambda: all(a.balance(t) == FUNDS for t in TENANTS), 60, "funds applied")

    rng = random.Random(20261122)
    cdrs = _cdrs(2400, rng)
    # ~10% published again later, as a platform retry would.
    republished = rng.sample(cdrs, 240)
    stream = cdrs[:1200] + republished[:120] + cdrs[1200:] + republished[120:]
    chunks = [stream[i : i + 100] for i in range(0, len(stream), 100)]
    stop = threading.Event()
    sent = threading.Event()

    def platform() -> None:
        for i, chunk in enumerate(chunks):
            if stop.is_set():
                return
            topic = env.topic("cdr_audio" if i % 2 == 0 else "cdr_tollfree")
            produce(b, topic, chunk)
            stop.wait(0.4)  # a steady trickle, so the kills land mid-stream
        sent.set()

    thread = threading.Thread(target=platform, daemon=True)
    thread.start()
    try:
        # Kill each worker in turn while the stream flows, and bring it back.
        for victim, threshold in ((a, 300), (c, 900), (a, 1500)):
            wait_until(
                lambda t=threshold: len(_charges(env)) >= t,
                120,
                f"{threshold} charges before a kill",
            )
            victim.kill()
            if data_dir == "deleted":
                shutil.rmtree(victim.data_dir, ignore_errors=True)
            victim.start(wait_ready=False)
        wait_until(sent.is_set, 120, "the platform to publish everything")
    finally:
        stop.set()
        thread.join(30)
    a.wait_ready(120)
    c.wait_ready(120)

    unique = {json.loads(v)["cdr_id"]: v for _, v in cdrs}
    everything = wait_until(
        lambda: set(_charges(env)) >= set(unique), 180, "every CDR to be charged", fail=False
    )
    if not everything:
        missing = sorted(set(unique) - set(_charges(env)))
        pytest.fail(
            f"{len(missing)} CDRs never charged, e.g. {missing[:5]}\n"
            + _trace(env, missing[:20])
            + "\n"
            + "\n\n".join(trace_cdr(env, cdr_id) for cdr_id in missing[:2])
            + "\n"
            + "\n".join(_diagnosis(w) for w in (a, c))
        )
    charges = _charges(env)
    assert set(charges) == set(unique)
    # At least once on the wire, always the same content: consumers dedupe by cdr_id.
    for cdr_id, copies in charges.items():
        differing = {k for copy in copies for k in copy if copy[k] != copies[0].get(k)}
        if differing:
            pytest.fail(
                f"{cdr_id}: copies of its Charge differ in {sorted(differing)}:\n"
                + "\n".join(json.dumps(c) for c in copies)
                + "\n"
                + trace_cdr(env, cdr_id)
            )

    # The reference: the same CDRs rated in-process.
    book = load_rate_cards(SAMPLE_CARDS)
    spent = dict.fromkeys(TENANTS, Decimal(0))
    for cdr_id, raw in unique.items():
        cdr = CDR.model_validate_json(raw)
        ref = rate_cdr(
            cdr, book, plan="standard", currency=TENANTS[cdr.tenant_id], rated_at=datetime.now(UTC)
        )
        assert isinstance(ref, Charge), ref
        assert Decimal(charges[cdr_id][0]["amount"]) == ref.amount, cdr_id
        spent[cdr.tenant_id] += ref.amount

    for tenant, total in spent.items():
        expected = FUNDS - total
        settled = wait_until(
            lambda t=tenant, e=expected: a.balance(t) == e,
            30,
            f"{tenant}'s balance to settle at {expected}",
            fail=False,
        )
        assert settled, (
            tenant,
            expected,
            http_get(f"{a.url}/tenants/{tenant}"),
            http_get(f"{c.url}/tenants/{tenant}"),
            a.url,
            c.url,
        )
        # Either worker answers, whoever owns the partition.
        assert c.balance(tenant) == expected

    # The SRE's final check after an incident: every balance recomputed from the topics
    # (funds, charges deduplicated by cdr_id, rejections) equals what the workers hold.
    # --wait only re-polls while the workers catch up; a real drift still fails.
    final = reconcile(env, "--wait", "30", urls=[a.url, c.url])
    assert final.returncode == 0, (final.stdout, final.stderr)
    assert f"consistent: {len(TENANTS)} tenants checked, 0 drifted" in final.stdout, final.stdout
