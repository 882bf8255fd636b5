"""The ledger adapter applies a partition's records in offset order, none skipped
(streaming/in_order.py): records that arrive after missing ones wait for them."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from faust.types import TP
from prometheus_client import generate_latest

from tests.integration.harness import metric_value
from tests.unit.builders import cdr_doc, funds_doc, settings_doc
from tests.unit.test_epochs import FakeKafka, _ledger_event, _ledger_pipeline

LEDGER0 = TP("app-ledger", 0)


def _charged(p: Any) -> list[str]:
    return [json.loads(s[2])["cdr_id"] for s in p.app.producer.sent if s[0] == "charges"]


def _pipeline() -> Any:
    """The ledger adapter on fakes, ledger partition 0 read from offset 0."""
    p = _ledger_pipeline(FakeKafka())
    p.app.consumer.starts[LEDGER0] = 0
    return p


async def _open_account(p: Any) -> None:
    """Ledger records 0 and 1: tenant t1's settings and funds."""
    await p.ledger_batch(
        [
            _ledger_event(0, "settings", settings_doc()),
            _ledger_event(1, "funds", funds_doc("f1", amount="100.00")),
        ]
    )


def test_records_after_missing_ones_wait_for_them_and_every_cdr_is_charged_once() -> None:
    # Faust's fetch loop dropped ledger records 2 and 3 and delivered 4. Applying 4 first
    # moved the account's lo to 4, and 2 and 3, read again later, were taken for records
    # already applied: their CDRs dropped as duplicates, never charged.
    p = _pipeline()

    async def scenario() -> None:
        await _open_account(p)
        await p.ledger_batch([_ledger_event(4, "cdr", cdr_doc("c3"))])
        assert _charged(p) == []  # not applied
        assert p.app.consumer.disregarded == [4]  # its ack does not move the commit
        assert p.app.consumer.reads == [(LEDGER0, 2)]  # read again from the first missing
        body = generate_latest(p.metrics.registry).decode()
        assert metric_value(body, "rating_ledger_gaps_total", partition="0") == 1

        # Another record fetched before the read again: skipped too, no second seek.
        await p.ledger_batch([_ledger_event(5, "cdr", cdr_doc("c4"))])
        assert p.app.consumer.disregarded == [4, 5]
        assert p.app.consumer.reads == [(LEDGER0, 2)]

        await p.ledger_batch(
            [
                _ledger_event(2, "cdr", cdr_doc("c1")),
                _ledger_event(3, "cdr", cdr_doc("c2")),
                _ledger_event(4, "cdr", cdr_doc("c3")),
                _ledger_event(5, "cdr", cdr_doc("c4")),
            ]
        )
        assert _charged(p) == ["c1", "c2", "c3", "c4"]

    asyncio.run(scenario())


def test_the_first_record_of_a_generation_must_be_the_committed_one() -> None:
    p = _pipeline()

    async def scenario() -> None:
        await p.ledger_batch([_ledger_event(1, "settings", settings_doc())])
        assert p.ledger.account("t1") is None  # 0 never arrived: 1 is not applied
        assert p.app.consumer.reads == [(LEDGER0, 0)]

    asyncio.run(scenario())


def test_records_deleted_by_retention_are_not_waited_for() -> None:
    p = _pipeline()
    p.app.consumer.earliest[LEDGER0] = 7  # 0..6 deleted before this worker read them

    async def scenario() -> None:
        await p.ledger_batch([_ledger_event(7, "settings", settings_doc())])
        assert p.app.consumer.reads == [(LEDGER0, 7)]  # read from the log start
        await p.ledger_batch([_ledger_event(7, "settings", settings_doc())])
        assert p.ledger.account("t1") is not None

    asyncio.run(scenario())


def test_a_batch_that_waited_through_a_rebalance_keeps_its_generations_order() -> None:
    # Fetched in generation 5 with record 2 dropped, applied after the worker rejoined in
    # generation 6: applying 3 would make 2, read again in generation 6, look applied.
    p = _pipeline()

    async def scenario() -> None:
        await _open_account(p)
        p.app.consumer_generation_id = 6
        await p.ledger_batch([_ledger_event(3, "cdr", cdr_doc("c2"))])  # generation 5
        assert _charged(p) == []
        assert p.app.consumer.reads == [(LEDGER0, 2)]

    asyncio.run(scenario())
