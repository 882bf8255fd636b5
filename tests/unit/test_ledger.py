"""The per-tenant ledger: charging, dedup, replay, crash recovery, ticks and marker expiry.

Pure: the store is a dict (or a dict that logs its writes, to model the changelog), the clock
is injected, and Envelopes come from ``ingest.validate`` exactly as in the worker.
"""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rating.contracts import (
    BalanceEvent,
    BalanceEventKind,
    Charge,
    RechargeCommand,
    Rejection,
    RejectReason,
)
from rating.domain.account import Account
from rating.domain.ratecard import RateBook
from rating.ingest import Envelope, Source, validate
from rating.keys import tenant_of
from rating.ledger import EXPIRY_GRACE, HoldPolicy, Ledger, Output, Result
from tests.unit.builders import (
    BOOK,
    HORIZON,
    POLICY,
    T0,
    TOPICS,
    Changelog,
    Feed,
    Scenario,
    balance,
    cdr_doc,
    envelope,
    expected_charge,
    fixed_scenario,
    funded,
    funds_doc,
    merge,
    new_ledger,
    only,
    opened,
    roles,
    run,
    run_batches,
    scenarios,
    settings_doc,
)

# --- message builders -----------------------------------------------------------------------


# --- settings and unknown tenants -----------------------------------------------------------


def test_settings_create_account_with_zero_balance_and_emit_exhausted() -> None:
    ledger = new_ledger()
    result = Feed(ledger).send("settings", settings_doc(currency="EUR"))[2]
    assert result.outcome == "settings"
    account = ledger.account("t1")
    assert account is not None
    assert (account.balance, account.currency, account.plan) == (Decimal(0), "EUR", "standard")
    assert roles(result) == ["balance"]
    event = BalanceEvent.model_validate_json(only(result, "balance"))
    assert event.kind is BalanceEventKind.EXHAUSTED
    assert event.tenant_id == "t1"
    assert all(o.key == b"t1" for o in result.outputs)


def test_identical_settings_again_changes_nothing_and_emits_nothing() -> None:
    ledger, feed = opened()
    before = ledger.account("t1")
    result = feed.send("settings", settings_doc())[2]
    assert result.outcome == "settings"
    assert result.outputs == []
    assert ledger.account("t1") == before


HOLD_END = T0 + timedelta(seconds=HoldPolicy().seconds)


def test_cdr_of_unknown_tenant_is_held_then_rejected_with_original_payload_and_coordinates() -> (
    None
):
    ledger = new_ledger()
    doc = cdr_doc("c1", tenant="ghost")
    env = envelope("cdr", doc, src_offset=77, partition=0)
    held = ledger.handle(env, 0, 5, T0)
    assert held.outcome == "held"
    assert held.outputs == []
    assert ledger.held_count("ghost") == 1
    assert ledger.tick(0, 6, HOLD_END - timedelta(seconds=1)).outputs == []
    result = ledger.tick(0, 7, HOLD_END)
    assert roles(result) == ["rejected"]
    assert [p.reason for p in result.parts] == [RejectReason.UNKNOWN_TENANT]
    assert result.outputs[0].key == b"ghost"
    rej = Rejection.model_validate_json(only(result, "rejected"))
    assert rej.reason is RejectReason.UNKNOWN_TENANT
    assert "ghost" in rej.detail
    assert "RATING_UNKNOWN_TENANT_HOLD_SECONDS" in rej.detail
    assert rej.payload == env.payload  # the original text, byte for byte
    assert (rej.source_topic, rej.partition, rej.offset, rej.key) == (
        "cdr.audio-conferencing",
        0,
        77,  # the SOURCE offset, not the ledger offset
        "ghost",
    )
    assert rej.rejected_at == HOLD_END
    assert ledger.held_count("ghost") == 0
    assert ledger.account("ghost") is None


def held_then_rejected(env: Envelope) -> Result:
    ledger = new_ledger()
    assert ledger.handle(env, 0, 0, T0).outcome == "held"
    return ledger.tick(0, 1, HOLD_END)


def test_ledger_rejection_of_keyless_record_has_null_key_in_the_body() -> None:
    doc = cdr_doc("c1", tenant="ghost")
    env = validate("cdr", Source(TOPICS["cdr"], 0, 7, None), json.dumps(doc).encode(), T0)
    assert isinstance(env, Envelope)
    rej = Rejection.model_validate_json(only(held_then_rejected(env), "rejected"))
    assert rej.key is None


def test_ledger_rejection_of_keyless_record_is_published_with_the_original_null_key() -> None:
    doc = cdr_doc("c1", tenant="ghost")
    env = validate("cdr", Source(TOPICS["cdr"], 0, 7, None), json.dumps(doc).encode(), T0)
    assert isinstance(env, Envelope)
    assert held_then_rejected(env).outputs[0].key is None


def test_funds_of_unknown_tenant_is_held_then_rejected() -> None:
    result = held_then_rejected(envelope("funds", funds_doc("e1", "ghost"), 1))
    assert [p.reason for p in result.parts] == [RejectReason.UNKNOWN_TENANT]


# --- charging -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "doc",
    [
        pytest.param(cdr_doc("c1", duration=90), id="us-2-minutes"),
        pytest.param(cdr_doc("c1", duration=31, destination="+447700900123"), id="uk-36s"),
        pytest.param(
            cdr_doc("c1", duration=3, product="tollfree_inbound"), id="tollfree-minimum-and-fee"
        ),
    ],
)
def test_cdr_is_charged_exactly_what_rate_cdr_computes(doc: dict[str, Any]) -> None:
    ledger, feed = funded("10.00")
    result = feed.send("cdr", doc)[2]
    assert result.outcome == "charged"
    rated = expected_charge(doc)
    assert rated.amount > 0
    charge = Charge.model_validate_json(only(result, "charges"))
    assert charge.model_copy(update={"balance_after": None}) == rated
    assert charge.balance_after == Decimal("10.00") - rated.amount
    assert balance(ledger) == Decimal("10.00") - rated.amount
    assert result.charge is not None
    assert Charge(**result.charge._asdict()) == charge  # the ledger's fields validate
    assert result.call_end == rated.call_start + timedelta(seconds=rated.duration_seconds)
    assert result.outputs[0].key == b"t1"


def test_charge_output_is_first_and_crossing_events_follow() -> None:
    ledger, feed = funded("0.01")
    result = feed.send("cdr", cdr_doc("c1", duration=600))[2]
    assert roles(result) == ["charges", "balance"]
    event = BalanceEvent.model_validate_json(result.outputs[1].value)
    assert event.kind is BalanceEventKind.EXHAUSTED
    assert balance(ledger) < 0  # the call happened: the balance may go negative


