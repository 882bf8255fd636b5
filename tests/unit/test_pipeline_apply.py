"""Pipeline.apply: whatever fails on one ledger record parks it as internal_error.

No broker: a dict stands in for the table store and plain objects for Faust's messages.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import pytest
from prometheus_client import generate_latest

from rating.contracts import Rejection, RejectReason
from rating.domain.account import RechargePolicy
from rating.domain.ratecard import RateBook
from rating.ledger import Ledger
from rating.metrics import Metrics
from rating.partitioning import partition_of
from rating.settings import Settings
from rating.streaming.app import Pipeline
from tests.integration.harness import metric_value


class DictStore(dict[str, Any]):
    partition = 0


@dataclass
class Msg:
    value: bytes | None
    topic: str = "rating-ledger"
    partition: int = 0
    offset: int = 7
    key: bytes | None = b"t1"
    timestamp: float = 1_790_000_000.0


def pipeline(store: DictStore) -> Pipeline:
    ledger = Ledger(store, lambda: RateBook.from_cards([]), RechargePolicy(), timedelta(days=7))
    return Pipeline(
        settings=Settings(),
        metrics=Metrics(),
        app=None,  # type: ignore[arg-type]
        rates=None,  # type: ignore[arg-type]
        ledger=ledger,
        store=store,  # type: ignore[arg-type]
    )


@pytest.mark.parametrize(
    "value",
    [
        pytest.param(b"{not json", id="not-json"),
        pytest.param(json.dumps({"k": "cdr", "t": "t1"}).encode(), id="envelope-missing-fields"),
        pytest.param(b"[1, 2]", id="not-an-object"),
    ],
)
def test_a_broken_ledger_record_is_parked_as_internal_error(value: bytes) -> None:
    p = pipeline(DictStore())
    (result,), _ = p.apply(Msg(value))
    assert result.reason is RejectReason.INTERNAL_ERROR
    (out,) = result.outputs
    rej = Rejection.model_validate_json(out.value)
    assert rej.payload == value.decode()
    assert (rej.source_topic, rej.partition, rej.offset) == ("rating-ledger", 0, 7)
    body = generate_latest(p.metrics.registry).decode()
    assert metric_value(body, "rating_internal_errors_total", stage="ledger") == 1
    assert metric_value(body, "rating_cdrs_rejected_total", reason="internal_error") == 1


def test_a_failure_while_indexing_the_partition_is_parked_too() -> None:
    store = DictStore({"a/t1": {"acct": {"v": 999}, "lo": 1}})  # unreadable account state
    tick = Msg(json.dumps({"k": "tick"}).encode(), partition=partition_of("t1", 8))
    (result,), _ = pipeline(store).apply(tick)
    assert result.reason is RejectReason.INTERNAL_ERROR
