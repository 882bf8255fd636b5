"""Funds and CDRs that arrive before their tenant's settings; tenant isolation of state keys;
one credit per recharge command. Pure: a dict or a logging Changelog, an injected clock."""

from __future__ import annotations

import json
from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest

from rating.contracts import Charge, Rejection, RejectReason
from rating.ingest import Envelope, Kind
from rating.keys import charge_key
from rating.ledger import HoldPolicy, Ledger, Result
from rating.usage import usage_report
from tests.unit.builders import (
    BOOK,
    HORIZON,
    POLICY,
    T0,
    Changelog,
    Feed,
    balance,
    cdr_doc,
    envelope,
    expected_charge,
    funds_doc,
    merge,
    only,
    roles,
    run_batches,
    settings_doc,
)

HOLD = HoldPolicy(seconds=900, max_per_tenant=5, max_per_partition=8)
HOLD_END = T0 + timedelta(seconds=HOLD.seconds)


def hold_ledger(store: Any = None, hold: HoldPolicy = HOLD) -> Ledger:
    return Ledger({} if store is None else store, lambda: BOOK, POLICY, HORIZON, hold)


def recovered(store: Changelog, hold: HoldPolicy = HOLD) -> Ledger:
    """What a worker does after a crash or rebalance: recover the table, rebuild the index."""
    ledger = hold_ledger(store, hold)
    ledger.rebuild_index(0, list(store.items()))
    return ledger


def charges_of(result: Result) -> list[Charge]:
    return [Charge.model_validate_json(o.value) for o in result.outputs if o.role == "charges"]


# --- holding ----------------------------------------------------------------------------------


def test_funds_before_settings_are_held_and_credited_when_the_settings_arrive() -> None:
    ledger = hold_ledger()
    feed = Feed(ledger)
    held = feed.send("funds", funds_doc("f1", amount="25.50"))[2]
    assert (held.outcome, held.outputs) == ("held", [])
    assert ledger.account("t1") is None
    assert ledger.held_count("t1") == 1
    result = feed.send("settings", settings_doc())[2]
    assert result.outcome == "settings"
    assert [p.outcome for p in result.parts] == ["funds"]
    assert "rejected" not in roles(result)
    assert balance(ledger) == Decimal("25.50")
    assert ledger.held_count("t1") == 0
    assert not any(k.startswith("h/") for k in ledger.store)


def test_cdrs_and_funds_held_in_arrival_order_are_applied_in_that_order() -> None:
    ledger = hold_ledger()
    feed = Feed(ledger)
    feed.send("cdr", cdr_doc("c1", duration=120))
    feed.send("funds", funds_doc("f1", amount="1.00"))
    feed.send("cdr", cdr_doc("c1", duration=120))  # the platform published it twice
    result = feed.send("settings", settings_doc())[2]
    assert [p.outcome for p in result.parts] == ["charged", "funds", "duplicate"]
    (charge,) = charges_of(result)
    cost = expected_charge(cdr_doc("c1", duration=120)).amount
    assert charge.balance_after == -cost  # debited before the credit: arrival order
    assert balance(ledger) == Decimal("1.00") - cost
    assert charge_key("t1", "c1") in ledger.store


def test_held_cdrs_on_one_usage_row_are_all_counted() -> None:
    ledger = hold_ledger()
    feed = Feed(ledger)
    docs = [cdr_doc(f"c{n}", duration=60 * (n + 1)) for n in range(3)]
    for doc in docs:
        feed.send("cdr", doc)
    feed.send("settings", settings_doc())
    day = (T0 - timedelta(hours=1)).date()
    totals = usage_report(ledger.store, "t1", "USD", day, day)["totals"]
    assert totals["calls"] == 3
    assert Decimal(totals["amount"]) == sum(expected_charge(d).amount for d in docs)


def test_a_redelivered_held_record_is_held_once() -> None:
    ledger = hold_ledger()
    env = envelope("funds", funds_doc("f1"), 100)
    assert ledger.handle(env, 0, 3, T0).outcome == "held"
    assert ledger.handle(env, 0, 3, T0).outcome == "held_again"
    assert ledger.held_count("t1") == 1


