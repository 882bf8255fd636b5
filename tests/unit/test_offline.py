"""`rating rate`: offline.run in-process, plus one run of the real command."""

from __future__ import annotations

import argparse
import io
import json
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from rating import offline
from rating.contracts import Charge, OfflineRejection

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "ratecards" / "sample.json"
RATED_AT = "2026-12-01T00:00:00Z"


def cdr(cdr_id: str = "c1", **kw: Any) -> str:
    data = {
        "cdr_id": cdr_id,
        "tenant_id": "acme",
        "product": "conferencing_dialout",
        "call_start": "2026-11-10T09:00:00Z",
        "duration_seconds": 61,
        "origin": "+14155550100",
        "destination": "+447700900123",
    } | kw
    return json.dumps(data)


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="rating rate")
    offline.add_arguments(parser)
    return parser.parse_args(argv)


def run(
    *argv: str, stdin: str | bytes = "", rate_cards: Path = SAMPLE
) -> tuple[int, list[dict[str, Any]], str]:
    args = parse("--rate-cards", str(rate_cards), *argv)
    raw = stdin.encode() if isinstance(stdin, str) else stdin
    fake_stdin = io.TextIOWrapper(io.BytesIO(raw), encoding="utf-8")  # has .buffer, like sys.stdin
    out, err = io.StringIO(), io.StringIO()
    code = offline.run(args, fake_stdin, out, err)
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    return code, lines, err.getvalue()


def rate_stdin(text: str | bytes, *argv: str) -> tuple[int, list[dict[str, Any]], str]:
    return run("--cdrs", "-", "--rated-at", RATED_AT, *argv, stdin=text)


MIXED = "\n".join(
    [
        cdr("ok-1"),
        "not json at all",
        "",
        "   ",
        cdr("schema-1", duration_seconds="61"),
        cdr("no-card", call_start="2026-01-01T00:00:00Z"),
        cdr("no-rate", destination="+99912345"),
        '{"cdr_id": "missing-fields"}',
        cdr("ok-2", product="tollfree_inbound", duration_seconds=0, origin="+4915112345678"),
        "[1, 2]",
    ]
)


def test_one_line_per_cdr_in_input_order() -> None:
    code, lines, err = rate_stdin(MIXED + "\n", "--currency", "USD")
    assert (code, err) == (0, "")
    got = [(line["cdr_id"], line.get("reason")) for line in lines]
    assert got == [
        ("ok-1", None),
        (None, "malformed"),
        ("schema-1", "schema"),
        ("no-card", "no_rate_card"),
        ("no-rate", "no_rate"),
        ("missing-fields", "schema"),
        ("ok-2", None),
        (None, "schema"),
    ]


def test_charge_lines_are_charges_without_balance_after() -> None:
    _, lines, _ = rate_stdin(cdr("ok-1"), "--currency", "USD")
    (line,) = lines
    assert "balance_after" not in line
    assert line == {
        "cdr_id": "ok-1",
        "tenant_id": "acme",
        "product": "conferencing_dialout",
        "call_start": "2026-11-10T09:00:00Z",
        "duration_seconds": 61,
        "billable_seconds": 66,
        "rated_number": "447700900123",
        "prefix": "447",
        "zone": "UK mobile",
        "rate_card_id": "standard-usd-2026-11",
        "per_minute": "0.0450",
        "amount": "0.0495",
        "currency": "USD",
        "rated_at": RATED_AT,
    }
    Charge.model_validate(line)


def test_rejection_lines_are_offline_rejections_with_useful_details() -> None:
    _, lines, _ = rate_stdin(MIXED, "--currency", "USD")
    rejections = {line["cdr_id"]: line for line in lines if "reason" in line}
    for line in lines:
        if "reason" in line:
            OfflineRejection.model_validate(line)
    assert rejections["schema-1"]["detail"] == (
        "line 5: duration_seconds: Input should be a valid integer (got '61')"
    )
    assert "tenant_id: Field required" in rejections["missing-fields"]["detail"]
    assert "plan 'standard', currency USD" in rejections["no-card"]["detail"]
    assert "99912345" in rejections["no-rate"]["detail"]
    assert lines[1]["detail"].startswith("line 2: Invalid JSON")


