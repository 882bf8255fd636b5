"""The adapter's own pieces: the draining Producer, the lean Monitor, batched ingest, the clock.

The Producer and the Monitor override Faust methods; these tests pin the Faust shapes they
rely on, so an upgrade that moves them fails here, not in production. No broker: plain
objects stand in for Faust's messages and the Kafka client.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import time
from dataclasses import dataclass
from datetime import UTC, date, datetime
from types import SimpleNamespace
from typing import Any

import faust
import pytest
from faust.sensors.monitor import Monitor
from faust.transport.consumer import Consumer as FaustConsumer
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.transport.producer import ProducerBuffer
from faust.types import TP
from prometheus_client import generate_latest

from rating.contracts import Charge, Rejection
from rating.ingest import Envelope
from rating.ledger import Result, Role
from rating.metrics import Metrics
from rating.partitioning import partition_of
from rating.settings import Settings
from rating.streaming import admin_ops, transport
from rating.streaming.app import LEDGER_RECORD_MAX_MESSAGES, Pipeline, Send, record_time
from rating.streaming.clock import ManualClock, SystemClock
from rating.streaming.quarantine import undecodable_handler
from rating.streaming.sensors import PER_EVENT_HOOKS, LeanMonitor
from rating.streaming.transport import Action, UndecodableBatch
from tests.integration.harness import cdr_msg, metric_value

AT = datetime(2026, 11, 22, 10, 0, tzinfo=UTC)


def params(function: object) -> list[str]:
    return list(inspect.signature(function).parameters)  # type: ignore[arg-type]


# --- the Producer: flush means empty ---------------------------------------------------------


def test_faust_commits_only_after_flushing_the_apps_producer() -> None:
    commit = inspect.getsource(FaustConsumer._commit_offsets)
    assert "self.app.producer.flush()" in commit
    assert commit.index("self.app.producer.flush()") < commit.index("self._commit(")
    # The buffer's shape our flush uses, and Faust's flush reaching the buffer and client.
    assert isinstance(inspect.getattr_static(ProducerBuffer, "size"), property)
    assert inspect.iscoroutinefunction(ProducerBuffer.flush)
    assert "flush_atmost(None)" in inspect.getsource(ProducerBuffer.flush)
    assert "timeout=0.1" in inspect.getsource(ProducerBuffer.flush_atmost)  # why we loop
    flush = inspect.getsource(faust_aiokafka.Producer.flush)
    assert "self.buffer.flush()" in flush
    assert "self._producer.flush()" in flush
    assert issubclass(transport.Producer, faust_aiokafka.Producer)
    assert transport.Transport.Producer is transport.Producer


def test_the_apps_producer_is_ours() -> None:
    app = faust.App("t-producer", broker=f"{transport.SCHEME}://127.0.0.1:1")
    assert type(app.producer) is transport.Producer  # built, not started: no I/O
    buffer = app.producer.buffer
    assert type(buffer) is transport.ProducerBuffer
    assert buffer.app is app
    assert buffer.max_messages == 5000


def test_faust_builds_starts_and_ebbs_the_buffer_the_way_our_producer_expects() -> None:
    from faust.transport import conductor
    from faust.transport.producer import Producer as FaustProducer

    init = inspect.getsource(FaustProducer.__init__)
    assert "self.buffer = ProducerBuffer(loop=self.loop, beacon=self.beacon)" in init
    assert "self.buffer.app = self.app" in init
    assert "self.add_runtime_dependency(self.buffer)" in inspect.getsource(FaustProducer.on_start)
    # The conductor pauses every input while the buffer holds more than max_messages.
    assert "app.producer.buffer.wait_until_ebb" in inspect.getsource(conductor)
    assert "self.max_messages" in inspect.getsource(ProducerBuffer.wait_until_ebb)
    assert ProducerBuffer.max_messages < transport.ProducerBuffer.max_messages


class SlowBuffer:
    """A buffer whose flush gives up early, like ProducerBuffer's under back-pressure."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.calls = 0

    async def flush(self) -> None:
        self.calls += 1
        self.size = max(0, self.size - 2)


def test_flush_drains_the_buffer_before_it_returns() -> None:
    app = faust.App("t-drain", broker=f"{transport.SCHEME}://127.0.0.1:1")
    producer = app.producer
    buffer = SlowBuffer(5)
    producer.buffer = buffer  # a test double; the Kafka client is not started (None)
    asyncio.run(producer.flush())
    assert buffer.size == 0
    assert buffer.calls == 4  # three rounds to empty it, then Faust's own flush


