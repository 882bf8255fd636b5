"""Usage per day and product, and recent activity: exact sums of the Charges, exactly once.

Crashes are modelled as in test_ledger: the store is a Changelog, a crash keeps a prefix of
its writes, and redelivery runs the ledger messages again.
"""

from __future__ import annotations

import json
from datetime import date, timedelta
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rating import keys
from rating.contracts import Charge, Product, UsageReport
from rating.usage import (
    MAX_RANGE_DAYS,
    RECENT_CHARGES,
    RECENT_FUNDS,
    RETENTION_DAYS,
    RangeError,
    UsageRow,
    parse_range,
    recent,
    usage_report,
)
from tests.unit.builders import (
    T0,
    Changelog,
    Feed,
    Scenario,
    cdr_doc,
    expected_charge,
    fixed_scenario,
    funds_doc,
    new_ledger,
    opened,
    run,
    scenarios,
    settings_doc,
)

DAY = (T0 - timedelta(hours=1)).date()


def report(store: Any, tenant: str, first: date = DAY, last: date = DAY) -> dict[str, Any]:
    doc = usage_report(store, tenant, "USD", first, last)
    UsageReport.model_validate(doc)  # the document is the contract's
    return doc


def expected(scenario: Scenario, tenant: str) -> dict[str, Any]:
    """Totals straight from the distinct CDRs' Charges (rate_cdr), per product and overall."""
    charges = [expected_charge(d) for (t, _), d in scenario.cdrs.items() if t == tenant]
    by_product: dict[str, tuple[int, int, Decimal]] = {}
    for c in charges:
        calls, secs, amt = by_product.get(c.product.value, (0, 0, Decimal(0)))
        by_product[c.product.value] = (calls + 1, secs + c.billable_seconds, amt + c.amount)
    total = (
        len(charges),
        sum(c.billable_seconds for c in charges),
        sum((c.amount for c in charges), Decimal(0)),
    )
    return {"total": total, "by_product": by_product}


def check_usage(scenario: Scenario, store: Any) -> None:
    for tenant in scenario.tenants:
        doc = report(store, tenant)
        want = expected(scenario, tenant)
        t = doc["totals"]
        assert (t["calls"], t["billable_seconds"], Decimal(t["amount"])) == want["total"]
        for product, (calls, secs, amt) in want["by_product"].items():
            got = doc["by_product"][product]
            assert (got["calls"], got["billable_seconds"], Decimal(got["amount"])) == (
                calls,
                secs,
                amt,
            )
        # Recent charges: each distinct CDR once (newest first), none twice.
        ids = [c["id"] for c in recent(store, tenant)["charges"]]
        assert len(ids) == len(set(ids)), ids
        assert set(ids) == {cdr for (t2, cdr) in scenario.cdrs if t2 == tenant}
        funds = [f["id"] for f in recent(store, tenant)["funds"]]
        assert sorted(funds) == sorted(e for (t2, e) in scenario.credits if t2 == tenant)


def test_a_charge_lands_on_its_day_and_product_row() -> None:
    ledger, feed = opened()
    feed.send("cdr", cdr_doc("c1", duration=61))
    feed.send("cdr", cdr_doc("c2", duration=3, product="tollfree_inbound"))
    feed.send("cdr", cdr_doc("c1", duration=61))  # a duplicate adds nothing
    doc = report(ledger.store, "t1")
    one, two = (
        expected_charge(cdr_doc("c1", duration=61)),
        expected_charge(cdr_doc("c2", duration=3, product="tollfree_inbound")),
    )
    assert doc["totals"] == {
        "calls": 2,
        "billable_seconds": one.billable_seconds + two.billable_seconds,
        "amount": str(one.amount + two.amount),
    }
    assert [(r["day"], r["product"]) for r in doc["rows"]] == [
        (DAY.isoformat(), "conferencing_dialout"),
        (DAY.isoformat(), "tollfree_inbound"),
    ]
    assert doc["by_product"]["conferencing_tollfree_dialin"] == {
        "calls": 0,
        "billable_seconds": 0,
        "amount": "0",
    }


def test_totals_equal_the_published_charges_to_the_last_decimal() -> None:
    ledger, feed = opened()
    feed.send("funds", funds_doc("seed", amount="100"))
    published: list[Charge] = []
    for i in range(40):
        destination = "+447700900123" if i % 3 else "+14155550199"  # two rates, 30/6 and 60/60
        _, _, result = feed.send(
            "cdr", cdr_doc(f"c{i}", duration=7 * i + 1, destination=destination)
        )
        published += [
            Charge.model_validate_json(o.value) for o in result.outputs if o.role == "charges"
        ]
    doc = report(ledger.store, "t1")
    assert Decimal(doc["totals"]["amount"]) == sum((c.amount for c in published), Decimal(0))
    assert doc["totals"]["calls"] == len(published) == 40
    # The recent ring keeps the last 20, newest first, with the balance after each.
    ring = recent(ledger.store, "t1")["charges"]
    assert [c["id"] for c in ring] == [f"c{i}" for i in range(39, 39 - RECENT_CHARGES, -1)]
    assert ring[0]["bal"] == str(published[-1].balance_after)


