"""Real publishers: every Kafka codec from two client libraries, and undecodable batches.

The platform publishes with librdkafka (``confluent-kafka``), billing may use anything: each
codec Kafka defines, from both librdkafka and aiokafka, is charged exactly once. A batch no
client can decode is parked in ``rating.rejected`` and the pipeline goes on. Runs on the
embedded broker, or on any cluster given by ``RATING_TEST_BOOTSTRAP``.
"""

from __future__ import annotations

import asyncio
import json
import os
from decimal import Decimal
from pathlib import Path

import confluent_kafka
from aiokafka import TopicPartition
from aiokafka.client import AIOKafkaClient
from aiokafka.protocol.produce import ProduceRequest

from tests.batches import CODECS, Damage, record_batch
from tests.integration.harness import (
    Env,
    Worker,
    cdr_msg,
    funds_msg,
    http_get,
    metric_value,
    produce,
    read_json,
    settings_msg,
    wait_until,
)

Records = list[tuple[bytes, bytes]]


def publish_librdkafka(bootstrap: str, topic: str, records: Records, codec: str) -> None:
    producer = confluent_kafka.Producer(
        {"bootstrap.servers": bootstrap, "compression.type": codec, "linger.ms": 20}
    )
    for key, value in records:
        # Headers are allowed and ignored; the default partitioner differs from Java's.
        producer.produce(topic, key=key, value=value, headers=[("source", b"librdkafka")])
    remaining = producer.flush(30)
    assert remaining == 0, f"{remaining} messages not delivered to {topic}"


def publish_aiokafka(bootstrap: str, topic: str, records: Records, codec: str) -> None:
    compression = None if codec == "none" else codec
    produce(bootstrap, topic, records, compression_type=compression, linger_ms=20)


CORRUPT_MESSAGE = 2  # Kafka's error code when a broker validates a batch and refuses it


def produce_raw(bootstrap: str, topic: str, partition: int, batch: bytes) -> int:
    """A ProduceRequest carrying exactly these batch bytes (no client re-encodes them).

    Returns the broker's error code: 0, or CORRUPT_MESSAGE from brokers that validate batches
    (Apache Kafka does; the embedded Tansu stores them as they are).
    """

    async def go() -> int:
        client = AIOKafkaClient(bootstrap_servers=bootstrap)
        await client.bootstrap()
        try:
            await client.force_metadata_update()
            leader = client.cluster.leader_for_partition(TopicPartition(topic, partition))
            request = ProduceRequest(None, -1, 10_000, [(topic, [(partition, batch)])])
            response = await client.send(leader, request)
            errors = [p[1] for _, parts in response.topics for p in parts]
            assert errors in ([0], [CORRUPT_MESSAGE]), f"unexpected answer: {response}"
            return int(errors[0])
        finally:
            await client.close()

    return asyncio.run(go())


def balance(worker: Worker, tenant: str) -> str | None:
    status, body = http_get(f"{worker.url}/tenants/{tenant}")
    return json.loads(body)["balance"] if status == 200 else None


def charges_by_id(env: Env) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for c in read_json(env.bootstrap, env.topic("charges")):
        out.setdefault(c["cdr_id"], []).append(c)
    return out


def test_every_codec_from_two_client_libraries_is_charged_once(
    pipeline_env: Env, workers: list[Worker], tmp_path: Path
) -> None:
    env = pipeline_env
    w = Worker(env, tmp_path)
    workers.append(w)
    w.start()
    b = env.bootstrap
    publishers = {"librdkafka": publish_librdkafka, "aiokafka": publish_aiokafka}
    # One tenant per client and codec; its settings, funds and CDRs all travel that way.
    # This branch rejects input for a tenant without settings, so settings go first.
    combos = [(client, codec, f"{client}-{codec}") for client in publishers for codec in CODECS]
    for client, codec, tenant in combos:
        publishers[client](b, env.topic("tenant_settings"), [settings_msg(tenant)], codec)
    for _, _, tenant in combos:
        wait_until(lambda t=tenant: balance(w, t) is not None, 30, f"tenant {tenant}")
    for client, codec, tenant in combos:
        publishers[client](b, env.topic("funds"), [funds_msg(tenant, "f1", "100.00")], codec)
    for _, _, tenant in combos:
        wait_until(lambda t=tenant: balance(w, t) == "100.00", 30, f"{tenant}'s funds")
    expected: dict[str, str] = {}  # cdr_id -> tenant
    for client, codec, tenant in combos:
        cdrs = [cdr_msg(tenant, f"{tenant}-c{i}", duration=61 + i) for i in range(3)]
        publishers[client](b, env.topic("cdr_audio"), cdrs, codec)
        expected.update({f"{tenant}-c{i}": tenant for i in range(3)})

    def all_charged() -> dict[str, list[dict]] | None:
        charges = charges_by_id(env)
        return charges if set(charges) >= set(expected) else None

    charges = wait_until(all_charged, 60, "every CDR charged", interval=0.5, fail=False)
    charges = charges or charges_by_id(env)
    rejected = [(r["reason"], r["detail"]) for r in read_json(b, env.topic("rejected"))]
    missing = sorted(set(expected) - set(charges))
    assert not missing, f"not charged: {missing}; rejected: {rejected}"
    for cdr_id, copies in charges.items():
        assert all(c == copies[0] for c in copies), f"copies of {cdr_id} differ"
    for tenant in set(expected.values()):
        spent = sum(Decimal(charges[c][0]["amount"]) for c, t in expected.items() if t == tenant)
        want = str(Decimal("100.00") - spent)
        wait_until(lambda t=tenant, b=want: balance(w, t) == b, 30, f"{tenant}'s balance {want}")
    text = w.metrics()
    assert metric_value(text, "rating_cdrs_charged_total") == len(expected)
    assert metric_value(text, "rating_cdrs_rejected_total") == 0
    assert metric_value(text, "rating_undecodable_batches_total") == 0


