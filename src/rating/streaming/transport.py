"""The Faust transport of the worker: Faust's aiokafka driver, adjusted through its own seams.

Registered as the ``rating`` transport (entry point ``faust.transports`` in pyproject.toml), so
``create_app`` uses ``broker="rating://host:port"`` and Faust builds these classes itself:

- **Consumer settings Faust hard-codes.** ``fetch_max_wait_ms`` (Faust: 1500 ms; the embedded
  Tansu broker waits out the full time on every fetch, ~0.7 s per pipeline hop) and
  ``isolation_level`` (Faust: ``read_committed`` only in its own ``exactly_once`` mode). With
  ``read_committed`` the records of aborted publisher transactions are never delivered, so
  never charged. Both are set on the aiokafka consumer Faust builds, before it starts.
- **Undecodable record batches.** aiokafka decodes (decompresses, checks the CRC of) a fetched
  batch only when Faust drains it; an error there escapes ``getmany`` and Faust crashes the
  worker, which refetches the same batch after a restart: a crash loop that stops every
  partition. :meth:`ConsumerThread._fetch_records` catches such an error, attributes it to the
  partition and batch it came from, keeps the records decoded before it (aiokafka drops them
  from the failed call) and asks the app's :data:`UndecodableHandler` what to do:
  ``SKIP`` (the handler has parked the batch's coordinates durably; the consumer seeks past
  the batch) or ``STOP`` (that partition alone is no longer fetched; the others go on).
  The first failure at a batch only refetches it, in case the bytes were damaged in transit.

- **One race per fetch, not per record.** Faust's fetch loop hands every record to its
  conductor under a race with the flow's suspension (four tasks and an ``asyncio.wait``,
  ~90 us a record: the ingest hop's largest per-record cost). :meth:`Consumer._drain_messages`
  delivers a fetch's records from one task under one such race, with Faust's per-record
  bookkeeping (read offsets, gaps, ``broker_commit_every``) and, once the flow stops, Faust's
  own per-record race for the rest; a unit test pins the Faust source it mirrors.
- **Flush before commit, for real.** Faust commits an input offset only after
  ``producer.flush()``, but its ``ProducerBuffer.flush`` returns as soon as no buffered
  message leaves within 100 ms (e.g. while the Kafka client applies back-pressure), with
  table changelog records still queued: an offset could be committed ahead of the state it
  produced. :meth:`Producer.flush` drains the buffer until it is empty, then lets Faust
  flush the Kafka client. (This replaced a process-wide patch of ``ProducerBuffer.flush``;
  a unit test pins the Faust shapes it relies on.) Its buffer holds up to 5,000 records
  before Faust's conductor pauses the agents (Faust: 100, less than one ledger batch).

The attribution reads the traceback of the decoding error (the aiokafka ``PartitionRecords``
and ``FetchResult`` frames it passes through). That is aiokafka's inside, not an API: the
unit tests decode a real corrupt batch through those classes and fail if their shape changes.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
from collections.abc import Callable, Coroutine, Iterator, Mapping, Sequence, Set
from dataclasses import dataclass
from types import TracebackType
from typing import Any, ClassVar, Literal, cast

import aiokafka  # type: ignore[import-untyped]
from aiokafka import codec as aiokafka_codec
from aiokafka.consumer.fetcher import (  # type: ignore[import-untyped]
    Fetcher,
    FetchResult,
    PartitionRecords,
)
from faust.transport import consumer as faust_consumer
from faust.transport import producer as faust_producer
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP

from rating.settings import SettingsError

log = logging.getLogger("rating.transport")

IsolationLevel = Literal["read_committed", "read_uncommitted"]
#: Kafka's codec ids (the low 3 bits of a record batch's attributes).
CODEC_NAMES = {0: "none", 1: "gzip", 2: "snappy", 3: "lz4", 4: "zstd"}


def missing_codecs() -> list[str]:
    """Kafka codecs aiokafka cannot decode in this environment (should be none)."""
    checks = {
        "gzip": aiokafka_codec.has_gzip,
        "snappy": aiokafka_codec.has_snappy,
        "lz4": aiokafka_codec.has_lz4,
        "zstd": aiokafka_codec.has_zstd,
    }
    return [name for name, available in checks.items() if not available()]


class Action(enum.Enum):
    SKIP = "skip"  # the batch is parked: seek past it
    STOP = "stop"  # stop fetching this partition


@dataclass(frozen=True)
class UndecodableBatch:
    """A fetched record batch that cannot be decoded, and where it is."""

    topic: str
    partition: int
    base_offset: int  # first offset of the batch (or the fetch position if unknown)
    next_offset: int | None  # first offset after it; None when even its header is unreadable
    codec: str
    error: str

    @property
    def last_offset(self) -> int | None:
        return None if self.next_offset is None else self.next_offset - 1

    @property
    def ref(self) -> str:
        last = "?" if self.last_offset is None else str(self.last_offset)
        return f"{self.topic}:{self.partition} offsets {self.base_offset}..{last}"


UndecodableHandler = Callable[[UndecodableBatch], Coroutine[Any, Any, Action]]

#: Called in the consumer thread with each partition's fetched records (raw aiokafka
#: ConsumerRecords, in offset order): True if it wrote them to the local store itself
#: (changelog records, bulk recovery: rocks.py), False to leave them to Faust.
ChangelogLoader = Callable[[TP, Sequence[Any]], bool]


@dataclass(frozen=True)
class DecodeFailure:
    """Where a decoding error inside aiokafka's ``fetched_records`` came from."""

    tp: TP
    batch: UndecodableBatch
    # Records of this call decoded before the error (aiokafka already moved those
    # partitions' positions past them), the failing partition's own included.
    decoded: dict[Any, list[Any]]