def test_zero_duration_cdr_emits_a_zero_charge_and_is_still_deduplicated() -> None:
    ledger, feed = funded("1.00")
    doc = cdr_doc("c0", duration=0)
    first = feed.send("cdr", doc)[2]
    assert first.outcome == "charged"
    assert Charge.model_validate_json(only(first, "charges")).amount == 0
    assert balance(ledger) == Decimal("1.00")
    assert feed.send("cdr", doc)[2].outcome == "duplicate"


def test_republished_cdr_is_a_duplicate_without_output_or_debit() -> None:
    ledger, feed = funded()
    doc = cdr_doc("c1")
    env1, _, first = feed.send("cdr", doc)
    after_first = copy.deepcopy(ledger.store)
    env2, _, again = feed.send("cdr", doc)  # same cdr_id, new source and ledger offset
    assert env1.source.ref != env2.source.ref
    assert again.outcome == "duplicate"
    assert again.outputs == []
    assert again.reason is None
    assert first.charge is not None
    assert balance(ledger) == Decimal("10.00") - first.charge.amount
    assert ledger.store == after_first


def test_replayed_ledger_message_reemits_the_same_bytes_without_debit() -> None:
    ledger, feed = funded()
    env, offset, first = feed.send("cdr", cdr_doc("c1"))
    feed.send("cdr", cdr_doc("c2"))  # later work on the same account
    bal = balance(ledger)
    # Redelivery of the same ledger record, later (rated_at would differ if re-rated).
    again = ledger.handle(env, 0, offset, T0 + timedelta(minutes=5))
    assert again.outcome == "replayed"
    assert again.outputs == first.outputs  # identical bytes, role and key
    assert balance(ledger) == bal


def test_replayed_cdr_reemits_its_recharge_command_too() -> None:
    ledger, feed = opened(enabled=True, amount="25", trigger="5")
    feed.send(
        "funds", funds_doc("e1", kind="recharge_succeeded", amount="25", command_id="t1:recharge:1")
    )
    env, offset, first = feed.send("cdr", cdr_doc("c1", duration=60 * 900))
    assert roles(first) == ["charges", "recharge", "balance"]
    again = ledger.handle(env, 0, offset, T0 + timedelta(hours=1))
    assert again.outcome == "replayed"
    assert again.outputs == first.outputs


# --- crash recovery -------------------------------------------------------------------------


def test_crash_with_marker_durable_and_account_lost_is_repaired_once() -> None:
    ledger, feed = funded()
    before = copy.deepcopy(ledger.store)
    env, offset, first = feed.send("cdr", cdr_doc("c1"))
    after = ledger.store
    marker_keys = [k for k in after if k.startswith("c/")]
    assert marker_keys == ["c/t1/c1"]
    assert after["c/t1/c1"] == {"lo": offset, "amt": "0.0480", "exp": after["c/t1/c1"]["exp"]}
    # The changelog kept the outbox entry and the marker, not the account write that followed.
    crashed = copy.deepcopy(before)
    for key in (f"o/t1/{offset}", "c/t1/c1"):
        crashed[key] = copy.deepcopy(after[key])
    recovered = new_ledger(crashed)
    assert balance(recovered) == Decimal("10.00")
    # Redelivered with its own timestamp (the ledger's `now`), it is charged afresh against
    # the same pre-state: the same Charge and effects, byte for byte, without stored outputs.
    result = recovered.handle(env, 0, offset, T0)
    assert result.outcome == "repaired"
    assert result.outputs == first.outputs
    assert first.charge is not None
    assert balance(recovered) == Decimal("10.00") - first.charge.amount
    assert crashed["a/t1"]["lo"] == offset
    # Once repaired, it is an ordinary replay: no second debit.
    assert recovered.handle(env, 0, offset, T0).outcome == "replayed"
    assert balance(recovered) == Decimal("10.00") - first.charge.amount


def test_crash_repair_also_happens_via_a_republished_duplicate() -> None:
    # Even if the first thing to arrive is a re-publication, the debit is finished, once: a
    # marker ahead of the account is ignored, so the re-publication charges the CDR.
    ledger, feed = funded()
    before = copy.deepcopy(ledger.store)
    _, _, first = feed.send("cdr", cdr_doc("c1"))
    crashed = {**copy.deepcopy(before), "c/t1/c1": copy.deepcopy(ledger.store["c/t1/c1"])}
    recovered = new_ledger(crashed)
    dup = envelope("cdr", cdr_doc("c1"), src_offset=5000)
    assert recovered.handle(dup, 0, 99, T0).outcome == "charged"
    assert first.charge is not None
    assert balance(recovered) == Decimal("10.00") - first.charge.amount
    assert recovered.handle(dup, 0, 100, T0).outcome == "duplicate"


def test_crash_with_nothing_durable_charges_normally_once() -> None:
    ledger, feed = funded()
    before = copy.deepcopy(ledger.store)
    env, offset, first = feed.send("cdr", cdr_doc("c1"))
    recovered = new_ledger(before)
    result = recovered.handle(env, 0, offset, T0)
    assert result.outcome == "charged"
    assert result.outputs == first.outputs  # same now: same content
    assert first.charge is not None
    assert balance(recovered) == Decimal("10.00") - first.charge.amount
    assert recovered.handle(env, 0, offset, T0).outcome == "replayed"


def test_recharged_after_total_loss_keeps_content_but_not_rated_at() -> None:
    # Known limit (not of the ledger alone): when neither write survived, the redelivered CDR
    # is rated afresh with the `now` it is given. Only a `now` that is stable per ledger
    # record (e.g. the record timestamp) makes the re-published Charge byte-identical.
    ledger, feed = funded()
    before = copy.deepcopy(ledger.store)
    env, offset, first = feed.send("cdr", cdr_doc("c1"))
    later = T0 + timedelta(hours=1)
    again = new_ledger(before).handle(env, 0, offset, later)
    assert first.charge is not None
    assert again.charge is not None
    assert again.charge.rated_at == later
    assert again.charge._replace(rated_at=T0) == first.charge


def test_funds_crash_with_marker_durable_and_account_lost_credits_once() -> None:
    ledger, feed = opened()
    before = copy.deepcopy(ledger.store)
    env, offset, _ = feed.send("funds", funds_doc("e1", amount="7"))
    crashed = {**copy.deepcopy(before), "f/t1/e1": copy.deepcopy(ledger.store["f/t1/e1"])}
    recovered = new_ledger(crashed)
    assert recovered.handle(env, 0, offset, T0).outcome == "funds"
    assert balance(recovered) == Decimal(7)
    assert recovered.handle(env, 0, offset, T0).outcome == "replayed"
    assert balance(recovered) == Decimal(7)