def test_an_undecodable_batch_is_parked_and_the_pipeline_goes_on(
    pipeline_env: Env, workers: list[Worker], tmp_path: Path
) -> None:
    env = pipeline_env
    topic = env.topic("cdr_audio")
    b = env.bootstrap
    first = Worker(env, tmp_path, index=1)
    workers.append(first)
    first.start()
    publish_aiokafka(b, env.topic("tenant_settings"), [settings_msg("acme")], "none")
    wait_until(lambda: balance(first, "acme") is not None, 30, "tenant acme")
    publish_aiokafka(b, env.topic("funds"), [funds_msg("acme", "f1", "100.00")], "none")
    wait_until(lambda: balance(first, "acme") == "100.00", 30, "acme's funds")
    first.stop()
    # Published while no worker runs, so the next worker's first fetch of each partition
    # returns the good batch before, the damaged one and the good batch after together.
    damaged: dict[int, Damage] = {0: "payload", 1: "crc"}
    stored: list[int] = []  # partitions whose broker kept the damaged batch
    for partition, damage in damaged.items():
        before = [cdr_msg("acme", f"p{partition}-before")]
        lost = [cdr_msg("acme", f"p{partition}-lost-{i}") for i in range(2)]
        after = [cdr_msg("acme", f"p{partition}-after")]
        assert produce_raw(b, topic, partition, record_batch(before, "gzip")) == 0
        if produce_raw(b, topic, partition, record_batch(lost, "gzip", damage=damage)) == 0:
            stored.append(partition)
        assert produce_raw(b, topic, partition, record_batch(after, "lz4")) == 0
    assert produce_raw(b, topic, 2, record_batch([cdr_msg("acme", "p2-only")], "zstd")) == 0
    if not os.environ.get("RATING_TEST_BOOTSTRAP"):
        assert stored == list(damaged), "the embedded broker stores batches unvalidated"

    w = Worker(env, tmp_path)
    workers.append(w)
    w.start()
    wanted = {"p0-before", "p0-after", "p1-before", "p1-after", "p2-only"}

    charges = wait_until(
        lambda: (c := charges_by_id(env)) and set(c) >= wanted and c,
        60,
        "the CDRs around the damaged batches to be charged",
        interval=0.5,
    )
    assert set(charges) == wanted, "nothing of a damaged batch may be charged"

    def parked() -> list[dict] | None:
        rejections = [
            r
            for r in read_json(b, env.topic("rejected"))
            if r["reason"] == "malformed" and r["source_topic"] == topic
        ]
        return rejections if len(rejections) >= len(stored) else None

    rejections = wait_until(parked, 30, "a malformed rejection per stored batch") if stored else []
    assert sorted((r["partition"], r["offset"]) for r in rejections) == [(p, 1) for p in stored]
    for r in rejections:
        assert f"offsets 1..2 of {topic} partition {r['partition']}" in r["detail"], r["detail"]
    assert w.proc is not None
    assert w.proc.poll() is None, "the worker must survive"
    text = w.metrics()
    for partition in stored:
        labels = {"topic": topic, "partition": str(partition)}
        assert metric_value(text, "rating_undecodable_batches_total", **labels) == 1
    assert metric_value(text, "rating_partitions_stopped") == 0
    assert metric_value(text, "rating_cdrs_rejected_total", reason="malformed") == len(stored)
    # Later CDRs on the same partitions keep being charged.
    publish_aiokafka(b, topic, [cdr_msg("acme", f"later-{i}") for i in range(6)], "snappy")
    wait_until(
        lambda: {f"later-{i}" for i in range(6)} <= set(charges_by_id(env)),
        30,
        "CDRs published after the damaged batches",
        interval=0.5,
    )