def test_past_the_per_tenant_bound_a_message_is_rejected_at_once() -> None:
    ledger = hold_ledger()
    feed = Feed(ledger)
    for n in range(HOLD.max_per_tenant):
        assert feed.send("funds", funds_doc(f"f{n}"))[2].outcome == "held"
    result = feed.send("funds", funds_doc("one-too-many"))[2]
    assert result.reason is RejectReason.UNKNOWN_TENANT
    rej = Rejection.model_validate_json(only(result, "rejected"))
    assert "hold is full" in rej.detail
    assert f"max {HOLD.max_per_tenant}" in rej.detail


def test_past_the_per_partition_bound_a_message_is_rejected_at_once() -> None:
    ledger = hold_ledger()
    feed = Feed(ledger)
    for n in range(HOLD.max_per_partition):
        feed.send("funds", funds_doc("f", tenant=f"t{n}"))
    result = feed.send("funds", funds_doc("f", tenant="late"))[2]
    assert result.reason is RejectReason.UNKNOWN_TENANT
    assert "in ledger partition 0" in Rejection.model_validate_json(only(result, "rejected")).detail
    assert ledger.held_total({0}) == HOLD.max_per_partition


def test_held_messages_are_rejected_after_the_hold_and_not_applied_later() -> None:
    ledger = hold_ledger()
    feed = Feed(ledger)
    feed.send("funds", funds_doc("early", amount="5"))
    feed.send("funds", funds_doc("later", amount="7"), now=T0 + timedelta(seconds=600))
    first = feed.tick(HOLD_END)
    assert [json.loads(o.value)["offset"] for o in first.outputs] == [1000]  # the early one
    assert ledger.held_count("t1") == 1
    feed.send("settings", settings_doc(), now=HOLD_END + timedelta(seconds=1))
    assert balance(ledger) == Decimal(7)  # only the one still held
    assert ledger.held_total({0}) == 0


def test_a_replayed_tick_republishes_the_rejections_it_made() -> None:
    store = Changelog()
    ledger = hold_ledger(store)
    ledger.handle(envelope("cdr", cdr_doc("c1", tenant="ghost"), 50), 0, 0, T0)
    first = ledger.tick(0, 1, HOLD_END)
    assert roles(first) == ["rejected"]
    # The worker dies after the changelog write, before publishing: the tick comes again.
    again = recovered(store.crashed(len(store.log))).tick(0, 1, HOLD_END)
    assert again.outputs == first.outputs
    # A later tick does not publish it once more.
    later = recovered(store.crashed(len(store.log))).tick(0, 2, HOLD_END + timedelta(seconds=5))
    assert later.outputs == []


def test_held_rejections_are_kept_only_until_published() -> None:
    # The rejecting tick deletes the held key and keeps the rejection in its outbox entry,
    # which its publication deletes (version 2 kept it in the held key for a day).
    ledger = hold_ledger()
    ledger.handle(envelope("cdr", cdr_doc("c1", tenant="ghost"), 50), 0, 0, T0)
    ledger.tick(0, 1, HOLD_END)
    assert not any(k.startswith("h/") for k in ledger.store)
    assert set(ledger.store) == {"o/ghost/1"}
    ledger.published(0, 1)
    assert ledger.store == {}


# --- crash safety of the hold ---------------------------------------------------------------

Message = tuple[Kind, dict[str, Any]]


def onboarding(busy: bool = False) -> list[Envelope]:
    """Two tenants whose first funds (and a CDR) reach the ledger before their settings.

    ``busy``: t1's CDR "c" comes right after its settings, so a batch holding both applies
    the held messages (deleting them) and then rewrites the account."""
    msgs: list[Message] = [
        ("funds", funds_doc("f1", "t1", amount="20.00")),
        ("cdr", cdr_doc("a", "t1", duration=61)),
        ("funds", funds_doc("g1", "t2", amount="3.00")),
        ("cdr", cdr_doc("a", "t1", duration=61)),  # republished while held
        ("settings", settings_doc("t1")),
        ("funds", funds_doc("f1", "t1", amount="20.00")),  # billing resends
        ("cdr", cdr_doc("b", "t2", duration=31, destination="+447700900123")),
        ("settings", settings_doc("t2")),
        ("cdr", cdr_doc("c", "t1", duration=600)),
    ]
    if busy:
        msgs.insert(5, msgs.pop())
    return [envelope(kind, doc, 7000 + i) for i, (kind, doc) in enumerate(msgs)]


EXPECTED = {
    "t1": Decimal("20.00")
    - expected_charge(cdr_doc("a", "t1", duration=61)).amount
    - expected_charge(cdr_doc("c", "t1", duration=600)).amount,
    "t2": Decimal("3.00")
    - expected_charge(cdr_doc("b", "t2", duration=31, destination="+447700900123")).amount,
}


