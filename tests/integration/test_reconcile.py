"""`rating reconcile` against real workers on the broker: consistent, then a planted drift."""

from __future__ import annotations

import json
import subprocess
from decimal import Decimal
from pathlib import Path

from rating.broker import free_port
from tests.integration.harness import (
    Env,
    Worker,
    cdr_msg,
    funds_msg,
    produce,
    read_json,
    reconcile,
    settings_msg,
    wait_until,
)


def _explain(proc: subprocess.CompletedProcess[str]) -> str:
    return f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"


def test_reconcile_finds_no_drift_then_the_planted_one(
    pipeline_env: Env, workers: list[Worker], tmp_path: Path
) -> None:
    env = pipeline_env
    b = env.bootstrap
    worker = Worker(env, tmp_path, 0)
    workers.append(worker)
    worker.start()
    acme, other = "acme/eu", "other%1"  # ids that need percent-encoding in the URL
    produce(b, env.topic("tenant_settings"), [settings_msg(acme), settings_msg(other, "EUR")])
    wait_until(lambda: worker.balance(acme) is not None, 60, "acme to exist")
    wait_until(lambda: worker.balance(other) is not None, 60, "other to exist")
    produce(
        b,
        env.topic("funds"),
        [
            funds_msg(acme, "seed", "20.00"),
            funds_msg(acme, "seed", "20.00"),  # billing's retry: credited once
            funds_msg(other, "seed", "5.00", currency="EUR"),
            # A success for a command rating never issued: rejected, credits nothing.
            funds_msg(
                acme, "stray", "50", kind="recharge_succeeded", command_id=f"{acme}:recharge:9"
            ),
        ],
    )
    cdrs = [cdr_msg(acme, f"a-{i}", duration=60 * (i + 1)) for i in range(5)]
    cdrs += [cdr_msg(other, "o-1", destination="+4520123456"), cdrs[0]]  # cdrs[0] twice
    produce(b, env.topic("cdr_audio"), cdrs)

    def charges() -> dict[str, dict[str, str]]:
        return {c["cdr_id"]: c for c in read_json(b, env.topic("charges"))}

    wait_until(lambda: len(charges()) == 6, 60, "6 charges")
    wait_until(
        lambda: any(
            r["reason"] == "command_not_outstanding" for r in read_json(b, env.topic("rejected"))
        ),
        60,
        "the stray recharge result to be rejected",
    )
    spent = {t: Decimal(0) for t in (acme, other)}
    for c in charges().values():
        spent[c["tenant_id"]] += Decimal(c["amount"])
    expected = {acme: Decimal("20.00") - spent[acme], other: Decimal("5.00") - spent[other]}
    for t, e in expected.items():
        wait_until(lambda t=t, e=e: worker.balance(t) == e, 60, f"{t}'s balance {e}")

    ok = reconcile(env, urls=[worker.url])
    assert ok.returncode == 0, _explain(ok)
    assert "reconcile: consistent: 2 tenants checked, 0 drifted" in ok.stdout, _explain(ok)
    # The republished CDR was never charged twice (so no Charge copy); billing's retry of
    # "seed" is one credit, the stray recharge result none.
    assert "charges: 6 read, 0 duplicates ignored" in ok.stdout, _explain(ok)
    assert "funds: 4 read, 1 duplicates ignored, 1 refused" in ok.stdout, _explain(ok)

    # A Charge nobody debited, put straight onto rating.charges: the topics now say acme
    # spent 1.2345 more than its balance shows.
    planted = dict(charges()[f"a-{0}"], cdr_id="planted", amount="1.2345", balance_after="0")
    produce(b, env.topic("charges"), [(acme.encode(), json.dumps(planted).encode())])
    drift = reconcile(env, "--wait", "2", "--interval", "0.5", urls=[worker.url])
    assert drift.returncode == 1, _explain(drift)
    [line] = [ln for ln in drift.stdout.splitlines() if ln.startswith("DRIFT")]
    assert line == (
        f"DRIFT tenant={acme} expected={expected[acme] - Decimal('1.2345')} "
        f"answered={worker.balance(acme)} difference=+1.2345 currency=USD"
    ), _explain(drift)
    assert "re-checking" in drift.stderr, _explain(drift)
    assert "2 tenants checked, 1 drifted (0 unknown)" in drift.stdout, _explain(drift)

    # Only the other tenant: consistent.
    only = reconcile(env, "--tenant", other, "--all", urls=[worker.url])
    assert only.returncode == 0, _explain(only)
    assert f"OK tenant={other} " in only.stdout, _explain(only)
    assert "1 tenants checked" in only.stdout, _explain(only)

    # A tenant asked for by name that does not exist is reported, not skipped.
    ghost = reconcile(env, "--tenant", "ghost", urls=[worker.url])
    assert ghost.returncode == 1, _explain(ghost)
    assert "UNKNOWN tenant=ghost" in ghost.stdout, _explain(ghost)

    # Nothing to compare with: the check could not be made.
    dead = f"http://127.0.0.1:{free_port()}"
    no_api = reconcile(env, urls=[dead])
    assert no_api.returncode == 2, _explain(no_api)
    assert "cannot reach the workers' API" in no_api.stderr, _explain(no_api)
    # ... unless another worker URL answers.
    fallback = reconcile(env, "--tenant", other, urls=[dead, worker.url])
    assert fallback.returncode == 0, _explain(fallback)

    no_broker = reconcile(env, "--bootstrap", f"127.0.0.1:{free_port()}", urls=[worker.url])
    assert no_broker.returncode == 2, _explain(no_broker)
    assert "cannot reach the Kafka brokers" in no_broker.stderr, _explain(no_broker)
