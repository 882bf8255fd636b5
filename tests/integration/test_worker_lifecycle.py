"""Start-up checks, rate-card hot reload and the `rating broker` command, as real processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from rating.broker import free_port
from rating.testing import kill_process, start_foreground
from tests.integration.harness import (
    SAMPLE_CARDS,
    Env,
    Worker,
    cdr_msg,
    http_get,
    metric_value,
    produce,
    read_json,
    read_topic,
    settings_msg,
    wait_until,
)


def run_worker_expecting_failure(env: Env, **extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "rating", "worker"],
        env=env.worker_env(**{"RATING_WEB_PORT": str(free_port()), **extra}),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize(
    ("extra", "needles"),
    [
        (
            {"RATING_RATE_CARDS": "/nonexistent/cards.json"},
            ["RATING_RATE_CARDS", "/nonexistent/cards.json", "does not exist"],
        ),
        ({"RATING_WEB_PORT": "http"}, ["RATING_WEB_PORT"]),
        ({"RATING_KAFKA_BOOTSTRAP": "no-port-here"}, ["RATING_KAFKA_BOOTSTRAP"]),
        ({"RATING_DEDUP_HORIZON_HOURS": "0"}, ["RATING_DEDUP_HORIZON_HOURS"]),
        ({"RATING_ADMIN_TOKEN": "short"}, ["RATING_ADMIN_TOKEN", "at least 16"]),
    ],
)
def test_bad_settings_stop_the_worker_with_a_message(
    pipeline_env: Env, extra: dict[str, str], needles: list[str]
) -> None:
    result = run_worker_expecting_failure(pipeline_env, **extra)
    assert result.returncode == 2, result.stderr
    for needle in needles:
        assert needle in result.stderr
    if "RATING_ADMIN_TOKEN" in extra:
        assert extra["RATING_ADMIN_TOKEN"] not in result.stderr, "a secret was echoed"


def test_bad_rate_card_file_names_file_card_and_field(pipeline_env: Env, tmp_path: Path) -> None:
    doc = json.loads(SAMPLE_CARDS.read_text())
    card = doc["rate_cards"][1]
    card["rates"][2]["per_minute"] = 0.024  # a float: never money
    bad = tmp_path / "cards.json"
    bad.write_text(json.dumps(doc))
    result = run_worker_expecting_failure(pipeline_env, RATING_RATE_CARDS=str(bad))
    assert result.returncode == 2
    assert str(bad) in result.stderr
    assert card["rate_card_id"] in result.stderr
    assert "rates[2].per_minute" in result.stderr


def test_unreadable_rate_card_file(pipeline_env: Env, tmp_path: Path) -> None:
    if os.geteuid() == 0:
        # root reads anything; a directory is unreadable as a file for everyone.
        target = tmp_path / "a-directory"
        target.mkdir()
        needle = "not a regular file"
    else:
        target = tmp_path / "cards.json"
        target.write_text("{}")
        target.chmod(0)
        needle = "not readable"
    result = run_worker_expecting_failure(pipeline_env, RATING_RATE_CARDS=str(target))
    assert result.returncode == 2
    assert "RATING_RATE_CARDS" in result.stderr
    assert needle in result.stderr


def _set_price(path: Path, card_id: str, prefix: str, price: str) -> None:
    doc = json.loads(path.read_text())
    for card in doc["rate_cards"]:
        if card["rate_card_id"] == card_id:
            for rate in card["rates"]:
                if rate["prefix"] == prefix and rate["product"] == "conferencing_dialout":
                    rate["per_minute"] = price
    # Write-then-rename, as a deploy would: the worker never sees half a file.
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(doc))
    tmp.replace(path)


def test_rate_cards_reload_without_restart_and_bad_files_are_refused(
    pipeline_env: Env, workers: list[Worker], tmp_path: Path
) -> None:
    env = pipeline_env
    cards = tmp_path / "cards.json"
    cards.write_text(SAMPLE_CARDS.read_text())
    w = Worker(env, tmp_path, RATING_RATE_CARDS=str(cards), RATING_RATE_CARDS_POLL_SECONDS="0.2")
    workers.append(w)
    w.start()
    produce(env.bootstrap, env.topic("tenant_settings"), [settings_msg("reload", "EUR")])
    wait_until(lambda: http_get(f"{w.url}/tenants/reload")[0] == 200, 30, "tenant")

    def charge(cdr_id: str) -> dict:
        produce(
            env.bootstrap,
            env.topic("cdr_audio"),
            [cdr_msg("reload", cdr_id, duration=60, destination="+4520123456")],
        )
        return wait_until(
            lambda: next(
                (
                    c
                    for c in read_json(env.bootstrap, env.topic("charges"))
                    if c["cdr_id"] == cdr_id
                ),
                None,
            ),
            30,
            f"charge {cdr_id}",
        )

    before = charge("r1")
    _set_price(cards, before["rate_card_id"], before["prefix"], "9.5000")
    wait_until(
        lambda: metric_value(w.metrics(), "rating_ratecard_reloads_total", outcome="ok") >= 2,
        30,
        "the reload",
    )
    after = charge("r2")
    assert after["per_minute"] == "9.5000"
    assert after["amount"] == "9.5000"
    assert before["per_minute"] != after["per_minute"]

    cards.write_text('{"rate_cards": [{"rate_card_id": "broken"')  # truncated JSON
    wait_until(
        lambda: metric_value(w.metrics(), "rating_ratecard_reloads_total", outcome="error") >= 1,
        30,
        "the refused reload",
    )
    kept = charge("r3")
    assert kept["per_minute"] == "9.5000", "the previous cards stay in force"
    log = w.tail(200)
    assert str(cards) in log
    assert "not valid JSON" in log


def test_broker_command_serves_kafka_and_stops_cleanly_on_sigterm(tmp_path: Path) -> None:
    port = free_port()
    proc = start_foreground("broker", "--port", str(port))
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        assert f"127.0.0.1:{port}" in first
        bootstrap = f"127.0.0.1:{port}"
        produce(bootstrap, "smoke", [(b"k", b"hello")])
        assert read_topic(bootstrap, "smoke") == [(b"k", b"hello")]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
    finally:
        kill_process(proc)
        if proc.stdout is not None:
            proc.stdout.close()