def test_not_utf8_is_malformed_and_the_run_goes_on() -> None:
    data = cdr("ok-1").encode() + b"\n" + b'{"cdr_id": "\xff"}\n' + cdr("ok-2").encode() + b"\n"
    code, lines, _ = rate_stdin(data, "--currency", "USD")
    assert code == 0
    assert [line["cdr_id"] for line in lines] == ["ok-1", None, "ok-2"]
    assert lines[1]["reason"] == "malformed"
    assert "not UTF-8" in lines[1]["detail"]


def test_cdrs_from_a_file(tmp_path: Path) -> None:
    path = tmp_path / "cdrs.jsonl"
    path.write_bytes(MIXED.encode() + b"\n\xfe\n")
    code, lines, _ = run("--cdrs", str(path), "--currency", "USD", "--rated-at", RATED_AT)
    assert code == 0
    from_stdin = rate_stdin(MIXED, "--currency", "USD")[1]
    assert lines[:-1] == from_stdin
    assert lines[-1]["reason"] == "malformed"


def test_plain_text_stdin_without_buffer() -> None:
    args = parse("--rate-cards", str(SAMPLE), "--cdrs", "-", "--currency", "USD")
    out = io.StringIO()
    assert offline.run(args, io.StringIO(cdr("a") + "\n\n" + cdr("b")), out, io.StringIO()) == 0
    assert [json.loads(x)["cdr_id"] for x in out.getvalue().splitlines()] == ["a", "b"]


def test_empty_input_writes_nothing() -> None:
    assert rate_stdin("", "--currency", "USD") == (0, [], "")


# --- tenants ------------------------------------------------------------------------------


def tenants_file(tmp_path: Path, text: str, name: str = "tenants.jsonl") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def settings(tenant_id: str, currency: str, plan: str = "standard") -> dict[str, Any]:
    return {"tenant_id": tenant_id, "currency": currency, "plan": plan}


def test_tenant_settings_choose_plan_and_currency(tmp_path: Path) -> None:
    path = tenants_file(
        tmp_path,
        json.dumps(settings("acme", "USD"))
        + "\n\n"
        + json.dumps(settings("bigco", "EUR", "enterprise")),
    )
    data = "\n".join([cdr("a"), cdr("b", tenant_id="bigco"), cdr("c", tenant_id="stranger")])
    code, lines, _ = rate_stdin(data, "--tenants", path)
    assert code == 0
    assert (lines[0]["rate_card_id"], lines[0]["amount"]) == ("standard-usd-2026-11", "0.0495")
    # enterprise EUR: 1/1 billing, precision 6; 0.031050 * 61 / 60 = 0.0315675, a half: up
    assert (lines[1]["rate_card_id"], lines[1]["billable_seconds"], lines[1]["amount"]) == (
        "enterprise-eur-2026-11",
        61,
        "0.031568",
    )
    assert lines[2]["reason"] == "unknown_tenant"
    assert "'stranger'" in lines[2]["detail"]
    assert path in lines[2]["detail"]


def test_unlisted_tenants_fall_back_to_currency_and_plan(tmp_path: Path) -> None:
    path = tenants_file(tmp_path, json.dumps(settings("acme", "USD")))
    data = "\n".join([cdr("a"), cdr("b", tenant_id="stranger")])
    _, lines, _ = rate_stdin(data, "--tenants", path, "--currency", "EUR", "--plan", "enterprise")
    assert [line["rate_card_id"] for line in lines] == [
        "standard-usd-2026-11",
        "enterprise-eur-2026-11",
    ]


def test_tenants_as_a_json_array(tmp_path: Path) -> None:
    path = tenants_file(
        tmp_path, json.dumps([settings("acme", "EUR"), settings("acme", "USD")]), "t.json"
    )
    _, lines, _ = rate_stdin(cdr("a"), "--tenants", path)
    assert lines[0]["currency"] == "USD"  # the last entry wins, as on the compacted topic


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            json.dumps(settings("acme", "USD")) + "\n" + '{"tenant_id": "x"}',
            ":2: currency: Field required",
        ),
        ('{"tenant_id": "x", "currency": "usd"}', ":1: currency: String should match pattern"),
        ("{not json", ":1: (root): Invalid JSON"),
        (
            '[{"tenant_id": "x", "currency": "USD"}, {"currency": "EUR"}]',
            "entry [1]: tenant_id: Field required",
        ),
        ("[\n{]", "line 2 column 2: not valid JSON"),
    ],
)
def test_bad_tenants_file_exits_2(tmp_path: Path, text: str, expected: str) -> None:
    path = tenants_file(tmp_path, text)
    code, lines, err = rate_stdin(cdr("a"), "--tenants", path)
    assert (code, lines) == (2, [])
    assert path in err
    assert expected in err


