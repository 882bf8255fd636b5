"""The story the demo tells: two tenants, their funds, a burst of calls (with a malformed
line and a duplicate), and what the output topics said about it, as it happens; then the
table that checks balance = funds + recharges - charges, exactly, and the worker's counters.

It talks to the pipeline only as its clients do: contract topics and the worker's HTTP API.
The processes it talks to are started and stopped by :class:`rating.demo.processes.Processes`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import signal
import time
import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from rating.contracts import FundsEvent, FundsKind, TenantSettings, format_money
from rating.demo.processes import DemoError, Printer, Processes
from rating.platform_sim import encode, generate_cdrs, topic_for
from rating.testing import http_json, metric_value

PLATFORM_SEED = 7
#: contoso is the busy tenant: three of every four calls.
TRAFFIC_PATTERN = ("contoso", "contoso", "fabrikam", "contoso")
PUBLISH_SECONDS = 10.0  # calls "end" over about this long, so the story unfolds
SETTLE_TIMEOUT = 60.0
REORDER_MS = 400  # how long a message waits for earlier ones from other partitions

TENANTS: tuple[TenantSettings, ...] = (
    TenantSettings.model_validate(
        {
            "tenant_id": "contoso",
            "currency": "USD",
            "auto_recharge": {
                "enabled": True,
                "recharge_amount": "20.00",
                "trigger_balance": "5.00",
            },
            "low_balance_alert": "8.00",
        }
    ),
    TenantSettings.model_validate(
        {
            "tenant_id": "fabrikam",
            "currency": "EUR",
            "auto_recharge": {"enabled": False, "recharge_amount": "0", "trigger_balance": "0"},
            "low_balance_alert": "1.00",
        }
    ),
)
FUNDS = {"contoso": Decimal("10.00"), "fabrikam": Decimal("3.00")}

PRODUCT_LABEL = {
    "conferencing_dialout": "dial-out",
    "conferencing_tollfree_dialin": "TF dial-in",
    "tollfree_inbound": "toll-free",
}


def with_auto_recharge(settings: TenantSettings, *, enabled: bool) -> TenantSettings:
    doc = settings.model_dump(mode="json")
    doc["auto_recharge"]["enabled"] = enabled
    return TenantSettings.model_validate(doc)


def money(value: Decimal) -> str:
    return "0.00" if value == 0 else format_money(value)


def minutes(seconds: int) -> str:
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds else "no answer"


@dataclass
class Tally:
    """What the output topics said so far, deduplicated the way consumers must."""

    charged: dict[str, Decimal] = field(default_factory=lambda: defaultdict(Decimal))
    calls: Counter[str] = field(default_factory=Counter)
    charged_ids: set[str] = field(default_factory=set)
    funds: dict[str, Decimal] = field(default_factory=lambda: defaultdict(Decimal))
    recharges: dict[str, Decimal] = field(default_factory=lambda: defaultdict(Decimal))
    funds_ids: set[str] = field(default_factory=set)
    commands: set[tuple[str, int]] = field(default_factory=set)
    declined: int = 0
    rejected: Counter[str] = field(default_factory=Counter)
    balance_events: Counter[str] = field(default_factory=Counter)
    charge_messages: Counter[str] = field(default_factory=Counter)

    def expected(self, tenant: str) -> Decimal:
        """What the balance must be: funds + recharges - charges."""
        return self.funds[tenant] + self.recharges[tenant] - self.charged[tenant]


class Story:
    """Tells the run: publishes what the platform, admins and billing would, reads every
    output topic and narrates it in causal order, checks the balances at the end."""

    def __init__(self, procs: Processes, out: Printer, cdrs: int, keep_running: bool) -> None:
        self.procs = procs
        self.out = out
        self.n = cdrs
        self.keep_running = keep_running
        self.tally = Tally()
        self.verbose_charges = cdrs <= 120
        self.duplicate_id: str | None = None
        self.producer: Any = None
        self.reader: asyncio.Task[None] | None = None
        self.reader_idle = False
        self.started = time.monotonic()

    async def get_tenant(self, tenant: str) -> tuple[int, Any]:
        return await asyncio.to_thread(http_json, f"{self.procs.url}/tenants/{tenant}")

    async def wait_for(self, what: str, seconds: float, check: Any, *, quiet: bool = False) -> bool:
        """Poll ``check`` until true (True) or ``seconds`` pass (False); fail if a part died."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            self.procs.check_alive()
            if self.reader is not None and self.reader.done():
                self.reader.result()  # raises what broke the reader
                raise DemoError("the topic reader stopped")
            if await check():
                return True
            await asyncio.sleep(0.3)
        if not quiet:
            self.out.say(f"  ! gave up waiting for {what} after {seconds:.0f} s")
        return False

    async def flow(self) -> int:
        from aiokafka import (  # type: ignore[import-untyped]
            AIOKafkaConsumer,
            AIOKafkaProducer,
            TopicPartition,
        )

        loop = asyncio.get_running_loop()
        main = asyncio.current_task()
        assert main is not None
        loop.add_signal_handler(signal.SIGTERM, main.cancel)
        t = self.procs.topics
        watched = [
            t.charges,
            t.recharge_commands,
            t.funds,
            t.balance_events,
            t.rejected,
        ]
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.procs.bootstrap,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
        )
        producer = AIOKafkaProducer(bootstrap_servers=self.procs.bootstrap, acks="all", linger_ms=5)
        await consumer.start()
        await producer.start()
        try:
            tps: list[TopicPartition] = []
            deadline = time.monotonic() + 30
            while True:
                await consumer._client.force_metadata_update()
                tps = [
                    TopicPartition(topic, p)
                    for topic in watched
                    for p in sorted(consumer.partitions_for_topic(topic) or ())
                ]
                if {tp.topic for tp in tps} == set(watched) or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.5)
            consumer.assign(tps)
            await consumer.seek_to_beginning(*tps)
            reader = asyncio.create_task(self.read_topics(consumer))
            try:
                return await self.story(producer, reader)
            finally:
                reader.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await reader
        finally:
            loop.remove_signal_handler(signal.SIGTERM)
            await consumer.stop()
            await producer.stop()

    async def send(self, topic: str, key: str, value: bytes) -> None:
        await self.producer.send_and_wait(topic, key=key.encode(), value=value)

    async def story(self, producer: Any, reader: asyncio.Task[None]) -> int:
        self.producer, self.reader = producer, reader
        await self.create_tenants()
        await self.add_funds()
        valid_ids = await self.make_calls()

        async def settled() -> bool:
            if not valid_ids <= self.tally.charged_ids or not self.tally.rejected:
                return False
            status, body = await self.get_tenant("contoso")
            if status != 200 or body.get("outstanding_command") is not None:
                return False
            status, text = await asyncio.to_thread(http_json, f"{self.procs.url}/metrics")
            return status == 200 and metric_value(str(text), "rating_cdrs_duplicate_total") >= 1

        await self.wait_for(
            "every CDR to be charged and recharges to settle", SETTLE_TIMEOUT, settled
        )

        async def told() -> bool:
            return self.reader_idle

        # Tell the last alerts (e.g. "restored" after the final credit) before the table.
        await asyncio.sleep(REORDER_MS / 1000 + 0.2)
        await self.wait_for("the last messages", 5, told, quiet=True)
        missing = len(valid_ids - self.tally.charged_ids)
        ok = await self.print_result(missing)
        await self.print_metrics()
        if not ok or missing:
            return 1
        if self.keep_running:
            await self.linger()
        return 0

    async def create_tenants(self) -> None:
        t = self.procs.topics
        self.out.say()
        self.out.say(f"Tenants (admin portal -> {t.tenant_settings})")
        for final in TENANTS:
            # Auto-recharge goes on once there are funds (see add_funds): a tenant starts at
            # 0, below any trigger, and would otherwise recharge the moment it is created.
            s = with_auto_recharge(final, enabled=False)
            alert = (
                f", low-balance alert at {money(s.low_balance_alert)}"
                if s.low_balance_alert is not None
                else ""
            )
            self.out.line("tenant", s.tenant_id, f"{s.currency}, auto-recharge off{alert}")
            await self.send(t.tenant_settings, s.tenant_id, s.model_dump_json().encode())

        async def tenants_exist() -> bool:
            for s in TENANTS:
                status, _ = await self.get_tenant(s.tenant_id)
                if status != 200:
                    return False
            return True

        if not await self.wait_for("the tenants", 30, tenants_exist):
            raise DemoError("the worker never created the tenants")
        self.out.say("  the worker knows both tenants; a new tenant starts with balance 0")

        async def created() -> bool:
            return self.tally.balance_events["exhausted"] >= len(TENANTS)

        # Let the "balance 0" events of the creation be told under this heading.
        await self.wait_for("the creation events", 5, created, quiet=True)

    async def add_funds(self) -> None:
        t = self.procs.topics
        self.out.say()
        self.out.say(f"Funds (an admin adds credits -> {t.funds})")
        for s in TENANTS:
            event = FundsEvent(
                event_id=f"demo-manual-{s.tenant_id}-{uuid.uuid4().hex[:8]}",
                tenant_id=s.tenant_id,
                kind=FundsKind.MANUAL_ADD,
                amount=FUNDS[s.tenant_id],
                currency=s.currency,
                reason="demo: initial credits",
            )
            await self.send(t.funds, s.tenant_id, event.model_dump_json().encode())

        balances: dict[str, Decimal] = {}

        async def funded() -> bool:
            # Credited, and every recharge billing paid meanwhile is in the balance too.
            for s in TENANTS:
                tid = s.tenant_id
                if self.tally.funds[tid] != FUNDS[tid]:
                    return False
                status, body = await self.get_tenant(tid)
                if status != 200:
                    return False
                balances[tid] = Decimal(body["balance"])
                if balances[tid] != self.tally.expected(tid):
                    return False
            return True

        await self.wait_for("the funds", 30, funded)
        for s in TENANTS:
            ar = s.auto_recharge
            if not ar.enabled:
                continue
            self.out.line(
                "tenant",
                s.tenant_id,
                f"turns auto-recharge on: {money(ar.recharge_amount)} {s.currency} "
                f"whenever the balance falls below {money(ar.trigger_balance)}",
            )
            await self.send(t.tenant_settings, s.tenant_id, s.model_dump_json().encode())

        async def enabled() -> bool:
            for s in TENANTS:
                status, body = await self.get_tenant(s.tenant_id)
                if status != 200 or body["auto_recharge"]["enabled"] != s.auto_recharge.enabled:
                    return False
            return True

        await self.wait_for("auto-recharge to be on", 30, enabled)
        self.out.say(
            "  balances now: "
            + ", ".join(
                f"{s.tenant_id} {money(balances.get(s.tenant_id, Decimal(0)))} {s.currency}"
                for s in TENANTS
            )
        )

    async def make_calls(self) -> set[str]:
        """The platform's CDRs, paced like calls ending, plus a malformed line and a duplicate."""
        t = self.procs.topics
        cdrs = generate_cdrs(
            TRAFFIC_PATTERN,
            self.n,
            rng=random.Random(PLATFORM_SEED),  # noqa: S311 - a simulation
        )
        per_tenant = Counter(c["tenant_id"] for c in cdrs)
        interval = min(0.25, PUBLISH_SECONDS / max(1, self.n))
        self.out.say()
        self.out.say(f"Calls (platform -> {t.cdr_audio}, {t.cdr_tollfree})")
        self.out.say(
            f"  {self.n} CDRs ({', '.join(f'{n} {k}' for k, n in per_tenant.items())}) "
            f"over ~{self.n * interval:.0f} s, plus one malformed line and one duplicate"
        )
        bad_at = max(1, len(cdrs) // 3)
        dup_at = max(1, (2 * len(cdrs)) // 3)
        published = time.monotonic()
        for i, cdr in enumerate(cdrs):
            key, value = encode(cdr)
            await self.send(topic_for(cdr["product"], t), key.decode(), value)
            if i + 1 == bad_at:
                self.out.line("platform", "contoso", f"sends a cut-off JSON line to {t.cdr_audio}")
                await self.send(t.cdr_audio, "contoso", b'{"cdr_id": "cut-off-')
            if i + 1 == dup_at:
                first = cdrs[0]
                self.duplicate_id = first["cdr_id"]
                self.out.line(
                    "platform",
                    first["tenant_id"],
                    f"sends {first['cdr_id'][:12]}... again (a duplicate: charge it once)",
                )
                k, v = encode(first)
                await self.send(topic_for(first["product"], t), k.decode(), v)
            await asyncio.sleep(interval)
        self.out.say(f"  (all {self.n} CDRs published in {time.monotonic() - published:.1f} s)")
        return {c["cdr_id"] for c in cdrs}

    async def print_result(self, missing: int) -> bool:
        """The final table; True when every balance equals funds + recharges - charges."""
        docs: dict[str, Any] = {}
        expected: dict[str, Decimal] = {}

        async def balanced() -> bool:
            # The balance comes from the worker; the topics may lag a moment behind it.
            for s in TENANTS:
                _, docs[s.tenant_id] = await self.get_tenant(s.tenant_id)
                expected[s.tenant_id] = self.tally.expected(s.tenant_id)
            return all(
                isinstance(docs[tid], dict) and Decimal(docs[tid]["balance"]) == expected[tid]
                for tid in expected
            )

        ok = await self.wait_for("the balances", 10, balanced, quiet=True)
        tally = self.tally
        self.out.say()
        self.out.say(f"Result after {time.monotonic() - self.started:.1f} s")
        self.out.say(
            f"  {'tenant':<9} {'cur':<4} {'calls':>5} {'funds':>9} {'recharges':>10} "
            f"{'charged':>10} {'balance':>10} {'expected':>10}"
        )
        for s in TENANTS:
            tid = s.tenant_id
            doc = docs[tid]
            balance = doc["balance"] if isinstance(doc, dict) else "?"
            self.out.say(
                f"  {tid:<9} {s.currency:<4} {tally.calls[tid]:>5} "
                f"{money(tally.funds[tid]):>9} {money(tally.recharges[tid]):>10} "
                f"{money(tally.charged[tid]):>10} {balance:>10} {money(expected[tid]):>10}"
            )
        verdict = "OK" if ok else "MISMATCH"
        self.out.say(f"  balance = funds + recharges - charges: {verdict}")
        rejected = ", ".join(f"{n} {r}" for r, n in tally.rejected.items()) or "none"
        paid = sum(1 for i in tally.funds_ids if i.endswith(":succeeded"))
        self.out.say(
            f"  {len(tally.charged_ids)} of {self.n} CDRs charged; rejected: {rejected}; "
            f"recharge requests: {len(tally.commands)}, {tally.declined} declined, {paid} paid"
        )
        if self.duplicate_id is not None:
            times = tally.charge_messages[self.duplicate_id]
            self.out.say(
                f"  the duplicate {self.duplicate_id[:12]}... was sent twice, "
                f"charged {'once' if times == 1 else f'{times} times'}"
            )
        if missing:
            self.out.say(f"  ! not everything settled in time: {missing} CDRs not charged")
        return ok

    async def print_metrics(self) -> None:
        status, text = await asyncio.to_thread(http_json, f"{self.procs.url}/metrics")
        self.out.say()
        self.out.say(f"Metrics: {self.procs.url}/metrics")
        if status != 200:
            self.out.say("  (the worker did not answer)")
            return
        shown_metrics: tuple[tuple[str, dict[str, str]], ...] = (
            ("rating_cdrs_charged_total", {}),
            ("rating_cdrs_rejected_total", {}),
            ("rating_cdrs_duplicate_total", {}),
            ("rating_recharge_commands_total", {"outcome": "issued"}),
            ("rating_recharge_commands_total", {"outcome": "failed"}),
        )
        for name, labels in shown_metrics:
            value = metric_value(str(text), name, **labels)
            label = ",".join(f'{k}="{v}"' for k, v in labels.items())
            shown = f"{name}{{{label}}}" if label else name
            self.out.say(f"  {shown} {value:g}")

    async def linger(self) -> None:
        self.out.say()
        self.out.say("Everything keeps running; press Ctrl-C to stop. Meanwhile, try:")
        if self.procs.external:
            t = self.procs.topics
            self.out.say(f"  topics of this run: {t.cdr_audio}, {t.charges}, ...")
        else:
            boot = f"RATING_KAFKA_BOOTSTRAP={self.procs.bootstrap}"
            self.out.say(f"  {boot} rating tenants show contoso --url {self.procs.url}")
            self.out.say(f"  {boot} rating funds add fabrikam 5.00 --currency EUR")
            self.out.say(f"  {boot} rating platform-sim --cdrs 20")
        self.out.say(f"  curl -s {self.procs.url}/metrics | grep ^rating_cdrs")
        while True:
            self.procs.check_alive()
            await asyncio.sleep(1)

    # --- reading the output topics --------------------------------------------------------

    @property
    def topic_order(self) -> dict[str, int]:
        t = self.procs.topics
        return {
            t.funds: 0,
            t.charges: 1,
            t.balance_events: 2,
            t.recharge_commands: 3,
            t.rejected: 4,
        }

    async def read_topics(self, consumer: Any) -> None:
        """Tell the output topics' messages in the order they were produced.

        They come from several topics and partitions, fetched separately; holding each one
        for a moment and sorting by timestamp keeps a charge before the alert it caused.
        """
        order = self.topic_order
        held: list[Any] = []
        while True:
            batch = await consumer.getmany(timeout_ms=100)
            held.extend(m for part in batch.values() for m in part)
            self.reader_idle = not batch and not held
            # Effects of one input share a timestamp: tell the cause (the charge) first.
            held.sort(key=lambda m: (max(m.timestamp or 0, 0), order.get(m.topic, 9), m.offset))
            cutoff = time.time() * 1000 - REORDER_MS
            n = 0
            while n < len(held) and max(held[n].timestamp or 0, 0) <= cutoff:
                n += 1
            ready, held = held[:n], held[n:]
            for topic, body in self.causal_order(ready):
                self.on_message(topic, body)

    def causal_order(self, msgs: list[Any]) -> list[tuple[str, dict[str, Any]]]:
        """Put each alert and recharge command right after the charge that caused it.

        The worker publishes in batches, so a batch's charges and alerts share a timestamp;
        an effect carries the balance the charge left, which finds its cause.
        """
        t = self.procs.topics
        decoded: list[tuple[str, dict[str, Any]]] = []
        for m in msgs:
            with contextlib.suppress(ValueError):
                decoded.append((m.topic, json.loads(m.value)))
        effects = {t.balance_events, t.recharge_commands}
        out: list[tuple[str, dict[str, Any]]] = []
        anchored: set[int] = set()
        for i, (topic, body) in enumerate(decoded):
            if i in anchored:
                continue
            out.append((topic, body))
            if topic != t.charges:
                continue
            for j in range(i + 1, len(decoded)):
                other_topic, other = decoded[j]
                if (
                    j not in anchored
                    and other_topic in effects
                    and other.get("tenant_id") == body.get("tenant_id")
                    and other.get("balance") == body.get("balance_after")
                ):
                    anchored.add(j)
                    out.append((other_topic, other))
        return out

    def on_message(self, topic: str, b: dict[str, Any]) -> None:
        t, tally = self.procs.topics, self.tally
        tenant = str(b.get("tenant_id", ""))
        if topic == t.charges:
            tally.charge_messages[b["cdr_id"]] += 1
            if b["cdr_id"] in tally.charged_ids:
                return  # at-least-once delivery: a republished charge
            tally.charged_ids.add(b["cdr_id"])
            amount = Decimal(b["amount"])
            tally.charged[tenant] += amount
            tally.calls[tenant] += 1
            if self.verbose_charges:
                label = PRODUCT_LABEL.get(b["product"], b["product"])
                self.out.line(
                    "charge",
                    tenant,
                    f"{label:<10} {b['zone'][:18]:<18} {minutes(b['duration_seconds']):>9} "
                    f"{b['amount']:>8} {b['currency']}  balance {b.get('balance_after')}",
                )
            elif len(tally.charged_ids) % max(1, self.n // 10) == 0:
                self.out.info("charges", f"{len(tally.charged_ids)} of {self.n} charged")
        elif topic == t.recharge_commands:
            key = (b["command_id"], int(b.get("attempt", 1)))
            if key in tally.commands:
                return
            tally.commands.add(key)
            again = f", attempt {key[1]}" if key[1] > 1 else ""
            self.out.line(
                "RECHARGE",
                tenant,
                f"balance {b['balance']} < {b['trigger_balance']}: asks billing for "
                f"{b['amount']} {b['currency']}{again}",
            )
        elif topic == t.funds:
            self.on_funds(tenant, b)
        elif topic == t.balance_events:
            kind = b["kind"]
            tally.balance_events[kind] += 1
            text = {
                "low_balance": f"low balance: {b['balance']} is below {b['threshold']}",
                "exhausted": f"credits exhausted: balance {b['balance']}"
                " (the platform blocks paid calls)",
                "restored": f"credits restored: balance {b['balance']} (calls unblocked)",
                "recharge_failing": f"recharges keep failing: balance {b['balance']}",
            }.get(kind, f"{kind}: balance {b['balance']}")
            self.out.line("ALERT", tenant, text)
        elif topic == t.rejected:
            reason = b.get("reason", "?")
            tally.rejected[reason] += 1
            detail = str(b.get("detail", ""))
            if len(detail) > 70:
                detail = detail[:67] + "..."
            self.out.line("REJECTED", str(b.get("key") or ""), f"{reason}: {detail}")

    def on_funds(self, tenant: str, b: dict[str, Any]) -> None:
        tally = self.tally
        if b["event_id"] in tally.funds_ids:
            return  # billing repeats an answer it already gave: credited once
        tally.funds_ids.add(b["event_id"])
        kind, amount = b["kind"], Decimal(b["amount"])
        if kind == "recharge_succeeded":
            tally.recharges[tenant] += amount
            self.out.line("billing", tenant, f"recharge paid: +{b['amount']} {b['currency']}")
        elif kind == "recharge_failed":
            tally.declined += 1
            self.out.line("billing", tenant, f"recharge declined ({b.get('reason')}); retry soon")
        else:
            tally.funds[tenant] += amount
            self.out.line("funds", tenant, f"+{b['amount']} {b['currency']} ({kind})")
