"""Auto-recharge and balance events end to end (issue #5): real workers on the embedded broker.

Most tests share one module-scoped worker configured for fast retries (backoff 1 s doubling to
4 s, 3 failures, 0.5 s ticks, 30 s response timeout, daily cap 2); each test uses its own
tenant ids and only looks at its own tenant's messages, so the tests stay independent. The
tests that need another configuration (response timeout, billing-sim plus SIGKILL) start their
own worker. Every wait polls a condition against a deadline; money is compared as exact
``Decimal``.
"""

from __future__ import annotations

import itertools
import json
import random
import subprocess
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from rating.partitioning import partition_of
from rating.testing import billing_sim_command, start_process, stop_process
from tests.integration.harness import (
    Env,
    Worker,
    cdr_msg,
    funds_msg,
    http_get,
    metric_value,
    produce,
    read_json,
    read_records,
    reconcile,
    settings_msg,
    wait_until,
)

JAMAICA = "+18765550100"  # dial-out at 0.2100/min, 60/60: 600 s -> 2.1000, 60 s -> 0.2100
FAST_RECHARGE = {
    "RATING_RECHARGE_BACKOFF_SECONDS": "1",
    "RATING_RECHARGE_BACKOFF_MAX_SECONDS": "4",
    "RATING_RECHARGE_MAX_FAILURES": "3",
    "RATING_TICK_SECONDS": "0.5",
    "RATING_RECHARGE_TIMEOUT_SECONDS": "30",
    "RATING_RECHARGE_DAILY_CAP": "2",
}
# Clock resolution: Kafka timestamps are milliseconds, the test's clock is not.
CLOCK_SLACK = timedelta(milliseconds=10)


def new_tenant(label: str) -> str:
    return f"{label}-{uuid.uuid4().hex[:8]}"


