"""Through a real worker's public topics and HTTP: funds that arrive before settings,
ids with '/' and '%', and one credit per recharge command, across SIGKILLs."""

from __future__ import annotations

import json
import urllib.parse
import uuid
from decimal import Decimal
from pathlib import Path
from typing import Any

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

JAMAICA = "+18765550100"  # dial-out at 0.2100/min, 60/60: 600 s -> 2.1000, 60 s -> 0.2100


def tenant_url(worker: Worker, tenant: str) -> str:
    return f"{worker.url}/tenants/{urllib.parse.quote(tenant, safe='')}"


def tenant_doc(worker: Worker, tenant: str) -> dict[str, Any] | None:
    status, body = http_get(tenant_url(worker, tenant))
    return json.loads(body) if status == 200 else None


def balances(worker: Worker, tenants: list[str]) -> dict[str, str | None]:
    return {t: (tenant_doc(worker, t) or {}).get("balance") for t in tenants}


def rejections(env: Env, reason: str) -> list[dict[str, Any]]:
    return [r for r in read_json(env.bootstrap, env.topic("rejected")) if r["reason"] == reason]


def test_first_funds_published_before_settings_are_credited_once_across_a_sigkill(
    pipeline_env: Env, workers: list[Worker], tmp_path: Path
) -> None:
    env = pipeline_env
    hold = {"RATING_UNKNOWN_TENANT_HOLD_SECONDS": "900"}
    first = Worker(env, tmp_path, 0, **hold).start()
    workers.append(first)
    run = uuid.uuid4().hex[:6]
    tenants = [f"onb-{run}-{i}" for i in range(50)]
    early, late = tenants[:35], tenants[35:]
    amounts = {t: Decimal(f"{10 + i}.{i:02d}") for i, t in enumerate(tenants)}

    def funds(ts: list[str]) -> list[tuple[bytes, bytes]]:
        return [funds_msg(t, f"first-{t}", f"{amounts[t]}") for t in ts]

    # Billing onboards: funds first for most tenants (and resends some), settings after.
    produce(env.bootstrap, env.topic("funds"), funds(early) + funds(early[:10]))
    wait_until(
        lambda: metric_value(first.metrics(), "rating_messages_held_total") >= len(early) + 10,
        60,
        "the early funds to be held",
    )
    wait_until(  # the gauge is refreshed every few seconds
        lambda: metric_value(first.metrics(), "rating_held_messages") == len(early) + 10,
        30,
        "the held-messages gauge",
    )
    status, body = http_get(tenant_url(first, early[-1]))
    assert status == 404
    assert json.loads(body)["pending_messages"] == 1
    first.kill()  # the held funds must survive in ledger state

    second = Worker(env, tmp_path, 1, **hold).start()
    workers.append(second)
    produce(env.bootstrap, env.topic("tenant_settings"), [settings_msg(t) for t in tenants])
    produce(env.bootstrap, env.topic("funds"), funds(late) + funds(early[10:20]))
    expected = {t: f"{amounts[t]}" for t in tenants}
    got = wait_until(
        lambda: balances(second, tenants) == expected and balances(second, tenants),
        90,
        "every first credit applied",
        fail=False,
    )
    assert got == expected
    assert rejections(env, "unknown_tenant") == []
    wait_until(
        lambda: metric_value(second.metrics(), "rating_held_messages") == 0, 30, "nothing held"
    )


def test_a_cdr_whose_tenant_never_gets_settings_is_rejected_after_the_hold(
    pipeline_env: Env, workers: list[Worker], tmp_path: Path
) -> None:
    env = pipeline_env
    worker = Worker(env, tmp_path, 0, RATING_UNKNOWN_TENANT_HOLD_SECONDS="4").start()
    workers.append(worker)
    ghost = f"ghost-{uuid.uuid4().hex[:6]}"
    key, value = cdr_msg(ghost, "never-rated")
    produce(env.bootstrap, env.topic("cdr_audio"), [(key, value)])
    pending = wait_until(
        lambda: "pending" in http_get(tenant_url(worker, ghost))[1],
        30,
        "the CDR to be held",
    )
    assert pending
    (rej,) = wait_until(lambda: rejections(env, "unknown_tenant"), 40, "the rejection")
    assert rej["payload"] == value.decode()
    assert rej["key"] == ghost
    assert "RATING_UNKNOWN_TENANT_HOLD_SECONDS" in rej["detail"]
    assert http_get(tenant_url(worker, ghost))[0] == 404
    assert metric_value(worker.metrics(), "rating_cdrs_rejected_total", reason="unknown_tenant")


