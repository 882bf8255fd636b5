"""`rating rejected replay`: send rejected messages back to the topic they came from.

After the cause is fixed (the tenant's settings arrived, a rate card gained the missing
prefix), the original bytes are re-published with their original key. Replaying is safe:
a CDR that was charged in the meantime is recognised by its cdr_id and not charged again.
Progress is kept in a consumer group, so each rejection is replayed once per group.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import sys
from collections import Counter

from rating.contracts import Rejection, RejectReason
from rating.settings import SettingsError, load_settings

#: Reasons that can never succeed by replaying the same bytes.
NEVER_REPLAYABLE = {RejectReason.MALFORMED, RejectReason.SCHEMA, RejectReason.KEY_MISMATCH}
#: Reasons never replayed, even when asked for by --reason: a recharge result for a command
#: that is not outstanding is billing and rating disagreeing about money. Re-sending it could
#: only credit by accident (e.g. once a never-issued command id is issued). An operator who
#: decides the money is real adds it on purpose: `rating funds add TENANT AMOUNT
#: --event-id <event_id>-manual --reason "..."` (README, "Recharge lifecycle").
MONEY_DISPUTES = {RejectReason.COMMAND_NOT_OUTSTANDING}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--reason",
        action="append",
        choices=[r.value for r in RejectReason if r not in MONEY_DISPUTES],
        help="only these reasons (repeatable; default: every replayable reason)",
    )
    p.add_argument(
        "--group", default="rating-replay", help="consumer group that remembers what was replayed"
    )
    p.add_argument("--dry-run", action="store_true", help="print what would be replayed")
    p.add_argument("--bootstrap", default=None)
    p.add_argument(
        "--idle-seconds",
        type=float,
        default=3.0,
        help="stop after this long without new rejections",
    )


def original_bytes(rej: Rejection) -> bytes:
    if rej.payload_encoding == "base64":
        return base64.b64decode(rej.payload)
    return rej.payload.encode("utf-8")


def wanted(rej: Rejection, reasons: set[RejectReason] | None) -> bool:
    if rej.reason in MONEY_DISPUTES:
        return False
    if reasons is not None:
        return rej.reason in reasons
    return rej.reason not in NEVER_REPLAYABLE


async def replay(bootstrap: str, rejected_topic: str, args: argparse.Namespace) -> Counter[str]:
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer  # type: ignore[import-untyped]

    reasons = None if not args.reason else {RejectReason(r) for r in args.reason}
    consumer = AIOKafkaConsumer(
        rejected_topic,
        bootstrap_servers=bootstrap,
        # The group's rebalance timeout: a joining member waits this long for the others.
        max_poll_interval_ms=10_000,
        group_id=args.group,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    counts: Counter[str] = Counter()
    await consumer.start()
    await producer.start()
    try:
        while True:
            batch = await consumer.getmany(timeout_ms=int(args.idle_seconds * 1000))
            if not batch:
                break
            sent = []
            for msgs in batch.values():
                for msg in msgs:
                    target = _select(msg.value, reasons, counts)
                    if target is not None and not args.dry_run:
                        sent.append(await producer.send(*target))
            # Progress is committed only once every replayed message is acked.
            await asyncio.gather(*sent)
            if not args.dry_run:
                await consumer.commit()
    finally:
        await consumer.stop()
        await producer.stop()
    return counts


def _select(
    value: bytes, reasons: set[RejectReason] | None, counts: Counter[str]
) -> tuple[str, bytes, bytes | None] | None:
    """(topic, value, key) to re-publish, or None to skip; counts either way."""
    try:
        rej = Rejection.model_validate_json(value)
    except ValueError:
        counts["unreadable"] += 1
        return None
    if not wanted(rej, reasons):
        counts[f"skipped:{rej.reason.value}"] += 1
        return None
    print(
        json.dumps(
            {
                "replay": rej.reason.value,
                "to": rej.source_topic,
                "key": rej.key,
                "from": f"{rej.source_topic}:{rej.partition}:{rej.offset}",
            }
        ),
        flush=True,
    )
    counts[f"replayed:{rej.reason.value}"] += 1
    key = None if rej.key is None else rej.key.encode()
    return rej.source_topic, original_bytes(rej), key


def run_replay(args: argparse.Namespace) -> int:
    try:
        settings = load_settings()
    except SettingsError as exc:
        print(f"rating rejected replay: {exc}", file=sys.stderr)
        return 2
    counts = asyncio.run(
        replay(args.bootstrap or settings.kafka_bootstrap, settings.topics.rejected, args)
    )
    print(json.dumps({"summary": dict(sorted(counts.items())), "dry_run": args.dry_run}))
    return 0
