"""End to end on the embedded broker: real `rating worker` processes, real Kafka clients."""

from __future__ import annotations

import json
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import pytest

from tests.integration.harness import (
    ROCKSDB,
    SAMPLE_CARDS,
    Env,
    Worker,
    cdr_msg,
    funds_msg,
    http_get,
    metric_value,
    produce,
    read_json,
    read_topic,
    settings_msg,
    wait_until,
)


def charges_by_id(env: Env) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for c in read_json(env.bootstrap, env.topic("charges")):
        out.setdefault(c["cdr_id"], []).append(c)
    return out


def tenant(worker: Worker, tenant_id: str) -> dict | None:
    status, body = http_get(f"{worker.url}/tenants/{tenant_id}")
    return json.loads(body) if status == 200 else None


def test_all_products_two_currencies_duplicates_and_rejections(
    pipeline_env: Env, workers: list[Worker], tmp_path: Path
) -> None:
    env = pipeline_env
    w = Worker(env, tmp_path)
    workers.append(w)
    w.start()
    b = env.bootstrap
    produce(
        b,
        env.topic("tenant_settings"),
        [settings_msg("acme", "USD"), settings_msg("globex", "EUR")],
    )
    # Settings and funds travel on different topics; a tenant must exist before its funds.
    wait_until(lambda: tenant(w, "acme") and tenant(w, "globex"), 30, "both tenants")
    produce(
        b,
        env.topic("funds"),
        [funds_msg("acme", "f1", "100.00"), funds_msg("globex", "f2", "80.00", currency="EUR")],
    )
    wait_until(
        lambda: (tenant(w, "acme") or {}).get("balance") == "100.00",
        30,
        "acme's funds to be applied",
    )
    wait_until(
        lambda: (tenant(w, "globex") or {}).get("balance") == "80.00",
        30,
        "globex's funds to be applied",
    )

    audio = [
        cdr_msg(
            "acme", "a1", product="conferencing_dialout", duration=61, destination="+14155550100"
        ),
        cdr_msg(
            "acme",
            "a2",
            product="conferencing_tollfree_dialin",
            duration=125,
            origin="+447700900123",
            destination="+18005550100",
        ),
        cdr_msg(
            "globex", "g1", product="conferencing_dialout", duration=30, destination="+4520123456"
        ),
        cdr_msg("acme", "a0", product="conferencing_dialout", duration=0),
    ]
    tollfree = [
        cdr_msg(
            "acme",
            "t1",
            product="tollfree_inbound",
            duration=200,
            origin="+31612345678",
            destination="+18005550199",
        ),
        cdr_msg(
            "globex",
            "g2",
            product="tollfree_inbound",
            duration=59,
            origin="+4915112345678",
            destination="+4580001234",
        ),
    ]
    produce(b, env.topic("cdr_audio"), audio)
    produce(b, env.topic("cdr_tollfree"), tollfree)
    # The same CDRs published again, three times for one of them: charged once.
    produce(b, env.topic("cdr_audio"), [audio[0], audio[0], audio[2]])
    produce(b, env.topic("cdr_tollfree"), [tollfree[0]])
    bad = [
        (b"acme", b"{not json"),
        (b"acme", b"\xff\xfe\x00binary"),
        (b"acme", json.dumps({"cdr_id": "s1", "tenant_id": "acme"}).encode()),
        (b"globex", cdr_msg("acme", "k1")[1]),  # key_mismatch
        cdr_msg("nobody", "u1"),  # unknown_tenant
        cdr_msg("acme", "r1", destination="+999123"),  # no_rate
        cdr_msg("acme", "c1", call_start="2020-01-01T00:00:00Z"),  # no_rate_card / stale
    ]
    produce(b, env.topic("cdr_audio"), bad)
    ids = {"a1", "a2", "g1", "a0", "t1", "g2"}
    wait_until(lambda: ids <= set(charges_by_id(env)), 60, "six charges")
    wait_until(lambda: len(read_json(b, env.topic("rejected"))) >= len(bad), 60, "seven rejections")

    # Every valid CDR charged once; the charges agree with the offline rater.
    charges = charges_by_id(env)
    assert set(charges) == ids
    assert all(len(v) == 1 for v in charges.values()), charges
    offline = rate_offline(
        tmp_path,
        [c for _, c in audio + tollfree],
        tenants=[settings_msg("acme", "USD")[1], settings_msg("globex", "EUR")[1]],
    )
    for line in offline:
        streamed = dict(charges[line["cdr_id"]][0])
        streamed.pop("balance_after")
        streamed.pop("rated_at")
        line.pop("rated_at")
        assert streamed == line
    assert charges["a0"][0]["amount"] == "0.0000"
    assert charges["g1"][0]["currency"] == "EUR"

    # Balances: funds minus the charges, to the last decimal place.
    for t, funded in (("acme", "100.00"), ("globex", "80.00")):
        spent = sum(Decimal(v[0]["amount"]) for v in charges.values() if v[0]["tenant_id"] == t)
        assert Decimal(tenant(w, t)["balance"]) == Decimal(funded) - spent

    rejected = read_json(b, env.topic("rejected"))
    reasons = sorted(r["reason"] for r in rejected)
    assert reasons == sorted(
        ["malformed", "malformed", "schema", "key_mismatch", "unknown_tenant", "no_rate", "stale"]
    )
    binary = next(r for r in rejected if r.get("payload_encoding") == "base64")
    assert binary["source_topic"] == env.topic("cdr_audio")
    schema = next(r for r in rejected if r["reason"] == "schema")
    assert "duration_seconds" in schema["detail"]
    assert json.loads(schema["payload"]) == {"cdr_id": "s1", "tenant_id": "acme"}
    assert all({"partition", "offset", "key", "rejected_at"} <= set(r) for r in rejected)

    text = w.metrics()
    assert metric_value(text, "rating_cdrs_rejected_total", reason="malformed") == 2
    assert metric_value(text, "rating_cdrs_rejected_total", reason="no_rate") == 1
    assert metric_value(text, "rating_cdrs_duplicate_total") == 4
    assert metric_value(text, "rating_cdrs_charged_total") == 6
    assert http_get(f"{w.url}/tenants/nobody")[0] == 404


