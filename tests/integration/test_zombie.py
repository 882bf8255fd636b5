"""Zombie workers: a worker frozen (SIGSTOP) past its session timeout loses its partitions
to another worker, then wakes up (SIGCONT) still holding a batch it fetched before it froze.

Runs on both brokers and both stores. Afterwards every CDR must have exactly one effective
charge (all copies the same content, as the contract promises), every balance must equal
funds minus the reference charges, both on the live workers and after a fresh pair of workers
has recovered the state from the changelog (a zombie's late writes would show there as lost
debits, and without owner epochs did: streaming/epochs.py).
"""

from __future__ import annotations

import json
import os
import random
import signal
import threading
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from rating.contracts import CDR, Charge
from rating.domain.ratecard import load_rate_cards
from rating.domain.rating import rate_cdr
from rating.testing import ROCKSDB
from tests.integration.harness import (
    SAMPLE_CARDS,
    Env,
    Worker,
    cdr_msg,
    funds_msg,
    http_get,
    metric_value,
    produce,
    read_records,
    read_topic,
    settings_msg,
    trace_cdr,
    wait_until,
)

TENANTS = ("z-1", "z-2", "z-3", "z-4", "z-5", "z-6")
FUNDS = Decimal("5000.00")
MAX_CDRS = 4000  # the platform thread stops here at the latest
DESTINATIONS = ("+14155550100", "+447700900123", "+4520123456", "+31612345678")


def _charges(env: Env) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for _, value in read_topic(env.bootstrap, env.topic("charges"), timeout=30):
        c = json.loads(value)
        out.setdefault(c["cdr_id"], []).append(c)
    return out


def _owned_ledger_partitions(env: Env, worker: Worker) -> float:
    status, text = http_get(f"{worker.url}/metrics")
    if status != 200:
        return -1
    return metric_value(text, "rating_partitions_owned", topic=f"{env.app_id}-ledger")


def _expected_balances(cdrs: dict[str, bytes]) -> dict[str, Decimal]:
    book = load_rate_cards(SAMPLE_CARDS)
    balances = dict.fromkeys(TENANTS, FUNDS)
    for raw in cdrs.values():
        cdr = CDR.model_validate_json(raw)
        ref = rate_cdr(cdr, book, plan="standard", currency="USD", rated_at=datetime.now(UTC))
        assert isinstance(ref, Charge), ref
        balances[cdr.tenant_id] -= ref.amount
    return balances


def _missing(env: Env, sent: dict[str, bytes]) -> str:
    """Where the uncharged CDRs went: input, ledger and changelog records that name them."""
    missing = sorted(set(sent) - set(_charges(env)))
    lines = [f"{len(missing)} of {len(sent)} CDRs never charged: {missing[:10]}"]
    wanted = {m.encode() for m in missing[:10]}
    internal = (f"{env.app_id}-ledger", f"{env.app_id}-accounts-changelog")
    for topic in (env.topic("cdr_audio"), *internal):
        for r in read_records(env.bootstrap, topic, timeout=60):
            value = r.value or b""  # tombstones on the changelog
            hit = [w for w in wanted if w in value or (r.key is not None and w in r.key)]
            if hit:
                lines.append(f"{topic} p{r.partition} o{r.offset} key={r.key!r}: {value[:300]!r}")
    lines += [trace_cdr(env, cdr_id) for cdr_id in missing[:2]]
    return "\n".join(lines)


class Platform(threading.Thread):
    """Publishes CDRs in small chunks until told to stop (or MAX_CDRS): a steady trickle, so
    the freeze lands with records fetched but not yet processed."""

    def __init__(self, env: Env) -> None:
        super().__init__(daemon=True)
        self.env = env
        self.sent: dict[str, bytes] = {}
        self.stop = threading.Event()
        self.error: BaseException | None = None

        self.rng = random.Random(20261201)
        self.lock = threading.Lock()

    def publish(self, n: int) -> None:
        with self.lock:  # the test's burst and the trickle share the CDR numbering
            chunk = []
            for _ in range(n):
                key, value = cdr_msg(
                    self.rng.choice(TENANTS),
                    f"zcdr-{len(self.sent):05d}",
                    duration=self.rng.randrange(1, 1800),
                    destination=self.rng.choice(DESTINATIONS),
                )
                self.sent[json.loads(value)["cdr_id"]] = value
                chunk.append((key, value))
            produce(self.env.bootstrap, self.env.topic("cdr_audio"), chunk)

    def run(self) -> None:
        try:
            while not self.stop.is_set() and len(self.sent) < MAX_CDRS:
                self.publish(40)
                self.stop.wait(0.25)
        except BaseException as exc:  # reported by the test, not lost in a thread
            self.error = exc


