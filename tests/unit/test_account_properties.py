"""Hypothesis properties of the account logic over random sequences of inputs and time."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import event as note_event
from hypothesis import strategies as st

from rating.contracts import AutoRecharge, BalanceEventKind, FundsEvent, FundsKind, TenantSettings
from rating.domain.account import (
    RECHARGE_OUTCOMES,
    Account,
    Effects,
    RechargePolicy,
    Refusal,
    apply_charge,
    apply_funds,
    command_id,
    needs_tick,
    on_tick,
    open_or_update,
)

T0 = datetime(2026, 11, 22, 23, 0, tzinfo=UTC)  # an hour before midnight: cap days roll
POLICY = RechargePolicy(
    response_timeout=timedelta(minutes=10),
    backoff_initial=timedelta(seconds=30),
    backoff_max=timedelta(minutes=4),
    max_failures=3,
    daily_cap=2,
)
CREDITS = (FundsKind.MANUAL_ADD, FundsKind.RECHARGE_SUCCEEDED, FundsKind.ADJUSTMENT)

money = st.decimals(min_value=-200, max_value=200, places=4, allow_nan=False, allow_infinity=False)
positive = st.decimals(min_value=0, max_value=200, places=4, allow_nan=False, allow_infinity=False)

settings_op = st.tuples(
    st.just("settings"),
    st.booleans(),  # enabled
    st.decimals(min_value="0.01", max_value=100, places=2),  # recharge amount
    st.decimals(min_value=-20, max_value=60, places=2),  # trigger
    st.none() | st.decimals(min_value=-20, max_value=80, places=2),  # alert
    st.sampled_from(["USD", "USD", "USD", "EUR"]),
)
charge_op = st.tuples(st.just("charge"), positive)
funds_op = st.tuples(
    st.just("funds"),
    st.sampled_from(list(FundsKind)),
    money,
    st.sampled_from(["current", "current", "current", "previous", "none", "bogus"]),
    st.sampled_from(["USD", "USD", "USD", "EUR"]),
)
# Several due ticks in a row walk a command through timeouts, retries and giving up.
# Billing answering the outstanding command as billing would: success for its amount.
settle_op = st.tuples(st.just("settle"))
tick_op = st.tuples(st.just("tick_due"), st.integers(min_value=1, max_value=6))
advance_op = st.tuples(st.just("advance"), st.integers(min_value=0, max_value=3 * 3600))
# Repeats weight the mix: settings changes reset failures, so they must be rarer than
# failures and ticks, or giving up and the daily cap would hardly ever be reached.
ops = st.lists(
    st.one_of(
        charge_op,
        charge_op,
        funds_op,
        funds_op,
        settle_op,
        tick_op,
        tick_op,
        advance_op,
        settings_op,
    ),
    max_size=80,
)


def tenant_settings(op: tuple[Any, ...]) -> TenantSettings:
    _, enabled, amount, trigger, alert, currency = op
    return TenantSettings(
        tenant_id="t1",
        currency=currency,
        auto_recharge=AutoRecharge(
            enabled=enabled, recharge_amount=amount, trigger_balance=trigger
        ),
        low_balance_alert=alert,
    )


@dataclass
class Model:
    """What the properties compare the account against, built from inputs and effects only."""

    balance: Decimal = Decimal(0)
    issued: list[str] = field(default_factory=list)  # ids of attempt-1 commands, in order
    zero_line: list[str] = field(default_factory=list)  # exhausted/restored, in order


def assert_no_float(value: object) -> None:
    assert not isinstance(value, float)
    if isinstance(value, dict):
        for item in value.values():
            assert_no_float(item)


def check(prev: Account | None, acc: Account, eff: Effects, op: tuple[Any, ...], m: Model) -> None:
    # Commands: at most one per step, a new one only when none is outstanding (or the one that
    # was outstanding was just resolved by its success), ids strictly following recharge_seq.
    assert len(eff.recharge_commands) <= 1
    for cmd in eff.recharge_commands:
        assert cmd.currency == acc.currency
        assert cmd.amount > 0
        assert cmd.balance == acc.balance
        if cmd.attempt == 1:
            if prev is not None and prev.outstanding is not None:
                assert op[0] == "funds"
                assert op[1] is FundsKind.RECHARGE_SUCCEEDED
                assert op[3] == "current"
            m.issued.append(cmd.command_id)
            assert cmd.command_id == command_id("t1", len(m.issued))
            assert cmd.command_id == command_id("t1", acc.recharge_seq)
        else:
            assert prev is not None
            assert prev.outstanding is not None
            assert cmd.command_id == prev.outstanding.command_id
            assert cmd.attempt == prev.outstanding.attempt + 1
    assert acc.recharge_seq == len(m.issued)
    if acc.outstanding is not None:
        assert acc.outstanding.command_id == command_id("t1", acc.recharge_seq)
        assert needs_tick(acc) == acc.outstanding.due_at
        assert acc.outstanding.failures < POLICY.max_failures
    if acc.recharge_failing:
        assert acc.outstanding is None
    # Nothing below the trigger is left without a command, except by the daily cap.
    if (
        acc.auto_recharge_enabled
        and not acc.recharge_failing
        and acc.balance < acc.trigger_balance
        and acc.outstanding is None
    ):
        assert acc.recharges_today >= POLICY.daily_cap
        assert needs_tick(acc) is not None
    assert acc.recharges_today <= POLICY.daily_cap
    assert set(eff.recharge_outcomes) <= set(RECHARGE_OUTCOMES)
    for outcome in eff.recharge_outcomes:
        note_event(outcome)  # --hypothesis-show-statistics shows which paths were exercised

    # Balance events: crossings only, exhausted and restored strictly alternating.
    for event in eff.balance_events:
        note_event(event.kind.value)
        assert event.balance == acc.balance
        if event.kind is BalanceEventKind.EXHAUSTED:
            assert acc.balance <= 0
            assert m.zero_line[-1:] != ["exhausted"]
            m.zero_line.append("exhausted")
        elif event.kind is BalanceEventKind.RESTORED:
            assert acc.balance > 0
            assert m.zero_line[-1:] == ["exhausted"]
            m.zero_line.append("restored")
        elif event.kind is BalanceEventKind.LOW_BALANCE:
            assert acc.low_line is not None
            assert acc.balance < acc.low_line == event.threshold
    assert m.zero_line[-1] == ("exhausted" if acc.balance <= 0 else "restored")

    # Exact money and an exact, float-free round trip.
    assert acc.balance == m.balance
    assert isinstance(acc.balance, Decimal)
    state = acc.to_dict()
    assert_no_float(state)
    assert Account.from_dict(json.loads(json.dumps(state))) == acc


def check_refusal(refusal: Refusal, acc: Account, cmd: str | None) -> None:
    assert refusal.reason in {"currency_mismatch", "schema", "command_not_outstanding"}
    if refusal.reason == "command_not_outstanding":
        # One command, one recharge: only the outstanding one may be answered.
        assert acc.outstanding is None or cmd != acc.outstanding.command_id


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(first=settings_op, steps=ops)
def test_account_invariants(first: tuple[Any, ...], steps: list[tuple[Any, ...]]) -> None:
    now = T0
    m = Model()
    result = open_or_update(None, tenant_settings(first), now, POLICY)
    assert not isinstance(result, Refusal)
    acc, eff = result
    check(None, acc, eff, ("settings",), m)
    for step, drawn in enumerate(steps):
        op = drawn
        prev = acc
        kind = op[0]
        if kind == "advance":
            now += timedelta(seconds=op[1])
            continue
        if kind == "tick_due":
            for _ in range(op[1]):
                prev = acc
                due = needs_tick(acc)
                now = max(now, due) if due is not None else now
                acc, eff = on_tick(acc, now, POLICY)
                check(prev, acc, eff, op, m)
            continue
        if kind == "charge":
            acc, eff = apply_charge(acc, op[1], now, POLICY)
            m.balance -= op[1]
        elif kind == "settings":
            result = open_or_update(acc, tenant_settings(op), now, POLICY)
            if isinstance(result, Refusal):
                assert result.reason == "currency_mismatch"
                assert op[5] != acc.currency
                continue
            acc, eff = result
        else:
            if kind == "settle":
                if acc.outstanding is None:
                    continue
                amount = acc.outstanding.amount
                op = ("funds", FundsKind.RECHARGE_SUCCEEDED, amount, "current", acc.currency)
            _, funds_kind, amount, target, currency = op
            cmd = {
                "current": acc.outstanding.command_id if acc.outstanding else None,
                "previous": command_id("t1", acc.recharge_seq - 1),
                "none": None,
                "bogus": "someone-else",
            }[target]
            event = FundsEvent(
                event_id=f"e{step}",
                tenant_id="t1",
                kind=funds_kind,
                amount=amount,
                currency=currency,
                command_id=cmd,
            )
            result = apply_funds(acc, event, now, POLICY)
            if isinstance(result, Refusal):
                check_refusal(result, acc, cmd)
                continue
            acc, eff = result
            assert eff.funds_outcome in {"applied", "ignored"}
            if funds_kind in CREDITS:
                m.balance += amount
        check(prev, acc, eff, op, m)


@given(steps=ops)
def test_same_inputs_same_outputs(steps: list[tuple[Any, ...]]) -> None:
    """Replaying the same inputs at the same times yields the same states and effects."""

    def run() -> list[object]:
        now = T0
        first = open_or_update(
            None, tenant_settings(("s", True, Decimal(25), Decimal(10), None, "USD")), now, POLICY
        )
        assert not isinstance(first, Refusal)
        acc, eff = first
        trace: list[object] = [acc, eff]
        for op in steps:
            if op[0] == "advance":
                now += timedelta(seconds=op[1])
            elif op[0] == "charge":
                acc, eff = apply_charge(acc, op[1], now, POLICY)
                trace += [acc, eff]
            elif op[0] == "tick_due":
                acc, eff = on_tick(acc, now, POLICY)
                trace += [acc, eff]
        return trace

    assert run() == run()