def test_days_outside_the_period_are_left_out() -> None:
    ledger, feed = opened()
    feed.send("cdr", cdr_doc("today"))
    feed.send("cdr", cdr_doc("yesterday", call_start=T0 - timedelta(days=1, hours=1)))
    assert report(ledger.store, "t1")["totals"]["calls"] == 1
    both = report(ledger.store, "t1", DAY - timedelta(days=1), DAY)
    assert both["totals"]["calls"] == 2
    assert [r["day"] for r in both["rows"]] == [
        (DAY - timedelta(days=1)).isoformat(),
        DAY.isoformat(),
    ]


def test_every_crash_prefix_then_full_replay_gives_exact_usage() -> None:
    scenario = fixed_scenario()
    original = Changelog()
    run(new_ledger(original), scenario.messages, 0, T0)
    check_usage(scenario, original)
    for keep in range(len(original.log) + 1):
        store = original.crashed(keep)
        run(new_ledger(store), scenario.messages, 0, T0 + timedelta(hours=1))
        check_usage(scenario, store)
        # A second full replay of an already applied log changes nothing at all.
        before = json.dumps(store.data, sort_keys=True)
        run(new_ledger(store), scenario.messages, 0, T0 + timedelta(hours=2))
        assert json.dumps(store.data, sort_keys=True) == before


def test_every_crash_prefix_then_replay_from_commit_point_gives_exact_usage() -> None:
    scenario = fixed_scenario()
    original = Changelog()
    ledger = new_ledger(original)
    ends = []
    for offset, env in enumerate(scenario.messages):
        ledger.handle(env, 0, offset, T0)
        ends.append(len(original.log))
    for keep in range(len(original.log) + 1):
        commit = next((i for i, end in enumerate(ends) if end > keep), len(ends))
        store = original.crashed(keep)
        run(new_ledger(store), scenario.messages, commit, T0 + timedelta(hours=1))
        check_usage(scenario, store)


def test_repair_adds_usage_only_when_the_row_missed_the_debit() -> None:
    # Crash right after the marker (row lost) vs right after the row (account lost).
    scenario = Scenario()
    scenario.add("settings", {"tenant_id": "t1", "currency": "USD"})
    scenario.add("cdr", cdr_doc("c1", duration=61))
    original = Changelog()
    run(new_ledger(original), scenario.messages, 0, T0)
    kinds = [k.split("/")[0] for k, _ in original.log]
    # outbox -> marker -> usage -> recent page -> account
    assert kinds == ["o", "a", "o", "c", "u", "r", "a"]
    for keep in (3, 4, 5, 6):
        store = original.crashed(keep)
        result = new_ledger(store).handle(scenario.messages[1], 0, 1, T0)
        assert result.outcome == ("repaired" if keep >= 4 else "charged")
        check_usage(scenario, store)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenario=scenarios(), data=st.data())
def test_random_crashes_and_redeliveries_keep_usage_exact(
    scenario: Scenario, data: st.DataObject
) -> None:
    changelog = Changelog()
    run(new_ledger(changelog), scenario.messages, 0, T0)
    for round_ in range(data.draw(st.integers(1, 3), label="crashes")):
        keep = data.draw(st.integers(0, len(changelog.log)), label=f"keep{round_}")
        changelog = changelog.crashed(keep)
        run(new_ledger(changelog), scenario.messages, 0, T0 + timedelta(minutes=round_ + 1))
    check_usage(scenario, changelog)


def test_rows_expire_after_the_retention_in_bounded_ticks() -> None:
    ledger, feed = opened()
    feed.send("cdr", cdr_doc("c1"))
    key = keys.usage_key("t1", DAY.isoformat(), Product.CONFERENCING_DIALOUT.value)
    assert key in ledger.store
    feed.tick(T0 + timedelta(days=RETENTION_DAYS - 1))
    assert key in ledger.store
    # After a rebalance the index is rebuilt from the stored rows: expiry still happens.
    rebuilt = new_ledger(ledger.store)
    rebuilt.rebuild_index(0, list(ledger.store.items()))
    Feed(rebuilt).tick(T0 + timedelta(days=RETENTION_DAYS + 2))
    assert key not in rebuilt.store


