"""The rating transport against the real Faust and aiokafka classes it builds on.

The transport overrides Faust methods and reads the frames of aiokafka's decoder when a batch
cannot be decoded. These tests pin that shape: an upgrade of either library that moves it
fails here, not in production.
"""

from __future__ import annotations

import asyncio
import inspect
from types import SimpleNamespace
from typing import Any

import aiokafka
import faust
import pytest
from aiokafka.consumer.fetcher import Fetcher, FetchResult, PartitionRecords
from aiokafka.consumer.subscription_state import SubscriptionState
from aiokafka.record.memory_records import MemoryRecords
from faust.transport import by_url
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP
from faust.types.tuples import ConsumerMessage
from mode import Service

from rating.settings import Settings
from rating.streaming import transport
from tests.batches import record_batch

GOOD = [(b"acme", b"one"), (b"acme", b"two")]
BAD = [(b"acme", b"three" * 50), (b"acme", b"four" * 50)]


def params(function: object) -> list[str]:
    return list(inspect.signature(function).parameters)  # type: ignore[arg-type]


def test_faust_seams_have_the_expected_shape() -> None:
    thread = faust_aiokafka.AIOKafkaConsumerThread
    assert params(thread._create_worker_consumer) == ["self", "transport"]
    assert params(thread._fetch_records) == [
        "self",
        "consumer",
        "active_partitions",
        "timeout",
        "max_records",
    ]
    # getmany is where Faust calls _fetch_records; ours must be the one it reaches.
    assert "self._fetch_records" in inspect.getsource(thread.getmany)
    assert params(faust_aiokafka.Consumer._new_consumer_thread) == ["self"]
    assert issubclass(transport.ConsumerThread, thread)
    assert issubclass(transport.Transport, faust_aiokafka.Transport)
    assert transport.Transport.Consumer is transport.Consumer


def test_aiokafka_reads_the_options_we_set_when_it_starts() -> None:
    async def attributes() -> tuple[int, str]:
        consumer = aiokafka.AIOKafkaConsumer(fetch_max_wait_ms=1234)  # not started: no I/O
        try:
            return consumer._fetch_max_wait_ms, consumer._isolation_level
        finally:
            await consumer.stop()

    assert asyncio.run(attributes()) == (1234, "read_uncommitted")
    start = inspect.getsource(aiokafka.AIOKafkaConsumer.start)
    assert "fetch_max_wait_ms=self._fetch_max_wait_ms" in start
    assert "isolation_level=self._isolation_level" in start


def test_the_entry_point_registers_the_scheme() -> None:
    assert by_url(f"{transport.SCHEME}://127.0.0.1:9092") is transport.Transport


def test_configure_sets_the_consumer_options_on_the_apps_transport() -> None:
    app = faust.App("t-transport", broker=f"{transport.SCHEME}://127.0.0.1:1")
    configured = transport.configure(
        app, fetch_max_wait_ms=77, isolation_level="read_uncommitted", undecodable_handler=None
    )
    assert configured is app.transport
    assert (configured.fetch_max_wait_ms, configured.isolation_level) == (77, "read_uncommitted")


def test_every_kafka_codec_is_installed() -> None:
    assert transport.missing_codecs() == []


def test_compression_and_isolation_settings_are_validated() -> None:
    assert Settings().compression == "lz4"
    assert Settings().isolation_level == "read_committed"
    assert Settings(compression="ZSTD").compression == "zstd"  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="'none', 'gzip', 'snappy', 'lz4' or 'zstd'"):
        Settings(compression="brotli")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="read_committed"):
        Settings(isolation_level="serializable")  # type: ignore[arg-type]


def _fetch_result(tp: aiokafka.TopicPartition, data: bytes, subs: SubscriptionState) -> FetchResult:
    records = PartitionRecords(tp, MemoryRecords(data), [], 0, None, None, True, 0)
    return FetchResult(
        tp, assignment=subs.subscription.assignment, partition_records=records, backoff=0
    )