# --- the Monitor ------------------------------------------------------------------------------


def test_the_lean_monitor_overrides_faust_hooks_that_exist() -> None:
    for name in PER_EVENT_HOOKS:
        faust_hook = getattr(Monitor, name)
        ours = getattr(LeanMonitor, name)
        assert ours is not faust_hook, name
        assert params(ours) == params(faust_hook), name


def test_the_lean_monitor_keeps_the_commit_and_rebalance_figures() -> None:
    kept = ["on_tp_commit", "on_rebalance_start", "on_rebalance_end", "on_commit_completed"]
    for name in kept:
        assert getattr(LeanMonitor, name) is getattr(Monitor, name)
    monitor = LeanMonitor()
    assert monitor.on_stream_event_in(None, 0, None, None) is None  # no per-event state


def test_the_lean_monitor_records_when_a_stream_last_took_an_event() -> None:
    # Faust's consumer tells a stalled stream from a working one by this figure; without it
    # it logs "Stream has not started processing" for every partition it is processing.
    check = inspect.getsource(faust_aiokafka.AIOKafkaConsumerThread.verify_event_path)
    assert "monitor.stream_inbound_time.get(tp)" in check
    monitor = LeanMonitor()
    tp = TP("ledger", 3)
    before = time.monotonic()
    monitor.on_stream_event_in(tp, 7, None, None)
    assert before <= monitor.stream_inbound_time[tp] <= time.monotonic()


def test_the_app_uses_the_lean_monitor(tmp_path: Any) -> None:
    from rating.streaming.app import _faust_app

    app = _faust_app(Settings(data_dir=tmp_path))
    assert isinstance(app.monitor, LeanMonitor)


# --- batched ingest ---------------------------------------------------------------------------


@dataclass
class Msg:
    value: bytes | None
    key: bytes | None
    topic: str = "cdr.audio-conferencing"
    partition: int = 0
    offset: int = 0


def pipeline(clock: ManualClock) -> Pipeline:
    p = Pipeline(
        settings=Settings(),
        metrics=Metrics(),
        app=None,  # type: ignore[arg-type]
        rates=None,  # type: ignore[arg-type]
        ledger=None,  # type: ignore[arg-type]
        store=None,  # type: ignore[arg-type]
        clock=clock,
    )
    p.kind_by_topic = {"cdr.audio-conferencing": "cdr", "rating.tenant-settings": "settings"}
    return p


def ledger_messages(send: Send) -> list[Envelope]:
    assert send.role == "ledger"
    assert send.key is None
    return [Envelope.from_dict(d) for d in json.loads(send.value)["m"]]


def test_ingest_turns_a_batch_into_rejections_then_one_ledger_record_per_partition() -> None:
    p = pipeline(ManualClock(AT))
    n = p.settings.partitions
    other = next(
        t for t in ("t2", "t3", "t4", "t5") if partition_of(t, n) != partition_of("acme", n)
    )
    key, good = cdr_msg("acme", "c1")
    okey, ogood = cdr_msg(other, "c9")
    batch = [
        Msg(good, key, offset=0),
        Msg(b"{not json", key, offset=1),
        Msg(ogood, okey, offset=2),
        Msg(good, b"other", offset=3),  # key_mismatch
        Msg(good, key, offset=4),
    ]
    sent = p.ingest(batch)
    assert [s.role for s in sent] == ["rejected", "rejected", "ledger", "ledger"]
    malformed = Rejection.model_validate_json(sent[0].value)
    assert (malformed.reason.value, malformed.offset, malformed.rejected_at) == ("malformed", 1, AT)
    assert sent[0].key == key  # rejections keep the input key
    assert sent[1].key == b"other"
    # The partition's messages in input order, in one record sent to the tenant's partition.
    acme = ledger_messages(sent[2])
    assert [(e.tenant_id, e.source.offset, e.payload) for e in acme] == [
        ("acme", 0, good.decode()),
        ("acme", 4, good.decode()),
    ]
    assert sent[2].partition == partition_of("acme", n)
    assert [e.tenant_id for e in ledger_messages(sent[3])] == [other]
    assert sent[3].partition == partition_of(other, n)
    assert json.loads(sent[3].value)["it"] == AT.timestamp()  # the injected clock
    body = generate_latest(p.metrics.registry).decode()
    assert metric_value(body, "rating_cdrs_consumed_total") == 5
    assert metric_value(body, "rating_cdrs_rejected_total", reason="malformed") == 1
    assert metric_value(body, "rating_cdrs_rejected_total", reason="key_mismatch") == 1