def test_unknown_tenant_then_no_rate_card_for_a_plan_without_cards(
    pipeline_env: Env, workers: list[Worker], tmp_path: Path
) -> None:
    env = pipeline_env
    w = Worker(env, tmp_path)
    workers.append(w)
    w.start()
    produce(env.bootstrap, env.topic("tenant_settings"), [settings_msg("initech", "JPY")])
    wait_until(lambda: tenant(w, "initech") is not None, 30, "initech to exist")
    produce(env.bootstrap, env.topic("cdr_audio"), [cdr_msg("initech", "j1")])
    rejected = wait_until(
        lambda: read_json(env.bootstrap, env.topic("rejected")), 30, "a rejection"
    )
    assert rejected[0]["reason"] == "no_rate_card"
    assert "JPY" in rejected[0]["detail"]


def rate_offline(tmp_path: Path, cdrs: list[bytes], tenants: list[bytes]) -> list[dict]:
    cdr_file = tmp_path / "cdrs.jsonl"
    cdr_file.write_bytes(b"\n".join(cdrs) + b"\n")
    tenants_file = tmp_path / "tenants.jsonl"
    tenants_file.write_bytes(b"\n".join(tenants) + b"\n")
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "rating",
            "rate",
            "--rate-cards",
            str(SAMPLE_CARDS),
            "--cdrs",
            str(cdr_file),
            "--tenants",
            str(tenants_file),
        ],
        capture_output=True,
        check=True,
    )
    return [json.loads(line) for line in out.stdout.splitlines()]


def test_repartitioned_topic_keeps_tenant_on_one_partition(
    pipeline_env: Env, workers: list[Worker], tmp_path: Path
) -> None:
    """CDRs for one tenant spread over input partitions still debit one account."""
    env = pipeline_env
    w = Worker(env, tmp_path)
    workers.append(w)
    w.start()
    b = env.bootstrap
    produce(b, env.topic("tenant_settings"), [settings_msg("hooli", "USD")])
    wait_until(lambda: tenant(w, "hooli"), 30, "hooli to exist")
    produce(b, env.topic("funds"), [funds_msg("hooli", "f1", "10")])
    wait_until(lambda: (tenant(w, "hooli") or {}).get("balance") == "10", 30, "hooli's funds")
    # No key: the platform may leave it out; the payload's tenant decides.
    produce(b, env.topic("cdr_audio"), [(None, cdr_msg("hooli", f"n{i}")[1]) for i in range(30)])
    wait_until(lambda: len(charges_by_id(env)) == 30, 60, "30 charges")
    assert len(read_topic(b, env.topic("charges"))) == 30
    balance = Decimal(tenant(w, "hooli")["balance"])
    spent = sum(Decimal(v[0]["amount"]) for v in charges_by_id(env).values())
    assert balance == Decimal(10) - spent