@pytest.mark.parametrize(("damage", "codec"), [("payload", "gzip"), ("crc", "none")])
def test_a_decoding_error_is_attributed_to_its_partition_and_batch(damage: str, codec: str) -> None:
    """Through aiokafka's real fetched_records/FetchResult/PartitionRecords."""
    good_tp = aiokafka.TopicPartition("cdr", 0)
    bad_tp = aiokafka.TopicPartition("cdr", 1)

    async def go() -> BaseException:
        subs = SubscriptionState()
        subs.assign_from_user({good_tp, bad_tp})
        for tp in (good_tp, bad_tp):
            subs.seek(tp, 0)
        fetcher = Fetcher.__new__(Fetcher)  # only the state fetched_records reads
        fetcher._subscriptions = subs
        fetcher._wait_consume_future = None
        fetcher._records = {
            good_tp: _fetch_result(good_tp, record_batch(GOOD), subs),
            # A good batch, then the undecodable one at offsets 2..3, in one fetch.
            bad_tp: _fetch_result(
                bad_tp,
                record_batch(GOOD) + record_batch(BAD, codec, base_offset=2, damage=damage),  # type: ignore[arg-type]
                subs,
            ),
        }
        with pytest.raises(Exception) as caught:  # noqa: PT011 - any decoding error
            await fetcher.fetched_records({good_tp, bad_tp}, timeout=0)
        return caught.value

    failure = transport.decode_failure(asyncio.run(go()))
    assert failure is not None
    assert failure.tp == ("cdr", 1)
    batch = failure.batch
    assert (batch.topic, batch.partition, batch.base_offset, batch.next_offset) == ("cdr", 1, 2, 4)
    assert batch.codec == codec
    assert batch.ref == "cdr:1 offsets 2..3"
    # aiokafka has moved both positions past these; the transport hands them on.
    assert {tp: [r.value for r in rs] for tp, rs in failure.decoded.items()} == {
        good_tp: [b"one", b"two"],
        bad_tp: [b"one", b"two"],
    }


def test_other_errors_are_not_taken_for_decoding_errors() -> None:
    with pytest.raises(aiokafka.errors.KafkaError) as caught:
        raise aiokafka.errors.KafkaConnectionError("broker gone")
    assert transport.decode_failure(caught.value) is None


# --- offsets: never commit past a record no agent processed -----------------------------------

TP_A = transport.TP("cdr.toll-free", 0)


async def _noop_rebalance(*_args: object) -> None:
    return None


async def _noop_callback(_message: object) -> None:
    return None


class _Unthreaded(transport.Consumer):
    """Our consumer without its aiokafka thread (which would open an event loop of its own):
    nothing in these tests reaches the broker."""

    assigned: set[transport.TP]

    def _new_consumer_thread(self) -> Any:
        return Service(loop=self.loop, beacon=self.beacon)

    def assignment(self) -> set[transport.TP]:
        return getattr(self, "assigned", {TP_A})


def _consumer() -> transport.Consumer:
    """A consumer of a real Faust app; call it inside the test's event loop."""
    app = faust.App("t-offsets", broker=f"{transport.SCHEME}://127.0.0.1:1")
    return _Unthreaded(
        app.transport,
        callback=_noop_callback,
        on_partitions_revoked=_noop_rebalance,
        on_partitions_assigned=_noop_rebalance,
        loop=asyncio.get_running_loop(),
    )


def _ack(consumer: transport.Consumer, offsets: range) -> None:
    consumer._acked[TP_A].extend(offsets)
    consumer._acked_index[TP_A].update(offsets)


def test_faust_offset_bookkeeping_has_the_shape_the_guard_reads() -> None:
    base = faust_aiokafka.Consumer
    assert params(base._new_offset) == ["self", "tp"]
    assert params(base.seek_to_committed) == ["self"]
    assert params(base.on_partitions_revoked) == ["self", "revoked"]
    # A message's last ack reaches the consumer's ack, which the override extends.
    assert params(base.ack) == ["self", "message"]
    assert "consumer.ack(self)" in inspect.getsource(ConsumerMessage.on_final_ack)
    assert "generation_id" in inspect.signature(ConsumerMessage).parameters
    # Faust forgets the committed offsets on revocation: why the guard keeps its own start.
    assert "self._committed_offset.pop(tp, None)" in inspect.getsource(base.on_partitions_revoked)
    # ...and skips its head-of-queue check when it does not know one.
    assert "if committed_offset:" in inspect.getsource(base._new_offset)

    async def scenario() -> None:
        consumer = _consumer()
        for name in ("_acked", "_acked_index", "_gap", "_committed_offset", "_read_offset"):
            assert hasattr(consumer, name), name

    asyncio.run(scenario())