def decode_failure(exc: BaseException) -> DecodeFailure | None:
    """Attribute an exception raised by ``Fetcher.fetched_records`` to a partition's batch.

    None when the error did not come from decoding a partition's records: the caller
    re-raises it (Faust's own handling).
    """
    records_frame = getall_frame = drained_frame = None
    tb: TracebackType | None = exc.__traceback__
    while tb is not None:
        frame = tb.tb_frame
        owner = frame.f_locals.get("self")
        if isinstance(owner, PartitionRecords):
            records_frame = frame
        elif isinstance(owner, FetchResult) and frame.f_code.co_name == "getall":
            getall_frame = frame
        elif isinstance(owner, Fetcher) and frame.f_code.co_name == "fetched_records":
            drained_frame = frame
        tb = tb.tb_next
    if records_frame is None:
        return None
    records = cast(PartitionRecords, records_frame.f_locals["self"])
    tp = records._tp
    batch = records_frame.f_locals.get("next_batch")
    if batch is not None:
        base = int(batch.base_offset)
        nxt: int | None = int(getattr(batch, "next_offset", base + 1))
        codec = CODEC_NAMES.get(int(batch.compression_type), f"unknown ({batch.compression_type})")
    else:  # the batch header itself could not be parsed
        base, nxt, codec = records.next_fetch_offset, None, "unknown"
    decoded: dict[Any, list[Any]] = {}
    if drained_frame is not None:
        decoded.update(drained_frame.f_locals.get("drained") or {})
    if getall_frame is not None and getall_frame.f_locals.get("ret_list"):
        decoded[tp] = list(getall_frame.f_locals["ret_list"])
    undecodable = UndecodableBatch(
        topic=tp.topic,
        partition=tp.partition,
        base_offset=base,
        next_offset=nxt,
        codec=codec,
        error=f"{_error_name(exc)}: {exc}",
    )
    return DecodeFailure(TP(tp.topic, tp.partition), undecodable, decoded)


def _error_name(exc: BaseException) -> str:
    kind = type(exc)
    if kind.__module__ in ("builtins", "aiokafka.errors"):
        return kind.__qualname__
    return f"{kind.__module__}.{kind.__qualname__}"  # e.g. zlib.error, cramjam.DecompressionError


class ConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    """Faust's aiokafka consumer thread with our consumer settings and batch quarantine."""

    _halted: set[TP]
    _refetched: set[tuple[TP, int]]

    def __post_init__(self) -> None:
        super().__post_init__()
        self._halted = set()
        self._refetched = set()

    @property
    def _rating(self) -> Transport:
        return cast(Transport, self.transport)

    def _create_worker_consumer(self, transport: Any) -> aiokafka.AIOKafkaConsumer:
        consumer = super()._create_worker_consumer(transport)
        # Read by AIOKafkaConsumer.start() when it builds its fetcher (not started yet).
        consumer._fetch_max_wait_ms = self._rating.fetch_max_wait_ms
        if not self.consumer.in_transaction:  # Faust's exactly_once sets read_committed
            consumer._isolation_level = self._rating.isolation_level
        return consumer

    @property
    def stopped_partitions(self) -> Set[TP]:
        return frozenset(self._halted)

    async def _fetch_records(
        self,
        consumer: aiokafka.AIOKafkaConsumer,
        active_partitions: Set[TP],
        timeout: float | None = None,  # noqa: ASYNC109 - Faust's signature
        max_records: int | None = None,
    ) -> Any:
        partitions = active_partitions
        if self._halted and partitions:
            partitions = {tp for tp in partitions if tp not in self._halted}
            if not partitions:  # an empty set would mean "all partitions" to aiokafka
                await asyncio.sleep(timeout or 0)
                return {}
        try:
            records = await super()._fetch_records(
                consumer, cast(Any, partitions), timeout=timeout, max_records=max_records
            )
        except Exception as exc:
            failure = decode_failure(exc)
            if failure is None:
                raise
            records = await self._quarantine(consumer, failure)
        return self._load_changelogs(records)

    def _load_changelogs(self, records: Any) -> Any:
        """Changelog records the app's loader writes in bulk (bulk recovery, rocks.py):
        Faust is handed only the last of each partition's batch, for its own bookkeeping."""
        load = self._rating.changelog_loader
        if load is None or not records:
            return records
        for tp, batch in records.items():
            if batch and load(TP(tp.topic, tp.partition), batch):
                records[tp] = batch[-1:]
        return records

    async def _quarantine(
        self, consumer: aiokafka.AIOKafkaConsumer, failure: DecodeFailure
    ) -> Mapping[Any, list[Any]]:
        batch, tp = failure.batch, failure.tp
        atp = aiokafka.TopicPartition(tp.topic, tp.partition)
        key = (tp, batch.base_offset)
        if key not in self._refetched:
            # Maybe damaged on the way: fetch the batch once more before giving up on it.
            self._refetched.add(key)
            log.warning(
                "cannot decode the record batch at %s (%s); refetching it once",
                batch.ref,
                batch.error,
            )
            consumer.seek(atp, batch.base_offset)
            return failure.decoded
        self._refetched.discard(key)
        handler = self._rating.undecodable_handler
        if handler is None:
            action = Action.STOP
        else:
            # The handler publishes on the app's event loop; wait until it is durable.
            future = asyncio.run_coroutine_threadsafe(handler(batch), self.parent_loop)
            action = await asyncio.wrap_future(future)

        if action is Action.SKIP and batch.next_offset is not None:
            consumer.seek(atp, batch.next_offset)
        else:
            self._halted.add(tp)
            log.error(
                "STOPPED consuming %s:%s at offset %s: the record batch there cannot be "
                "decoded (%s, codec %s); the other partitions go on. See the README runbook "
                "RatingPartitionStopped.",
                tp.topic,
                tp.partition,
                batch.base_offset,
                batch.error,
                batch.codec,
            )
        return failure.decoded


async def _next_record(records: Any) -> Any:
    """The fetch's next ``(tp, message)``, None at its end. Not ``anext(records, None)``:
    mode's task dump (SIGUSR1, ``cry``) cannot walk an ``anext_awaitable`` and crashes the
    worker; the generator's own ``__anext__`` it can."""
    try:
        return await records.__anext__()
    except StopAsyncIteration:
        return None


#: Faust's fetch loop yields to the event loop after this many records.
_YIELD_EVERY = 100


