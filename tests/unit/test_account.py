"""Unit tests for the pure account logic: balance, auto-recharge, balance events."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from rating.contracts import (
    AutoRecharge,
    BalanceEventKind,
    FundsEvent,
    FundsKind,
    RechargeCommand,
    RejectReason,
    TenantSettings,
)
from rating.domain.account import (
    RECENT_CLOSED,
    RECHARGE_OUTCOMES,
    Account,
    Effects,
    Outstanding,
    RechargePolicy,
    Refusal,
    apply_charge,
    apply_funds,
    command_id,
    needs_tick,
    on_tick,
    open_or_update,
)

T0 = datetime(2026, 11, 22, 10, 0, tzinfo=UTC)
POLICY = RechargePolicy()
D = Decimal


def settings(
    *,
    enabled: bool = True,
    amount: str = "50",
    trigger: str = "10",
    alert: str | None = None,
    currency: str = "USD",
    tenant: str = "t1",
    plan: str = "standard",
) -> TenantSettings:
    return TenantSettings(
        tenant_id=tenant,
        currency=currency,
        plan=plan,
        auto_recharge=AutoRecharge(
            enabled=enabled, recharge_amount=D(amount), trigger_balance=D(trigger)
        ),
        low_balance_alert=None if alert is None else D(alert),
    )


def account(balance: str = "100", **overrides: object) -> Account:
    """An account in a given state, built directly (no history needed)."""
    base = Account(
        tenant_id="t1",
        currency="USD",
        plan="standard",
        balance=D(balance),
        auto_recharge_enabled=True,
        recharge_amount=D(50),
        trigger_balance=D(10),
        low_balance_alert=None,
        outstanding=None,
        recharge_seq=0,
        recharge_failing=False,
        cap_day="2026-11-22",
        recharges_today=0,
    )
    return replace(base, **overrides)  # type: ignore[arg-type]


def funds(
    kind: FundsKind,
    amount: str,
    command: str | None = None,
    currency: str = "USD",
    tenant: str = "t1",
) -> FundsEvent:
    return FundsEvent(
        event_id="e1",
        tenant_id=tenant,
        kind=kind,
        amount=D(amount),
        currency=currency,
        command_id=command,
    )


def ok(result: tuple[Account, Effects] | Refusal) -> tuple[Account, Effects]:
    assert not isinstance(result, Refusal), result
    return result


def kinds(effects: Effects) -> list[str]:
    return [e.kind.value for e in effects.balance_events]


def charge(acc: Account, amount: str, now: datetime = T0) -> tuple[Account, Effects]:
    return apply_charge(acc, D(amount), now, POLICY)


def with_command(balance: str = "5", **overrides: object) -> Account:
    """A below-trigger account whose first command was just issued at T0."""
    acc, eff = charge(account("100", **overrides), str(D(100) - D(balance)))
    assert len(eff.recharge_commands) == 1
    return acc


# --- creation and settings ----------------------------------------------------------------


def test_creation_starts_at_zero_and_emits_exhausted() -> None:
    acc, eff = ok(open_or_update(None, settings(enabled=False), T0, POLICY))
    assert acc.balance == 0
    assert acc.currency == "USD"
    assert kinds(eff) == ["exhausted"]
    assert eff.balance_events[0].threshold == 0
    assert eff.balance_events[0].at == T0
    assert eff.recharge_commands == ()


def test_creation_with_auto_recharge_issues_first_command() -> None:
    acc, eff = ok(open_or_update(None, settings(amount="25", trigger="10"), T0, POLICY))
    (cmd,) = eff.recharge_commands
    assert cmd.command_id == "t1:recharge:1"
    assert (cmd.amount, cmd.trigger_balance, cmd.balance) == (D(25), D(10), D(0))
    assert (cmd.currency, cmd.issued_at, cmd.attempt) == ("USD", T0, 1)
    assert eff.recharge_outcomes == ("issued",)
    assert acc.outstanding is not None
    assert acc.outstanding.due_at == T0 + POLICY.response_timeout
    assert acc.recharge_seq == 1
    assert acc.recharges_today == 1


def test_creation_with_zero_trigger_issues_nothing() -> None:
    # 0 is not strictly below a trigger of 0.
    _, eff = ok(open_or_update(None, settings(trigger="0"), T0, POLICY))
    assert eff.recharge_commands == ()


@pytest.mark.parametrize(
    ("change", "expect_command"),
    [
        ({"trigger": "150"}, True),  # new trigger above the balance: at once
        ({"trigger": "100"}, False),  # equal is not below
        ({"trigger": "99.99"}, False),
        ({"enabled": False, "trigger": "150"}, False),
        ({"alert": "500"}, False),
    ],
)
def test_settings_take_effect_at_once(change: dict[str, object], expect_command: bool) -> None:
    acc = account("100")
    new, eff = ok(open_or_update(acc, settings(**change), T0, POLICY))  # type: ignore[arg-type]
    assert bool(eff.recharge_commands) is expect_command
    assert new.trigger_balance == D(str(change.get("trigger", "10")))


def test_disabling_does_not_cancel_outstanding_and_result_still_applies() -> None:
    acc = with_command("5")
    acc, eff = ok(open_or_update(acc, settings(enabled=False), T0, POLICY))
    assert acc.outstanding is not None
    assert eff.recharge_commands == ()
    acc, eff = ok(
        apply_funds(acc, funds(FundsKind.RECHARGE_SUCCEEDED, "50", "t1:recharge:1"), T0, POLICY)
    )
    assert acc.outstanding is None
    assert acc.balance == D(55)


def test_disabled_tenant_due_retry_is_abandoned_not_resent() -> None:
    acc = with_command("5")
    acc, _ = ok(
        apply_funds(acc, funds(FundsKind.RECHARGE_FAILED, "50", "t1:recharge:1"), T0, POLICY)
    )
    acc, _ = ok(open_or_update(acc, settings(enabled=False), T0, POLICY))
    assert acc.outstanding is not None
    acc, eff = on_tick(acc, acc.outstanding.due_at, POLICY)
    assert eff.recharge_commands == ()
    assert eff.recharge_outcomes == ("abandoned",)
    assert acc.outstanding is None
    # A late success for the abandoned command still credits: the card was charged.
    acc, eff = ok(
        apply_funds(acc, funds(FundsKind.RECHARGE_SUCCEEDED, "50", "t1:recharge:1"), T0, POLICY)
    )
    assert acc.balance == D(55)


def test_disabled_auto_recharge_never_issues() -> None:
    acc = account("100", auto_recharge_enabled=False)
    for _ in range(30):
        acc, eff = charge(acc, "7")
        assert eff.recharge_commands == ()
        acc, eff = on_tick(acc, T0 + timedelta(days=1), POLICY)
        assert eff.recharge_commands == ()
    assert acc.balance == D(100 - 30 * 7)
    assert acc.recharge_seq == 0
    assert needs_tick(acc) is None


@pytest.mark.parametrize(
    ("settings_kwargs", "reason"),
    [
        ({"amount": "0"}, "schema"),  # enabled with nothing to recharge
        ({"amount": "-5", "enabled": False}, "schema"),
        ({"amount": "1000000000000000"}, "schema"),  # out of range
        ({"trigger": "0.0000000000001"}, "schema"),  # 13 decimals
    ],
)
def test_bad_settings_are_refused(settings_kwargs: dict[str, object], reason: str) -> None:
    result = open_or_update(None, settings(**settings_kwargs), T0, POLICY)  # type: ignore[arg-type]
    assert isinstance(result, Refusal)
    assert result.reason == reason


def test_disabled_with_zero_amount_is_the_default_and_fine() -> None:
    ok(open_or_update(None, settings(enabled=False, amount="0", trigger="0"), T0, POLICY))


@pytest.mark.parametrize(
    ("acc", "allowed"),
    [
        (account("0"), True),
        (account("0.00"), True),  # exactly zero, whatever the exponent
        (account("0.01"), False),
        (account("-3"), False),
        (with_command("0", trigger_balance=D(10)), False),  # balance 0 but a command is out
    ],
)
def test_currency_change_only_when_empty(acc: Account, allowed: bool) -> None:
    result = open_or_update(acc, settings(currency="EUR", trigger="-1"), T0, POLICY)
    if allowed:
        new, _ = ok(result)
        assert new.currency == "EUR"
    else:
        assert isinstance(result, Refusal)
        assert result.reason == "currency_mismatch"
        assert "currency" in result.detail


def test_tenant_mismatch_is_refused() -> None:
    result = open_or_update(account(), settings(tenant="t2"), T0, POLICY)
    assert isinstance(result, Refusal)
    assert result.reason == "key_mismatch"
    result = apply_funds(account(), funds(FundsKind.MANUAL_ADD, "5", tenant="t2"), T0, POLICY)
    assert isinstance(result, Refusal)
    assert result.reason == "key_mismatch"


# --- charges and the trigger --------------------------------------------------------------


@pytest.mark.parametrize(
    ("start", "amount", "expect_command"),
    [
        ("20", "10", False),  # lands exactly on the trigger: not below
        ("10", "0.0001", True),  # just below
        ("20", "25", True),  # through zero
        ("9", "0", False),  # a zero charge changes nothing (even below the trigger)
        ("5", "1", True),
    ],
)
def test_command_only_strictly_below_trigger(start: str, amount: str, expect_command: bool) -> None:
    acc, eff = charge(account(start), amount)
    assert acc.balance == D(start) - D(amount)
    assert bool(eff.recharge_commands) is expect_command
    if expect_command:
        assert eff.recharge_commands[0].balance == acc.balance


def test_zero_charge_is_a_no_op() -> None:
    acc = account("5", cap_day="2020-01-01")
    new, eff = charge(acc, "0")
    assert new is acc
    assert eff == Effects()


@pytest.mark.parametrize("bad", [D(-1), D("NaN"), D("Infinity"), 1.5])
def test_bad_charge_amount_is_a_bug(bad: object) -> None:
    with pytest.raises(ValueError, match="charge amount"):
        apply_charge(account(), bad, T0, POLICY)  # type: ignore[arg-type]


def test_naive_now_is_a_bug() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        apply_charge(account(), D(1), datetime(2026, 1, 1), POLICY)  # noqa: DTZ001


def test_charges_go_negative_and_only_one_command_is_outstanding() -> None:
    acc = account("30")
    issued: list[RechargeCommand] = []
    for i in range(40):
        acc, eff = charge(acc, "3", T0 + timedelta(seconds=i))
        issued.extend(eff.recharge_commands)
    assert acc.balance == D(30 - 120)
    assert [c.command_id for c in issued] == ["t1:recharge:1"]
    assert acc.recharge_seq == 1


# --- recharge results -----------------------------------------------------------------------


def test_success_resolves_and_credits() -> None:
    acc = with_command("5")
    acc, eff = ok(
        apply_funds(acc, funds(FundsKind.RECHARGE_SUCCEEDED, "50", "t1:recharge:1"), T0, POLICY)
    )
    assert acc.balance == D(55)
    assert acc.outstanding is None
    assert eff.recharge_outcomes == ("succeeded",)
    assert eff.funds_outcome == "applied"
    assert eff.recharge_commands == ()


def test_success_still_below_trigger_chains_next_command_with_new_id() -> None:
    acc = with_command("-100")
    t1 = T0 + timedelta(minutes=1)
    acc, eff = ok(
        apply_funds(acc, funds(FundsKind.RECHARGE_SUCCEEDED, "50", "t1:recharge:1"), t1, POLICY)
    )
    assert acc.balance == D(-50)
    (cmd,) = eff.recharge_commands
    assert cmd.command_id == "t1:recharge:2"
    assert (cmd.balance, cmd.issued_at, cmd.attempt) == (D(-50), t1, 1)
    assert eff.recharge_outcomes == ("succeeded", "issued")
    assert acc.outstanding is not None
    assert acc.outstanding.command_id == "t1:recharge:2"


def result(kind: FundsKind, amount: str, command: str | None, event_id: str) -> FundsEvent:
    return funds(kind, amount, command).model_copy(update={"event_id": event_id})


def refused(outcome: tuple[Account, Effects] | Refusal) -> Refusal:
    assert isinstance(outcome, Refusal), outcome
    assert outcome.reason == RejectReason.COMMAND_NOT_OUTSTANDING.value
    return outcome


def succeeded_once() -> Account:
    """t1:recharge:1 issued at balance 5 and resolved by pay-1: balance 55."""
    acc, _ = ok(
        apply_funds(
            with_command("5"),
            result(FundsKind.RECHARGE_SUCCEEDED, "50", "t1:recharge:1", "pay-1"),
            T0,
            POLICY,
        )
    )
    assert acc.balance == D(55)
    return acc


def test_second_success_for_a_resolved_command_under_a_new_event_id_credits_nothing() -> None:
    acc = succeeded_once()
    resend = result(FundsKind.RECHARGE_SUCCEEDED, "50", "t1:recharge:1", "pay-2")
    refusal = refused(apply_funds(acc, resend, T0, POLICY))
    assert "already resolved by event 'pay-1'" in refusal.detail
    assert "'pay-2'" in refusal.detail


def test_late_failure_after_success_is_refused_and_changes_nothing() -> None:
    acc = succeeded_once()
    late = result(FundsKind.RECHARGE_FAILED, "50", "t1:recharge:1", "fail-late")
    refusal = refused(apply_funds(acc, late, T0, POLICY))
    assert "already resolved by event 'pay-1'" in refusal.detail


@pytest.mark.parametrize("command", [None, "t1:recharge:0", "t1:recharge:9", "t1:recharge:01"])
def test_success_for_a_never_issued_command_credits_nothing(command: str | None) -> None:
    acc = with_command("5")
    event = result(FundsKind.RECHARGE_SUCCEEDED, "20", command, "pay-x")
    refusal = refused(apply_funds(acc, event, T0, POLICY))
    if command is not None:
        assert "never issued to tenant 't1'" in refusal.detail
        assert "outstanding: 't1:recharge:1'" in refusal.detail


def test_success_naming_another_tenants_command_credits_nothing() -> None:
    acc = with_command("5")  # t1 has t1:recharge:1 outstanding
    for other in ("t2:recharge:1", "t1:recharge:1:recharge:1", "t:recharge:1"):
        refusal = refused(
            apply_funds(acc, result(FundsKind.RECHARGE_SUCCEEDED, "50", other, "pay-o"), T0, POLICY)
        )
        assert "never issued" in refusal.detail


def test_failures_then_one_success_of_the_same_command_credit_once() -> None:
    acc = with_command("5")
    for attempt in (1, 2):
        acc, eff = ok(
            apply_funds(
                acc,
                result(FundsKind.RECHARGE_FAILED, "50", "t1:recharge:1", f"fail-{attempt}"),
                T0,
                POLICY,
            )
        )
        assert eff.recharge_outcomes == ("failed",)
        assert acc.outstanding is not None
        acc, _ = on_tick(acc, acc.outstanding.due_at, POLICY)  # the retry goes out
    acc, eff = ok(
        apply_funds(
            acc, result(FundsKind.RECHARGE_SUCCEEDED, "50", "t1:recharge:1", "pay"), T0, POLICY
        )
    )
    assert acc.balance == D(55)
    assert acc.outstanding is None
    assert not eff.amount_mismatch
    again = result(FundsKind.RECHARGE_SUCCEEDED, "50", "t1:recharge:1", "pay-again")
    refused(apply_funds(acc, again, T0, POLICY))


def test_late_success_of_a_given_up_command_credits_once() -> None:
    policy = RechargePolicy(max_failures=1)
    acc = with_command("5")
    acc, eff = ok(
        apply_funds(acc, result(FundsKind.RECHARGE_FAILED, "50", "t1:recharge:1", "f1"), T0, policy)
    )
    assert eff.recharge_outcomes == ("given_up",)
    assert acc.outstanding is None
    # billing's last attempt went through after all: that money moved, once.
    late = result(FundsKind.RECHARGE_SUCCEEDED, "50", "t1:recharge:1", "pay-late")
    acc, eff = ok(apply_funds(acc, late, T0, policy))
    assert acc.balance == D(55)
    assert eff.recharge_outcomes[0] == "succeeded"
    resend = result(FundsKind.RECHARGE_SUCCEEDED, "50", "t1:recharge:1", "pay-late-2")
    assert (
        "already resolved by event 'pay-late'"
        in refused(apply_funds(acc, resend, T0, policy)).detail
    )


def test_late_failure_of_a_given_up_command_is_ignored() -> None:
    policy = RechargePolicy(max_failures=1)
    acc, _ = ok(
        apply_funds(
            with_command("5"),
            result(FundsKind.RECHARGE_FAILED, "50", "t1:recharge:1", "f1"),
            T0,
            policy,
        )
    )
    late = result(FundsKind.RECHARGE_FAILED, "50", "t1:recharge:1", "f-late")
    new, eff = ok(apply_funds(acc, late, T0, policy))
    assert new == acc
    assert eff.funds_outcome == "ignored"


def test_success_with_another_amount_credits_the_events_amount_and_says_so() -> None:
    acc = with_command("5")
    acc, eff = ok(
        apply_funds(
            acc, result(FundsKind.RECHARGE_SUCCEEDED, "45.50", "t1:recharge:1", "p"), T0, POLICY
        )
    )
    assert acc.balance == D("50.50")
    assert eff.amount_mismatch


def test_closed_commands_are_remembered_up_to_the_bound() -> None:
    acc = account("100")
    for n in range(1, RECENT_CLOSED + 3):
        day = T0 + timedelta(days=n)  # one command a day: the daily cap never bites
        acc, _ = charge(acc, str(acc.balance - D(5)), day)
        assert acc.outstanding is not None
        cmd = acc.outstanding.command_id
        acc, _ = ok(
            apply_funds(
                acc, result(FundsKind.RECHARGE_SUCCEEDED, "50", cmd, f"pay-{n}"), day, POLICY
            )
        )
    assert len(acc.closed) == RECENT_CLOSED
    assert Account.from_dict(acc.to_dict()) == acc
    oldest = result(FundsKind.RECHARGE_SUCCEEDED, "50", "t1:recharge:1", "pay-old")
    assert "older than the last" in refused(apply_funds(acc, oldest, T0, POLICY)).detail


@pytest.mark.parametrize("command", [None, "t1:recharge:0", "t1:recharge:9"])
def test_failure_for_a_command_never_issued_is_refused(command: str | None) -> None:
    acc = with_command("5")
    refused(apply_funds(acc, funds(FundsKind.RECHARGE_FAILED, "50", command), T0, POLICY))


def test_failure_does_not_change_balance_and_schedules_retry() -> None:
    acc = with_command("5")
    t1 = T0 + timedelta(minutes=2)
    acc, eff = ok(
        apply_funds(acc, funds(FundsKind.RECHARGE_FAILED, "50", "t1:recharge:1"), t1, POLICY)
    )
    assert acc.balance == D(5)
    assert eff.recharge_outcomes == ("failed",)
    assert eff.funds_outcome == "applied"
    assert acc.outstanding is not None
    assert acc.outstanding.awaiting_retry
    assert acc.outstanding.due_at == t1 + POLICY.backoff_initial
    assert needs_tick(acc) == acc.outstanding.due_at


def test_late_failure_while_awaiting_retry_is_not_counted_twice() -> None:
    acc = with_command("5")
    acc, eff = on_tick(acc, T0 + POLICY.response_timeout, POLICY)
    assert eff.recharge_outcomes == ("timed_out", "failed")
    before = acc
    acc, eff = ok(
        apply_funds(acc, funds(FundsKind.RECHARGE_FAILED, "50", "t1:recharge:1"), T0, POLICY)
    )
    assert acc == before
    assert eff.funds_outcome == "ignored"


@pytest.mark.parametrize(
    ("failures", "expected"),
    [(1, 30), (2, 60), (3, 120), (4, 240), (5, 300), (6, 300), (200, 300)],
)
def test_backoff_doubles_and_is_capped(failures: int, expected: int) -> None:
    policy = RechargePolicy(backoff_initial=timedelta(seconds=30), backoff_max=timedelta(minutes=5))
    assert policy.backoff(failures) == timedelta(seconds=expected)


def test_failure_retry_cycle_doubles_backoff_and_resends_same_command() -> None:
    policy = RechargePolicy(
        backoff_initial=timedelta(seconds=30), backoff_max=timedelta(minutes=2), max_failures=10
    )
    acc, _ = apply_charge(account("15"), D(10), T0, policy)
    now = T0
    delays = []
    for attempt in range(1, 6):
        acc, eff = ok(
            apply_funds(acc, funds(FundsKind.RECHARGE_FAILED, "50", "t1:recharge:1"), now, policy)
        )
        assert acc.outstanding is not None
        delays.append((acc.outstanding.due_at - now).total_seconds())
        # A tick before the retry time does nothing.
        same, eff = on_tick(acc, acc.outstanding.due_at - timedelta(seconds=1), policy)
        assert (same, eff) == (acc, Effects())
        now = acc.outstanding.due_at
        acc, _ = charge(acc, "1", now)  # the balance moves between attempts
        acc, eff = on_tick(acc, now, policy)
        (cmd,) = eff.recharge_commands
        assert cmd.command_id == "t1:recharge:1"
        assert (cmd.attempt, cmd.issued_at, cmd.balance) == (attempt + 1, now, acc.balance)
        assert cmd.amount == D(50)
        assert eff.recharge_outcomes == ("retried",)
        assert acc.outstanding is not None
        assert acc.outstanding.due_at == now + policy.response_timeout
        assert not acc.outstanding.awaiting_retry
    assert delays == [30, 60, 120, 120, 120]
    assert acc.recharge_seq == 1
    assert acc.recharges_today == 1  # retries don't count against the cap


def test_response_timeout_counts_as_failure() -> None:
    acc = with_command("5")
    due = T0 + POLICY.response_timeout
    assert needs_tick(acc) == due
    same, eff = on_tick(acc, due - timedelta(microseconds=1), POLICY)
    assert same == acc
    assert eff == Effects()
    acc, eff = on_tick(acc, due, POLICY)
    assert eff.recharge_outcomes == ("timed_out", "failed")
    assert acc.outstanding is not None
    assert acc.outstanding.failures == 1
    assert acc.outstanding.awaiting_retry
    assert acc.outstanding.due_at == due + POLICY.backoff_initial
    acc, eff = on_tick(acc, due + POLICY.backoff_initial, POLICY)
    assert eff.recharge_outcomes == ("retried",)
    assert eff.recharge_commands[0].attempt == 2


def give_up(policy: RechargePolicy) -> tuple[Account, list[Effects]]:
    acc, _ = apply_charge(account("15"), D(10), T0, policy)
    now = T0
    history = []
    for _ in range(policy.max_failures):
        assert acc.outstanding is not None
        if acc.outstanding.awaiting_retry:
            acc, _ = on_tick(acc, acc.outstanding.due_at, policy)
        assert acc.outstanding is not None
        now = acc.outstanding.due_at  # no answer: time out
        acc, eff = on_tick(acc, now, policy)
        history.append(eff)
    return acc, history


def test_gives_up_after_max_failures() -> None:
    policy = RechargePolicy(max_failures=3)
    acc, history = give_up(policy)
    assert [e.recharge_outcomes for e in history] == [
        ("timed_out", "failed"),
        ("timed_out", "failed"),
        ("timed_out", "given_up"),
    ]
    (event,) = history[-1].balance_events
    assert event.kind is BalanceEventKind.RECHARGE_FAILING
    assert (event.threshold, event.balance) == (D(10), D(5))
    assert acc.recharge_failing
    assert acc.outstanding is None
    assert needs_tick(acc) is None
    # No more commands, however low the balance goes.
    for _ in range(5):
        acc, eff = apply_charge(acc, D(10), T0, policy)
        assert eff.recharge_commands == ()
        assert eff.balance_events == () or kinds(eff) == ["exhausted"]


@pytest.mark.parametrize(
    ("resume", "resumes"),
    [
        (settings(amount="60"), True),
        (settings(), False),  # an identical re-delivery is not a change
        (funds(FundsKind.MANUAL_ADD, "1"), True),
        (funds(FundsKind.ADJUSTMENT, "1"), True),
        (funds(FundsKind.ADJUSTMENT, "-1"), False),  # not funds arriving
        (funds(FundsKind.RECHARGE_SUCCEEDED, "1", "t1:recharge:1"), True),  # late success
        (funds(FundsKind.RECHARGE_FAILED, "50", "t1:recharge:1"), False),
    ],
)
def test_resume_after_giving_up(resume: TenantSettings | FundsEvent, resumes: bool) -> None:
    policy = RechargePolicy(max_failures=2)
    acc, _ = give_up(policy)
    if isinstance(resume, TenantSettings):
        acc, eff = ok(open_or_update(acc, resume, T0, policy))
    else:
        acc, eff = ok(apply_funds(acc, resume, T0, policy))
    assert acc.recharge_failing is not resumes
    if resumes:
        (cmd,) = eff.recharge_commands
        assert cmd.command_id == "t1:recharge:2"
        assert acc.outstanding is not None
        assert acc.outstanding.failures == 0
    else:
        assert eff.recharge_commands == ()


def test_settings_change_resets_failures_of_outstanding() -> None:
    acc = with_command("5")
    acc, _ = ok(
        apply_funds(acc, funds(FundsKind.RECHARGE_FAILED, "50", "t1:recharge:1"), T0, POLICY)
    )
    acc, eff = ok(open_or_update(acc, settings(amount="80"), T0, POLICY))
    assert acc.outstanding is not None
    assert acc.outstanding.failures == 0
    assert acc.outstanding.awaiting_retry
    # The retry resends the command as issued (same id, same amount), not the new amount.
    acc, eff = on_tick(acc, acc.outstanding.due_at, POLICY)
    assert eff.recharge_commands[0].amount == D(50)


# --- daily cap ----------------------------------------------------------------------------


def test_daily_cap_and_roll_over() -> None:
    policy = RechargePolicy(daily_cap=2)
    acc, _ = apply_charge(account("0"), D(500), T0, policy)  # deep below: -500
    ids = []
    outcomes: list[str] = []
    for i in range(1, 5):
        now = T0 + timedelta(minutes=i)
        assert acc.outstanding is not None
        ids.append(acc.outstanding.command_id)
        success = funds(FundsKind.RECHARGE_SUCCEEDED, "50", acc.outstanding.command_id)
        acc, eff = ok(apply_funds(acc, success, now, policy))
        outcomes.extend(eff.recharge_outcomes)
        if acc.outstanding is None:
            break
    assert ids == ["t1:recharge:1", "t1:recharge:2"]
    assert outcomes == ["succeeded", "issued", "succeeded", "capped"]
    assert acc.balance == D(-400)
    # Capped is reported once per day, not on every debit.
    acc, eff = apply_charge(acc, D(1), T0 + timedelta(hours=1), policy)
    assert eff.recharge_outcomes == ()
    midnight = datetime(2026, 11, 23, tzinfo=UTC)
    assert needs_tick(acc) == midnight
    _same, eff = on_tick(acc, midnight - timedelta(seconds=1), policy)
    assert eff.recharge_commands == ()
    acc, eff = on_tick(acc, midnight, policy)
    assert [c.command_id for c in eff.recharge_commands] == ["t1:recharge:3"]
    assert (acc.cap_day, acc.recharges_today, acc.cap_reported) == ("2026-11-23", 1, False)


def test_zero_daily_cap_never_issues() -> None:
    policy = RechargePolicy(daily_cap=0)
    _acc, eff = apply_charge(account("20"), D(15), T0, policy)
    assert eff.recharge_commands == ()
    assert eff.recharge_outcomes == ("capped",)


def test_clock_stepping_back_does_not_reset_cap() -> None:
    acc = account("100", cap_day="2026-11-22", recharges_today=7)
    acc, _ = charge(acc, "1", T0 - timedelta(days=1))
    assert (acc.cap_day, acc.recharges_today) == ("2026-11-22", 7)


# --- funds --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("event", "reason"),
    [
        (funds(FundsKind.MANUAL_ADD, "5", currency="EUR"), "currency_mismatch"),
        (
            funds(FundsKind.RECHARGE_FAILED, "5", "t1:recharge:1", currency="EUR"),
            "currency_mismatch",
        ),
        (funds(FundsKind.MANUAL_ADD, "0"), "schema"),
        (funds(FundsKind.MANUAL_ADD, "-5"), "schema"),
        (funds(FundsKind.RECHARGE_SUCCEEDED, "0", "t1:recharge:1"), "schema"),
        (funds(FundsKind.ADJUSTMENT, "1000000000000000"), "schema"),
    ],
)
def test_bad_funds_are_refused(event: FundsEvent, reason: str) -> None:
    result = apply_funds(with_command("5"), event, T0, POLICY)
    assert isinstance(result, Refusal)
    assert result.reason == reason
    assert result.detail


@pytest.mark.parametrize(
    ("start", "event", "balance"),
    [
        ("10", funds(FundsKind.MANUAL_ADD, "2.5"), "12.5"),
        ("10", funds(FundsKind.ADJUSTMENT, "-12.25"), "-2.25"),
        ("10", funds(FundsKind.ADJUSTMENT, "0"), "10"),
    ],
)
def test_funds_change_balance(start: str, event: FundsEvent, balance: str) -> None:
    acc, _ = ok(apply_funds(account(start, auto_recharge_enabled=False), event, T0, POLICY))
    assert acc.balance == D(balance)


def test_manual_add_below_trigger_issues_command() -> None:
    _acc, eff = ok(apply_funds(account("-100"), funds(FundsKind.MANUAL_ADD, "5"), T0, POLICY))
    assert [c.command_id for c in eff.recharge_commands] == ["t1:recharge:1"]
    assert eff.recharge_commands[0].balance == D(-95)


# --- balance events -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("acc", "ops", "expected"),
    [
        # Through the trigger line (no alert set, auto-recharge on) and then zero.
        (
            account("20"),
            ["-5", "-5", "-0.01", "-5", "-4.99", "-1"],
            [[], [], ["low_balance"], [], ["exhausted"], []],
        ),
        # One debit crosses both: low_balance first.
        (account("20"), ["-25"], [["low_balance", "exhausted"]]),
        # Back above 0 is restored; back above L is nothing; going down again repeats.
        (
            account("-5"),
            ["+10", "+100", "-100", "-20"],
            [["restored"], [], ["low_balance"], ["exhausted"]],
        ),
        # The alert wins over the trigger.
        (account("20", low_balance_alert=D(15)), ["-5", "-0.01", "-10"], [[], ["low_balance"], []]),
        # No alert, auto-recharge off: no low line at all.
        (
            account("20", auto_recharge_enabled=False),
            ["-19", "-1", "+1"],
            [[], ["exhausted"], ["restored"]],
        ),
        # Exactly 0 is exhausted; leaving it upward is restored.
        (
            account("1", auto_recharge_enabled=False),
            ["-1", "-0", "+0.0001"],
            [["exhausted"], [], ["restored"]],
        ),
    ],
)
def test_balance_event_crossings(acc: Account, ops: list[str], expected: list[list[str]]) -> None:
    got = []
    for op in ops:
        amount = D(op[1:])
        if op[0] == "-":
            acc, eff = charge(acc, str(amount))
        else:
            acc, eff = ok(apply_funds(acc, funds(FundsKind.ADJUSTMENT, str(amount)), T0, POLICY))
        got.append(kinds(eff))
        for event in eff.balance_events:
            assert event.balance == acc.balance
            assert event.at == T0
            assert event.threshold == (0 if event.kind.value != "low_balance" else acc.low_line)
    assert got == expected


def test_settings_moving_alert_above_balance_is_a_crossing() -> None:
    acc = account("50", auto_recharge_enabled=False)
    acc, eff = ok(open_or_update(acc, settings(enabled=False, alert="60"), T0, POLICY))
    assert kinds(eff) == ["low_balance"]
    assert eff.balance_events[0].threshold == D(60)
    acc, eff = ok(open_or_update(acc, settings(enabled=False, alert="70"), T0, POLICY))
    assert kinds(eff) == []  # still low: no repeat


# --- state, ticks, determinism -------------------------------------------------------------


def test_round_trip_is_exact_and_json_safe() -> None:
    acc = with_command("5", low_balance_alert=D("7.50"), recharge_amount=D("50.00"))
    acc, _ = on_tick(acc, T0 + timedelta(minutes=10, microseconds=500), POLICY)
    assert acc.outstanding is not None
    for state in (acc, account("-0.0001"), replace(acc, cap_reported=True, recharge_failing=True)):
        d = state.to_dict()
        text = json.dumps(d, sort_keys=True)
        assert "e+" not in text.lower()
        back = Account.from_dict(json.loads(text))
        assert back == state
        assert back.to_dict() == d  # same text, not just equal values
    assert acc.to_dict()["outstanding"]["due_at"] == "2026-11-22T10:10:30.0005Z"
    assert acc.to_dict()["recharge_amount"] == "50.00"


@pytest.mark.parametrize(
    "broken",
    [
        {"v": 1},
        {"balance": 1.5},
        {"balance": "abc"},
        {"recharge_seq": True},
        {"outstanding": "x"},
        {"closed": None},
        {"closed": [{"command_id": "c", "how": "lost", "amount": "1", "event_id": None}]},
    ],
)
def test_from_dict_rejects_malformed_state(broken: dict[str, object]) -> None:
    with pytest.raises(ValueError, match=r"state|version"):
        Account.from_dict({**account().to_dict(), **broken})


def test_outstanding_round_trip() -> None:
    o = Outstanding("t1:recharge:3", D("1.10"), D("-2"), T0, 2, 1, T0, True)
    assert Outstanding.from_dict(o.to_dict()) == o


def test_needs_tick() -> None:
    assert needs_tick(account("100")) is None
    acc = with_command("5")
    assert needs_tick(acc) == T0 + POLICY.response_timeout
    assert needs_tick(account("5", recharge_failing=True)) is None


def test_tick_with_nothing_to_do() -> None:
    acc = account("100")
    same, eff = on_tick(acc, T0, POLICY)
    assert same is acc
    assert eff == Effects()
    rolled, eff = on_tick(acc, T0 + timedelta(days=1), POLICY)
    assert rolled.cap_day == "2026-11-23"
    assert eff == Effects()


def test_deterministic() -> None:
    def run() -> list[object]:
        acc, eff = ok(open_or_update(None, settings(), T0, POLICY))
        out: list[object] = [acc, eff]
        for i in range(5):
            acc, eff = charge(acc, "3.3", T0 + timedelta(minutes=i))
            out += [acc, eff]
        return out

    assert run() == run()


def test_public_view() -> None:
    view = with_command("5").public_view()
    assert view["balance"] == "5"
    assert view["auto_recharge"] == {
        "enabled": True,
        "recharge_amount": "50",
        "trigger_balance": "10",
    }
    assert view["outstanding_command"]["command_id"] == command_id("t1", 1)


def test_outcome_names() -> None:
    assert set(RECHARGE_OUTCOMES) >= {"issued", "retried", "succeeded", "failed", "given_up"}
    assert len(set(RECHARGE_OUTCOMES)) == len(RECHARGE_OUTCOMES)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"response_timeout": timedelta(0)},
        {"backoff_initial": timedelta(seconds=-1)},
        {"backoff_max": timedelta(seconds=1)},
        {"max_failures": 0},
        {"daily_cap": -1},
    ],
)
def test_bad_policy(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError, match="must be"):
        RechargePolicy(**kwargs)  # type: ignore[arg-type]