# Both stores: the fence drops the deposed worker's batch from the memory store, and keeps it
# out of RocksDB (whose recovery and data dir then carry the owner epochs).
@pytest.mark.parametrize("store", [{}, ROCKSDB], ids=["memory", "rocksdb"])
def test_frozen_worker_resumed_after_losing_its_partitions_charges_each_cdr_once(
    pipeline_env: Env, workers: list[Worker], tmp_path: Path, store: dict[str, str]
) -> None:
    env = pipeline_env
    b = env.bootstrap
    zombie, survivor = Worker(env, tmp_path, 0, **store), Worker(env, tmp_path, 1, **store)
    workers.extend([zombie, survivor])
    zombie.start()
    survivor.start()
    produce(b, env.topic("tenant_settings"), [settings_msg(t) for t in TENANTS])
    wait_until(lambda: all(survivor.balance(t) is not None for t in TENANTS), 60, "tenants")
    produce(b, env.topic("funds"), [funds_msg(t, f"fund-{t}", str(FUNDS)) for t in TENANTS])
    funded = wait_until(
        lambda: all(survivor.balance(t) == FUNDS for t in TENANTS), 60, "funds", fail=False
    )
    assert funded, {t: survivor.balance(t) for t in TENANTS}
    wait_until(
        lambda: 0 < _owned_ledger_partitions(env, zombie) < env.partitions,
        60,
        "the two workers to share the ledger partitions",
    )

    platform = Platform(env)
    platform.start()
    assert zombie.proc is not None
    frozen = False
    try:
        wait_until(lambda: len(_charges(env)) >= 200, 90, "200 charges before the freeze")
        # A burst, and the freeze right after it: the zombie is caught holding records it
        # fetched (and maybe half a batch), which is what it will act on when it wakes up.
        platform.publish(1200)
        os.killpg(zombie.proc.pid, signal.SIGSTOP)
        frozen = True
        # The session times out (6 s), the group rebalances without the frozen worker.
        wait_until(
            lambda: _owned_ledger_partitions(env, survivor) == env.partitions,
            90,
            "the survivor to own every ledger partition",
        )
        # Fresh CDRs for each "is it charging" check: on a slow machine the trickle may have
        # reached MAX_CDRS and been charged by now.
        before = len(_charges(env))
        platform.publish(300)
        wait_until(lambda: len(_charges(env)) >= before + 200, 90, "the survivor charging")
        os.killpg(zombie.proc.pid, signal.SIGCONT)
        frozen = False
        # The zombie wakes up, finds out it was fenced out of the group and rejoins.
        wait_until(
            lambda: 0 < _owned_ledger_partitions(env, zombie) < env.partitions,
            90,
            "the woken worker to rejoin and get partitions back",
        )
        after = len(_charges(env))
        platform.publish(300)
        wait_until(lambda: len(_charges(env)) >= after + 200, 90, "charging after the wake-up")
    finally:
        if frozen:
            os.killpg(zombie.proc.pid, signal.SIGCONT)
        platform.stop.set()
        platform.join(30)
    assert platform.error is None, platform.error

    sent = platform.sent
    everything = wait_until(
        lambda: set(_charges(env)) >= set(sent), 120, "every CDR to be charged", fail=False
    )
    assert everything, _missing(env, sent)
    charges = _charges(env)
    assert set(charges) == set(sent)
    differing = {
        cdr_id: copies
        for cdr_id, copies in charges.items()
        if any(copy != copies[0] for copy in copies[1:])
    }
    assert not differing, (
        f"{len(differing)} CDRs charged twice with different content (a second, independent "
        f"debit), e.g. {next(iter(differing.items()))}"
    )

    expected = _expected_balances(sent)

    def balances_settled(*ws: Worker) -> bool:
        return all(w.balance(t) == expected[t] for w in ws for t in TENANTS)

    live = wait_until(lambda: balances_settled(zombie, survivor), 60, "balances", fail=False)
    assert live, {t: (str(expected[t]), str(survivor.balance(t))) for t in TENANTS}

    # State lost to a zombie's late changelog writes shows up once the state is recovered.
    zombie.stop()
    survivor.stop()
    fresh = [Worker(env, tmp_path, 10, **store), Worker(env, tmp_path, 11, **store)]
    workers.extend(fresh)
    for w in fresh:
        w.start()
    recovered = wait_until(lambda: balances_settled(*fresh), 90, "recovered", fail=False)
    assert recovered, {t: (str(expected[t]), str(fresh[0].balance(t))) for t in TENANTS}