def parse_time(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(UTC)


@dataclass
class Rig:
    """One pipeline (env + worker) and the per-tenant views the tests assert on."""

    env: Env
    worker: Worker

    @property
    def bootstrap(self) -> str:
        return self.env.bootstrap

    # --- inputs ---------------------------------------------------------------------------

    def settings(self, tenant: str, **kw: Any) -> None:
        produce(self.bootstrap, self.env.topic("tenant_settings"), [settings_msg(tenant, **kw)])

    def create(self, tenant: str, **kw: Any) -> dict[str, Any]:
        self.settings(tenant, **kw)
        doc: dict[str, Any] = wait_until(lambda: self.tenant(tenant), 30, f"{tenant} to exist")
        return doc

    def update(self, tenant: str, *, enabled: bool, amount: str, trigger: str, **kw: Any) -> None:
        """Publish new settings and wait until the worker shows them."""
        self.settings(tenant, enabled=enabled, amount=amount, trigger=trigger, **kw)
        want = {"enabled": enabled, "recharge_amount": amount, "trigger_balance": trigger}
        wait_until(
            lambda: (self.tenant(tenant) or {}).get("auto_recharge") == want,
            30,
            f"{tenant}'s settings {want}",
        )

    def funds(self, tenant: str, event_id: str, amount: str, **kw: Any) -> None:
        produce(
            self.bootstrap, self.env.topic("funds"), [funds_msg(tenant, event_id, amount, **kw)]
        )

    def cdrs(self, tenant: str, ids: list[str], duration: int = 600) -> None:
        produce(
            self.bootstrap,
            self.env.topic("cdr_audio"),
            [cdr_msg(tenant, i, duration=duration, destination=JAMAICA) for i in ids],
        )

    # --- observations ---------------------------------------------------------------------

    def tenant(self, tenant: str) -> dict[str, Any] | None:
        status, body = http_get(f"{self.worker.url}/tenants/{tenant}")
        return json.loads(body) if status == 200 else None

    def balance(self, tenant: str) -> Decimal | None:
        doc = self.tenant(tenant)
        return None if doc is None else Decimal(doc["balance"])

    def wait_balance(self, tenant: str, expected: Decimal | str) -> None:
        want = Decimal(expected)
        wait_until(lambda: self.balance(tenant) == want, 30, f"{tenant}'s balance == {want}")

    def _mine(self, field: str, tenant: str) -> list[dict[str, Any]]:
        return [
            m for m in read_json(self.bootstrap, self.env.topic(field)) if m["tenant_id"] == tenant
        ]

    def commands(self, tenant: str) -> list[dict[str, Any]]:
        return self._mine("recharge_commands", tenant)

    def events(self, tenant: str) -> list[dict[str, Any]]:
        return self._mine("balance_events", tenant)

    def charges(self, tenant: str) -> list[dict[str, Any]]:
        """The tenant's charges, first copy per cdr_id, in publication order."""
        seen: dict[str, dict[str, Any]] = {}
        for c in self._mine("charges", tenant):
            seen.setdefault(c["cdr_id"], c)
        return list(seen.values())

    def wait_charges(self, tenant: str, n: int, timeout: float = 60) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = wait_until(
            lambda: c if len(c := self.charges(tenant)) >= n else None,
            timeout,
            f"{n} charges for {tenant}",
        )
        assert len(found) == n, found
        return found

    def barrier(self, tenant: str) -> None:
        """A zero-duration CDR (charge 0, no effects) whose charge proves everything the
        ledger did for ``tenant`` before it has been published. Only call it once the
        state shows the previous input applied (inputs on other topics are not ordered)."""
        marker = f"barrier-{uuid.uuid4().hex[:8]}"
        produce(self.bootstrap, self.env.topic("cdr_audio"), [cdr_msg(tenant, marker, duration=0)])
        wait_until(
            lambda: any(c["cdr_id"] == marker for c in self.charges(tenant)),
            30,
            f"barrier {marker}",
        )

    def metric(self, name: str, **labels: str) -> float:
        return metric_value(self.worker.metrics(), name, **labels)


@pytest.fixture(scope="module")
def rig(bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    env = Env(bootstrap)
    env.create_topics()
    worker = Worker(env, tmp_path_factory.mktemp("credits"), 0, **FAST_RECHARGE)
    try:
        worker.start()
        yield Rig(env, worker)
    finally:
        worker.stop()


def total(charges: list[dict[str, Any]]) -> Decimal:
    return sum((Decimal(c["amount"]) for c in charges), Decimal(0))


def test_recharge_issued_once_at_the_crossing_and_credited_once(rig: Rig) -> None:
    t = new_tenant("cross")
    # Created with auto-recharge off: on at balance 0 would issue a command at once (0 < 5).
    rig.create(t, enabled=False, amount="20.00", trigger="5.00")
    rig.funds(t, f"{t}-seed", "10.00")
    rig.wait_balance(t, "10.00")
    rig.update(t, enabled=True, amount="20.00", trigger="5.00")
    assert rig.commands(t) == []  # 10.00 is not below 5.00

    # 14 x 2.1000 = 29.4000: below 5 at the 3rd call, then 11 more calls below the trigger.
    rig.cdrs(t, [f"{t}-c{i:02d}" for i in range(14)], duration=600)
    charges = rig.wait_charges(t, 14)
    spent = total(charges)
    running = Decimal("10.00")
    for c in charges:  # the ledger's balance_after agrees with funds minus charges, in order
        running -= Decimal(c["amount"])
        assert Decimal(c["balance_after"]) == running, c
    crossing = next(c for c in charges if Decimal(c["balance_after"]) < Decimal(5))
    assert crossing is charges[2], charges

    # Exactly one command, issued at the crossing; the 11 debits below it issued nothing more.
    commands = rig.commands(t)
    assert len(commands) == 1, commands
    cmd = commands[0]
    assert cmd["command_id"] == f"{t}:recharge:1"
    assert cmd["amount"] == "20.00"
    assert cmd["trigger_balance"] == "5.00"
    assert cmd["currency"] == "USD"
    assert cmd["attempt"] == 1
    assert Decimal(cmd["balance"]) == Decimal(crossing["balance_after"])
    doc = rig.tenant(t)
    assert doc is not None
    assert doc["outstanding_command"]["command_id"] == cmd["command_id"]
    assert doc["outstanding_command"]["attempt"] == 1

    # billing answers twice with the same event: credited once.
    dup_before = rig.metric(
        "rating_funds_events_total", kind="recharge_succeeded", outcome="duplicate"
    )
    success = funds_msg(
        t, f"{t}-paid-1", "20.00", kind="recharge_succeeded", command_id=cmd["command_id"]
    )
    produce(rig.bootstrap, rig.env.topic("funds"), [success, success])
    wait_until(
        lambda: (
            rig.metric("rating_funds_events_total", kind="recharge_succeeded", outcome="duplicate")
            >= dup_before + 1
        ),
        30,
        "the second recharge_succeeded to be dropped as a duplicate",
    )
    expected = Decimal("10.00") + Decimal("20.00") - spent  # 0.6000: still below 5.00
    assert rig.balance(t) == expected
    assert expected < Decimal(5)

    # Still below the trigger after the success: the next command follows, for that balance.
    nxt = wait_until(
        lambda: [c for c in rig.commands(t) if c["command_id"] == f"{t}:recharge:2"],
        30,
        "the next command",
    )
    assert len(nxt) == 1, nxt
    assert nxt[0]["attempt"] == 1
    assert nxt[0]["amount"] == "20.00"
    assert Decimal(nxt[0]["balance"]) == expected
    doc = rig.tenant(t)
    assert doc is not None
    assert doc["outstanding_command"]["command_id"] == f"{t}:recharge:2"
    assert [c["command_id"] for c in rig.commands(t)] == [f"{t}:recharge:1", f"{t}:recharge:2"]


def _ledger_tick_after(rig: Rig, tenant: str, at: datetime) -> bool:
    """A clock tick stamped at or after ``at`` is in the tenant's ledger partition."""
    partition = partition_of(tenant, rig.env.partitions)
    for rec in read_records(rig.bootstrap, f"{rig.env.app_id}-ledger", {partition}):
        try:
            data = json.loads(rec.value)
        except ValueError:
            continue
        if data.get("k") == "tick" and rec.timestamp >= at:
            return True
    return False


def test_failed_recharges_back_off_then_recharge_failing_then_resume(rig: Rig) -> None:
    t = new_tenant("failing")
    # On at balance 0: 0 < 5, so command 1 is issued by the settings message itself.
    rig.create(t, enabled=True, amount="20.00", trigger="5.00")
    cid = f"{t}:recharge:1"
    sent: list[dict[str, Any]] = []
    answered: list[datetime] = []
    for attempt in (1, 2, 3):
        cmd = wait_until(
            lambda a=attempt: next((c for c in rig.commands(t) if c["attempt"] == a), None),
            30,
            f"attempt {attempt} of {cid}",
            interval=0.05,
        )
        assert cmd["command_id"] == cid, cmd  # the SAME command, re-sent
        assert cmd["amount"] == "20.00"
        sent.append(cmd)
        answered.append(datetime.now(UTC))  # before the answer's record is stamped
        rig.funds(t, f"{cid}:attempt-{attempt}:failed", "0", kind="recharge_failed", command_id=cid)

    failing = wait_until(
        lambda: [e for e in rig.events(t) if e["kind"] == "recharge_failing"],
        30,
        "recharge_failing",
    )
    assert len(failing) == 1, failing
    assert failing[0]["threshold"] == "5.00"
    assert Decimal(failing[0]["balance"]) == 0

    # Backoff: attempt n+1 goes out no sooner than backoff(n) = 1 s, 2 s after the n-th
    # failure, and the gap between sends grows.
    issued = [parse_time(c["issued_at"]) for c in sent]
    assert issued[1] - answered[0] >= timedelta(seconds=1) - CLOCK_SLACK, (issued, answered)
    assert issued[2] - answered[1] >= timedelta(seconds=2) - CLOCK_SLACK, (issued, answered)
    assert issued[2] - issued[1] >= issued[1] - issued[0], issued

    # Given up: no 4th attempt, even once the clock is past when it would have been due
    # (backoff(3) = 4 s) and a debit below the trigger has been applied.
    gave_up = parse_time(failing[0]["at"])
    wait_until(
        lambda: _ledger_tick_after(rig, t, gave_up + timedelta(seconds=5)),
        30,
        "a clock tick 5 s after recharge_failing",
        interval=0.5,
    )
    rig.cdrs(t, [f"{t}-after-failing"], duration=60)
    rig.wait_charges(t, 1)
    commands = rig.commands(t)
    assert [(c["command_id"], c["attempt"]) for c in commands] == [
        (cid, 1),
        (cid, 2),
        (cid, 3),
    ], commands
    doc = rig.tenant(t)
    assert doc is not None
    assert doc["outstanding_command"] is None
    assert doc["recharge_failing"] is True

    # An admin adds funds: the loop resumes with a new command, still below the trigger.
    rig.funds(t, f"{t}-manual", "1.00")
    resumed = wait_until(
        lambda: [c for c in rig.commands(t) if c["command_id"] == f"{t}:recharge:2"],
        30,
        "a new command after manual_add",
    )
    assert resumed[0]["attempt"] == 1
    assert Decimal(resumed[0]["balance"]) == Decimal("1.00") - Decimal("0.2100")
    doc = rig.tenant(t)
    assert doc is not None
    assert doc["recharge_failing"] is False
    assert doc["outstanding_command"]["command_id"] == f"{t}:recharge:2"


def test_unanswered_command_is_resent_after_timeout_and_backoff(
    pipeline_env: Env, workers: list[Worker], tmp_path: Path
) -> None:
    env = pipeline_env
    w = Worker(
        env,
        tmp_path,
        0,
        RATING_RECHARGE_TIMEOUT_SECONDS="2",
        RATING_RECHARGE_BACKOFF_SECONDS="1",
        RATING_RECHARGE_BACKOFF_MAX_SECONDS="4",
        RATING_TICK_SECONDS="0.5",
    )
    workers.append(w)
    w.start()
    rig = Rig(env, w)
    t = new_tenant("timeout")
    rig.create(t, enabled=True, amount="20.00", trigger="5.00")  # command 1 at once
    cid = f"{t}:recharge:1"
    # Billing never answers.
    sent = wait_until(
        lambda: c if len(c := rig.commands(t)) >= 2 else None, 30, "a re-sent command"
    )
    first, second = sent[:2]
    assert (first["command_id"], first["attempt"]) == (cid, 1)
    assert (second["command_id"], second["attempt"]) == (cid, 2)
    assert second["amount"] == first["amount"] == "20.00"
    assert second["trigger_balance"] == first["trigger_balance"] == "5.00"
    gap = parse_time(second["issued_at"]) - parse_time(first["issued_at"])
    assert gap >= timedelta(seconds=2 + 1) - CLOCK_SLACK, gap  # timeout + backoff(1)
    assert all(c["command_id"] == cid for c in rig.commands(t))
    doc = rig.tenant(t)
    assert doc is not None
    assert doc["outstanding_command"]["command_id"] == cid
    assert doc["outstanding_command"]["attempt"] >= 2
    assert rig.metric("rating_recharge_commands_total", outcome="timed_out") >= 1


def test_daily_cap_stops_new_commands(rig: Rig) -> None:
    t = new_tenant("capped")
    capped_before = rig.metric("rating_recharge_commands_total", outcome="capped")
    # 1.00 a time against a 100.00 trigger: every success leaves it below the trigger.
    rig.create(t, enabled=True, amount="1.00", trigger="100.00")
    for n in (1, 2):
        cid = f"{t}:recharge:{n}"
        wait_until(
            lambda c=cid: any(x["command_id"] == c for x in rig.commands(t)),
            30,
            f"command {cid}",
        )
        rig.funds(t, f"{cid}:ok", "1.00", kind="recharge_succeeded", command_id=cid)
    wait_until(
        lambda: (
            (d := rig.tenant(t)) and d["balance"] == "2.00" and d["outstanding_command"] is None
        ),
        30,
        "both recharges credited",
    )
    rig.barrier(t)
    commands = rig.commands(t)
    assert [c["command_id"] for c in commands] == [f"{t}:recharge:1", f"{t}:recharge:2"]
    doc = rig.tenant(t)
    assert doc is not None
    assert doc["outstanding_command"] is None
    assert rig.metric("rating_recharge_commands_total", outcome="capped") == capped_before + 1


def test_balance_events_fire_on_crossings_only(rig: Rig) -> None:
    t = new_tenant("events")
    rig.create(t, low="3.00")  # auto-recharge off; the alert line is 3.00
    rig.funds(t, f"{t}-f1", "5.00")
    rig.wait_balance(t, "5.00")
    # 5.00 -> 2.90 (below 3) -> 0.80 -> -1.30 (exhausted) -> -3.40 -> -5.50 -> -7.60
    rig.cdrs(t, [f"{t}-c{i}" for i in range(6)], duration=600)
    charges = rig.wait_charges(t, 6)
    after = [Decimal(c["balance_after"]) for c in charges]
    below_line = next(b for b in after if b < 3)
    exhausted = next(b for b in after if b <= 0)
    final = Decimal("5.00") - total(charges) + Decimal("10.00")
    assert Decimal(0) < final < Decimal(3)  # restored, but still under the alert line
    rig.funds(t, f"{t}-f2", "10.00")
    rig.wait_balance(t, final)
    rig.barrier(t)

    got = [(e["kind"], e["threshold"], Decimal(e["balance"])) for e in rig.events(t)]
    assert got == [
        ("exhausted", "0", Decimal(0)),  # creation: balance 0 blocks credit-needing calls
        ("restored", "0", Decimal("5.00")),  # the first funds
        ("low_balance", "3.00", below_line),
        ("exhausted", "0", exhausted),
        ("restored", "0", final),  # no second low_balance: it never got back above 3
    ], got
    times = [parse_time(e["at"]) for e in rig.events(t)]
    assert times == sorted(times)


def test_duplicate_funds_events_are_applied_once(rig: Rig) -> None:
    t = new_tenant("dupfunds")
    rig.create(t)
    dup = "rating_funds_events_total"
    add_before = rig.metric(dup, kind="manual_add", outcome="duplicate")
    add = funds_msg(t, f"{t}-add", "10.00")
    adj = funds_msg(t, f"{t}-adj", "-2.50", kind="adjustment")
    # One key, one input partition: the ledger sees them in this order.
    produce(rig.bootstrap, rig.env.topic("funds"), [add, add, add, adj, adj])
    wait_until(
        lambda: rig.metric(dup, kind="manual_add", outcome="duplicate") >= add_before + 2,
        30,
        "two manual_add duplicates dropped",
    )
    # A distinct event after them all: once it is in, every copy before it was handled.
    rig.funds(t, f"{t}-after", "0.01")
    rig.wait_balance(t, Decimal("10.00") - Decimal("2.50") + Decimal("0.01"))
    assert rig.metric(dup, kind="manual_add", outcome="duplicate") == add_before + 2
    kinds = [e["kind"] for e in rig.events(t)]
    assert kinds == ["exhausted", "restored"], kinds  # the duplicates emitted nothing


def test_negative_adjustment_is_counted_without_crashing_the_ledger(
    pipeline_env: Env, workers: list[Worker], tmp_path: Path
) -> None:
    # Its own worker: on the buggy code the crash leaves the ledger one crash from a stall.
    w = Worker(pipeline_env, tmp_path, 0)
    workers.append(w)
    w.start()
    rig = Rig(pipeline_env, w)
    t = new_tenant("negadj")
    rig.create(t)
    produce(
        rig.bootstrap,
        rig.env.topic("funds"),
        [
            funds_msg(t, f"{t}-a1", "5.00", kind="adjustment"),
            funds_msg(t, f"{t}-a2", "-2.00", kind="adjustment"),
            funds_msg(t, f"{t}-m1", "1.00"),
        ],
    )
    rig.wait_balance(t, "4.00")
    rig.barrier(t)  # the ledger has handled (and counted) everything before it
    log = w.log_path.read_text(errors="replace")
    assert "Crashed" not in log, log[-3000:]
    events = "rating_funds_events_total"
    assert rig.metric(events, kind="adjustment", outcome="applied") == 2
    assert rig.metric(events, kind="manual_add", outcome="applied") == 1


def test_settings_change_mid_stream_issues_a_command_at_once(rig: Rig) -> None:
    t = new_tenant("retrigger")
    rig.create(t, enabled=False, amount="20.00", trigger="1.00")
    rig.funds(t, f"{t}-seed", "10.00")
    rig.wait_balance(t, "10.00")
    rig.update(t, enabled=True, amount="20.00", trigger="1.00")
    rig.cdrs(t, [f"{t}-a{i}" for i in range(3)], duration=120)  # 3 x 0.4200
    before = Decimal("10.00") - total(rig.wait_charges(t, 3))
    rig.wait_balance(t, before)
    assert rig.commands(t) == []  # 8.74 is not below 1.00

    # The trigger moves above the balance: the command goes out on the settings message
    # itself, with no further debit in between.
    rig.settings(t, enabled=True, amount="20.00", trigger="50.00")
    cmds = wait_until(lambda: rig.commands(t), 30, "a command after the trigger moved up")
    assert cmds[0]["command_id"] == f"{t}:recharge:1"
    assert cmds[0]["trigger_balance"] == "50.00"
    assert Decimal(cmds[0]["balance"]) == before
    assert len(rig.charges(t)) == 3

    # The stream goes on: more debits, still the one command outstanding.
    rig.cdrs(t, [f"{t}-b{i}" for i in range(3)], duration=120)
    rig.wait_charges(t, 6)
    assert [c["command_id"] for c in rig.commands(t)] == [f"{t}:recharge:1"]
    low = [e for e in rig.events(t) if e["kind"] == "low_balance"]
    assert [(e["threshold"], Decimal(e["balance"])) for e in low] == [("50.00", before)]


SIM_TENANTS = 3
SIM_CDRS = 300
SIM_FUNDS = Decimal("30.00")
SIM_AMOUNT = "10.00"
SIM_TRIGGER = "5.00"


def _start_billing_sim(env: Env, log_path: Path) -> subprocess.Popen[bytes]:
    cmd = billing_sim_command(failure_rate=0.3, seed=3, latency=0.1, group=f"billing-{env.name}")
    return start_process(cmd, log_path, env.worker_env())


def test_sigkill_with_billing_sim_credits_every_recharge_once(
    pipeline_env: Env, workers: list[Worker], tmp_path: Path
) -> None:
    env = pipeline_env
    b = env.bootstrap
    w = Worker(
        env,
        tmp_path,
        0,
        RATING_RECHARGE_BACKOFF_SECONDS="1",
        RATING_RECHARGE_BACKOFF_MAX_SECONDS="2",
        RATING_RECHARGE_MAX_FAILURES="5",
        RATING_RECHARGE_TIMEOUT_SECONDS="5",
        RATING_RECHARGE_DAILY_CAP="1000",
        RATING_TICK_SECONDS="0.5",
    )
    workers.append(w)
    sim = _start_billing_sim(env, tmp_path / "billing-sim.log")
    try:
        w.start()
        rig = Rig(env, w)
        tenants = [new_tenant(f"sim{i}") for i in range(SIM_TENANTS)]
        for t in tenants:
            rig.create(t, enabled=True, amount=SIM_AMOUNT, trigger=SIM_TRIGGER)
        produce(b, env.topic("funds"), [funds_msg(t, f"{t}-seed", str(SIM_FUNDS)) for t in tenants])

        rng = random.Random(5)
        cdrs = [
            cdr_msg(
                tenants[i % SIM_TENANTS],
                f"sim-{i:04d}",
                duration=rng.randrange(60, 301),
                destination=JAMAICA,
            )
            for i in range(SIM_CDRS)
        ]
        chunks = [cdrs[i : i + 20] for i in range(0, len(cdrs), 20)]
        stop = threading.Event()
        sent = threading.Event()

        def platform() -> None:
            for chunk in chunks:
                if stop.is_set():
                    return
                produce(b, env.topic("cdr_audio"), chunk)
                stop.wait(0.25)
            sent.set()

        def charged() -> set[str]:
            return {json.loads(v)["cdr_id"] for v in _values(env, "charges")}

        thread = threading.Thread(target=platform, daemon=True)
        thread.start()
        try:
            for threshold in (60, 180):
                wait_until(lambda n=threshold: len(charged()) >= n, 120, f"{threshold} charges")
                w.kill()
                w.start(wait_ready=False)
            wait_until(sent.is_set, 120, "every CDR published")
        finally:
            stop.set()
            thread.join(30)
        w.wait_ready(120)

        wanted = {json.loads(v)["cdr_id"] for _, v in cdrs}
        wait_until(lambda: charged() >= wanted, 180, "every CDR charged")

        def settled() -> bool:
            docs = [rig.tenant(t) for t in tenants]
            return all(d is not None and d["outstanding_command"] is None for d in docs)

        wait_until(settled, 120, "no recharge outstanding")
    finally:
        stop_process(sim, 15)

    commands = [json.loads(v) for v in _values(env, "recharge_commands")]
    funds = [(r, json.loads(r.value)) for r in read_records(b, env.topic("funds"))]
    events = [json.loads(v) for v in _values(env, "balance_events")]
    charges: dict[str, dict[str, Any]] = {}
    for v in _values(env, "charges"):
        c = json.loads(v)
        charges.setdefault(c["cdr_id"], c)

    recharges_seen = 0
    for t in tenants:
        doc = rig.tenant(t)
        assert doc is not None
        spent = total([c for c in charges.values() if c["tenant_id"] == t])
        # Successes by event_id (billing re-sends the same event for a re-sent command).
        paid: dict[str, Decimal] = {}
        paid_at: dict[str, datetime] = {}  # command_id -> earliest success on billing.funds
        success_ids: dict[str, set[str]] = {}
        for rec, f in funds:
            if f["tenant_id"] != t or f["kind"] != "recharge_succeeded":
                continue
            paid[f["event_id"]] = Decimal(f["amount"])
            success_ids.setdefault(f["command_id"], set()).add(f["event_id"])
            prev = paid_at.get(f["command_id"])
            paid_at[f["command_id"]] = rec.timestamp if prev is None else min(prev, rec.timestamp)
        recharged = sum(paid.values(), Decimal(0))
        assert Decimal(doc["balance"]) == SIM_FUNDS + recharged - spent, (t, doc, paid)

        mine = [c for c in commands if c["tenant_id"] == t]
        assert all(c["amount"] == SIM_AMOUNT for c in mine), mine
        # billing took the money at most once per command.
        assert all(len(ids) == 1 for ids in success_ids.values()), success_ids
        # Ids come in sequence, and command n+1 first appears only after billing answered
        # command n with a success (or the tenant was told recharges are failing): its
        # issued_at is the ledger time of the record that issued it, which is never before
        # the billing.funds record that resolved command n.
        first_seen: dict[str, datetime] = {}
        for c in mine:
            first_seen.setdefault(c["command_id"], parse_time(c["issued_at"]))
        order = list(first_seen)
        assert order == [f"{t}:recharge:{n}" for n in range(1, len(order) + 1)], order
        failing_at = [
            parse_time(e["at"])
            for e in events
            if e["tenant_id"] == t and e["kind"] == "recharge_failing"
        ]
        for prev_id, next_id in itertools.pairwise(order):
            resolved = paid_at.get(prev_id)
            if resolved is None:
                resolved = min((a for a in failing_at if a <= first_seen[next_id]), default=None)
            assert resolved is not None, (prev_id, next_id)
            assert resolved <= first_seen[next_id], (prev_id, next_id, resolved, first_seen)
        recharges_seen += len(paid)
    assert recharges_seen >= SIM_TENANTS * 2, "expected several recharges to exercise"

    # The final check an SRE runs after the crashes: balances recomputed from the topics.
    final = reconcile(env, "--wait", "30", urls=[w.url])
    assert final.returncode == 0, (final.stdout, final.stderr)
    assert f"consistent: {SIM_TENANTS} tenants checked, 0 drifted" in final.stdout, final.stdout


def _values(env: Env, field: str) -> list[bytes]:
    return [r.value for r in read_records(env.bootstrap, env.topic(field))]
