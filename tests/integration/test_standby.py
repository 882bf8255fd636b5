"""Failover with a standby replica (RATING_STANDBY_REPLICAS=1, the default).

Two workers: each owns half of the ledger partitions and keeps a warm standby copy of the
other half (Faust standbys read the other worker's changelog partitions as they are
written). One is killed with SIGKILL; the survivor takes its partitions over. With a standby
it starts their recovery where its copy stands, near the changelog's end, instead of
replaying each moved partition from offset 0; and the balances it answers are exact.

What the survivor read is taken from its own recovery report in the log (Faust prints, per
changelog partition, the highwater and the offset its recovery starts at): the only place a
worker says where its recovery started.
"""

from __future__ import annotations

import json
import re
from decimal import Decimal
from pathlib import Path

from tests.integration.harness import (
    ROCKSDB,
    Env,
    Worker,
    cdr_msg,
    funds_msg,
    produce,
    read_topic,
    settings_msg,
    wait_until,
)

TENANTS = [f"sb-{i}" for i in range(12)]
FUNDS = Decimal("1000.00")
ROW = re.compile(r"^\|\s*(\S+)\s*\|\s*(\d+)\s*\|\s*(-?\d+)\s*\|\s*$")


def _table_after(text: str, title: str) -> dict[int, int]:
    """The last Faust log table under ``title``: changelog partition -> offset."""
    start = text.rfind(title)
    if start < 0:
        return {}
    rows: dict[int, int] = {}
    for line in text[start:].splitlines()[1:]:
        if line.startswith("[") and rows:  # the next log line: the table has ended
            break
        match = ROW.match(line.strip())
        if match:
            rows[int(match.group(2))] = int(match.group(3))
    return rows


def _charged(env: Env) -> dict[str, Decimal]:
    """cdr_id -> amount of every Charge on the topic (copies of one Charge are the same)."""
    return {
        charge["cdr_id"]: Decimal(charge["amount"])
        for charge in (
            json.loads(value)
            for _, value in read_topic(env.bootstrap, env.topic("charges"), timeout=30)
        )
    }


def test_a_standby_takes_over_a_killed_workers_partitions_without_replaying_them(
    pipeline_env: Env, workers: list[Worker], tmp_path: Path
) -> None:
    env = pipeline_env
    b = env.bootstrap
    # RocksDB, as deployed: Faust's memory store keeps no changelog offset, so there a
    # standby's copy is not used and every recovery replays from the beginning.
    victim = Worker(env, tmp_path, 0, RATING_STANDBY_REPLICAS="1", **ROCKSDB)
    survivor = Worker(env, tmp_path, 1, RATING_STANDBY_REPLICAS="1", **ROCKSDB)
    workers.extend([victim, survivor])
    victim.start()
    survivor.start()
    produce(b, env.topic("tenant_settings"), [settings_msg(t) for t in TENANTS])
    wait_until(lambda: all(survivor.balance(t) is not None for t in TENANTS), 60, "tenants")
    produce(b, env.topic("funds"), [funds_msg(t, f"fund-{t}", str(FUNDS)) for t in TENANTS])
    cdrs = [
        cdr_msg(TENANTS[i % len(TENANTS)], f"sb-cdr-{i:04d}", duration=60 + i % 300)
        for i in range(600)
    ]
    tenant_of = {json.loads(value)["cdr_id"]: key.decode() for key, value in cdrs}
    produce(b, env.topic("cdr_audio"), cdrs)
    wait_until(lambda: len(_charged(env)) == len(cdrs), 120, "every CDR charged")

    log_before = survivor.log_path.read_text(errors="replace")
    victim.kill()
    # The survivor owns every ledger partition once the group has moved the victim's.
    wait_until(
        lambda: (
            survivor.log_path.read_text(errors="replace").count("Worker ready")
            > log_before.count("Worker ready")
        ),
        90,
        "the survivor to recover the victim's partitions",
    )
    text = survivor.log_path.read_text(errors="replace")[len(log_before) :]
    starts = _table_after(text, "Reading Starts At - Active")
    highwaters = _table_after(text, "Highwater - Active")
    assert starts, text[-3000:]
    assert highwaters, text[-3000:]
    # Every ledger partition is active here now; each recovery starts where the survivor's
    # copy already was (its own partitions, and the victim's through the standby), never at 0.
    with_data = {p: hw for p, hw in highwaters.items() if hw > 0}
    assert with_data, highwaters
    replayed = sum(hw - starts.get(p, 0) for p, hw in with_data.items())
    assert all(starts.get(p, 0) > 0 for p in with_data), (starts, highwaters)
    assert replayed < sum(with_data.values()) // 10, (replayed, starts, highwaters)

    charged = _charged(env)
    spent = {
        t: sum((a for c, a in charged.items() if tenant_of[c] == t), Decimal(0)) for t in TENANTS
    }
    settled = wait_until(
        lambda: all(survivor.balance(t) == FUNDS - spent[t] for t in TENANTS),
        60,
        "exact balances on the survivor",
        fail=False,
    )
    assert settled, {t: (str(FUNDS - spent[t]), str(survivor.balance(t))) for t in TENANTS}