def test_replaying_rejections_after_the_cause_is_fixed_charges_once(
    pipeline_env: Env, workers: list[Worker], tmp_path: Path
) -> None:
    env = pipeline_env
    w = Worker(env, tmp_path)
    workers.append(w)
    w.start()
    b = env.bootstrap
    # The CDRs arrive before the tenant's settings: unknown_tenant.
    produce(
        b,
        env.topic("cdr_audio"),
        [cdr_msg("late", "l1"), cdr_msg("late", "l2"), (b"late", b"{broken")],
    )
    wait_until(lambda: len(read_json(b, env.topic("rejected"))) == 3, 30, "three rejections")
    produce(b, env.topic("tenant_settings"), [settings_msg("late", "USD")])
    wait_until(lambda: tenant(w, "late"), 30, "the tenant")

    def replay() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "rating", "rejected", "replay", "--idle-seconds", "2"],
            env=env.worker_env(),
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )

    out = replay()
    summary = json.loads(out.stdout.splitlines()[-1])["summary"]
    assert summary == {"replayed:unknown_tenant": 2, "skipped:malformed": 1}
    wait_until(lambda: {"l1", "l2"} <= set(charges_by_id(env)), 30, "the replayed charges")
    # A second replay finds nothing new (progress is kept in the consumer group) ...
    assert json.loads(replay().stdout.splitlines()[-1])["summary"] == {}
    # ... and even re-publishing the same CDRs again does not charge them twice.
    produce(b, env.topic("cdr_audio"), [cdr_msg("late", "l1")])
    wait_until(
        lambda: metric_value(w.metrics(), "rating_cdrs_duplicate_total") >= 1,
        30,
        "the duplicate to be dropped",
    )
    assert all(len(v) == 1 for v in charges_by_id(env).values())


def test_two_workers_share_tenants_and_answer_for_each_other(
    pipeline_env: Env, workers: list[Worker], tmp_path: Path
) -> None:
    env = pipeline_env
    # On RocksDB (the production default): per-partition databases, reads from either worker.
    a, c = Worker(env, tmp_path, 0, **ROCKSDB), Worker(env, tmp_path, 1, **ROCKSDB)
    workers.extend([a, c])
    a.start()
    c.start()
    names = [f"spread-{i}" for i in range(12)]
    produce(env.bootstrap, env.topic("tenant_settings"), [settings_msg(t) for t in names])
    wait_until(
        lambda: all(tenant(a, t) for t in names), 60, "the tenants", fail=False
    ) or pytest.fail(str([(t, http_get(f"{w.url}/tenants/{t}")) for t in names for w in (a, c)]))
    produce(env.bootstrap, env.topic("cdr_audio"), [(None, cdr_msg(t, f"{t}-c")[1]) for t in names])
    wait_until(lambda: len(charges_by_id(env)) == len(names), 60, "a charge per tenant")

    def both_agree() -> dict[str, str] | None:
        owners = {}
        for t in names:
            docs = [tenant(w, t) for w in (a, c)]
            if None in docs or docs[0] != docs[1]:
                return None
            owners[t] = docs[0]["served_by"]
        return owners

    owners = wait_until(both_agree, 60, "both workers to give the same answer for every tenant")
    # Tenants are spread over both workers, and each answer comes from the owner.
    assert set(owners.values()) == {a.url, c.url}
    charges = charges_by_id(env)
    for t in names:
        assert tenant(a, t)["balance"] == charges[f"{t}-c"][0]["balance_after"]
    # The gauges are refreshed by a timer; each worker counts only the tenants it owns.
    wait_until(
        lambda: (
            metric_value(a.metrics(), "rating_tenants")
            + metric_value(c.metrics(), "rating_tenants")
            == len(names)
        ),
        30,
        "rating_tenants to add up over both workers",
    )
    # RocksDB's worker-wide memory is reported; both have written memtables by now.
    for w in (a, c):
        wait_until(
            lambda w=w: (
                metric_value(w.metrics(), "rating_rocksdb_memory_bytes", kind="memtables") > 0
            ),
            30,
            "rating_rocksdb_memory_bytes{kind=memtables}",
        )