@dataclass
class _Delivery:
    """Where one task delivering a fetch's records is: the record in hand (None between
    records), and whether it reached the fetch's end."""

    current: tuple[TP, Any] | None
    finished: bool = False
    #: Stopped before ``current``: its gap or commit is due (done outside the race).
    paused: bool = False
    #: That bookkeeping is done: deliver ``current`` without stopping again.
    booked: bool = False


class Consumer(faust_aiokafka.Consumer):
    """Faust's aiokafka consumer, with two holes in its offset bookkeeping closed.

    Faust commits, per partition, the end of the first run of consecutive acked offsets, and
    drops a fetched record whose offset is below the partition's *read offset* (the last one
    it delivered), taking it for one it has already delivered. Two things in Faust 0.11 let an
    input offset be committed past a record no agent processed (CDRs lost, seen in the SIGKILL
    test on Apache Kafka about 1 run in 6):

    - **A seek racing the fetch loop.** After a rebalance Faust resumes the stream partitions
      and only then seeks them to their committed offsets (``perform_seek``). The fetch loop
      goes on delivering the batch it fetched before the seek and records each delivery as
      the read offset, after the seek has set it to the committed offset; the records that
      the seek makes it fetch again are then dropped as "already delivered", although some of
      them never reached an agent. :meth:`perform_seek` stops the flow for the seek, so the
      fetch loop abandons the old batch (it checks the flow before every record) and the seek
      sets the read offsets last. The abandoned batch may hold changelog records of standby
      partitions, which nothing would fetch again: those partitions are sought back to where
      their table has applied (a standby copy missing a record let a failover charge a
      re-published CDR a second time).
    - **Commits with no known start.** Faust refuses to commit over a hole at the head of the
      acked offsets only when it knows the partition's committed offset; during a revocation
      (it forgets them first, then commits the acks that arrive while streams drain), for a
      partition nobody has committed yet, or one committed at 0, it commits whatever run it
      has. :meth:`_new_offset` keeps its own start per partition (the committed offset, or
      where the consumer starts when there is none) and refuses a commit whose acked run does
      not begin there. A hole is logged, and if it is still there after ``HOLE_ROUNDS``
      commit rounds the partition is read again from its start (records processed already
      are deduplicated downstream): never committed past, never left behind. The ledger does
      not wait for that: it applies its records strictly in order (streaming/in_order.py),
      asks for a partition to be read again at once (:meth:`read_again`) and has the acks of
      the records it did not apply left out (:meth:`disregard`).
    """

    _start: dict[TP, int]
    _holes_logged: set[tuple[TP, int]]
    _lookups: set[asyncio.Future[None]]
    _blocked: dict[TP, tuple[int, int]]  # partition -> (its start, commit rounds held there)
    _fenced: set[tuple[TP, int]]  # (partition, generation) never to be committed
    _disregarded: set[Any]  # messages whose ack is not to be recorded (by identity)

    #: Commit rounds a hole must persist before the partition is read again from its start.
    HOLE_ROUNDS = 3

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._start = {}
        self._holes_logged = set()
        self._lookups = set()
        self._blocked = {}
        self._fenced = set()
        self._disregarded = set()

    def _new_consumer_thread(self) -> faust_aiokafka.AIOKafkaConsumerThread:
        return ConsumerThread(self, loop=self.loop, beacon=self.beacon)

    # --- the fetch loop ------------------------------------------------------------------

    async def _drain_messages(self, fetcher: Any) -> None:
        """Faust's fetch loop (``Consumer._drain_messages``, run by its Fetcher), with one
        race per fetch instead of one per record.

        Faust hands each record to its conductor under ``wait_first(callback(record),
        suspend_flow.wait())``, so that a rebalance that stops the flow abandons a delivery
        waiting for room in a stream: that is four tasks and an ``asyncio.wait`` per record,
        ~90 us, the largest per-record cost of the ingest hop. Here one task delivers the
        records of a fetch one after another, and that task races the same events: if the
        flow stops while a delivery waits, it is abandoned exactly as Faust's would be, and
        the rest of the fetch goes through Faust's own per-record race (a rebalance is rare;
        Faust's ``getmany`` then ends the fetch at its next record anyway). Per record the
        bookkeeping is Faust's: the read offset, gaps of acked topics, ``commit_every``. A
        unit test pins the Faust source this mirrors."""
        stopping = self._stopped.is_set
        fetcher_stopping = fetcher._stopped.is_set
        try:
            while not (stopping() or fetcher_stopping()):
                self.diag.set_flag(faust_consumer.CONSUMER_FETCHING)
                records = self.getmany(timeout=1.0)
                # Faust yields to the loop here too: getmany may return at once, in a loop.
                await self.sleep(0)
                if not self.should_stop:
                    await self._deliver_fetch(records)
                self.diag.unset_flag(faust_consumer.CONSUMER_FETCHING)
        except self.consumer_stopped_errors:
            if self.transport.app.should_stop:
                log.info("Broker stopped consumer, shutting down...")
                return
            raise
        except asyncio.CancelledError:
            if self.transport.app.should_stop:
                log.info("Consumer shutting down for user cancel.")
                return
            raise
        except Exception as exc:
            log.exception("Drain messages raised: %r", exc)
            raise
        finally:
            self.diag.unset_flag(faust_consumer.CONSUMER_FETCHING)

    async def _deliver_fetch(self, records: Any) -> None:
        # The first record waits for the fetch itself (as in Faust, outside any race).
        first = await _next_record(records)
        if first is None:
            return
        state = _Delivery(first)
        while True:
            await self.wait_first(self._deliver_all(records, state), self.suspend_flow.wait())
            if state.finished:
                return
            if not state.paused:
                break  # abandoned: the flow stopped, or the consumer
            # A gap to record or a commit is due: done outside the race, as Faust does.
            state.paused = False
            assert state.current is not None
            await self._gap_and_commit(*state.current)
            state.booked = True
        if state.current is not None:
            tp, message = state.current  # abandoned in hand: Faust marks it read
            self._read_offset[tp] = message.offset
        async for tp, message in records:  # Faust's own per-record race, for the rest
            if self._deliverable(tp, message):
                await self._gap_and_commit(tp, message)
                await self.wait_first(self.callback(message), self.suspend_flow.wait())
                self._read_offset[tp] = message.offset

    async def _deliver_all(self, records: Any, state: _Delivery) -> None:
        """Deliver from ``state.current`` on, back to back (one task for many records);
        return to the caller when a record's gap or commit is due (``state.paused``)."""
        callback = self.callback
        read = self._read_offset
        item = state.current
        since_yield = 0
        while item is not None:
            tp, message = item
            if self._deliverable(tp, message):
                if not state.booked and self._bookkeeping_due(tp, message):
                    state.paused = True
                    return
                await callback(message)
                read[tp] = message.offset
            state.booked = False
            since_yield += 1
            if since_yield >= _YIELD_EVERY:  # Faust yields to the loop every 100 records
                state.current = None
                await asyncio.sleep(0)
                since_yield = 0
            item = state.current = await _next_record(records)
        state.finished = True

    def _deliverable(self, tp: TP, message: Any) -> bool:
        # Faust drops a record below the partition's read offset: delivered already.
        last = self._read_offset[tp]
        return last is None or message.offset >= last

    def _gap_before(self, tp: TP, message: Any) -> int | None:
        """The read offset, if ``message`` comes after a gap that Faust records (its topic's
        acks count): then the acks of the missing offsets are not waited for."""
        last: int | None = self._read_offset[tp]
        if last and message.offset - last > 1 and self.app.topics.acks_enabled_for(message.topic):
            return last
        return None

    def _commit_due(self) -> bool:
        return self._commit_every is not None and self._n_acked >= self._commit_every

    def _bookkeeping_due(self, tp: TP, message: Any) -> bool:
        return self._commit_due() or self._gap_before(tp, message) is not None

    async def _gap_and_commit(self, tp: TP, message: Any) -> None:
        """Faust's per-record bookkeeping before a delivery: record a gap in the offsets of
        a topic whose acks count (transaction markers, compaction), commit every
        ``broker_commit_every`` acks."""
        last = self._gap_before(tp, message)
        if last is not None:
            await self._add_gap(tp, last + 1, message.offset)
        if self._commit_due():
            self._n_acked = 0
            await self.commit()

    @contextlib.contextmanager
    def _flow_stopped(self, keep_stopped: Callable[[], bool] = lambda: False) -> Iterator[None]:
        """The flow stopped for a seek, so the fetch loop abandons the fetch it is delivering
        (whose later offsets would otherwise be recorded as read after the seek, and the
        records sought again dropped as delivered). Resumed after, if it was running and
        ``keep_stopped()`` is false; a seek during a rebalance leaves it as it found it."""
        resume = self.flow_active
        self.stop_flow()
        try:
            yield
        finally:
            if resume and not keep_stopped():
                self.resume_flow()

    async def perform_seek(self) -> None:
        with self._flow_stopped():
            await super().perform_seek()
            await self._refetch_standbys()

    async def _refetch_standbys(self) -> None:
        # With the flow stopped the fetch loop abandons the batch it had fetched, standby
        # changelog records included, and nothing would fetch those again: a standby copy
        # would miss them for good. Each standby changelog partition goes back to where its
        # table has applied (as Faust's own standby recovery seeks; re-applying is harmless).
        standbys = self.app.assignor.assigned_standbys()
        offsets: dict[TP, int] = {}
        for table in self.app.tables.values():
            name = table.changelog_topic.get_topic_name()
            for tp in standbys:
                if tp.topic == name:
                    offset = table.persisted_offset(tp)
                    if offset is not None:
                        offsets[tp] = max(offset, 0)
        if offsets:
            await self.seek_wait(offsets)

    async def seek_to_committed(self) -> Mapping[TP, int]:
        committed = await super().seek_to_committed()
        fresh: list[TP] = []
        for tp, offset in committed.items():
            key = TP(tp.topic, tp.partition)
            if offset is not None:
                self._start[key] = offset
            else:
                self._start.pop(key, None)
                fresh.append(key)
        if fresh:
            # No committed offset: the consumer starts where its reset policy says. Looked up
            # in the background: this runs inside Faust's fetch loop too, which must not wait
            # on the broker in the middle of a rebalance. Until then no commit for them.
            self._in_background(self._look_up_starts(fresh))
        return committed

    async def _look_up_starts(self, tps: list[TP]) -> None:
        try:
            if self.app.conf.consumer_auto_offset_reset == "latest":
                starts = await self.highwaters(*tps)
            else:
                starts = await self.earliest_offsets(*tps)
        except Exception as exc:  # commits of these partitions wait for the next assignment
            log.warning("cannot look up where %s start: %s", sorted(tps), exc)
            return
        for tp in tps:
            if tp not in self._start and starts.get(tp) is not None:
                self._start[tp] = starts[tp]

    def _in_background(self, work: Coroutine[Any, Any, None]) -> None:
        """Run ``work`` as a task kept until done (``starts_known`` waits for them)."""
        task = asyncio.ensure_future(work)
        self._lookups.add(task)
        task.add_done_callback(self._lookups.discard)

    async def starts_known(self) -> None:
        """Wait for the partition starts being looked up (tests)."""
        if self._lookups:
            await asyncio.gather(*self._lookups)

    async def on_partitions_revoked(self, revoked: Set[TP]) -> None:
        # Faust forgets the committed offsets here, then commits while streams drain.
        for tp in revoked:
            committed = self._committed_offset.get(tp)
            if committed is not None:
                self._start[tp] = max(committed, self._start.get(tp, committed))
        await super().on_partitions_revoked(revoked)

    def fence(self, tp: TP, generation: int) -> None:
        """Never commit ``tp`` in ``generation`` (that of the batch that found it): this
        worker was found deposed on it (streaming/epochs.py), and the records it acks there
        were not processed. A later generation lifts it; the batch's late acks cannot land
        there (:meth:`ack`)."""
        self._fenced.add((tp, generation))

    def start_of(self, tp: TP) -> int | None:
        """Where ``tp`` is read from in this generation (its committed offset, or where the
        reset policy starts it); None while not known."""
        return self._start.get(TP(tp.topic, tp.partition))

    def disregard(self, message: Any) -> None:
        """Leave ``message``'s ack out of the offsets to commit: an agent did not process it
        (the ledger found records before it missing) and reads it again."""
        self._disregarded.add(message)

    def read_again(self, tp: TP, offset: int) -> None:
        """Have ``tp`` read again from ``offset`` (in the background, with the flow stopped
        for the seek, as the hole guard does)."""
        self._in_background(self._read_again(tp, offset))

    def ack(self, message: Any) -> bool:
        """Faust's ack, except for a message fetched in an older consumer group generation:
        a batch that was in flight when this worker lost the group (frozen past its session
        timeout) and that it finished after rejoining. Its offsets are not recorded: the
        seek of the new generation has the worker read those records again, so committing
        the stale acks would skip records it has not processed yet (seen once losing 23 CDRs
        in the zombie test). Faust's streams skip such messages on delivery for the same
        reason. The same for a message the ledger left unprocessed (:meth:`disregard`).
        Called under Faust's ack lock, as the method it extends."""
        generation = message.generation_id
        stale = generation is not None and generation != self.app.consumer_generation_id
        if message in self._disregarded:
            self._disregarded.discard(message)
            stale = True
        if stale:
            if not message.acked:
                message.acked = True
                self._unacked_messages.discard(message)
            return False
        return bool(super().ack(message))

    def _new_offset(self, tp: TP) -> int | None:
        if (tp, self.app.consumer_generation_id) in self._fenced:
            return None
        acked = self._acked.get(tp)
        if acked:
            known = [
                o for o in (self._committed_offset.get(tp), self._start.get(tp)) if o is not None
            ]
            start = max(known) if known else None
            lowest = min(acked)
            gap = self._gap.get(tp)
            if gap:  # offsets Faust saw skipped (compacted, transaction markers) count as acked
                lowest = min(lowest, gap.begin())
            # Faust's tolerance of one: the committed offset may be a transaction marker.
            if start is None or lowest - start > 1:
                if start is not None:
                    self._hole(tp, start, lowest)
                return None
        self._blocked.pop(tp, None)
        return super()._new_offset(tp)

    def _hole(self, tp: TP, start: int, lowest: int) -> None:
        """Offsets ``start``..``lowest - 1`` were never acked. Seen on as many commit rounds
        in a row as :attr:`HOLE_ROUNDS`, they were dropped by Faust's fetch loop (not merely
        in flight: an agent acks its batches in order), so the partition is read again from
        ``start``; what was processed already is deduplicated downstream. Not on a partition
        this worker no longer has (acks of its last batches linger after a revocation): its
        new owner reads it from the committed offset, and a seek here could only fail."""
        if tp not in self.assignment():
            self._blocked.pop(tp, None)
            return
        rounds = self._blocked.get(tp, (start, 0))
        rounds = (start, rounds[1] + 1) if rounds[0] == start else (start, 1)
        self._blocked[tp] = rounds
        self._log_hole(tp, start, lowest)
        if rounds[1] == self.HOLE_ROUNDS:
            log.warning("reading %s:%s again from offset %s", tp.topic, tp.partition, start)
            self._in_background(self._read_again(tp, start))
            # Reading takes a while: wait much longer before reading it again (never a loop).
            self._blocked[tp] = (start, -20 * self.HOLE_ROUNDS)

    async def _read_again(self, tp: TP, offset: int) -> None:
        """Seek ``tp`` back to ``offset`` with the flow stopped, as :meth:`perform_seek`
        (seen in the SIGKILL test with the flow running: the hole read again, never
        processed). It runs in the background, so the flow is resumed only in the
        generation that stopped it: a rebalance that began meanwhile resumes it itself."""
        generation = self.app.consumer_generation_id

        def rebalanced() -> bool:
            return bool(self.app.rebalancing) or self.app.consumer_generation_id != generation

        with self._flow_stopped(keep_stopped=rebalanced):
            try:
                await self.seek(tp, offset)
            except Exception as exc:  # e.g. revoked meanwhile: its next owner reads it anyway
                log.warning(
                    "cannot read %s:%s again from %s: %r", tp.topic, tp.partition, offset, exc
                )

    def _log_hole(self, tp: TP, start: int | None, lowest: int) -> None:
        key = (tp, -1 if start is None else start)
        if key in self._holes_logged:
            return
        self._holes_logged.add(key)
        log.warning(
            "not committing %s:%s: the acked offsets begin at %s but the partition starts at "
            "%s; offsets in between were never processed, so it is not committed past them "
            "(the partition is read again from there if the hole stays)",
            tp.topic,
            tp.partition,
            lowest,
            "an unknown offset" if start is None else start,
        )