def test_settings_crash_with_marker_durable_and_account_lost_creates_the_account() -> None:
    ledger = new_ledger()
    env, offset, first = Feed(ledger).send("settings", settings_doc())
    crashed = {"o/t1/0": copy.deepcopy(ledger.store["o/t1/0"])}
    recovered = new_ledger(crashed)
    result = recovered.handle(env, 0, offset, T0)
    assert result.outcome == "settings"
    assert result.outputs == first.outputs
    assert balance(recovered) == 0


def test_replayed_settings_reemit_their_outputs() -> None:
    ledger = new_ledger()
    env, offset, first = Feed(ledger).send("settings", settings_doc())
    again = ledger.handle(env, 0, offset, T0)
    assert again.outcome == "replayed"
    assert again.outputs == first.outputs


def test_older_settings_replayed_after_newer_are_ignored() -> None:
    ledger, feed = opened()
    env_old = envelope("settings", settings_doc(), 1000)
    feed.send("settings", settings_doc(alert="5"))
    ledger.published(0, feed.offset - 1)  # the older record's outputs were acked long ago
    assert ledger.handle(env_old, 0, 0, T0).outcome == "ignored"
    account = ledger.account("t1")
    assert account is not None
    assert account.low_balance_alert == Decimal(5)


# --- arbitrary crash points: the exactly-once property --------------------------------------


def check_exactly_once(scenario: Scenario, store: Changelog, charges: dict[str, set[str]]) -> None:
    ledger = new_ledger(store)
    for tenant in scenario.tenants:
        assert balance(ledger, tenant) == scenario.expected_balance(tenant)
    for tenant, cdr_id in scenario.cdrs:
        assert f"c/{tenant}/{cdr_id}" in store
    # At least once, and always the same content: consumers dedupe by cdr_id.
    for cdr_id, values in charges.items():
        assert len(values) == 1, (cdr_id, values)


def test_every_crash_prefix_then_full_replay_debits_each_cdr_exactly_once() -> None:
    scenario = fixed_scenario()
    original = Changelog()
    seen = run(new_ledger(original), scenario.messages, 0, T0)
    check_exactly_once(scenario, original, seen)
    # Writes: outbox + account for 2 settings; outbox + marker + recent page + account for 2
    # credits; outbox + marker + usage row + recent page + account for 5 distinct CDRs
    # (rating.usage).
    assert len(original.log) == 2 * 2 + 2 * 4 + 5 * 5
    for keep in range(len(original.log) + 1):
        store = original.crashed(keep)
        # Redelivery from offset 0 (a conservative committed offset), an hour later.
        replayed = run(new_ledger(store), scenario.messages, 0, T0 + timedelta(hours=1))
        # Outputs of the original run count too: they may have been published before the crash.
        for cdr_id, values in seen.items():
            replayed.setdefault(cdr_id, set()).update(values)
        check_exactly_once(scenario, store, replayed)


def test_every_crash_prefix_then_replay_from_commit_point_debits_once() -> None:
    # The realistic redelivery: from the first message whose writes were not all kept.
    scenario = fixed_scenario()
    original = Changelog()
    ledger = new_ledger(original)
    ends = []  # changelog length after each message
    for offset, env in enumerate(scenario.messages):
        ledger.handle(env, 0, offset, T0)
        ends.append(len(original.log))
    for keep in range(len(original.log) + 1):
        commit = next((i for i, end in enumerate(ends) if end > keep), len(ends))
        store = original.crashed(keep)
        run(new_ledger(store), scenario.messages, commit, T0 + timedelta(hours=1))
        check_exactly_once(scenario, store, {})


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenario=scenarios(), data=st.data())
def test_random_crashes_and_redeliveries_never_double_charge(
    scenario: Scenario, data: st.DataObject
) -> None:
    changelog = Changelog()
    run(new_ledger(changelog), scenario.messages, 0, T0)
    # Up to three crashes, each keeping a prefix of the changelog (the later ones may hit the
    # recovery itself), each followed by redelivery of everything from offset 0.
    for round_ in range(data.draw(st.integers(1, 3), label="crashes")):
        keep = data.draw(st.integers(0, len(changelog.log)), label=f"keep{round_}")
        changelog = changelog.crashed(keep)
        run(new_ledger(changelog), scenario.messages, 0, T0 + timedelta(minutes=round_ + 1))
    check_exactly_once(scenario, changelog, {})


# --- the outbox: crashes around publication -------------------------------------------------


def check_outbox_crash(
    scenario: Scenario, size: int, from_zero: bool, coalesce: bool = False, group: int = 1
) -> None:
    """``group``: messages per ledger record (ingest's records of many messages)."""
    original = Changelog(coalesce=coalesce)
    batches = run_batches(new_ledger(original), scenario.messages, 0, size, original, group=group)
    records = -(-len(scenario.messages) // group)
    assert not any(k.startswith("o/") for k in original)  # every entry cleared
    charged = set(scenario.cdrs)
    for keep in range(len(original.log) + 1):
        store = original.crashed(keep)
        # Published before the crash for sure: a batch whose deletes began (publish comes
        # before them). Perhaps published: every batch whose state was durable.
        surely = merge({}, [b for b in batches if b.cleared > b.durable and keep > b.durable])
        perhaps = merge({}, [b for b in batches if keep >= b.durable])
        # The input offsets are acked after the deletes: redelivery from the first batch
        # whose deletes are not all kept (or, conservatively, from 0).
        commit = next((b.start for b in batches if b.cleared > keep), records)
        ledger = new_ledger(store)
        ledger.rebuild_index(0, list(store.items()))
        start = 0 if from_zero else commit
        replay = run_batches(ledger, scenario.messages, start, size, store, group=group)
        check_exactly_once(scenario, store, {})
        # At least once: every charged CDR was published, before the crash or by the replay.
        assert set(merge(dict(surely), replay)) >= charged, keep
        # Always the same bytes (rated_at included: `now` is the record's timestamp).
        for charge, values in merge(perhaps, replay).items():
            assert len(values) == 1, (keep, charge, values)
        assert not any(k.startswith("o/") for k in store), keep  # the outbox ends empty


@pytest.mark.parametrize("size", [1, 3, 12])
@pytest.mark.parametrize("from_zero", [False, True], ids=["from-commit", "from-zero"])
def test_every_crash_prefix_around_publication_publishes_each_charge_once_in_content(
    size: int, from_zero: bool
) -> None:
    # Crashes between durable and publish, between publish and the outbox deletes, and
    # between the deletes and the ack: every prefix of a run that publishes in batches.
    check_outbox_crash(fixed_scenario(), size, from_zero)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenario=scenarios(), size=st.integers(1, 5))
def test_random_scenarios_crashed_around_publication_publish_every_charge(
    scenario: Scenario, size: int
) -> None:
    check_outbox_crash(scenario, size, from_zero=False)


