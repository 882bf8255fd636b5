"""`rating demo` end to end: it tells the story, the balances check out, nothing survives it."""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from rating.platform_sim import add_arguments, run_platform_sim
from tests.integration.harness import Env, read_topic

REPO = Path(__file__).resolve().parents[2]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else (a reused pid)
        return True
    return True


def test_demo_runs_checks_balances_and_cleans_up() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RATING_")}
    if os.environ.get("RATING_TEST_BOOTSTRAP"):
        env["RATING_KAFKA_BOOTSTRAP"] = os.environ["RATING_TEST_BOOTSTRAP"]
    env["PYTHONUNBUFFERED"] = "1"
    proc = subprocess.run(
        [sys.executable, "-m", "rating", "demo", "--cdrs", "20"],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    out = proc.stdout
    report = f"exit {proc.returncode}\n--- stdout\n{out}\n--- stderr\n{proc.stderr[-3000:]}"
    assert proc.returncode == 0, report

    assert "balance = funds + recharges - charges: OK" in out, report
    assert "MISMATCH" not in out, report
    assert "20 of 20 CDRs charged" in out, report
    # contoso falls below its trigger: the ledger asks billing, billing pays.
    assert re.search(r"^\s+RECHARGE\s+contoso\s+balance .* asks billing for 20\.00 USD", out, re.M)
    assert re.search(r"^\s+billing\s+contoso\s+recharge paid: \+20\.00 USD", out, re.M), report
    # The malformed line is rejected with its reason; the duplicate is charged once.
    assert re.search(r"^\s+REJECTED\s+contoso\s+malformed: ", out, re.M), report
    assert "was sent twice, charged once" in out, report
    # fabrikam has no auto-recharge: its 3.00 EUR run out.
    assert re.search(r"^\s+ALERT\s+fabrikam\s+credits exhausted: balance -", out, re.M), report
    assert re.search(r"^\s+rating_cdrs_charged_total 20$", out, re.M), report
    assert re.search(r"^\s+rating_cdrs_rejected_total 1$", out, re.M), report

    pids_line = re.search(r"^\s*pids: (.*)$", out, re.M)
    assert pids_line, report
    pids = {name: int(pid) for name, pid in re.findall(r"(\w+)=(\d+)", pids_line.group(1))}
    assert {"worker", "billing"} <= set(pids), pids_line.group(0)
    survivors = {name: pid for name, pid in pids.items() if _alive(pid)}
    assert not survivors, f"left running: {survivors}\n{report}"


def test_platform_sim_publishes_keyed_cdrs_on_the_product_topics(
    pipeline_env: Env, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    env = pipeline_env
    monkeypatch.setenv("RATING_TOPIC_CDR_AUDIO", env.topic("cdr_audio"))
    monkeypatch.setenv("RATING_TOPIC_CDR_TOLLFREE", env.topic("cdr_tollfree"))
    argv = ["--cdrs", "30", "--tenants", "contoso,fabrikam", "--seed", "11"]
    assert run_platform_sim(_args(*argv, "--bootstrap", env.bootstrap)) == 0
    assert "published 30 CDRs" in capsys.readouterr().out

    assert run_platform_sim(_args(*argv, "--dry-run")) == 0
    expected = [json.loads(line) for line in capsys.readouterr().out.splitlines()]

    audio = read_topic(env.bootstrap, env.topic("cdr_audio"))
    tollfree = read_topic(env.bootstrap, env.topic("cdr_tollfree"))
    got = {}
    for key, value in audio + tollfree:
        body = json.loads(value)
        assert key == body["tenant_id"].encode()
        got[body["cdr_id"]] = body
    assert {c["cdr_id"] for c in expected} == set(got)
    assert {json.loads(v)["product"] for _, v in tollfree} == {"tollfree_inbound"}
    assert "tollfree_inbound" not in {json.loads(v)["product"] for _, v in audio}


def _args(*argv: str) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    add_arguments(p)
    return p.parse_args(list(argv))