class ProducerBuffer(faust_producer.ProducerBuffer):
    """Faust's buffer of ``send_soon`` records (table changelog writes), with more room.

    Faust's conductor stops delivering *every* input record to the agents while this buffer
    holds more than ``max_messages`` (Faust: 100), until it has drained to that size. The
    ledger writes two to three changelog records per CDR, so with 100 a single ledger batch
    stalled both agents on every batch. The bound stays (memory), above one full batch.
    """

    max_messages = 5000


class Producer(faust_aiokafka.Producer):
    """Faust's aiokafka producer: a roomier buffer, and ``flush`` empties it before it
    returns."""

    def __init__(self, transport: Any, loop: Any = None, **kwargs: Any) -> None:
        super().__init__(transport, loop=loop, **kwargs)
        # Our own buffer in place of the one Faust's constructor made (not started yet: the
        # producer starts its buffer in on_start), wired the same way.
        buffer = ProducerBuffer(loop=self.loop, beacon=self.beacon)
        if self.threaded_producer is not None:
            buffer.threaded_producer = self.threaded_producer
        buffer.app = self.app
        self.buffer = buffer

    async def flush(self) -> None:
        buffer = self.buffer
        # ProducerBuffer.flush gives up after 100 ms without progress; a commit must not
        # follow until every changelog record has been handed to the Kafka client.
        while buffer.size:
            await buffer.flush()
        await super().flush()  # the (now empty) buffer, then the Kafka client's own flush