@pytest.mark.parametrize("size", [1, 3, 12])
@pytest.mark.parametrize("from_zero", [False, True], ids=["from-commit", "from-zero"])
def test_every_crash_prefix_of_coalesced_batches_publishes_each_charge_once_in_content(
    size: int, from_zero: bool
) -> None:
    # The worker's order (rating.coalescing): each key once per batch, at its last write.
    check_outbox_crash(fixed_scenario(), size, from_zero, coalesce=True)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenario=scenarios(), size=st.integers(1, 8))
def test_random_scenarios_in_coalesced_batches_crashed_anywhere_publish_every_charge_once(
    scenario: Scenario, size: int
) -> None:
    check_outbox_crash(scenario, size, from_zero=False, coalesce=True)


@pytest.mark.parametrize("coalesce", [False, True], ids=["in-order", "coalesced"])
@pytest.mark.parametrize("group", [2, 5, 12])
@pytest.mark.parametrize("size", [1, 3])
@pytest.mark.parametrize("from_zero", [False, True], ids=["from-commit", "from-zero"])
def test_every_crash_prefix_of_records_of_many_messages_publishes_each_charge_once(
    size: int, group: int, coalesce: bool, from_zero: bool
) -> None:
    # Ingest's records: ``group`` messages of several tenants per ledger record (group 12:
    # the whole scenario, its duplicates inside one record).
    check_outbox_crash(fixed_scenario(), size, from_zero, coalesce=coalesce, group=group)


@pytest.mark.parametrize("group", [2, 5, 12])
def test_every_crash_prefix_of_records_of_many_messages_then_full_replay_debits_once(
    group: int,
) -> None:
    scenario = fixed_scenario()
    original = Changelog()
    seen = run(new_ledger(original), scenario.messages, 0, T0, group)
    check_exactly_once(scenario, original, seen)
    for keep in range(len(original.log) + 1):
        store = original.crashed(keep)
        replayed = run(new_ledger(store), scenario.messages, 0, T0 + timedelta(hours=1), group)
        for cdr_id, values in seen.items():
            replayed.setdefault(cdr_id, set()).update(values)
        check_exactly_once(scenario, store, replayed)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenario=scenarios(), size=st.integers(1, 4), group=st.integers(2, 6))
def test_random_scenarios_in_records_of_many_messages_crashed_anywhere_publish_once(
    scenario: Scenario, size: int, group: int
) -> None:
    check_outbox_crash(scenario, size, from_zero=False, coalesce=True, group=group)


def test_coalesced_batches_write_fewer_changelog_records() -> None:
    # What coalescing is for: the account is written once per batch, not once per record.
    def records(coalesce: bool) -> int:
        log = Changelog(coalesce=coalesce)
        run_batches(new_ledger(log), fixed_scenario().messages, 0, 12, log)
        return len(log.log)

    assert records(coalesce=True) < records(coalesce=False)


def test_a_redelivered_record_whose_outputs_were_acked_publishes_nothing() -> None:
    ledger, feed = funded()
    env, offset, first = feed.send("cdr", cdr_doc("c1"))
    assert f"o/t1/{offset}" in ledger.store
    again = ledger.handle(env, 0, offset, T0)
    assert (again.outcome, again.outputs) == ("replayed", first.outputs)  # kept: republished
    ledger.published(0, offset)
    assert not any(k.startswith("o/") for k in ledger.store)
    gone = ledger.handle(env, 0, offset, T0)
    assert (gone.outcome, gone.outputs) == ("replayed", [])  # acked before the delete
    assert ledger.handle(envelope("cdr", cdr_doc("c1"), 9999), 0, 50, T0).outcome == "duplicate"


def test_published_keeps_the_entries_of_later_records() -> None:
    # After a crash a batch of leftovers may be redelivered in smaller batches: clearing the
    # first must not drop what the later records still have to republish.
    ledger, feed = funded()
    feed.send("cdr", cdr_doc("c1"))
    env2, offset2, second = feed.send("cdr", cdr_doc("c2"))
    ledger.published(0, offset2 - 1)
    assert ledger.handle(env2, 0, offset2, T0).outputs == second.outputs


def test_markers_are_compact() -> None:
    ledger, feed = funded()
    feed.send("cdr", cdr_doc("c1"))
    marker = ledger.store["c/t1/c1"]
    assert set(marker) == {"lo", "amt", "exp"}
    assert len(json.dumps(marker, separators=(",", ":"))) <= 50
    assert ledger.store["f/t1/seed"] == {"lo": 1}
    assert not any(k.startswith("s/") for k in ledger.store)


# --- state version 2 ------------------------------------------------------------------------


def v2_state() -> tuple[dict[str, Any], Envelope, Envelope, list[Output]]:
    """State as a version-2 worker left it: it applied a settings message, a credit and a
    CDR, and was killed before publishing the CDR's outputs (kept in its marker)."""
    ledger, feed = funded()
    env, offset, first = feed.send("cdr", cdr_doc("c1"))
    funds_env = envelope("funds", funds_doc("seed"), 1001)  # the credit's source, as fed
    store: dict[str, Any] = {}
    for key, kept in ledger.store.items():
        if key.startswith("o/"):
            continue
        value = copy.deepcopy(kept)
        if key.startswith("a/"):
            value["acct"]["v"] = 2
        store[key] = value
    src = env.source.ref
    store["c/t1/c1"] |= {"src": src, "out": [["c", first.outputs[0].value.decode()]]}
    store["f/t1/seed"] |= {"src": funds_env.source.ref, "out": []}
    store["s/t1"] = {"lo": 0, "src": "settings", "out": []}
    assert offset == 2
    return store, env, funds_env, first.outputs


def test_version_2_state_is_read_without_mis_dedup_and_its_stored_outputs_republished() -> None:
    store, env, funds_env, outputs = v2_state()
    ledger = new_ledger(store)
    ledger.rebuild_index(0, list(store.items()))
    bal = balance(ledger)
    # The record version 2 applied but did not publish: its outputs come from the marker.
    again = ledger.handle(env, 0, 2, T0)
    assert (again.outcome, again.outputs) == ("replayed", outputs)
    # Re-publications are duplicates; the credit is not applied twice.
    assert ledger.handle(envelope("cdr", cdr_doc("c1"), 42), 0, 3, T0).outcome == "duplicate"
    assert ledger.handle(funds_env, 0, 4, T0).outcome == "funds_duplicate"
    assert balance(ledger) == bal
    # New work writes version-3 state: compact markers, and the next settings drop s/.
    assert ledger.handle(envelope("cdr", cdr_doc("c2"), 43), 0, 5, T0).outcome == "charged"
    assert set(store["c/t1/c2"]) == {"lo", "amt", "exp"}
    assert store["a/t1"]["acct"]["v"] == 3
    ledger.handle(envelope("settings", settings_doc(alert="1"), 44), 0, 6, T0)
    assert "s/t1" not in store


