"""`rating billing-sim`: answers recharge commands the way billing does.

It charges "the payment method" once per command_id: a retry of a command that already
succeeded gets the same success event again (same event_id), never a second charge. A
configurable share of first attempts fail, and answers arrive after a configurable delay.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import random
import signal
import sys
from decimal import Decimal

from pydantic import ValidationError

from rating.contracts import FundsEvent, FundsKind, RechargeCommand
from rating.settings import SettingsError, load_settings

log = logging.getLogger("rating.billing_sim")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--failure-rate",
        type=float,
        default=float(os.environ.get("RATING_BILLING_FAILURE_RATE", "0")),
        help="share of recharge attempts that fail (0..1)",
    )
    p.add_argument(
        "--latency",
        type=float,
        default=float(os.environ.get("RATING_BILLING_LATENCY_SECONDS", "0.5")),
        help="seconds before billing answers",
    )
    p.add_argument("--seed", type=int, default=None, help="random seed (repeatable runs)")
    p.add_argument("--group", default="billing-sim", help="consumer group")
    p.add_argument("--bootstrap", default=None)
    p.add_argument("--max-seconds", type=float, default=None, help="stop after this long")


class Billing:
    """Decides each attempt's result; remembers successes so money is taken once."""

    def __init__(self, failure_rate: float, rng: random.Random) -> None:
        self.failure_rate = failure_rate
        self.rng = rng
        self.succeeded: dict[str, FundsEvent] = {}

    def answer(self, cmd: RechargeCommand) -> FundsEvent:
        done = self.succeeded.get(cmd.command_id)
        if done is not None:
            return done
        if self.rng.random() < self.failure_rate:
            return FundsEvent(
                event_id=f"{cmd.command_id}:attempt-{cmd.attempt}:failed",
                tenant_id=cmd.tenant_id,
                kind=FundsKind.RECHARGE_FAILED,
                amount=Decimal(0),
                currency=cmd.currency,
                command_id=cmd.command_id,
                reason="card declined (simulated)",
            )
        event = FundsEvent(
            event_id=f"{cmd.command_id}:succeeded",
            tenant_id=cmd.tenant_id,
            kind=FundsKind.RECHARGE_SUCCEEDED,
            amount=cmd.amount,
            currency=cmd.currency,
            command_id=cmd.command_id,
        )
        self.succeeded[cmd.command_id] = event
        return event


async def serve(
    bootstrap: str,
    commands_topic: str,
    funds_topic: str,
    *,
    billing: Billing,
    latency: float,
    group: str,
    stop: asyncio.Event,
) -> None:
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer  # type: ignore[import-untyped]

    consumer = AIOKafkaConsumer(
        commands_topic,
        bootstrap_servers=bootstrap,
        # The group's rebalance timeout: a joining member waits this long for the others.
        max_poll_interval_ms=10_000,
        group_id=group,
        auto_offset_reset="earliest",
        enable_auto_commit=True,
    )
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await consumer.start()
    await producer.start()
    try:
        while not stop.is_set():
            batch = await consumer.getmany(timeout_ms=200)
            for msgs in batch.values():
                for msg in msgs:
                    try:
                        cmd = RechargeCommand.model_validate_json(msg.value)
                    except ValidationError as exc:
                        log.warning("ignoring a bad recharge command: %s", exc)
                        continue
                    if latency > 0:
                        await asyncio.sleep(latency)
                    event = billing.answer(cmd)
                    await producer.send_and_wait(
                        funds_topic,
                        key=cmd.tenant_id.encode(),
                        value=event.model_dump_json().encode(),
                    )
                    print(
                        json.dumps(
                            {
                                "command_id": cmd.command_id,
                                "attempt": cmd.attempt,
                                "answer": event.kind.value,
                                "amount": str(event.amount),
                            }
                        ),
                        flush=True,
                    )
    finally:
        await consumer.stop()
        await producer.stop()


def run_billing_sim(args: argparse.Namespace) -> int:
    if not 0 <= args.failure_rate <= 1:
        print("rating billing-sim: --failure-rate must be between 0 and 1", file=sys.stderr)
        return 2
    try:
        settings = load_settings()
    except SettingsError as exc:
        print(f"rating billing-sim: {exc}", file=sys.stderr)
        return 2
    billing = Billing(args.failure_rate, random.Random(args.seed))  # noqa: S311 - a simulation

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        if args.max_seconds is not None:
            loop.call_later(args.max_seconds, stop.set)
        await serve(
            args.bootstrap or settings.kafka_bootstrap,
            settings.topics.recharge_commands,
            settings.topics.funds,
            billing=billing,
            latency=args.latency,
            group=args.group,
            stop=stop,
        )

    asyncio.run(main())
    return 0
