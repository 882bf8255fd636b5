"""rating.reconcile: balances recomputed from topic records, compared with the workers'."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest

from rating.contracts import RejectReason
from rating.ingest import Source, make_rejection
from rating.reconcile import (
    Answered,
    FindingKind,
    Record,
    Status,
    Unanswered,
    compare,
    describe,
    describe_finding,
    recompute,
    summary,
)

SETTINGS, FUNDS, CHARGES, REJECTED = (
    "rating.tenant-settings",
    "billing.funds",
    "rating.charges",
    "rating.rejected",
)
NOW = datetime(2026, 11, 22, 10, 0, tzinfo=UTC)


class Topic:
    """Records of one topic partition, with consecutive offsets."""

    def __init__(self, name: str, partition: int = 0) -> None:
        self.name, self.partition = name, partition
        self.records: list[Record] = []

    def add(self, body: dict[str, Any] | bytes, key: str | None = "default") -> Record:
        value = body if isinstance(body, bytes) else json.dumps(body).encode()
        if key == "default":
            key = None if isinstance(body, bytes) else body["tenant_id"]
        rec = Record(
            self.name,
            self.partition,
            len(self.records),
            None if key is None else key.encode(),
            value,
        )
        self.records.append(rec)
        return rec

    def __iter__(self) -> Iterator[Record]:
        return iter(self.records)


def settings(tenant: str, currency: str = "USD", **extra: Any) -> dict[str, Any]:
    return {"tenant_id": tenant, "currency": currency, **extra}


def funds(
    tenant: str, event_id: str, amount: str, kind: str = "manual_add", **extra: Any
) -> dict[str, Any]:
    return {
        "event_id": event_id,
        "tenant_id": tenant,
        "kind": kind,
        "amount": amount,
        "currency": extra.pop("currency", "USD"),
        **extra,
    }


def charge(tenant: str, cdr_id: str, amount: str, **extra: Any) -> dict[str, Any]:
    body = {
        "cdr_id": cdr_id,
        "tenant_id": tenant,
        "product": "conferencing_dialout",
        "call_start": "2026-11-22T09:00:00Z",
        "duration_seconds": 61,
        "billable_seconds": 120,
        "rated_number": "14155550100",
        "prefix": "1",
        "zone": "US/CA",
        "rate_card_id": "standard-usd-2026-11",
        "per_minute": "0.0240",
        "amount": amount,
        "currency": "USD",
        "balance_after": "0",
        "rated_at": "2026-11-22T09:05:00Z",
    }
    body.update(extra)
    return body


def rejection(of: Record, reason: RejectReason = RejectReason.COMMAND_NOT_OUTSTANDING) -> bytes:
    source = Source(of.topic, of.partition, of.offset, of.key)
    return make_rejection(source, of.value or b"", reason, "test", NOW).model_dump_json().encode()


class Rig:
    def __init__(self) -> None:
        self.settings = Topic(SETTINGS)
        self.funds = Topic(FUNDS)
        self.charges = Topic(CHARGES)
        self.rejected = Topic(REJECTED)

    def reject(self, rec: Record, reason: RejectReason = RejectReason.COMMAND_NOT_OUTSTANDING):
        self.rejected.add(rejection(rec, reason), key=None)

    def run(self, tenants: set[str] | None = None):  # type: ignore[no-untyped-def]
        return recompute(self.settings, self.funds, self.charges, self.rejected, tenants=tenants)


@pytest.fixture
def rig() -> Rig:
    return Rig()


def balance(rig: Rig, tenant: str, **kw: Any) -> Decimal:
    return rig.run(**kw).tenants[tenant].balance


# --- recomputation --------------------------------------------------------------------------


def test_funds_minus_charges_exactly(rig: Rig) -> None:
    rig.settings.add(settings("acme"))
    rig.funds.add(funds("acme", "f1", "100.00"))
    rig.charges.add(charge("acme", "c1", "0.0240"))
    rig.charges.add(charge("acme", "c2", "1.0001"))
    result = rig.run()
    exp = result.tenants["acme"]
    assert exp.balance == Decimal("98.9759")
    assert (exp.credited, exp.charged, exp.charges, exp.funds_applied) == (
        Decimal("100.00"),
        Decimal("1.0241"),
        2,
        1,
    )
    assert exp.currency == "USD"
    assert result.findings == ()


def test_a_tenant_exists_from_its_settings_with_balance_zero(rig: Rig) -> None:
    rig.settings.add(settings("new"))
    assert balance(rig, "new") == 0


@pytest.mark.parametrize(
    ("kind", "amount", "credited"),
    [
        ("manual_add", "25.00", "25.00"),
        ("recharge_succeeded", "50", "50"),
        ("adjustment", "-7.50", "-7.50"),
        ("adjustment", "3.25", "3.25"),
        ("recharge_failed", "50", "0"),
    ],
)
def test_each_funds_kind(rig: Rig, kind: str, amount: str, credited: str) -> None:
    rig.settings.add(settings("acme"))
    command = {"command_id": "acme:recharge:1"} if kind.startswith("recharge") else {}
    rig.funds.add(funds("acme", "e1", amount, kind, **command))
    exp = rig.run().tenants["acme"]
    assert exp.balance == Decimal(credited)
    assert exp.funds_applied == 1


def test_republished_charge_counts_once(rig: Rig) -> None:
    rig.settings.add(settings("acme"))
    rig.funds.add(funds("acme", "f1", "10"))
    rig.charges.add(charge("acme", "c1", "2.10"))
    rig.charges.add(charge("acme", "c1", "2.10"))  # after a crash: the same bytes
    result = rig.run()
    assert result.tenants["acme"].balance == Decimal("7.90")
    assert (result.counts.charges, result.counts.charge_duplicates) == (2, 1)
    assert result.findings == ()


def test_same_cdr_id_in_two_tenants_is_two_charges(rig: Rig) -> None:
    rig.settings.add(settings("a"))
    rig.settings.add(settings("b"))
    rig.charges.add(charge("a", "x", "1"))
    rig.charges.add(charge("b", "x", "2"))
    result = rig.run()
    assert result.tenants["a"].balance == -1
    assert result.tenants["b"].balance == -2
    assert result.counts.charge_duplicates == 0


def test_charge_copies_with_different_amounts_are_a_finding(rig: Rig) -> None:
    rig.settings.add(settings("acme"))
    rig.charges.add(charge("acme", "c1", "2.10"))
    rig.charges.add(charge("acme", "c1", "4.20"))
    result = rig.run()
    assert result.tenants["acme"].balance == Decimal("-2.10")  # counted once, the first
    [finding] = result.findings
    assert finding.kind is FindingKind.CONFLICTING_CHARGE
    assert finding.tenant_id == "acme"
    assert "2.10" in finding.detail
    assert "4.20" in finding.detail


def test_charge_copies_differing_elsewhere_are_a_finding(rig: Rig) -> None:
    rig.settings.add(settings("acme"))
    rig.charges.add(charge("acme", "c1", "2.10"))
    rig.charges.add(charge("acme", "c1", "2.10", rated_at="2026-11-22T09:06:00Z"))
    result = rig.run()
    assert result.tenants["acme"].balance == Decimal("-2.10")
    [finding] = result.findings
    assert finding.kind is FindingKind.CHARGE_COPIES_DIFFER
    assert "rated_at" in finding.detail


def test_funds_deduplicated_by_event_id(rig: Rig) -> None:
    rig.settings.add(settings("acme"))
    rig.funds.add(funds("acme", "f1", "10"))
    rig.funds.add(funds("acme", "f1", "10"))  # billing retried
    rig.funds.add(funds("acme", "f2", "5"))
    result = rig.run()
    assert result.tenants["acme"].balance == 15
    assert (result.counts.funds, result.counts.funds_duplicates) == (3, 1)
    assert result.findings == ()


def test_funds_copies_that_differ_are_a_finding(rig: Rig) -> None:
    rig.settings.add(settings("acme"))
    rig.funds.add(funds("acme", "f1", "10"))
    rig.funds.add(funds("acme", "f1", "99"))
    result = rig.run()
    assert result.tenants["acme"].balance == 10  # the ledger applies the first it sees
    [finding] = result.findings
    assert finding.kind is FindingKind.CONFLICTING_FUNDS


def test_recharge_result_rejected_as_not_outstanding_credits_nothing(rig: Rig) -> None:
    rig.settings.add(settings("acme"))
    rig.funds.add(funds("acme", "ok", "50", "recharge_succeeded", command_id="acme:recharge:1"))
    resend = rig.funds.add(
        funds("acme", "resend", "50", "recharge_succeeded", command_id="acme:recharge:1")
    )
    rig.reject(resend)
    result = rig.run()
    assert result.tenants["acme"].balance == 50
    assert result.counts.funds_refused == 1
    assert result.findings == ()


@pytest.mark.parametrize(
    "reason",
    [RejectReason.CURRENCY_MISMATCH, RejectReason.SCHEMA, RejectReason.INTERNAL_ERROR],
)
def test_funds_refused_by_the_ledger_credit_nothing(rig: Rig, reason: RejectReason) -> None:
    rig.settings.add(settings("acme"))
    rig.reject(rig.funds.add(funds("acme", "f1", "10")), reason)
    assert balance(rig, "acme") == 0


def test_a_refused_copy_then_an_applied_replay_credits_once(rig: Rig) -> None:
    """Rejected as unknown_tenant, replayed by an operator after the settings came."""
    first = rig.funds.add(funds("late", "f1", "10"))
    rig.reject(first, RejectReason.UNKNOWN_TENANT)
    rig.settings.add(settings("late"))
    rig.funds.add(funds("late", "f1", "10"))  # `rating rejected replay`: a new offset
    result = rig.run()
    assert result.tenants["late"].balance == 10
    assert (result.counts.funds_refused, result.counts.funds_duplicates) == (1, 0)


def test_funds_ingest_would_refuse_credit_nothing(rig: Rig) -> None:
    rig.settings.add(settings("acme"))
    rig.funds.add(funds("acme", "f1", "10"), key="other")  # key_mismatch
    rig.funds.add(funds("acme", "f2", 10))  # type: ignore[arg-type]  # money as a number
    rig.funds.add(b"not json", key="acme")
    result = rig.run()
    assert result.tenants["acme"].balance == 0
    assert result.counts.funds_refused == 3


def test_funds_of_a_tenant_without_settings_are_held_not_credited(rig: Rig) -> None:
    rig.funds.add(funds("ghost", "f1", "10"))
    result = rig.run()
    assert "ghost" not in result.tenants
    assert result.counts.funds_pending == 1


def test_refused_settings_do_not_create_the_tenant(rig: Rig) -> None:
    bad = rig.settings.add(
        settings(
            "acme", auto_recharge={"enabled": True, "recharge_amount": "0", "trigger_balance": "1"}
        )
    )
    rig.reject(bad, RejectReason.SCHEMA)
    rig.settings.add(settings("x y"))  # not a tenant id: ingest refuses it
    assert rig.run().tenants == {}


def test_currency_is_the_last_accepted_settings(rig: Rig) -> None:
    rig.settings.add(settings("acme", "USD"))
    rig.settings.add(settings("acme", "EUR"))
    refused = rig.settings.add(settings("acme", "DKK"))
    rig.reject(refused, RejectReason.CURRENCY_MISMATCH)
    assert rig.run().tenants["acme"].currency == "EUR"


def test_charge_without_a_tenant_is_a_finding(rig: Rig) -> None:
    rig.charges.add(charge("ghost", "c1", "1"))
    result = rig.run()
    assert [f.kind for f in result.findings] == [FindingKind.CHARGE_WITHOUT_TENANT]


def test_unreadable_records_are_findings(rig: Rig) -> None:
    rig.settings.add(settings("acme"))
    rig.charges.add(b"{garbage", key="acme")
    rig.rejected.add(b"[]", key=None)
    kinds = [(f.kind, f.tenant_id) for f in rig.run().findings]
    assert kinds == [(FindingKind.UNREADABLE, None), (FindingKind.UNREADABLE, "acme")]


def test_tenant_filter(rig: Rig) -> None:
    for t in ("a", "b"):
        rig.settings.add(settings(t))
        rig.funds.add(funds(t, "f", "10"))
        rig.charges.add(charge(t, "c", "1"))
        rig.charges.add(charge(t, "c", "2"))  # a conflict in both
    result = rig.run(tenants={"b"})
    assert list(result.tenants) == ["b"]
    assert {f.tenant_id for f in result.findings} == {"b"}
    assert (result.counts.settings, result.counts.funds, result.counts.charges) == (1, 1, 2)


def test_partitions_are_read_in_offset_order_each() -> None:
    rig = Rig()
    other = Topic(FUNDS, partition=1)
    rig.settings.add(settings("acme"))
    other.add(funds("acme", "f1", "10"))
    rig.funds.records = list(other)  # only partition 1
    assert balance(rig, "acme") == 10


def test_sums_are_exact() -> None:
    rig = Rig()
    rig.settings.add(settings("acme"))
    rig.funds.add(funds("acme", "f1", "0.1"))
    rig.funds.add(funds("acme", "f2", "0.2"))
    for i in range(1000):
        rig.charges.add(charge("acme", f"c{i}", "0.0001"))
    assert balance(rig, "acme") == Decimal("0.2")  # 0.3 - 0.1, not 0.19999999


# --- comparison -----------------------------------------------------------------------------


def _two_tenants(rig: Rig) -> None:
    rig.settings.add(settings("a"))
    rig.settings.add(settings("b", "EUR"))
    rig.funds.add(funds("a", "f", "10"))
    rig.charges.add(charge("a", "c", "2.5"))


def test_no_drift_when_the_workers_agree(rig: Rig) -> None:
    _two_tenants(rig)
    report = compare(
        rig.run(),
        {"a": Answered(Decimal("7.5000"), "USD"), "b": Answered(Decimal("0"), "EUR")},
    )
    assert report.consistent
    assert [c.status for c in report.checks] == [Status.OK, Status.OK]
    assert report.checks[0].difference == 0


def test_drift_is_reported_with_its_difference(rig: Rig) -> None:
    _two_tenants(rig)
    report = compare(
        rig.run(), {"a": Answered(Decimal("5.10"), "USD"), "b": Answered(Decimal(0), "EUR")}
    )
    assert not report.consistent
    [drift] = report.drifted
    assert (drift.tenant_id, drift.status, drift.difference) == ("a", Status.DRIFT, Decimal("-2.4"))
    assert describe(drift) == (
        "DRIFT tenant=a expected=7.5 answered=5.10 difference=-2.40 currency=USD"
    )


def test_currency_drift(rig: Rig) -> None:
    _two_tenants(rig)
    report = compare(
        rig.run(), {"a": Answered(Decimal("7.5"), "USD"), "b": Answered(Decimal(0), "USD")}
    )
    [drift] = report.drifted
    assert drift.tenant_id == "b"
    assert "currency" in drift.detail


def test_a_tenant_without_an_answer_is_unknown_not_skipped(rig: Rig) -> None:
    _two_tenants(rig)
    report = compare(rig.run(), {"a": Unanswered(404, "unknown tenant 'a'")})
    assert [(c.tenant_id, c.status) for c in report.drifted] == [
        ("a", Status.UNKNOWN),
        ("b", Status.UNKNOWN),
    ]
    line = describe(report.drifted[0])
    assert line.startswith("UNKNOWN tenant=a expected=7.5 answered=? difference=?")
    assert "404" in line


def test_findings_make_the_report_inconsistent(rig: Rig) -> None:
    rig.settings.add(settings("a"))
    rig.charges.add(charge("a", "c", "1"))
    rig.charges.add(charge("a", "c", "3"))
    report = compare(rig.run(), {"a": Answered(Decimal(-1), "USD")})
    assert report.drifted == ()
    assert not report.consistent
    assert describe_finding(report.findings[0]).startswith("FINDING conflicting_charge tenant=a:")


def test_summary_counts(rig: Rig) -> None:
    _two_tenants(rig)
    rig.charges.add(charge("a", "c", "2.5"))
    rig.reject(rig.funds.add(funds("a", "g", "1")))
    report = compare(rig.run(), {"a": Answered(Decimal("7.5"), "USD")})
    text = summary(report)
    assert "NOT consistent: 2 tenants checked, 1 drifted (1 unknown), 0 findings" in text
    assert "charges: 2 read, 1 duplicates ignored" in text
    assert "funds: 2 read, 0 duplicates ignored, 1 refused, 0 held" in text
    assert "rejections: 1 read" in text


# --- against the real ledger ----------------------------------------------------------------


def _book():  # type: ignore[no-untyped-def]
    from rating.contracts import Rate, RateCard
    from rating.domain.ratecard import RateBook

    rates = [
        Rate.model_validate(
            {
                "product": "conferencing_dialout",
                "prefix": "1",
                "zone": "US/CA",
                "per_minute": per_minute,
                "first_increment": 60,
                "next_increment": 6,
            }
        )
        for per_minute in ("0.0240",)
    ]
    cards = [
        RateCard(
            rate_card_id=f"std-{cur.lower()}",
            plan="standard",
            currency=cur,
            effective_from=datetime(2026, 1, 1, tzinfo=UTC),
            precision=4,
            rates=rates,
        )
        for cur in ("USD", "EUR")
    ]
    return RateBook.from_cards(cards)


@pytest.mark.parametrize("seed", range(12))
def test_recomputation_matches_the_real_ledger(seed: int) -> None:
    """Drive rating.ledger.Ledger with a random mix (duplicates, refused recharge results,
    wrong currencies, funds before settings, held messages expiring, auto-recharge), put its
    outputs on "topics", and recompute: every balance must equal the ledger's own."""
    import random
    from datetime import timedelta

    from rating.contracts import RechargeCommand
    from rating.domain.account import RechargePolicy
    from rating.ingest import Envelope, validate
    from rating.ledger import HoldPolicy, Ledger

    rng = random.Random(seed)
    book = _book()
    ledger = Ledger(
        {},
        lambda: book,
        RechargePolicy(daily_cap=1000),
        timedelta(days=7),
        HoldPolicy(seconds=120),
    )
    rig = Rig()
    inputs = {"settings": rig.settings, "funds": rig.funds, "cdr": Topic("cdr.audio")}
    tenants = [f"t{i}" for i in range(4)]
    now = NOW
    ledger_offset = 0
    commands: list[RechargeCommand] = []
    sent_funds: list[dict[str, Any]] = []
    cdrs: list[dict[str, Any]] = []

    def publish(kind: str, body: dict[str, Any]) -> None:
        nonlocal ledger_offset
        rec = inputs[kind].add(body)  # type: ignore[index]
        checked = validate(
            kind,  # type: ignore[arg-type]
            Source(rec.topic, rec.partition, rec.offset, rec.key),
            rec.value,
            now,
        )
        if not isinstance(checked, Envelope):
            rig.rejected.add(checked.model_dump_json().encode(), key=None)
            return
        result = ledger.handle(checked, 0, ledger_offset, now)
        ledger_offset += 1
        collect(result.outputs)

    def collect(outputs: list[Any]) -> None:
        for out in outputs:
            if out.role == "charges":
                rig.charges.add(out.value, key=None)
            elif out.role == "rejected":
                rig.rejected.add(out.value, key=None)
            elif out.role == "recharge":
                commands.append(RechargeCommand.model_validate_json(out.value))

    for step in range(300):
        now += timedelta(seconds=rng.randrange(1, 30))
        tenant = rng.choice(tenants)
        roll = rng.random()
        if roll < 0.08:
            currency = "EUR" if rng.random() < 0.2 else "USD"
            enabled = rng.random() < 0.7
            publish(
                "settings",
                settings(
                    tenant,
                    currency,
                    auto_recharge={
                        "enabled": enabled,
                        "recharge_amount": "5" if enabled else "0",
                        "trigger_balance": "2",
                    },
                ),
            )
        elif roll < 0.25:
            kind = rng.choice(["manual_add", "adjustment", "adjustment"])
            amount = f"{rng.randrange(1, 2000) / 100:.2f}"
            if kind == "adjustment" and rng.random() < 0.5:
                amount = "-" + amount
            body = funds(
                tenant, f"f{step}", amount, kind, currency=rng.choice(["USD"] * 5 + ["EUR"])
            )
            sent_funds.append(body)
            publish("funds", body)
        elif roll < 0.35 and commands:
            # Billing answers a command: the right one, a resend, a late failure, a stranger.
            cmd = rng.choice(commands)
            kind = rng.choice(["recharge_succeeded"] * 3 + ["recharge_failed"])
            command_id = cmd.command_id if rng.random() < 0.9 else "nobody:recharge:1"
            body = funds(
                cmd.tenant_id,
                f"{command_id}:{kind}:{rng.randrange(3)}",
                format(cmd.amount, "f"),
                kind,
                currency=cmd.currency,
                command_id=command_id,
            )
            sent_funds.append(body)
            publish("funds", body)
        elif roll < 0.42 and sent_funds:
            publish("funds", rng.choice(sent_funds))  # billing retries an event
        elif roll < 0.47 and cdrs:
            publish("cdr", rng.choice(cdrs))  # the platform republishes a CDR
        elif roll < 0.52:
            collect(ledger.tick(0, ledger_offset, now).outputs)
            ledger_offset += 1
        else:
            body = {
                "cdr_id": f"c{step}",
                "tenant_id": tenant,
                "product": "conferencing_dialout",
                "call_start": "2026-11-22T09:00:00Z",
                "duration_seconds": rng.randrange(0, 900),
                "origin": "+4520123456",
                "destination": "+14155550100",
            }
            cdrs.append(body)
            publish("cdr", body)
    now += timedelta(seconds=600)  # let every held message expire
    collect(ledger.tick(0, ledger_offset, now).outputs)

    result = rig.run()
    answers = {}
    for tenant in tenants:
        account = ledger.account(tenant)
        if account is not None:
            answers[tenant] = Answered(account.balance, account.currency)
    assert set(result.tenants) == set(answers)
    report = compare(result, answers)
    assert report.consistent, [describe(c) for c in report.drifted] + [
        describe_finding(f) for f in report.findings
    ]
    # The Rejections matter: ignoring them, the same topics give other balances.
    naive = recompute(rig.settings, rig.funds, rig.charges, [])
    assert not compare(naive, answers).consistent