# --- funds ----------------------------------------------------------------------------------


def test_manual_add_is_applied_once_by_event_id() -> None:
    ledger, feed = opened()
    env, offset, first = feed.send("funds", funds_doc("e1", amount="12.50"))
    assert first.outcome == "funds"
    assert first.funds is not None
    assert first.funds.event_id == "e1"
    restored = [BalanceEvent.model_validate_json(o.value).kind for o in first.outputs]
    assert restored == [BalanceEventKind.RESTORED]
    assert balance(ledger) == Decimal("12.50")
    # The same event published again: a duplicate, counted, not applied.
    dup = feed.send("funds", funds_doc("e1", amount="12.50"))[2]
    assert dup.outcome == "funds_duplicate"
    assert dup.outputs == []
    assert dup.funds is not None
    # The same ledger record redelivered: its outputs again.
    replay = ledger.handle(env, 0, offset, T0)
    assert replay.outcome == "replayed"
    assert replay.outputs == first.outputs
    assert balance(ledger) == Decimal("12.50")


def test_funds_duplicate_is_dropped_even_with_different_content() -> None:
    # The event_id is the idempotency key, not the content.
    ledger, feed = opened()
    feed.send("funds", funds_doc("e1", amount="1"))
    assert feed.send("funds", funds_doc("e1", amount="999"))[2].outcome == "funds_duplicate"
    assert balance(ledger) == 1


def test_funds_in_another_currency_are_rejected_currency_mismatch() -> None:
    ledger, feed = opened(currency="USD")
    env, offset, result = feed.send("funds", funds_doc("e1", currency="EUR"))
    assert result.outcome == "rejected"
    assert result.reason is RejectReason.CURRENCY_MISMATCH
    rej = Rejection.model_validate_json(only(result, "rejected"))
    assert rej.reason is RejectReason.CURRENCY_MISMATCH
    assert "EUR" in rej.detail
    assert "USD" in rej.detail
    assert rej.payload == env.payload
    assert balance(ledger) == 0
    assert "f/t1/e1" not in ledger.store
    # A replay re-emits the rejection (at least once).
    assert ledger.handle(env, 0, offset, T0).reason is RejectReason.CURRENCY_MISMATCH


def test_funds_redelivered_after_later_work_without_marker_is_not_applied_twice() -> None:
    ledger, feed = opened()
    env, offset, _ = feed.send("funds", funds_doc("e1", amount="3"))
    feed.send("cdr", cdr_doc("c1", duration=0))
    del ledger.store["f/t1/e1"]  # as if expired
    assert ledger.handle(env, 0, offset, T0).outcome == "funds_duplicate"
    assert balance(ledger) == 3


# --- rejections of CDRs ---------------------------------------------------------------------


def test_stale_cdr_is_rejected_and_not_charged() -> None:
    ledger, feed = funded()
    old = T0 - HORIZON - timedelta(seconds=1)
    result = feed.send("cdr", cdr_doc("c1", call_start=old))[2]
    assert result.reason is RejectReason.STALE
    rej = Rejection.model_validate_json(only(result, "rejected"))
    assert "call_start" in rej.detail
    assert balance(ledger) == Decimal("10.00")
    assert "c/t1/c1" not in ledger.store


def test_cdr_exactly_at_the_horizon_is_still_charged() -> None:
    _, feed = funded()
    result = feed.send("cdr", cdr_doc("c1", call_start=T0 - HORIZON))[2]
    assert result.outcome == "charged"


@pytest.mark.parametrize(
    ("tenant_settings", "doc", "reason", "words"),
    [
        pytest.param(
            settings_doc(),
            cdr_doc("c1", destination="+33612345678"),
            RejectReason.NO_RATE,
            ["33612345678", "conferencing_dialout", "std-usd"],
            id="no-rate",
        ),
        pytest.param(
            settings_doc(currency="GBP"),
            cdr_doc("c1"),
            RejectReason.NO_RATE_CARD,
            ["GBP", "standard"],
            id="no-card-for-currency",
        ),
        pytest.param(
            settings_doc(plan="gold"),
            cdr_doc("c1"),
            RejectReason.NO_RATE_CARD,
            ["gold"],
            id="no-card-for-plan",
        ),
        pytest.param(
            settings_doc(),
            cdr_doc("c1", call_start=datetime(2026, 10, 30, tzinfo=UTC)),
            RejectReason.NO_RATE_CARD,
            ["2026-10-30"],
            id="no-card-yet-effective",
        ),
    ],
)
def test_unrateable_cdr_rejection_carries_the_detail(
    tenant_settings: dict[str, Any], doc: dict[str, Any], reason: RejectReason, words: list[str]
) -> None:
    ledger = new_ledger()
    feed = Feed(ledger)
    feed.send("settings", tenant_settings)
    # 2026-10-30 is within a long horizon here, so the rating decides.
    ledger.horizon = timedelta(days=60)
    env, offset, result = feed.send("cdr", doc)
    assert result.reason is reason
    rej = Rejection.model_validate_json(only(result, "rejected"))
    assert rej.reason is reason
    for word in words:
        assert word in rej.detail
    assert rej.payload == env.payload
    assert balance(ledger) == 0
    # Replayed after later work on the account: the rejection again, still no charge.
    feed.send("funds", funds_doc("e1", currency=tenant_settings["currency"]))
    again = ledger.handle(env, 0, offset, T0)
    assert again.reason is reason
    assert again.outputs[0].value == result.outputs[0].value
    assert not any(k.startswith("c/") for k in ledger.store)


def test_cdr_at_or_below_account_lo_without_marker_is_not_charged_twice() -> None:
    ledger, feed = funded()
    env, offset, first = feed.send("cdr", cdr_doc("c1"))
    feed.send("cdr", cdr_doc("c2"))
    bal = balance(ledger)
    # The marker is gone (removed by hand: the CDR is not stale, so only `lo` protects it).
    del ledger.store["c/t1/c1"]
    result = ledger.handle(env, 0, offset, T0)
    assert result.outcome == "duplicate"
    assert result.outputs == []
    assert balance(ledger) == bal
    assert first.outcome == "charged"


# --- the clock: recharge retries, rebuild after a rebalance ---------------------------------


def recharge_opened() -> tuple[Ledger, Feed, RechargeCommand]:
    """A tenant created below its trigger: the settings issue command 1 at T0."""
    ledger = new_ledger()
    feed = Feed(ledger)
    result = feed.send("settings", settings_doc(enabled=True, amount="25", trigger="10"))[2]
    return ledger, feed, RechargeCommand.model_validate_json(only(result, "recharge"))