def deliver(ledger: Ledger, messages: list[Envelope], start: int) -> dict[str, set[str]]:
    seen: dict[str, set[str]] = {}
    for offset in range(start, len(messages)):
        result = ledger.handle(messages[offset], 0, offset, T0)
        assert "rejected" not in roles(result), result
        for charge in charges_of(result):
            content = charge.model_dump(mode="json", exclude={"rated_at"})
            seen.setdefault(charge.cdr_id, set()).add(json.dumps(content, sort_keys=True))
    return seen


CHARGED = {  # what usage must add up to (held CDRs included), to the last decimal
    "t1": expected_charge(cdr_doc("a", "t1", duration=61)).amount
    + expected_charge(cdr_doc("c", "t1", duration=600)).amount,
    "t2": expected_charge(cdr_doc("b", "t2", duration=31, destination="+447700900123")).amount,
}


def check(ledger: Ledger, seen: dict[str, set[str]]) -> None:
    for tenant, expected in EXPECTED.items():
        assert balance(ledger, tenant) == expected, tenant
        day = (T0 - timedelta(hours=1)).date()
        totals = usage_report(ledger.store, tenant, "USD", day, day)["totals"]
        assert Decimal(totals["amount"]) == CHARGED[tenant], tenant
    assert ledger.held_total({0}) == 0
    for cdr_id, contents in seen.items():
        assert len(contents) == 1, (cdr_id, contents)  # republished only with the same content


def test_every_crash_prefix_of_an_onboarding_then_full_redelivery_applies_everything_once() -> None:
    messages = onboarding()
    original = Changelog()
    seen = deliver(hold_ledger(original), messages, 0)
    check(hold_ledger(original), seen)
    for keep in range(len(original.log) + 1):
        store = original.crashed(keep)
        replayed = deliver(recovered(store), messages, 0)
        for cdr_id, contents in seen.items():
            replayed.setdefault(cdr_id, set()).update(contents)
        check(recovered(store), replayed)


def test_every_crash_prefix_then_redelivery_from_the_commit_point_applies_everything_once() -> None:
    messages = onboarding()
    original = Changelog()
    ledger = hold_ledger(original)
    ends = []
    for offset, env in enumerate(messages):
        ledger.handle(env, 0, offset, T0)
        ends.append(len(original.log))
    for keep in range(len(original.log) + 1):
        commit = next((i for i, end in enumerate(ends) if end > keep), len(ends))
        store = original.crashed(keep)
        deliver(recovered(store), messages, commit)
        check(recovered(store), {})


@pytest.mark.parametrize("size", [1, 4, 9])
def test_every_crash_prefix_of_an_onboarding_around_publication_publishes_every_charge(
    size: int,
) -> None:
    # The held charges are published by the creating settings record's batch: a crash
    # before, during or after its outbox deletes still publishes each one, same bytes.
    check_onboarding_batches(size, coalesce=False)


@pytest.mark.parametrize("busy", [False, True], ids=["quiet", "busy"])
@pytest.mark.parametrize("size", [1, 4, 6, 9])
def test_every_crash_prefix_of_an_onboarding_in_coalesced_batches_applies_everything_once(
    size: int, busy: bool
) -> None:
    # Coalesced (rating.coalescing). Busy, batches of 4: the held messages came in the first
    # batch; in the second the settings record applies and deletes them, and the next CDR
    # rewrites the account. Were that account write moved past the deletes, a prefix would
    # keep the deletes without the account, and the held funds and CDR would be gone.
    check_onboarding_batches(size, coalesce=True, busy=busy)


@pytest.mark.parametrize("busy", [False, True], ids=["quiet", "busy"])
@pytest.mark.parametrize("group", [2, 3, 5, 9])
@pytest.mark.parametrize("size", [1, 2])
def test_every_crash_prefix_of_an_onboarding_in_records_of_many_messages_applies_it_once(
    size: int, group: int, busy: bool
) -> None:
    # Ingest's records of many messages: a tenant's funds and CDRs held and its settings in
    # one record (group 9: the whole onboarding), or held in one and applied in the next.
    check_onboarding_batches(size, coalesce=True, busy=busy, group=group)