# --- the command's re-check loop (rating.reconcile_cli), with check() stubbed -------------


def _args(*argv: str):  # type: ignore[no-untyped-def]
    import argparse

    from rating.reconcile_cli import add_arguments

    p = argparse.ArgumentParser()
    add_arguments(p)
    return p.parse_args(["--interval", "0", *argv])


def _check(tenant: str, status: Status, answered: str = "1") -> Any:
    from rating.reconcile import TenantCheck

    return TenantCheck(tenant, "USD", Decimal(1), Decimal(answered), status)


def test_wait_rechecks_only_the_tenants_that_differ(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from rating import reconcile_cli
    from rating.reconcile import Counts, Report

    asked: list[set[str] | None] = []
    answers = [
        Report((_check("a", Status.OK), _check("b", Status.DRIFT, "2")), (), Counts(charges=7)),
        Report((_check("b", Status.DRIFT, "2"),), (), Counts()),
        Report((_check("b", Status.OK),), (), Counts()),
    ]

    def fake(args: Any, settings: Any, urls: Any, only: set[str] | None) -> Report:
        asked.append(only)
        return answers[len(asked) - 1]

    monkeypatch.setattr(reconcile_cli, "check", fake)
    assert reconcile_cli.run_reconcile(_args("--wait", "60", "--all")) == 0
    assert asked == [None, {"b"}, {"b"}]
    out = capsys.readouterr()
    assert "OK tenant=a " in out.out
    assert "OK tenant=b " in out.out
    assert "consistent: 2 tenants checked, 0 drifted" in out.out
    assert "charges: 7 read" in out.out  # the counts of the first, complete read
    assert out.err.count("re-checking") == 2


def test_without_wait_a_drift_is_reported_at_once(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from rating import reconcile_cli
    from rating.reconcile import Counts, Report

    calls = []

    def fake(args: Any, settings: Any, urls: Any, only: set[str] | None) -> Report:
        calls.append(only)
        return Report((_check("b", Status.DRIFT, "2"),), (), Counts())

    monkeypatch.setattr(reconcile_cli, "check", fake)
    assert reconcile_cli.run_reconcile(_args()) == 1
    assert len(calls) == 1
    assert "DRIFT tenant=b expected=1 answered=2 difference=+1" in capsys.readouterr().out


def test_errors_exit_2(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from rating import reconcile_cli
    from rating.reconcile_cli import ReconcileError

    calls = 0

    def transient(*_: Any) -> Any:
        nonlocal calls
        calls += 1
        raise ReconcileError("cannot reach the Kafka brokers", transient=True)

    monkeypatch.setattr(reconcile_cli, "check", transient)
    assert reconcile_cli.run_reconcile(_args("--wait", "0.3", "--interval", "0.1")) == 2
    assert calls > 1  # retried while --wait lasted
    assert "cannot reach the Kafka brokers" in capsys.readouterr().err

    def permanent(*_: Any) -> Any:
        raise ReconcileError("topic 'x' does not exist", transient=False)

    monkeypatch.setattr(reconcile_cli, "check", permanent)
    assert reconcile_cli.run_reconcile(_args("--wait", "60")) == 2  # at once, no waiting
    assert "does not exist" in capsys.readouterr().err