def test_settings_below_the_trigger_issue_a_recharge_command() -> None:
    ledger = new_ledger()
    result = Feed(ledger).send("settings", settings_doc(enabled=True, amount="25", trigger="10"))[2]
    cmd = RechargeCommand.model_validate_json(only(result, "recharge"))
    assert (cmd.command_id, cmd.attempt, cmd.amount, cmd.balance) == (
        "t1:recharge:1",
        1,
        Decimal(25),
        Decimal(0),
    )
    assert ledger.status({0}) == (1, 1, 1, 1)


def test_charge_crossing_the_trigger_emits_a_recharge_command() -> None:
    ledger, feed = opened(enabled=True, amount="25", trigger="10")
    feed.send(
        "funds", funds_doc("ok", kind="recharge_succeeded", amount="25", command_id="t1:recharge:1")
    )
    account = ledger.account("t1")
    assert account is not None
    assert account.outstanding is None
    result = feed.send("cdr", cdr_doc("c1", duration=60 * 700))[2]  # 16.80
    cmd = RechargeCommand.model_validate_json(only(result, "recharge"))
    assert cmd.command_id == "t1:recharge:2"
    assert cmd.balance == balance(ledger) < 10


def test_tick_does_nothing_before_anything_is_due() -> None:
    ledger, feed, _ = recharge_opened()
    before = copy.deepcopy(ledger.store)
    result = feed.tick(T0 + POLICY.response_timeout - timedelta(seconds=1))
    assert result.outcome == "tick"
    assert result.outputs == []
    assert ledger.store == before


def test_recharge_failed_then_tick_after_backoff_retries_same_command() -> None:
    ledger, feed, cmd = recharge_opened()
    failed = feed.send(
        "funds", funds_doc("fail1", kind="recharge_failed", amount="25", command_id=cmd.command_id)
    )[2]
    assert failed.outcome == "funds"
    assert failed.outputs == []
    retry_at = T0 + POLICY.backoff(1)
    assert feed.tick(retry_at - timedelta(seconds=1)).outputs == []
    result = feed.tick(retry_at)
    resent = RechargeCommand.model_validate_json(only(result, "recharge"))
    assert resent.command_id == cmd.command_id
    assert resent.attempt == 2
    assert resent.issued_at == retry_at
    assert result.effects[0].recharge_outcomes == ("retried",)
    # The same tick replayed (same ledger offset) changes nothing and republishes the same
    # command from its outbox entry while it is kept; nothing once it was published.
    again = ledger.tick(0, feed.offset - 1, retry_at)
    assert again.outputs == result.outputs
    assert again.effects == []
    ledger.published(0, feed.offset - 1)
    assert ledger.tick(0, feed.offset - 1, retry_at).outputs == []


def test_unanswered_command_times_out_then_is_retried_on_a_later_tick() -> None:
    _, feed, cmd = recharge_opened()
    timeout = feed.tick(T0 + POLICY.response_timeout)
    assert timeout.outputs == []
    assert timeout.effects[0].recharge_outcomes == ("timed_out", "failed")
    result = feed.tick(T0 + POLICY.response_timeout + POLICY.backoff(1))
    resent = RechargeCommand.model_validate_json(only(result, "recharge"))
    assert (resent.command_id, resent.attempt) == (cmd.command_id, 2)


def test_rebuild_index_on_a_fresh_ledger_drives_the_retry_after_a_rebalance() -> None:
    ledger, feed, cmd = recharge_opened()
    feed.send(
        "funds", funds_doc("fail1", kind="recharge_failed", amount="25", command_id=cmd.command_id)
    )
    retry_at = T0 + POLICY.backoff(1)
    # Another worker takes over the partition with the recovered table.
    store = copy.deepcopy(ledger.store)
    taker = new_ledger(store)
    assert taker.tick(0, feed.offset, retry_at).outputs == []  # no index yet: nothing known
    taker.rebuild_index(0, store.items())
    assert taker.status({0}) == (1, 1, 1, 1)
    result = taker.tick(0, feed.offset + 1, retry_at)
    resent = RechargeCommand.model_validate_json(only(result, "recharge"))
    assert (resent.command_id, resent.attempt) == (cmd.command_id, 2)


def test_rebuild_index_of_one_partition_ignores_the_others_due_tenants() -> None:
    ledger, feed, cmd = recharge_opened()
    feed.send(
        "funds", funds_doc("fail1", kind="recharge_failed", amount="25", command_id=cmd.command_id)
    )
    taker = new_ledger(copy.deepcopy(ledger.store))
    taker.rebuild_index(1, [])  # a different partition, with no keys
    assert taker.tick(0, 99, T0 + timedelta(days=1)).outputs == []


# --- marker expiry --------------------------------------------------------------------------


def test_tick_expires_only_markers_older_than_horizon_plus_grace() -> None:
    # No funds here: funds markers never expire (see the test below).
    ledger, feed = opened()
    old_start = T0 - timedelta(hours=1)
    new_start = T0 + timedelta(days=2)
    feed.send("cdr", cdr_doc("old", call_start=old_start))
    feed.send("cdr", cdr_doc("new", call_start=new_start))
    old_exp = old_start + HORIZON + EXPIRY_GRACE

    def markers() -> set[str]:  # usage rows and the recent ring expire on their own terms
        return {k for k in ledger.store if not k.startswith(("u/", "r/"))}

    ledger.published(0, feed.offset - 1)  # the outbox is emptied by publication, not expiry
    keys = markers()
    assert keys == {"a/t1", "c/t1/old", "c/t1/new"}
    # At the expiry second itself nothing goes; strictly after it, only the old CDR marker.
    feed.tick(old_exp)
    assert markers() == keys
    feed.tick(old_exp + timedelta(seconds=1))
    assert markers() == keys - {"c/t1/old"}
    feed.tick(new_start + HORIZON + EXPIRY_GRACE + timedelta(seconds=1))
    assert markers() == {"a/t1"}  # accounts never expire


def test_expired_cdr_republished_is_rejected_stale_never_charged_again() -> None:
    ledger, feed = funded("100")
    doc = cdr_doc("c1")
    feed.send("cdr", doc)
    bal = balance(ledger)
    later = T0 - timedelta(hours=1) + HORIZON + EXPIRY_GRACE + timedelta(seconds=1)
    feed.tick(later)
    assert "c/t1/c1" not in ledger.store
    result = feed.send("cdr", doc, now=later)[2]
    assert result.reason is RejectReason.STALE
    assert balance(ledger) == bal