def test_missing_tenants_file_exits_2(tmp_path: Path) -> None:
    code, _, err = rate_stdin(cdr("a"), "--tenants", str(tmp_path / "nope.jsonl"))
    assert code == 2
    assert "cannot read tenants file" in err


# --- unusable inputs: exit 2, nothing on stdout -----------------------------------------


def test_needs_tenants_or_currency() -> None:
    code, lines, err = rate_stdin(cdr("a"))
    assert (code, lines) == (2, [])
    assert "--tenants" in err
    assert "--currency" in err


def test_missing_cdr_file_exits_2(tmp_path: Path) -> None:
    missing = str(tmp_path / "nope.jsonl")
    code, lines, err = run("--cdrs", missing, "--currency", "USD")
    assert (code, lines) == (2, [])
    assert f"cannot read CDR file {missing}" in err


def test_bad_rate_card_file_exits_2(tmp_path: Path) -> None:
    document = json.loads(SAMPLE.read_text())
    del document["rate_cards"][1]["rates"][3]["per_minute"]
    bad = tmp_path / "cards.json"
    bad.write_text(json.dumps(document))
    code, lines, err = run("--cdrs", "-", "--currency", "USD", stdin=cdr("a"), rate_cards=bad)
    assert (code, lines) == (2, [])
    assert str(bad) in err
    assert "card 'standard-usd-2026-11'" in err
    assert "rates[3].per_minute: Field required" in err


@pytest.mark.parametrize(
    "argv",
    [
        ("--currency", "usd"),
        ("--currency", "USD", "--rated-at", "yesterday"),
        ("--currency", "USD", "--rated-at", "2026-12-01T00:00:00+01:00"),
    ],
)
def test_bad_options_are_usage_errors(
    argv: tuple[str, ...], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as info:
        parse("--rate-cards", str(SAMPLE), "--cdrs", "-", *argv)
    assert info.value.code == 2
    assert "expected" in capsys.readouterr().err


# --- rated_at -----------------------------------------------------------------------------


def test_rated_at_makes_output_reproducible() -> None:
    first = rate_stdin(MIXED, "--currency", "USD")
    second = rate_stdin(MIXED, "--currency", "USD")
    assert first == second
    assert first[1][0]["rated_at"] == RATED_AT


def test_rated_at_defaults_to_now_and_is_the_same_for_the_whole_run() -> None:
    before = datetime.now(UTC)
    _, lines, _ = run("--cdrs", "-", "--currency", "USD", stdin=cdr("a") + "\n" + cdr("b"))
    stamps = {line["rated_at"] for line in lines}
    assert len(stamps) == 1
    stamp = datetime.fromisoformat(stamps.pop().replace("Z", "+00:00"))
    assert before - timedelta(seconds=1) <= stamp <= datetime.now(UTC)


# --- the real command ---------------------------------------------------------------------


def test_rating_rate_command(tmp_path: Path) -> None:
    cdrs = tmp_path / "cdrs.jsonl"
    cdrs.write_text(MIXED + "\n")
    argv = ["--rate-cards", str(SAMPLE), "--currency", "USD", "--rated-at", RATED_AT]
    from_file = subprocess.run(
        [sys.executable, "-m", "rating", "rate", "--cdrs", str(cdrs), *argv],
        capture_output=True,
        check=False,
        timeout=60,
    )
    from_stdin = subprocess.run(
        [sys.executable, "-m", "rating", "rate", "--cdrs", "-", *argv],
        input=cdrs.read_bytes(),
        capture_output=True,
        check=False,
        timeout=60,
    )
    assert from_file.returncode == 0, from_file.stderr
    assert from_stdin.returncode == 0, from_stdin.stderr
    assert from_file.stdout == from_stdin.stdout
    expected = rate_stdin(MIXED, "--currency", "USD")[1]
    assert [json.loads(line) for line in from_file.stdout.splitlines()] == expected

    failed = subprocess.run(
        [sys.executable, "-m", "rating", "rate", "--rate-cards", str(SAMPLE), "--cdrs", "-"],
        input=b"",
        capture_output=True,
        check=False,
        timeout=60,
    )
    assert failed.returncode == 2
    assert b"--currency" in failed.stderr