def test_a_partitions_messages_are_split_into_records_by_count_and_size(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import rating.streaming.app as app_module

    p = pipeline(ManualClock(AT))
    batch = [Msg(cdr_msg("acme", f"c{i}")[1], b"acme", offset=i) for i in range(600)]
    sent = p.ingest(batch)
    counts = [len(ledger_messages(s)) for s in sent]
    assert counts == [LEDGER_RECORD_MAX_MESSAGES, LEDGER_RECORD_MAX_MESSAGES, 88]
    offsets = [e.source.offset for s in sent for e in ledger_messages(s)]
    assert offsets == list(range(600))  # in input order across the records
    one = len(json.dumps(Envelope.from_dict(json.loads(sent[0].value)["m"][0]).to_dict()))
    monkeypatch.setattr(app_module, "LEDGER_RECORD_MAX_BYTES", 3 * one + 10)
    sized = p.ingest(batch[:7])
    assert [len(ledger_messages(s)) for s in sized] == [3, 3, 1]
    assert all(len(s.value) < 3 * one + 100 for s in sized)


def test_a_failure_inside_ingest_parks_the_message_as_internal_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import rating.streaming.app as app_module

    def broken(*_a: Any) -> Any:
        raise RuntimeError("boom")

    monkeypatch.setattr(app_module, "validate", broken)
    p = pipeline(ManualClock(AT))
    key, good = cdr_msg("acme", "c1")
    ((role, out_key, value, _),) = p.ingest([Msg(good, key)])
    assert (role, out_key) == ("rejected", key)
    assert Rejection.model_validate_json(value).reason.value == "internal_error"
    body = generate_latest(p.metrics.registry).decode()
    assert metric_value(body, "rating_internal_errors_total", stage="ingest") == 1


class FakeTopic:
    def __init__(self, name: str) -> None:
        self.name = name

    def get_topic_name(self) -> str:
        return self.name


class FakeProducer:
    """Records each send; delivery futures resolve (or fail) when the test says."""

    def __init__(self, fail: bool = False) -> None:
        self.sent: list[tuple[str, bytes | None, bytes, int | None]] = []
        self.fail = fail

    async def send(
        self, topic: str, key: bytes | None, value: bytes, partition: int | None, *_rest: Any
    ) -> Any:
        self.sent.append((topic, key, value, partition))
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if self.fail and len(self.sent) == 2:
            future.set_exception(RuntimeError("not delivered"))
        else:
            future.set_result(None)
        return future


@dataclass
class FakeApp:
    producer: FakeProducer


def test_send_all_queues_every_record_in_order_then_waits_for_the_acks() -> None:
    p = pipeline(ManualClock(AT))
    producer = FakeProducer()
    p.app = FakeApp(producer)  # type: ignore[assignment]
    p.sinks = {"ledger": FakeTopic("app-ledger"), "rejected": FakeTopic("rating.rejected")}
    records = [
        Send(Role.LEDGER, None, b"1", 3),
        Send(Role.REJECTED, None, b"2"),
        Send(Role.LEDGER, b"b", b"3"),
    ]
    asyncio.run(p.send_all(records))
    assert producer.sent == [
        ("app-ledger", None, b"1", 3),
        ("rating.rejected", None, b"2", None),
        ("app-ledger", b"b", b"3", None),
    ]


def test_send_all_raises_when_a_record_is_not_delivered() -> None:
    p = pipeline(ManualClock(AT))
    p.app = FakeApp(FakeProducer(fail=True))  # type: ignore[assignment]
    p.sinks = {"ledger": FakeTopic("app-ledger")}
    with pytest.raises(RuntimeError, match="not delivered"):
        asyncio.run(p.send_all([Send(Role.LEDGER, b"a", b"1"), Send(Role.LEDGER, b"a", b"2")]))


def charge(cdr_id: str, product: str, amount: str) -> Charge:
    return Charge.model_validate(
        {
            "cdr_id": cdr_id,
            "tenant_id": "acme",
            "product": product,
            "call_start": "2026-11-22T09:00:00Z",
            "duration_seconds": 60,
            "billable_seconds": 60,
            "rated_number": "4520123456",
            "prefix": "45",
            "zone": "DK",
            "rate_card_id": "std",
            "per_minute": amount,
            "amount": amount,
            "currency": "USD",
            "rated_at": "2026-11-22T10:00:00Z",
        }
    )


def test_count_results_sums_a_batch_like_counting_one_by_one() -> None:
    p = pipeline(ManualClock(AT))
    end = datetime(2026, 11, 22, 9, 59, tzinfo=UTC)
    done: list[tuple[Result, float | None]] = [
        (Result("charged", charge=charge("a", "tollfree_inbound", "0.10"), call_end=end), None),
        (Result("charged", charge=charge("b", "tollfree_inbound", "0.25"), call_end=end), None),
        (Result("charged", charge=charge("c", "conferencing_dialout", "1.5")), AT.timestamp() - 2),
        (Result("duplicate", product="tollfree_inbound"), None),
        (Result("settings", parts=[Result("held", topic="cdr.toll-free")]), None),
    ]
    p.count_results(done)
    body = generate_latest(p.metrics.registry).decode()
    assert metric_value(body, "rating_cdrs_charged_total", product="tollfree_inbound") == 2
    assert metric_value(body, "rating_cdrs_charged_total", product="conferencing_dialout") == 1
    amount = metric_value(body, "rating_charged_amount_total", product="tollfree_inbound")
    assert amount == pytest.approx(0.35)
    assert metric_value(body, "rating_cdrs_duplicate_total") == 1
    assert metric_value(body, "rating_tenant_settings_applied_total") == 1
    assert metric_value(body, "rating_messages_held_total", topic="cdr.toll-free") == 1
    assert metric_value(body, "rating_processing_latency_seconds_count") == 1
    assert metric_value(body, "rating_processing_latency_seconds_sum") == 2
    assert metric_value(body, "rating_event_lag_seconds_count") == 2
    assert metric_value(body, "rating_event_lag_seconds_sum") == 120


# --- the clock --------------------------------------------------------------------------------


def test_record_time_falls_back_to_the_injected_clock() -> None:
    clock = ManualClock(AT)
    assert record_time(Msg(b"", None), clock) == AT  # no timestamp on the message
    clock.advance(1.5)
    assert clock.now() == datetime(2026, 11, 22, 10, 0, 1, 500000, tzinfo=UTC)
    assert clock.time() == AT.timestamp() + 1.5


def test_the_system_clock_is_utc() -> None:
    assert SystemClock().now().tzinfo is UTC
    with pytest.raises(ValueError, match="timezone-aware"):
        ManualClock(datetime(2026, 1, 1))  # noqa: DTZ001 - the point of the test


def test_the_admin_pages_today_is_the_injected_clocks() -> None:
    clock = ManualClock(datetime(2026, 12, 31, 23, 59, 30, tzinfo=UTC))
    p = pipeline(clock)
    assert admin_ops.today(p) == date(2026, 12, 31)
    clock.advance(60)
    assert admin_ops.today(p) == date(2027, 1, 1)


def parking_pipeline() -> tuple[Pipeline, list[bytes]]:
    """A pipeline whose producer keeps the Rejections the undecodable handler publishes."""
    p = pipeline(ManualClock(AT))
    sent: list[bytes] = []

    class Producer:
        async def send_and_wait(self, topic: str, key: Any, value: bytes, *_: Any) -> None:
            sent.append(value)

    p.app = SimpleNamespace(producer=Producer())  # type: ignore[assignment]
    p.sinks = {Role.REJECTED: FakeTopic("rating.rejected")}
    return p, sent


def test_an_undecodable_batch_is_parked_at_the_injected_clocks_time() -> None:
    p, sent = parking_pipeline()
    batch = UndecodableBatch("cdr.audio-conferencing", 0, 10, 12, "lz4", "bad frame")
    assert asyncio.run(undecodable_handler(p)(batch)) is Action.SKIP
    assert json.loads(sent[0])["rejected_at"] == "2026-11-22T10:00:00Z"


def test_a_batch_met_again_after_it_was_parked_is_skipped_without_a_second_rejection() -> None:
    # A re-read from a committed offset below a parked batch (after a rebalance) meets it
    # again: it was parked durably the first time, so one Rejection per batch.
    p, sent = parking_pipeline()
    handle = undecodable_handler(p)
    batch = UndecodableBatch("cdr.audio-conferencing", 0, 10, 12, "lz4", "bad frame")
    other = UndecodableBatch("cdr.audio-conferencing", 1, 10, 12, "lz4", "bad frame")

    async def scenario() -> list[Action]:
        return [await handle(batch), await handle(batch), await handle(other)]

    assert asyncio.run(scenario()) == [Action.SKIP, Action.SKIP, Action.SKIP]
    assert [json.loads(v)["partition"] for v in sent] == [0, 1]