def test_a_commit_never_skips_offsets_between_the_committed_one_and_the_first_acked() -> None:
    async def scenario() -> None:
        consumer = _consumer()
        consumer._committed_offset[TP_A] = 10
        _ack(consumer, range(13, 21))
        assert consumer._new_offset(TP_A) is None  # 10..12 never processed
        _ack(consumer, range(10, 13))
        assert consumer._new_offset(TP_A) == 21

    asyncio.run(scenario())


def test_a_partition_this_worker_was_deposed_on_is_never_committed_in_that_generation() -> None:
    # Its records are acked (Faust's revocation waits for that) but were not processed: the
    # new owner has them (streaming/epochs.py). A later generation lifts the fence.
    async def scenario() -> None:
        consumer = _consumer()
        app = consumer.app
        app.consumer_generation_id = 4
        consumer._committed_offset[TP_A] = 10
        _ack(consumer, range(10, 15))
        assert consumer._new_offset(TP_A) == 15
        consumer._committed_offset[TP_A] = 15  # committed
        consumer.fence(TP_A, 3)  # another generation's fence: none in this one
        _ack(consumer, range(15, 17))
        assert consumer._new_offset(TP_A) == 17
        consumer._committed_offset[TP_A] = 17
        consumer.fence(TP_A, 4)
        _ack(consumer, range(17, 20))
        assert consumer._new_offset(TP_A) is None
        app.consumer_generation_id = 5
        assert consumer._new_offset(TP_A) == 20

    asyncio.run(scenario())


def test_one_offset_at_the_head_is_tolerated_as_faust_does_for_transaction_markers() -> None:
    async def scenario() -> None:
        consumer = _consumer()
        consumer._committed_offset[TP_A] = 10
        _ack(consumer, range(11, 15))
        assert consumer._new_offset(TP_A) == 15

    asyncio.run(scenario())


def test_acks_that_arrive_during_a_revocation_are_not_committed_over_a_hole() -> None:
    async def scenario() -> None:
        consumer = _consumer()
        consumer._committed_offset[TP_A] = 10
        await consumer.on_partitions_revoked({TP_A})
        assert consumer._committed_offset.get(TP_A) is None  # Faust forgot it
        _ack(consumer, range(15, 21))  # e.g. a batch acked while streams drain
        assert consumer._new_offset(TP_A) is None  # Faust alone would commit 21
        _ack(consumer, range(10, 15))
        assert consumer._new_offset(TP_A) == 21

    asyncio.run(scenario())


def test_a_partition_never_committed_starts_where_the_reset_policy_starts_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def committed(_self: object) -> dict[transport.TP, int | None]:
        return {TP_A: None}

    async def earliest(_self: object, *tps: transport.TP) -> dict[transport.TP, int]:
        return dict.fromkeys(tps, 0)

    monkeypatch.setattr(faust_aiokafka.Consumer, "seek_to_committed", committed)
    monkeypatch.setattr(faust_aiokafka.Consumer, "earliest_offsets", earliest)

    async def scenario() -> None:
        consumer = _consumer()
        await consumer.seek_to_committed()
        assert consumer._new_offset(TP_A) is None  # start not known yet: no commit
        await consumer.starts_known()
        _ack(consumer, range(3, 10))
        assert consumer._new_offset(TP_A) is None  # Faust alone would commit 10 over 0..2
        _ack(consumer, range(3))
        assert consumer._new_offset(TP_A) == 10

    asyncio.run(scenario())