def test_ids_with_slashes_and_percent_signs_are_charged_to_their_own_tenant(
    pipeline_env: Env, workers: list[Worker], tmp_path: Path
) -> None:
    env = pipeline_env
    one = Worker(env, tmp_path, 0).start()
    two = Worker(env, tmp_path, 1).start()
    workers += [one, two]
    run = uuid.uuid4().hex[:4]
    acme, acme_eu, pct = f"acme{run}", f"acme{run}/eu", f"acme{run}%2Feu"
    tenants = [acme, acme_eu, pct, "\u00e6\u00f8\u00e5/%"]
    produce(env.bootstrap, env.topic("tenant_settings"), [settings_msg(t) for t in tenants])
    produce(env.bootstrap, env.topic("funds"), [funds_msg(t, "seed", "10.00") for t in tenants])
    wait_until(lambda: set(balances(one, tenants).values()) == {"10.00"}, 60, "every tenant funded")
    cdrs = [
        cdr_msg(acme, "eu/x", duration=60, destination=JAMAICA),  # 0.2100
        cdr_msg(acme_eu, "x", duration=600, destination=JAMAICA),  # 2.1000
        cdr_msg(pct, "x", duration=120, destination=JAMAICA),  # 0.4200
        cdr_msg(tenants[3], "%2F", duration=180, destination=JAMAICA),  # 0.6300
    ]
    produce(env.bootstrap, env.topic("cdr_audio"), cdrs)
    expected = {acme: "9.7900", acme_eu: "7.9000", pct: "9.5800", tenants[3]: "9.3700"}
    for worker in (one, two):  # either worker answers, forwarding to the owner
        got = wait_until(
            lambda w=worker: balances(w, tenants) == expected and balances(w, tenants),
            60,
            f"balances from {worker.url}",
            fail=False,
        )
        assert got == expected
    charges = read_json(env.bootstrap, env.topic("charges"))
    assert sorted((c["tenant_id"], c["cdr_id"]) for c in charges) == sorted(
        (t, json.loads(v)["cdr_id"]) for t, v in ((k.decode(), v) for k, v in cdrs)
    )
    assert rejections(env, "unknown_tenant") == []


def test_one_credit_per_recharge_command_across_a_sigkill(
    pipeline_env: Env, workers: list[Worker], tmp_path: Path
) -> None:
    env = pipeline_env
    fast = {"RATING_RECHARGE_BACKOFF_SECONDS": "1", "RATING_RECHARGE_BACKOFF_MAX_SECONDS": "2"}
    worker = Worker(env, tmp_path, 0, **fast).start()
    workers.append(worker)
    run = uuid.uuid4().hex[:6]
    t1, t2 = f"rr1-{run}", f"rr2-{run}"
    produce(
        env.bootstrap,
        env.topic("tenant_settings"),
        [settings_msg(t, enabled=True, amount="25", trigger="10") for t in (t1, t2)],
    )
    commands = wait_until(
        lambda: (
            {
                c["tenant_id"]
                for c in read_json(env.bootstrap, env.topic("recharge_commands"))
                if c["tenant_id"] in (t1, t2)
            }
            == {t1, t2}
        ),
        60,
        "a recharge command for each tenant (created at balance 0 < trigger 10)",
    )
    assert commands

    def result(tenant: str, event: str, cmd: str, kind: str = "recharge_succeeded") -> Any:
        return funds_msg(tenant, event, "25", kind=kind, command_id=cmd)

    # t1: paid, then billing resends the success under a new id and a late failure.
    produce(env.bootstrap, env.topic("funds"), [result(t1, "pay-1", f"{t1}:recharge:1")])
    wait_until(lambda: balances(worker, [t1])[t1] == "25", 30, "the first success credited")
    worker.kill()
    worker = Worker(env, tmp_path, 1, **fast).start()
    workers.append(worker)
    produce(
        env.bootstrap,
        env.topic("funds"),
        [
            result(t1, "pay-2", f"{t1}:recharge:1"),  # a resend under a new event id
            result(t1, "fail-late", f"{t1}:recharge:1", "recharge_failed"),
            result(t1, "never", f"{t1}:recharge:9"),  # never issued
            result(t1, "foreign", f"{t2}:recharge:1"),  # another tenant's command
            result(t2, "fail-1", f"{t2}:recharge:1", "recharge_failed"),  # t2: retry path
        ],
    )
    disputes = wait_until(
        lambda: (
            len(rejections(env, "command_not_outstanding")) >= 4
            and rejections(env, "command_not_outstanding")
        ),
        60,
        "four rejections for commands that are not outstanding",
    )
    by_event = {json.loads(r["payload"])["event_id"]: r for r in disputes}
    assert set(by_event) == {"pay-2", "fail-late", "never", "foreign"}
    assert "already resolved by event 'pay-1'" in by_event["pay-2"]["detail"]
    assert "never issued" in by_event["foreign"]["detail"]
    # t2's command is retried (same id) after its failure, then billing's success credits once.
    wait_until(
        lambda: any(
            c["tenant_id"] == t2 and c.get("attempt") == 2
            for c in read_json(env.bootstrap, env.topic("recharge_commands"))
        ),
        60,
        "t2's command to be retried",
    )
    produce(
        env.bootstrap,
        env.topic("funds"),
        [result(t2, "pay-t2", f"{t2}:recharge:1"), result(t2, "pay-t2-again", f"{t2}:recharge:1")],
    )
    wait_until(lambda: len(rejections(env, "command_not_outstanding")) == 5, 60, "t2's resend")
    assert balances(worker, [t1, t2]) == {t1: "25", t2: "25"}
    text = worker.metrics()
    assert metric_value(text, "rating_cdrs_rejected_total", reason="command_not_outstanding") >= 1