def test_usage_row_round_trips_with_decimal_strings() -> None:
    row = UsageRow(3, 181, Decimal("0.0720"), 17, 123)
    assert row.to_dict()["amt"] == "0.0720"
    assert UsageRow.from_dict(json.loads(json.dumps(row.to_dict()))) == row


def test_parse_range_defaults_to_the_last_30_days_and_checks_its_input() -> None:
    today = date(2026, 11, 20)
    assert parse_range(None, None, today) == (date(2026, 10, 22), today)
    assert parse_range("2026-11-01", "2026-11-20", today) == (date(2026, 11, 1), today)
    for start, end in (
        ("2026-11-21", "2026-11-20"),
        ("2026-1-01", None),
        ("yesterday", None),
        ("2026-02-30", None),
        ("2024-01-01", "2026-01-01"),
    ):
        with pytest.raises(RangeError):
            parse_range(start, end, today)
    assert MAX_RANGE_DAYS == 400


def _as_legacy_ring(store: Changelog, tenants: set[str]) -> Changelog:
    """The same recent activity in the ring layout written before pages (counter
    ``r/{tenant}`` with ``lo`` and a count per kind, slots ``r/{tenant}/{kind}/{n % limit}``
    holding ``seq`` n); a full page is given older, scrolled-out entries so the slots wrap."""
    data = {k: v for k, v in store.data.items() if not k.startswith("r/")}
    for tenant in tenants:
        counter: dict[str, int] = {"lo": -1}
        for kind, limit in (("charges", RECENT_CHARGES), ("funds", RECENT_FUNDS)):
            page = store.data.get(keys.recent_key(tenant, kind), {"lo": -1, "e": []})
            total = len(page["e"]) + (7 if len(page["e"]) == limit else 0)
            for age, entry in enumerate(page["e"]):
                n = total - 1 - age
                data[keys.make_key(keys.KeyKind.RECENT, tenant, kind, str(n % limit))] = {
                    **entry,
                    "seq": n,
                }
            counter[kind] = total
            counter["lo"] = max(counter["lo"], int(page["lo"]))
        data[keys.recent_key(tenant)] = counter
    return Changelog(list(data.items()))


def _legacy_keys(store: Changelog) -> set[str]:
    return {k for k in store.data if k.startswith("r/") and k.count("/") != 2}


def test_a_legacy_ring_is_read_as_it_was_and_migrated_by_the_next_record() -> None:
    scenario = Scenario()
    scenario.add("settings", settings_doc("t1"))
    scenario.add("settings", settings_doc("t2"))
    scenario.add("funds", funds_doc("f1", "t1", amount="50"))
    for i in range(RECENT_CHARGES + 3):  # t1's page is full: its legacy slots wrap
        scenario.add("cdr", cdr_doc(f"old{i}", "t1", duration=30 + i))
    scenario.add("cdr", cdr_doc("old-t2", "t2"))
    before = len(scenario.messages)
    scenario.add("cdr", cdr_doc("new1", "t1"))
    scenario.add("funds", funds_doc("f2", "t1", amount="5"))
    scenario.add("cdr", cdr_doc("new2", "t2"))
    scenario.add("cdr", cdr_doc("old3", "t1", duration=33))  # a duplicate: no entry

    pages = Changelog()
    run(new_ledger(pages), scenario.messages[:before], 0, T0)
    legacy = _as_legacy_ring(pages, {"t1", "t2"})
    assert not any(k.startswith("r/") and k.count("/") == 2 for k in legacy.data)
    for tenant in ("t1", "t2"):
        assert recent(legacy, tenant) == recent(pages, tenant)

    # Each record after the upgrade, from every crash prefix of its writes, replayed.
    upgraded = Changelog(legacy.log)
    base = len(upgraded.log)
    ledger = new_ledger(upgraded)
    for offset in range(before, len(scenario.messages)):
        ledger.handle(scenario.messages[offset], 0, offset, T0)
    run(new_ledger(pages), scenario.messages, before, T0)
    assert {t: recent(upgraded, t) for t in ("t1", "t2")} == {
        t: recent(pages, t) for t in ("t1", "t2")
    }
    assert _legacy_keys(upgraded) == set()
    for keep in range(base, len(upgraded.log) + 1):
        store = upgraded.crashed(keep)
        # (Replayed at the same clock: a funds entry freshly applied carries its time.)
        run(new_ledger(store), scenario.messages, before, T0)
        for tenant in ("t1", "t2"):
            assert recent(store, tenant) == recent(pages, tenant), keep
        assert _legacy_keys(store) == set(), keep