def test_no_commit_before_the_partition_start_is_known() -> None:
    async def scenario() -> None:
        consumer = _consumer()
        _ack(consumer, range(5))
        assert consumer._new_offset(TP_A) is None

    asyncio.run(scenario())


@pytest.fixture
def seeks(monkeypatch: pytest.MonkeyPatch) -> list[tuple[transport.TP, int]]:
    """The seeks the consumer makes (Faust's seek replaced by a recorder)."""
    made: list[tuple[transport.TP, int]] = []

    async def seek(_self: object, tp: transport.TP, offset: int) -> None:
        made.append((tp, offset))

    monkeypatch.setattr(faust_aiokafka.Consumer, "seek", seek)
    return made


def test_a_hole_that_stays_makes_the_partition_read_again_from_its_start(
    seeks: list[tuple[transport.TP, int]],
) -> None:
    async def scenario() -> None:
        consumer = _consumer()
        consumer._committed_offset[TP_A] = 10
        _ack(consumer, range(15, 21))  # 10..14 dropped by the fetch loop, never processed
        for _ in range(transport.Consumer.HOLE_ROUNDS - 1):
            assert consumer._new_offset(TP_A) is None
        await consumer.starts_known()
        assert seeks == []  # not yet: maybe still in flight
        assert consumer._new_offset(TP_A) is None
        await consumer.starts_known()
        assert seeks == [(TP_A, 10)]  # read again from the first offset never processed
        _ack(consumer, range(10, 15))  # the records read again are processed
        assert consumer._new_offset(TP_A) == 21

    asyncio.run(scenario())