def test_funds_event_republished_after_its_marker_expired_is_not_credited_again() -> None:
    ledger, feed = opened()
    feed.send("funds", funds_doc("e1", amount="10"))
    later = T0 + HORIZON + EXPIRY_GRACE + timedelta(seconds=1)
    feed.tick(later)
    result = feed.send("funds", funds_doc("e1", amount="10"), now=later)[2]
    assert result.outcome == "funds_duplicate"
    assert balance(ledger) == 10


def test_expiry_works_after_rebuild_index_on_a_fresh_ledger() -> None:
    ledger, feed = opened()
    feed.send("cdr", cdr_doc("c1"))
    taker = new_ledger(ledger.store)
    taker.rebuild_index(0, list(ledger.store.items()))
    taker.tick(0, feed.offset, T0 + timedelta(days=30))
    taker.published(0, feed.offset)
    # Usage rows and the recent ring stay (their retention is 400 days: rating.usage).
    assert {k for k in ledger.store if not k.startswith(("u/", "r/"))} == {"a/t1"}


def test_expiry_skips_a_marker_rewritten_with_a_later_expiry() -> None:
    # A stale heap entry must not delete the newer marker under the same key.
    ledger, feed = opened()
    before = copy.deepcopy(ledger.store)
    env, offset, _ = feed.send("funds", funds_doc("e1", amount="1"))
    # Crash (marker kept, account lost), then the repair a day later rewrites the marker.
    crashed = {**before, "f/t1/e1": copy.deepcopy(ledger.store["f/t1/e1"])}
    recovered = new_ledger(crashed)
    recovered.rebuild_index(0, list(crashed.items()))
    recovered.handle(env, 0, offset, T0 + timedelta(days=1))
    recovered.tick(0, offset + 1, T0 + HORIZON + EXPIRY_GRACE + timedelta(hours=1))
    assert "f/t1/e1" in crashed


# --- status and forget ----------------------------------------------------------------------


def test_status_counts_per_partition_and_forget_drops_them() -> None:
    ledger = new_ledger()
    p0, p1 = Feed(ledger, partition=0), Feed(ledger, partition=1)
    p0.send("settings", settings_doc("a", enabled=True, amount="25", trigger="10"))  # all four
    p0.send("settings", settings_doc("b"))  # exhausted only
    p0.send("funds", funds_doc("e1", "b", amount="5"))  # ... and now restored
    p1.send("settings", settings_doc("c"))  # exhausted
    assert ledger.status({0}) == (2, 1, 1, 1)
    assert ledger.status({1}) == (1, 0, 1, 0)
    assert ledger.status({0, 1}) == (3, 1, 2, 1)
    assert ledger.status(set()) == (0, 0, 0, 0)
    ledger.forget(0)
    assert ledger.status({0}) == (0, 0, 0, 0)
    assert ledger.status({0, 1}) == (1, 0, 1, 0)
    # forget only drops the in-memory view; the store is untouched.
    assert ledger.account("a") is not None


def test_tenant_of_extracts_the_tenant_from_every_key_kind() -> None:
    keys = ("a/t1", "s/t1", "c/t1/x/y", "f/t1/e", "o/t1/12")
    assert [tenant_of(k) for k in keys] == ["t1"] * 5


def test_output_is_a_plain_value() -> None:
    assert Output("charges", "t1", b"x") == Output("charges", "t1", b"x")


def test_an_unexpected_error_parks_the_message_as_internal_error_without_touching_state() -> None:
    def broken_rates() -> RateBook:
        raise RuntimeError("rate book exploded")

    store: dict[str, Any] = {}
    ledger = Ledger(store, broken_rates, POLICY, HORIZON)
    ledger.handle(envelope("settings", settings_doc(), src_offset=0), 0, 0, T0)
    before = dict(store)
    doc = cdr_doc("c1")
    result = ledger.handle(envelope("cdr", doc, src_offset=1), 0, 1, T0)
    assert result.reason is RejectReason.INTERNAL_ERROR
    rej = Rejection.model_validate_json(only(result, "rejected"))
    assert "RuntimeError: rate book exploded" in rej.detail
    assert json.loads(rej.payload) == doc  # the original bytes, ready to replay after a fix
    assert store == before
    # The next message is processed normally: the partition is not stalled.
    ok = Ledger(store, lambda: BOOK, POLICY, HORIZON).handle(
        envelope("cdr", doc, src_offset=2), 0, 2, T0
    )
    assert ok.outcome == "charged"


# --- the decoded-account cache ----------------------------------------------------------------


def test_an_account_written_by_the_ledger_is_not_decoded_again_while_the_store_holds_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ledger, feed = funded("100.00")  # a plain dict store: reads return the stored object
    decoded = []
    real = Account.from_dict
    monkeypatch.setattr(Account, "from_dict", lambda d: decoded.append(1) or real(d))
    for i in range(5):
        feed.send("cdr", cdr_doc(f"k{i}", duration=61))
    assert decoded == []
    assert (
        balance(ledger)
        == Decimal("100.00") - 5 * expected_charge(cdr_doc("k0", duration=61)).amount
    )


def test_an_account_record_replaced_under_the_ledger_is_read_afresh() -> None:
    # Recovery or RocksDB hand back a new record object: the ledger must use its content,
    # never the Account it decoded from an earlier record.
    ledger, feed = funded("10.00")
    key = "a/t1"
    rec = copy.deepcopy(ledger.store[key])
    rec["acct"]["balance"] = "3.0000"
    ledger.store[key] = rec
    charge = expected_charge(cdr_doc("r1", duration=61))
    feed.send("cdr", cdr_doc("r1", duration=61))
    assert balance(ledger) == Decimal("3.0000") - charge.amount


# --- records of many messages (ingest's ledger records) ----------------------------------------


def many(*messages: tuple[str, dict[str, Any]], first_src: int = 100) -> list[Envelope]:
    return [envelope(kind, doc, first_src + i) for i, (kind, doc) in enumerate(messages)]  # type: ignore[arg-type]


def test_a_record_of_many_messages_applies_each_tenants_share_once_at_its_offset() -> None:
    ledger = new_ledger()
    ledger.handle_record(
        many(("settings", settings_doc("t1")), ("settings", settings_doc("t2"))), 0, 0, T0
    )
    record = many(
        ("funds", funds_doc("f1", "t1", amount="10.00")),
        ("cdr", cdr_doc("a", "t2", duration=61)),
        ("cdr", cdr_doc("a", "t1", duration=61)),
        ("cdr", cdr_doc("a", "t1", duration=61)),  # the same CDR again, in the same record
        ("cdr", cdr_doc("b", "t1", duration=31)),
    )
    results = ledger.handle_record(record, 0, 1, T0)
    # One Result per message, in the record's order.
    assert [r.outcome for r in results] == ["funds", "charged", "charged", "duplicate", "charged"]
    charged = [json.loads(only(r, "charges"))["tenant_id"] for r in results if r.charge]
    assert charged == ["t2", "t1", "t1"]
    a, b = expected_charge(cdr_doc("a", duration=61)), expected_charge(cdr_doc("b", duration=31))
    assert balance(ledger, "t1") == Decimal("10.00") - a.amount - b.amount
    assert balance(ledger, "t2") == -a.amount
    # Each tenant's share is one unit at the record's offset: one outbox entry per tenant.
    assert {k for k in ledger.store if k.startswith("o/") and k.endswith("/1")} == {
        "o/t1/1",
        "o/t2/1",
    }
    assert ledger.store["a/t1"]["lo"] == ledger.store["c/t1/b"]["lo"] == 1