def check_onboarding_batches(size: int, coalesce: bool, busy: bool = False, group: int = 1) -> None:
    messages = onboarding(busy)
    original = Changelog(coalesce=coalesce)
    batches = run_batches(hold_ledger(original), messages, 0, size, original, group=group)
    records = -(-len(messages) // group)
    for keep in range(len(original.log) + 1):
        store = original.crashed(keep)
        commit = next((b.start for b in batches if b.cleared > keep), records)
        replay = run_batches(recovered(store), messages, commit, size, store, group=group)
        check(recovered(store), {})
        surely = merge({}, [b for b in batches if b.cleared > b.durable and keep > b.durable])
        assert set(merge(surely, replay)) == {("t1", "a"), ("t1", "c"), ("t2", "b")}, keep
        perhaps = merge({}, [b for b in batches if keep >= b.durable])
        assert all(len(v) == 1 for v in merge(perhaps, replay).values()), keep
        assert not any(k.startswith("o/") for k in store), keep


def test_a_replayed_creating_settings_record_republishes_the_held_charges() -> None:
    store = Changelog()
    ledger = hold_ledger(store)
    ledger.handle(envelope("cdr", cdr_doc("c1"), 1), 0, 0, T0)
    settings = envelope("settings", settings_doc(), 2)
    first = ledger.handle(settings, 0, 1, T0)
    assert len(charges_of(first)) == 1
    # Crash after the changelog, before publishing; the CDR's own record was committed long
    # ago, so only the settings record comes again: its outputs must include the Charge.
    again = recovered(store.crashed(len(store.log))).handle(settings, 0, 1, T0)
    assert again.outcome == "replayed"
    assert again.outputs == first.outputs


# --- tenant isolation ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("a", "b"),
    [
        (("acme", "eu/x"), ("acme/eu", "x")),
        (("a%2Fb", "x"), ("a/b", "x")),
        (("\u00e6/\u00f8", "%"), ("\u00e6", "\u00f8/%")),
    ],
)
def test_tenants_whose_ids_share_a_slash_joined_prefix_are_charged_apart(
    a: tuple[str, str], b: tuple[str, str]
) -> None:
    ledger = hold_ledger()
    feed = Feed(ledger)
    for tenant, _ in (a, b):
        feed.send("settings", settings_doc(tenant))
    first = feed.send("cdr", cdr_doc(a[1], a[0], duration=60))[2]
    second = feed.send("cdr", cdr_doc(b[1], b[0], duration=600))[2]
    assert (first.outcome, second.outcome) == ("charged", "charged")
    assert [o.key for o in second.outputs if o.role == "charges"] == [b[0].encode()]
    assert balance(ledger, a[0]) == -expected_charge(cdr_doc(a[1], a[0], duration=60)).amount
    assert balance(ledger, b[0]) == -expected_charge(cdr_doc(b[1], b[0], duration=600)).amount


# --- one credit per recharge command --------------------------------------------------------


def success(event_id: str, command: str, amount: str = "25", tenant: str = "t1") -> dict[str, Any]:
    return funds_doc(event_id, tenant, kind="recharge_succeeded", amount=amount, command_id=command)


def test_a_resent_or_foreign_recharge_result_is_rejected_and_credits_nothing() -> None:
    ledger = hold_ledger()
    feed = Feed(ledger)
    feed.send("settings", settings_doc("t1", enabled=True, amount="25", trigger="10"))
    feed.send("settings", settings_doc("t2", enabled=True, amount="25", trigger="10"))
    paid = feed.send("funds", success("pay-1", "t1:recharge:1"))[2]
    assert paid.outcome == "funds"
    assert balance(ledger) == Decimal(25)
    cases = {
        "pay-2": (success("pay-2", "t1:recharge:1"), "already resolved by event 'pay-1'"),
        "fail-late": (
            funds_doc("fail-late", kind="recharge_failed", amount="25", command_id="t1:recharge:1"),
            "already resolved by event 'pay-1'",
        ),
        "never": (success("never", "t1:recharge:7"), "never issued"),
        "foreign": (success("foreign", "t2:recharge:1"), "never issued"),
    }
    for doc, words in cases.values():
        result = feed.send("funds", doc)[2]
        assert result.reason is RejectReason.COMMAND_NOT_OUTSTANDING
        rej = Rejection.model_validate_json(only(result, "rejected"))
        assert words in rej.detail
        assert json.loads(rej.payload)["event_id"] == doc["event_id"]  # the original bytes
    assert balance(ledger) == Decimal(25)
    assert balance(ledger, "t2") == 0
    assert not any(k.endswith(("/pay-2", "/never", "/foreign")) for k in ledger.store)