def test_a_partition_is_read_again_with_the_flow_stopped_for_its_seek(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A fetch being delivered when the seek lands would record its later offsets as read
    # after the seek, and the records read again would be dropped as delivered.
    flow: list[bool] = []

    async def seek(self: transport.Consumer, tp: transport.TP, offset: int) -> None:
        flow.append(self.flow_active)
        self._read_offset[tp] = offset

    monkeypatch.setattr(faust_aiokafka.Consumer, "seek", seek)

    async def scenario() -> None:
        consumer = _consumer()
        consumer.resume_flow()
        await consumer._read_again(TP_A, 10)  # type: ignore[attr-defined]
        assert flow == [False]
        assert consumer.flow_active  # resumed after the seek
        assert consumer._read_offset[TP_A] == 10

        consumer.app.rebalancing = True  # a rebalance began during the seek: it resumes
        await consumer._read_again(TP_A, 10)  # type: ignore[attr-defined]
        assert not consumer.flow_active

    asyncio.run(scenario())


def test_a_hole_in_a_partition_no_longer_assigned_is_left_to_its_new_owner(
    seeks: list[tuple[transport.TP, int]],
) -> None:
    async def scenario() -> None:
        consumer = _consumer()
        assert isinstance(consumer, _Unthreaded)
        consumer.assigned = set()  # revoked; acks of its last batches linger
        consumer._committed_offset[TP_A] = 10
        _ack(consumer, range(15, 21))
        for _ in range(3 * transport.Consumer.HOLE_ROUNDS):
            assert consumer._new_offset(TP_A) is None  # never committed over the hole
        await consumer.starts_known()
        assert seeks == []  # and no seek on a partition it does not have

    asyncio.run(scenario())


def test_the_seek_to_committed_offsets_runs_with_the_flow_stopped(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    seen: list[bool] = []

    async def committed(self: transport.Consumer) -> dict[transport.TP, int | None]:
        seen.append(self.flow_active)
        return {TP_A: 7}

    monkeypatch.setattr(faust_aiokafka.Consumer, "seek_to_committed", committed)

    async def scenario() -> None:
        consumer = _consumer()
        consumer.resume_flow()
        await consumer.perform_seek()
        # The fetch loop stops delivering what it fetched before the seek; resumes after.
        assert seen == [False]
        assert consumer.flow_active
        assert consumer._read_offset[TP_A] == 7
        assert consumer._start[TP_A] == 7

        consumer.stop_flow()  # a seek during a rebalance leaves the flow as it found it
        await consumer.perform_seek()
        assert not consumer.flow_active

    asyncio.run(scenario())


def test_changelog_records_the_loader_wrote_reach_faust_as_their_last_one() -> None:
    loaded: list[tuple[TP, list[int]]] = []

    def load(tp: TP, records: Any) -> bool:
        loaded.append((tp, list(records)))
        return tp.topic == "app-accounts-changelog"

    thread = SimpleNamespace(_rating=SimpleNamespace(changelog_loader=load))
    changelog = aiokafka.TopicPartition("app-accounts-changelog", 3)
    ledger = aiokafka.TopicPartition("rating.ledger", 3)
    fetched = {changelog: [1, 2, 3], ledger: [7, 8]}
    out = transport.ConsumerThread._load_changelogs(thread, fetched)  # type: ignore[arg-type]
    assert out == {changelog: [3], ledger: [7, 8]}  # Faust's recovery sees offset 3: done
    assert loaded == [
        (TP("app-accounts-changelog", 3), [1, 2, 3]),
        (TP("rating.ledger", 3), [7, 8]),
    ]
    none = SimpleNamespace(_rating=SimpleNamespace(changelog_loader=None))
    assert transport.ConsumerThread._load_changelogs(none, {changelog: [1, 2]}) == {  # type: ignore[arg-type]
        changelog: [1, 2]
    }


def _message(offset: int, generation: int) -> ConsumerMessage:
    return ConsumerMessage(
        TP_A.topic, TP_A.partition, offset, 0.0, 0, None, None, b"", None,
        tp=TP_A, generation_id=generation,
    )  # fmt: skip


def test_acks_of_a_batch_fetched_in_an_older_generation_are_not_recorded() -> None:
    # A worker frozen past its session timeout rejoins (generation 5), seeks to the committed
    # offset, and only then finishes the batch it fetched in generation 4. Recording those acks
    # would commit past records it reads again but has not processed yet.
    async def scenario() -> None:
        consumer = _consumer()
        app = consumer.app
        app.topics.acking_topics.add(TP_A.topic)  # a topic agents ack
        app.consumer_generation_id = 5
        consumer._committed_offset[TP_A] = 10
        stale = [_message(offset, 4) for offset in range(10, 20)]
        current = [_message(offset, 5) for offset in range(10, 12)]
        for message in stale + current:
            consumer.track_message(message)
        for message in stale:
            assert not message.ack(consumer)
        assert all(m.acked for m in stale)
        unacked = {id(m) for m in consumer._unacked_messages}
        assert unacked == {id(m) for m in current}  # nothing stale left to wait for
        assert consumer._new_offset(TP_A) is None  # the stale acks moved nothing
        for message in current:
            assert message.ack(consumer)
        assert consumer._new_offset(TP_A) == 12

    asyncio.run(scenario())


def test_acks_of_messages_the_ledger_left_unprocessed_are_not_recorded(
    seeks: list[tuple[transport.TP, int]],
) -> None:
    # The ledger found records 10..11 missing before 12 and 13 (streaming/in_order.py): it
    # applies neither, and has the partition read again. Recording their acks would let the
    # commit pass them once 10..11 are processed, before they are applied themselves.
    async def scenario() -> None:
        consumer = _consumer()
        app = consumer.app
        app.topics.acking_topics.add(TP_A.topic)
        app.consumer_generation_id = 5
        consumer._committed_offset[TP_A] = 10
        consumer._start[TP_A] = 10
        assert consumer.start_of(TP_A) == 10
        early = [_message(offset, 5) for offset in (12, 13)]
        for message in early:
            consumer.track_message(message)
            consumer.disregard(message)
            assert not message.ack(consumer)
        assert not consumer._unacked_messages  # nothing left for a revocation to wait for
        consumer.read_again(TP_A, 10)
        await consumer.starts_known()
        assert seeks == [(TP_A, 10)]
        again = [_message(offset, 5) for offset in range(10, 14)]  # fetched again: counted
        for message in again:
            consumer.track_message(message)
            assert message.ack(consumer)
        assert consumer._new_offset(TP_A) == 14

    asyncio.run(scenario())