def test_a_replayed_record_of_many_messages_republishes_each_tenants_outputs_once() -> None:
    ledger, _ = funded("50.00")
    record = many(*(("cdr", cdr_doc(f"c{i}", duration=61)) for i in range(4)))
    first = ledger.handle_record(record, 0, 9, T0)
    again = ledger.handle_record(record, 0, 9, T0)
    assert [r.outcome for r in again] == ["replayed"] * 4
    outputs = [o for r in again for o in r.outputs]
    # Every output of the first attempt, each once (not once per message of the share).
    assert outputs == [o for r in first for o in r.outputs]
    ledger.published(0, 9)
    assert [o for r in ledger.handle_record(record, 0, 9, T0) for o in r.outputs] == []
    assert (
        balance(ledger) == Decimal("50.00") - 4 * expected_charge(cdr_doc("c0", duration=61)).amount
    )


def test_messages_of_an_unknown_tenant_in_one_record_are_each_held_then_applied() -> None:
    ledger = new_ledger()
    record = many(
        ("funds", funds_doc("f1", "t9", amount="5.00")),
        ("cdr", cdr_doc("a", "t9", duration=61)),
        ("cdr", cdr_doc("b", "t9", duration=61)),
    )
    assert [r.outcome for r in ledger.handle_record(record, 0, 3, T0)] == ["held"] * 3
    assert sorted(k for k in ledger.store if k.startswith("h/")) == [
        "h/t9/3",
        "h/t9/3.00001",
        "h/t9/3.00002",
    ]
    # A redelivery holds nothing twice.
    assert [r.outcome for r in ledger.handle_record(record, 0, 3, T0)] == ["held_again"] * 3
    created = ledger.handle(envelope("settings", settings_doc("t9"), 200), 0, 4, T0)
    assert [p.outcome for p in created.parts] == ["funds", "charged", "charged"]
    charge = expected_charge(cdr_doc("a", "t9", duration=61)).amount
    assert balance(ledger, "t9") == Decimal("5.00") - 2 * charge
    assert not any(k.startswith("h/") for k in ledger.store)


def test_settings_in_the_same_record_apply_the_messages_held_before_them() -> None:
    ledger = new_ledger()
    record = many(
        ("cdr", cdr_doc("a", "t9", duration=61)),
        ("settings", settings_doc("t9")),
        ("funds", funds_doc("f1", "t9", amount="5.00")),
    )
    results = ledger.handle_record(record, 0, 0, T0)
    assert [r.outcome for r in results] == ["held", "settings", "funds"]
    assert [p.outcome for p in results[1].parts] == ["charged"]
    assert (
        balance(ledger, "t9")
        == Decimal("5.00") - expected_charge(cdr_doc("a", "t9", duration=61)).amount
    )
    assert not any(k.startswith("h/") for k in ledger.store)
    # Replayed whole, the record publishes its outputs once and charges nothing again.
    again = ledger.handle_record(record, 0, 0, T0)
    assert [o for r in again for o in r.outputs] == [o for r in results for o in r.outputs]


def test_a_bug_in_one_message_parks_only_that_message_of_the_record(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import rating.ledger as ledger_module

    ledger, _ = funded("50.00")
    real = ledger_module.price_cdr

    def broken_for_b(cdr: Any, *a: Any, **kw: Any) -> Any:
        if cdr.cdr_id == "b":
            raise RuntimeError("pricing b exploded")
        return real(cdr, *a, **kw)

    monkeypatch.setattr(ledger_module, "price_cdr", broken_for_b)
    record = many(*(("cdr", cdr_doc(i, duration=61)) for i in ("a", "b", "c")))
    results = ledger.handle_record(record, 0, 5, T0)
    assert [r.outcome for r in results] == ["charged", "rejected", "charged"]
    assert results[1].reason is RejectReason.INTERNAL_ERROR
    assert (
        json.loads(Rejection.model_validate_json(only(results[1], "rejected")).payload)["cdr_id"]
        == "b"
    )
    assert "c/t1/b" not in ledger.store
    assert (
        balance(ledger) == Decimal("50.00") - 2 * expected_charge(cdr_doc("a", duration=61)).amount
    )
    # The outbox entry holds what the record published: the two Charges and the rejection.
    assert len(ledger.store["o/t1/5"]["out"]) == 3


def test_a_stale_marker_of_a_records_first_attempt_goes_before_the_account_is_written() -> None:
    # The first attempt of a record charged x and y; only their markers landed. Before the
    # redelivery the rate cards lost x's destination: x no longer charges, y does. x's
    # marker must be gone before the account (lo = the record's offset) is written, or a
    # prefix would count x as charged although its debit is in no balance.
    store = Changelog()
    first = Ledger(store, lambda: BOOK, POLICY, HORIZON)
    first.handle(envelope("settings", settings_doc(), 1), 0, 0, T0)
    first.handle(envelope("funds", funds_doc("seed", amount="50.00"), 2), 0, 1, T0)
    record = many(
        ("cdr", cdr_doc("x", duration=61, destination="+447700900123")),
        ("cdr", cdr_doc("y", duration=61)),
    )
    before = len(store.log)
    first.handle_record(record, 0, 7, T0)
    account_at = next(i for i in range(before, len(store.log)) if store.log[i][0] == "a/t1")
    crashed = store.crashed(account_at)  # the markers landed, the account did not
    assert {"c/t1/x", "c/t1/y"} <= set(crashed)
    mark = len(crashed.log)
    us_only = RateBook.from_cards(
        [
            card.model_copy(update={"rates": [r for r in card.rates if r.prefix != "44"]})
            for card in BOOK.cards
        ]
    )
    again = Ledger(crashed, lambda: us_only, POLICY, HORIZON)
    results = again.handle_record(record, 0, 7, T0)
    assert [r.outcome for r in results] == ["rejected", "repaired"]
    writes = crashed.log[mark:]
    keys = [k for k, _ in writes]
    assert writes[keys.index("c/t1/x")][1] is None  # x's stale marker deleted...
    assert keys.index("c/t1/x") < keys.index("a/t1")  # ...before the account is written