class Transport(faust_aiokafka.Transport):
    """``rating://host:port``: Faust's aiokafka transport with our Consumer and Producer."""

    Consumer: ClassVar[type[Any]] = Consumer
    Producer: ClassVar[type[Any]] = Producer

    # Configured by :func:`configure` before the worker starts.
    fetch_max_wait_ms: int = 1500
    isolation_level: IsolationLevel = "read_committed"
    undecodable_handler: UndecodableHandler | None = None
    changelog_loader: ChangelogLoader | None = None


SCHEME = "rating"


def configure(
    app: Any,
    *,
    fetch_max_wait_ms: int,
    isolation_level: IsolationLevel,
    undecodable_handler: UndecodableHandler | None,
    changelog_loader: ChangelogLoader | None = None,
) -> Transport:
    """Set the consumer options on the app's transport; start-up checks (SettingsError)."""
    missing = missing_codecs()
    if missing:
        # Without them the first batch in such a codec would be undecodable: refuse to start.
        raise SettingsError(
            f"aiokafka cannot decode {', '.join(missing)} on this machine: install rating's "
            "dependencies (aiokafka[snappy,lz4,zstd], i.e. cramjam)"
        )
    transport = app.transport
    if not isinstance(transport, Transport):
        raise SettingsError(
            f"the Faust transport is {type(transport).__name__}, not rating's: is the "
            f"package installed (pip install -e .) so its {SCHEME!r} entry point exists?"
        )
    transport.fetch_max_wait_ms = fetch_max_wait_ms
    transport.isolation_level = isolation_level
    transport.undecodable_handler = undecodable_handler
    transport.changelog_loader = changelog_loader
    return transport
