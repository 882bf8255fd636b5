"""create_app(settings) -> faust.App with the two agents, the accounts table and the web views.

Two stages, because the platform's topics are partitioned by the platform:

    cdr.* / tenant-settings / billing.funds --ingest--> <app>-ledger (by tenant) --ledger-->
        rating.charges, billing.recharge-commands, rating.balance-events (+ rating.rejected)

``ingest`` validates and repartitions by tenant (a batch's messages of one ledger partition
in few records: ``Pipeline.ingest``); ``ledger`` owns the accounts table
(co-partitioned with <app>-ledger) and applies every tenant's messages in order.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import Counter
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, NamedTuple, cast

import faust
from faust.types import TP
from prometheus_client import disable_created_metrics

from rating import __version__
from rating.contracts import Rejection, RejectReason
from rating.domain.account import RechargePolicy
from rating.domain.ratecard import RateBook, RateCardError, load_rate_cards
from rating.error_policy import park
from rating.ingest import Envelope, Kind, Source, validate
from rating.ledger import HoldPolicy, Ledger, Outcome, Output, Result, Role, rejected
from rating.metrics import Metrics
from rating.partitioning import partition_of
from rating.settings import Settings
from rating.streaming import transport
from rating.streaming.clock import Clock, SystemClock
from rating.streaming.in_order import Gap, InOrder
from rating.streaming.quarantine import undecodable_handler
from rating.streaming.rocks import MEMORY_OPTION, MemoryBudget
from rating.streaming.sensors import LeanMonitor
from rating.streaming.store import (
    RocksExpiry,
    TableStore,
    changelog_loader,
    changelog_reader,
    key_partitioner,
)

log = logging.getLogger("rating.worker")

_ZERO = Decimal(0)

#: A ledger record carries at most this many messages, of about this many bytes: ingest
#: puts a batch's messages of one ledger partition into as few records as that allows.
LEDGER_RECORD_MAX_MESSAGES = 256
LEDGER_RECORD_MAX_BYTES = 256 * 1024
#: A ledger partition read again for a gap is read again once more if the gap's records are
#: not back after this long (streaming/in_order.py).
REREAD_SECONDS = 5.0


class Send(NamedTuple):
    """A record the worker produces: its role (the topic, by ``Pipeline.sinks``), key and
    value; ``partition`` when the key does not decide it (a ledger record of many tenants)."""

    role: Role
    key: bytes | None
    value: bytes
    partition: int | None = None


class RateCards:
    """The active RateBook; replaced whole on reload, so no CDR sees a half-loaded card."""

    def __init__(self, settings: Settings, metrics: Metrics, clock: Clock | None = None) -> None:
        self.path = settings.rate_cards
        self.metrics = metrics
        self.clock = clock or SystemClock()
        self.book: RateBook = load_rate_cards(self.path)  # start-up: errors stop the worker
        self._stamp = self._file_stamp()
        self._publish_metrics("ok")

    def _file_stamp(self) -> tuple[int, int] | None:
        try:
            st = self.path.stat()
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size)

    def _publish_metrics(self, outcome: str) -> None:
        self.metrics.ratecard_reloads.labels(outcome=outcome).inc()
        if outcome != "ok":
            return
        self.metrics.ratecard_active.clear()
        for card in self.book.cards:
            self.metrics.ratecard_active.labels(card.rate_card_id, card.plan, card.currency).set(1)
        self.metrics.ratecard_loaded_at.set(self.clock.time())

    async def maybe_reload(self) -> bool:
        stamp = self._file_stamp()
        if stamp is None or stamp == self._stamp:
            return False
        self._stamp = stamp
        try:
            book = await asyncio.to_thread(load_rate_cards, self.path)
        except RateCardError as exc:
            log.error("rate-card reload failed, keeping the previous cards: %s", exc)
            self._publish_metrics("error")
            return False
        self.book = book  # one reference swap
        log.info("rate cards reloaded from %s: %d cards", self.path, len(book.cards))
        self._publish_metrics("ok")
        return True


class _LedgerRecords:
    """One ingest batch's ledger records for one ledger partition: ``{"m": [envelope, ...],
    "it": ingest time}``, each within ``LEDGER_RECORD_MAX_*``."""

    def __init__(self, partition: int, stamp: float) -> None:
        self.partition = partition
        self.head = b'{"it":' + json.dumps(stamp).encode() + b',"m":['
        self.records: list[Send] = []
        self.pending: list[bytes] = []
        self.size = 0

    def add(self, env: Envelope) -> None:
        encoded = env.encode()
        if self.pending and (
            len(self.pending) >= LEDGER_RECORD_MAX_MESSAGES
            or self.size + len(encoded) > LEDGER_RECORD_MAX_BYTES
        ):
            self._close()
        self.pending.append(encoded)
        self.size += len(encoded) + 1

    def _close(self) -> None:
        value = self.head + b",".join(self.pending) + b"]}"
        self.records.append(Send(Role.LEDGER, None, value, self.partition))
        self.pending, self.size = [], 0

    def done(self) -> list[Send]:
        if self.pending:
            self._close()
        return self.records


def record_time(msg: Any, clock: Clock) -> datetime:
    ts = getattr(msg, "timestamp", None)
    if not ts or ts <= 0:
        return clock.now()
    return datetime.fromtimestamp(ts, UTC)


@dataclass
class Pipeline:
    """Everything one worker process holds; built by :func:`create_app`."""

    settings: Settings
    metrics: Metrics
    app: faust.App
    rates: RateCards
    ledger: Ledger
    store: TableStore
    #: Every topic the worker declares, by name: "inputs", "ledger", "settings_out", ...
    topics: dict[str, Any] = field(default_factory=dict)
    #: Where each role's records go: the topics the worker produces to.
    sinks: dict[Role, Any] = field(default_factory=dict)
    table: Any = None
    kind_by_topic: dict[str, Kind] = field(default_factory=dict)
    clock: Clock = field(default_factory=SystemClock)
    #: RocksDB's worker-wide memory (None on memory://).
    rocksdb_memory: MemoryBudget | None = None
    _indexed: set[int] = field(default_factory=set)
    #: The ledger's records, partition by partition in offset order (streaming/in_order.py).
    order: InOrder = field(default_factory=InOrder)
    # (partition, expected offset) -> when the partition was last sought back there.
    _rereads: dict[tuple[int, int], float] = field(default_factory=dict)

    # --- ledger index maintenance ---------------------------------------------------------

    def owned_ledger_partitions(self) -> set[int]:
        name = self.topics["ledger"].get_topic_name()
        return {tp.partition for tp in self.app.assignor.assigned_actives() if tp.topic == name}

    def ensure_indexed(self, partition: int) -> None:
        """After a rebalance, rebuild the in-memory ledger index from the recovered table."""
        if partition in self._indexed:
            return
        self.ledger.rebuild_index(
            partition, self.store.items_of(partition, self.ledger.index_kinds)
        )
        self._indexed.add(partition)

    def on_revoked(self) -> None:
        for p in list(self._indexed):
            self.forget(p)

    def forget(self, partition: int) -> None:
        """Drop the in-memory index of a partition (revoked, or fenced: epochs.py)."""
        if partition in self._indexed:
            self.ledger.forget(partition)
            self._indexed.discard(partition)

    # --- applying -------------------------------------------------------------------------

    def apply(self, msg: Any) -> tuple[list[Result], float | None]:
        """One ledger record -> the Results of its messages (state written through the
        table store), and its ingest time.

        Whatever goes wrong with one record (an undecodable record, a bug in indexing or in
        the ledger) parks that record as ``internal_error`` (``rating.error_policy``) and the
        partition moves on."""
        try:
            results, started = self._apply(msg)
        except Exception as exc:
            source = Source(msg.topic, msg.partition, msg.offset, msg.key)
            now = self.clock.now()
            rej = park("ledger", exc, source, msg.value, now, context="ledger record: ")
            results, started = [rejected(rej, msg.key)], None
        for result in results:
            for part in result.all():
                if part.reason is RejectReason.INTERNAL_ERROR:
                    self.metrics.internal_errors.labels("ledger").inc()
                if part.reason is not None:
                    topic = part.topic or msg.topic
                    self.metrics.cdrs_rejected.labels(topic, part.reason.value).inc()
        return results, started

    def _apply(self, msg: Any) -> tuple[list[Result], float | None]:
        self.ensure_indexed(msg.partition)
        self.store.partition = msg.partition
        data = json.loads(msg.value)
        # The record's own timestamp, not the wall clock: reprocessing the same record after
        # a crash then computes the same Charge (rated_at included) and the same decisions.
        now = record_time(msg, self.clock)
        if data.get("k") == "tick":
            return [self.ledger.tick(msg.partition, msg.offset, now)], None
        # {"m": [envelope, ...], "it": ...}: many messages; a bare envelope: one (as written
        # before ledger records carried many, still read from an older ledger topic).
        envs = (
            [Envelope.from_dict(d) for d in data["m"]]
            if "m" in data
            else [Envelope.from_dict(data)]
        )
        return self.ledger.handle_record(envs, msg.partition, msg.offset, now), data.get("it")

    # --- ingesting ------------------------------------------------------------------------

    def ingest(self, messages: Sequence[Any]) -> list[Send]:
        """One batch of input records -> rejections, then ledger records: the batch's valid
        messages of each ledger partition, in input order, in as few records as
        ``LEDGER_RECORD_MAX_*`` allow (one Faust event per record, not per message, on the
        ledger's hop: ledger.py, "Records of many messages").

        Counters are added once per batch (same totals as one by one)."""
        m = self.metrics
        now = self.clock.now()
        stamp = self.clock.time()  # "it" on the ledger record: for the latency histogram
        partitions = self.settings.partitions
        consumed: Counter[str] = Counter()
        rejected: Counter[tuple[str, str]] = Counter()
        out: list[Send] = []
        by_partition: dict[int, _LedgerRecords] = {}
        for msg in messages:
            source = Source(msg.topic, msg.partition, msg.offset, msg.key)
            kind = self.kind_by_topic[msg.topic]
            if kind == "cdr":
                consumed[msg.topic] += 1
            try:
                checked = validate(kind, source, msg.value, now)
            except Exception as exc:  # a bug: parked (rating.error_policy)
                m.internal_errors.labels("ingest").inc()
                checked = park("ingest", exc, source, msg.value, now)
            if isinstance(checked, Rejection):
                rejected[(msg.topic, checked.reason.value)] += 1
                out.append(Send(Role.REJECTED, msg.key, checked.model_dump_json().encode()))
            else:
                partition = partition_of(checked.tenant_id, partitions)
                records = by_partition.get(partition)
                if records is None:
                    records = by_partition[partition] = _LedgerRecords(partition, stamp)
                records.add(checked)
        for records in by_partition.values():
            out += records.done()
        for topic, n in consumed.items():
            m.cdrs_consumed.labels(topic).inc(n)
        for (topic, reason), n in rejected.items():
            m.cdrs_rejected.labels(topic, reason).inc(n)
        return out

    async def ledger_batch(self, events: Sequence[Any]) -> None:
        """Apply a batch of ledger records, make its state durable, publish its outputs.

        Owner epochs (streaming/epochs.py): the batch's changelog records carry its consumer
        group generation; keys a deposed owner wrote are written again first. On a partition
        where this worker is found deposed, the batch's records are not applied, or their
        state is dropped and their outputs withheld; they are acked all the same (Faust's
        revocation waits for every record to be acked) but that partition is never committed
        again in that generation (``transport.Consumer.fence``): its new owner has them. A
        batch of a later generation first closes the round still open from the last one
        (``TableStore.begin``), so its own records never carry an older epoch."""
        m, store = self.metrics, self.store
        previous = store.epoch
        generation = batch_epoch(self.app, events)
        self._fence(await store.begin(generation), previous)
        repaired = store.repair(sorted(self.owned_ledger_partitions()))
        if repaired:
            m.changelog_repaired_keys.inc(repaired)
        # In the order of the generation the batch was fetched in: a batch that waited
        # through a rebalance continues its own generation's order, if this worker still
        # has it (then its acks are not recorded anyway: transport.Consumer.ack).
        await self._learn_starts(events, generation)
        applied: list[tuple[Any, list[Result], float | None]] = []
        for event in events:
            msg = event.message
            if store.fenced(msg.partition):
                continue
            gap = self.order.admit(msg.partition, msg.offset)
            if gap is not None:
                await self._gap(gap, msg)
                continue
            results, started = self.apply(msg)
            applied.append((event, results, started))
        flush_started = self.clock.monotonic()
        fenced = await store.durable()
        m.ledger_flush_seconds.observe(self.clock.monotonic() - flush_started)
        m.ledger_batch_size.observe(len(events))
        self._fence(fenced, store.epoch)
        kept = [a for a in applied if a[0].message.partition not in fenced]
        upto = {event.message.partition: event.message.offset for event, _, _ in kept}
        await self.publish([out for _, results, _ in kept for r in results for out in r.outputs])
        await self.clear_outbox(upto)
        self.count_results([(r, started) for _, results, started in kept for r in results])

    async def _learn_starts(self, events: Sequence[Any], generation: int) -> None:
        """Where each ledger partition of the batch is read from in ``generation`` (its
        committed offset, which the transport knows), for :attr:`order`."""
        self.order.begin(generation)
        fresh = {e.message.partition for e in events if not self.order.knows(e.message.partition)}
        if not fresh:
            return
        consumer = cast(transport.Consumer, self.app.consumer)
        name = self.topics["ledger"].get_topic_name()
        starts = {p: consumer.start_of(TP(name, p)) for p in fresh}
        if any(start is None for start in starts.values()):
            await consumer.starts_known()  # a partition never committed: looked up
            starts = {p: consumer.start_of(TP(name, p)) for p in fresh}
        for partition, start in starts.items():
            if start is not None:
                self.order.start(partition, start)

    async def _gap(self, gap: Gap, msg: Any) -> None:
        """``msg`` comes after ledger records this worker has not applied (dropped on the
        way: streaming/in_order.py). It is not applied and its ack is not recorded; the
        partition is read again from the first missing record (once per gap, unless the
        read is not back within ``REREAD_SECONDS``)."""
        consumer = cast(transport.Consumer, self.app.consumer)
        consumer.disregard(msg)
        key = (gap.partition, gap.expected)
        now = self.clock.monotonic()
        last = self._rereads.get(key)
        if last is not None and now - last < REREAD_SECONDS:
            return  # records fetched before the read again: it is on its way
        self._rereads = {k: t for k, t in self._rereads.items() if now - t < REREAD_SECONDS}
        self._rereads[key] = now
        tp = TP(msg.topic, gap.partition)
        first = (await consumer.earliest_offsets(tp)).get(tp)
        if first is not None and first > gap.expected:
            # Deleted by retention before this worker read them: nothing to wait for.
            log.error(
                "ledger records %s:%d@%d..%d were deleted before they were applied; going "
                "on from %d",
                msg.topic, gap.partition, gap.expected, first - 1, first,
            )  # fmt: skip
            self.order.resume_at(gap.partition, first)
            consumer.read_again(tp, first)
            return
        self.metrics.ledger_gaps.labels(str(gap.partition)).inc()
        log.warning(
            "ledger record %s:%d@%d arrived before %d..%d, which were never applied: "
            "reading the partition again from %d",
            msg.topic, gap.partition, gap.found, gap.expected, gap.found - 1, gap.expected,
        )  # fmt: skip
        consumer.read_again(tp, gap.expected)

    def _fence(self, partitions: set[int], generation: int) -> None:
        """This worker was found deposed on ``partitions`` in ``generation``: never commit
        them in it, and rebuild their index from the table when they come back."""
        ledger_topic = self.topics["ledger"].get_topic_name()
        consumer = cast(transport.Consumer, self.app.consumer)
        for partition in partitions:
            self.metrics.ledger_fenced.labels(str(partition)).inc()
            consumer.fence(TP(ledger_topic, partition), generation)
            self.forget(partition)

    # --- publishing -----------------------------------------------------------------------

    async def send_all(self, records: Sequence[Send]) -> None:
        """Hand every record to the Kafka client in order, then wait until all are acked.

        One ``producer.send`` per record (it returns once the record is queued in the
        client, which batches them) and one wait for the whole batch, instead of a Faust
        ``topic.send`` round per record. Raises if any record could not be delivered, so
        the agent crashes before the stream acks (and Faust commits) its input offsets."""
        if not records:
            return
        producer = self.app.producer
        names = {role: self.sinks[role].get_topic_name() for role in {r[0] for r in records}}
        pending = [
            await producer.send(names[role], key, value, partition, None, None)
            for role, key, value, partition in records
        ]
        await asyncio.gather(*pending)

    async def publish(self, outputs: list[Output]) -> None:
        await self.send_all([Send(out.role, out.key, out.value) for out in outputs])

    async def clear_outbox(self, upto: dict[int, int]) -> None:
        """The batch's outputs are acked: delete its outbox entries (``upto``: partition ->
        the batch's last ledger offset there), each in its tenant's changelog partition."""
        for partition, offset in upto.items():
            self.store.partition = partition
            self.ledger.published(partition, offset)
        # Into the producer now: Faust flushes the producer before it commits the batch's
        # input offsets, and no outbox entry may outlive its record's commit.
        await self.store.flush()

    def count_results(self, done: Sequence[tuple[Result, float | None]]) -> None:
        """A batch's results -> the metrics. Charges, the bulk, are summed per label set and
        added once per batch (the same totals); everything else is counted one by one."""
        m = self.metrics
        now = self.clock.now()
        wall = self.clock.time()
        charged: Counter[tuple[str, str]] = Counter()
        amounts: dict[tuple[str, str], Decimal] = {}
        for result, started in done:
            try:
                for part in result.all():
                    if part.outcome == Outcome.CHARGED and part.charge is not None:
                        c = part.charge
                        key = (c.product.value, c.currency)
                        charged[key] += 1
                        amounts[key] = amounts.get(key, _ZERO) + c.amount
                        if started is not None:
                            m.processing_latency.observe(max(0.0, wall - started))
                        if part.call_end is not None:
                            lag = (now - part.call_end).total_seconds()
                            m.event_lag.observe(max(0.0, lag))
                        self._count_funds_and_effects(part)
                    else:
                        self._count_one(part)
            except Exception:  # a metric must never stop the money path
                log.exception("updating metrics failed for outcome %s", result.outcome)
        for (product, currency), n in charged.items():
            m.cdrs_charged.labels(product, currency).inc(n)
            # Prometheus stores float64; this is a dashboard figure, never a balance.
            m.charged_amount.labels(currency, product).inc(float(amounts[(product, currency)]))

    def _count_one(self, result: Result) -> None:
        m = self.metrics
        if result.outcome == Outcome.DUPLICATE:
            m.cdrs_duplicate.labels(result.product or "unknown").inc()
        elif result.outcome == Outcome.REPAIRED or (
            result.outcome == Outcome.REPLAYED and result.outputs
        ):
            # A replay whose outbox entry is gone publishes nothing: its outputs were acked.
            m.charges_replayed.inc()
        elif result.outcome == Outcome.SETTINGS:
            m.settings_applied.inc()
        elif result.outcome == Outcome.HELD:
            m.messages_held.labels(result.topic or "unknown").inc()
        self._count_funds_and_effects(result)

    def _count_funds_and_effects(self, result: Result) -> None:
        m = self.metrics
        if result.funds is not None:
            f = result.funds
            dup = result.outcome == Outcome.FUNDS_DUPLICATE
            m.funds_events.labels(f.kind.value, "duplicate" if dup else "applied").inc()
            if result.outcome == Outcome.FUNDS and f.amount > 0:
                m.funds_credited.labels(f.currency, f.kind.value).inc(float(f.amount))
            elif result.outcome == Outcome.FUNDS and f.amount < 0:  # counters only go up
                m.funds_debited.labels(f.currency, f.kind.value).inc(float(-f.amount))
        for effects in result.effects:
            if effects.amount_mismatch and result.funds is not None:
                m.recharge_amount_mismatch.labels(result.funds.currency).inc()
            for outcome in effects.recharge_outcomes:
                m.recharge_commands.labels(outcome).inc()
            for event in effects.balance_events:
                m.balance_events.labels(event.kind.value).inc()


def _faust_app(settings: Settings) -> faust.App:
    hosts = settings.kafka_bootstrap.split(",")
    return faust.App(
        settings.app_id,
        # Faust's Monitor without per-event bookkeeping nobody reads (streaming/sensors.py).
        Monitor=LeanMonitor,
        # Our transport (streaming/transport.py), registered under this URL scheme.
        broker=[f"{transport.SCHEME}://{h}" for h in hosts],
        store=settings.store,
        datadir=str(settings.data_dir),
        topic_partitions=settings.partitions,
        topic_replication_factor=settings.replication,
        web_host=settings.web_advertised_host,
        web_bind=settings.web_host,
        web_port=settings.web_port,
        canonical_url=f"http://{settings.web_advertised_host}:{settings.web_port}",
        broker_session_timeout=settings.session_timeout_seconds,
        broker_rebalance_timeout=settings.rebalance_timeout_seconds,
        broker_heartbeat_interval=settings.heartbeat_seconds,
        broker_commit_interval=settings.commit_interval_seconds,
        producer_acks=-1,
        producer_linger=settings.producer_linger_ms / 1000,
        producer_compression_type=None if settings.compression == "none" else settings.compression,
        autodiscover=False,
        # One ordered stream per tenant partition: no concurrent table writers.
        stream_buffer_maxsize=4096,
        web_enabled=True,
        # The check compares RocksDB's persisted offsets with the changelog's end offset, to
        # catch a changelog deleted under a kept data dir. It needs a broker that reports the
        # true end: the embedded Tansu reports "base of the last batch + 1" (why the seal
        # exists), so a worker killed after a batch's acks but before its seal restarts with
        # persisted offset > reported end and Faust refuses to start, again and again. So the
        # check runs only where the seal is off (Apache Kafka), and never on memory://.
        recovery_consistency_check=(
            not settings.store.startswith("memory") and not settings.changelog_seal
        ),
        table_standby_replicas=settings.standby_replicas,
        logging_config=None,
    )


def create_app(
    settings: Settings, metrics: Metrics | None = None, clock: Clock | None = None
) -> Pipeline:
    """Build the worker. Raises RateCardError for a bad rate-card file (start-up check)."""
    clock = clock or SystemClock()
    # One series per counter, not two: the *_created series double the scrape for nothing.
    disable_created_metrics()  # type: ignore[no-untyped-call]
    metrics = metrics or Metrics()
    metrics.worker_info.info({"version": __version__, "app_id": settings.app_id})
    rates = RateCards(settings, metrics, clock)
    app = _faust_app(settings)
    policy = RechargePolicy(
        response_timeout=timedelta(seconds=settings.recharge_timeout_seconds),
        backoff_initial=timedelta(seconds=settings.recharge_backoff_seconds),
        backoff_max=timedelta(seconds=settings.recharge_backoff_max_seconds),
        max_failures=settings.recharge_max_failures,
        daily_cap=settings.recharge_daily_cap,
    )
    on_rocksdb = settings.store.startswith("rocksdict")
    # RocksDB memtables and block cache: bounded per worker, see README "State".
    memory = (
        MemoryBudget(settings.rocksdb_memtable_bytes, settings.rocksdb_block_cache_bytes)
        if on_rocksdb
        else None
    )
    # JSON values (the app default serializer); keys are "a/...", "c/...": see ledger.py.
    table = app.Table(
        "accounts",
        partitions=settings.partitions,
        key_type=str,
        help="Accounts and dedup markers by tenant.",
        options={**settings.rocksdb_options(), MEMORY_OPTION: memory} if on_rocksdb else None,
    )
    store = TableStore(
        table,
        key_partitioner(settings.partitions),
        read=changelog_reader(table, settings.kafka_bootstrap),
        generation=lambda: int(app.consumer_generation_id),
    )
    store.seal = settings.changelog_seal
    hold = HoldPolicy(
        seconds=settings.unknown_tenant_hold_seconds,
        max_per_tenant=settings.unknown_tenant_hold_max_per_tenant,
        max_per_partition=settings.unknown_tenant_hold_max_per_partition,
    )
    ledger = Ledger(
        store,
        lambda: rates.book,
        policy,
        timedelta(hours=settings.dedup_horizon_hours),
        hold,
        # On RocksDB the expiry index is on disk (rating.expiry); the memory store's is a heap.
        expiry=RocksExpiry(store) if on_rocksdb else None,
    )
    p = Pipeline(
        settings=settings,
        metrics=metrics,
        app=app,
        rates=rates,
        ledger=ledger,
        store=store,
        table=table,
        clock=clock,
        rocksdb_memory=memory,
    )
    transport.configure(
        app,
        fetch_max_wait_ms=settings.fetch_max_wait_ms,
        isolation_level=settings.isolation_level,
        undecodable_handler=undecodable_handler(p),
        changelog_loader=changelog_loader(table) if settings.bulk_recovery else None,
    )
    _declare_topics(p)
    _register_agents(p)
    _register_timers(p)
    from rating.streaming.web import register_views

    register_views(p)
    return p


def _raw_topic(app: faust.App, *names: str, **kw: Any) -> Any:
    # Raw bytes in and out: validation happens in the agents, where a bad record becomes a
    # Rejection instead of an exception thrown into the agent by a deserializer.
    return app.topic(
        *names, key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw", **kw
    )


def _declare_topics(p: Pipeline) -> None:
    t = p.settings.topics
    app = p.app
    p.kind_by_topic = {
        t.cdr_audio: "cdr",
        t.cdr_tollfree: "cdr",
        t.tenant_settings: "settings",
        t.funds: "funds",
    }
    p.topics["inputs"] = _raw_topic(app, *p.kind_by_topic)
    p.topics["ledger"] = _raw_topic(
        app, f"{p.settings.app_id}-ledger", internal=True, partitions=p.settings.partitions
    )
    p.sinks = {
        Role.LEDGER: p.topics["ledger"],
        Role.CHARGES: _raw_topic(app, t.charges),
        Role.RECHARGE: _raw_topic(app, t.recharge_commands),
        Role.BALANCE: _raw_topic(app, t.balance_events),
        Role.REJECTED: _raw_topic(app, t.rejected),
    }
    # Admin endpoints publish here, like billing and the admin portal would.
    p.topics["settings_out"] = _raw_topic(app, t.tenant_settings)
    p.topics["funds_out"] = _raw_topic(app, t.funds)


async def settle(app: Any, events: Sequence[Any], work: Awaitable[None]) -> None:
    """Run one batch's work; its events are acked only if the work succeeded.

    Faust's ``take_events`` acks a batch's events in a ``finally``, also when the body
    raised (a send that failed after the client's retries, a changelog flush that failed):
    Faust would then commit input offsets whose records were never forwarded or applied.
    One more reference on each message while the work runs turns that ack into a no-op
    (Faust's messages are refcounted: the last ack is the one that counts); the events are
    acked here once the work is done. If it fails they stay unacked, so their offsets are
    never committed, and the worker crashes: its restart reads them again."""
    for event in events:
        event.message.incref()
    try:
        await work
    except Exception as exc:
        log.critical("a batch of %d records failed; stopping the worker: %r", len(events), exc)
        await app.crash(exc)
        raise
    for event in events:
        event.ack()


def batch_epoch(app: Any, events: Sequence[Any]) -> int:
    """The consumer group generation a batch was fetched in: Faust stamps it on each message
    (``Message.generation_id``) and skips messages of an older one; the changelog epoch."""
    stamped = [e.message.generation_id for e in events if e.message.generation_id is not None]
    return max(stamped) if stamped else int(app.consumer_generation_id)


def _register_agents(p: Pipeline) -> None:
    app = p.app

    @app.agent(p.topics["inputs"], name="ingest")
    async def ingest(stream: Any) -> None:
        # Batches: validate a batch, send its ledger records (and rejections) in one go and
        # wait for the broker's acks before the stream acks the batch's input offsets. So an
        # input offset is committed only after its ledger record is durable (Faust also
        # flushes the producer before every commit: transport.Producer.flush).
        async for events in stream.take_events(p.settings.batch_max, p.settings.batch_seconds):
            await settle(p.app, events, p.send_all(p.ingest([e.message for e in events])))

    @app.agent(p.topics["ledger"], name="ledger")
    async def ledger(stream: Any) -> None:
        # Batches (see ledger.py, "The outbox"): state for the whole batch, outputs included
        # (outbox entries), goes to the changelog and is flushed; only then are the outputs
        # published, and once the broker acked them the outbox entries are deleted. So a
        # Charge exists only once its marker is durable, a replay republishes the stored bytes
        # (same content) while they are kept, and nothing once they were acked. The deletes
        # need no wait of their own: Faust flushes the producer (transport.Producer.flush)
        # before it commits the batch's input offsets, and the next batch's durable() writes
        # them to RocksDB and seals them; a crash before that replays them from the changelog
        # or, at worst, republishes outputs already acked (allowed: consumers dedupe).
        # Counted in ledger records, each of many messages: RATING_LEDGER_BATCH_RECORDS.
        size = p.settings.ledger_batch_records
        async for events in stream.take_events(size, p.settings.batch_seconds):
            await settle(p.app, events, p.ledger_batch(events))

    app.on_partitions_revoked.connect(lambda *_a, **_k: p.on_revoked())


def _register_timers(p: Pipeline) -> None:
    app, s = p.app, p.settings

    @app.timer(interval=s.tick_seconds, name="clock")  # type: ignore[untyped-decorator]
    async def clock() -> None:
        # The clock goes through the log, so retries and expiry are replayed like any input.
        tick = json.dumps({"k": "tick"}).encode()
        for partition in sorted(p.owned_ledger_partitions()):
            await p.topics["ledger"].send(key=None, value=tick, partition=partition)

    if s.rate_cards_poll_seconds > 0:

        @app.timer(interval=s.rate_cards_poll_seconds, name="ratecards")  # type: ignore[untyped-decorator]
        async def reload_rate_cards() -> None:
            await p.rates.maybe_reload()

    @app.timer(interval=5.0, name="gauges")  # type: ignore[untyped-decorator]
    async def gauges() -> None:
        _update_gauges(p)


def _update_gauges(p: Pipeline) -> None:
    m = p.metrics
    owned = p.owned_ledger_partitions()
    status = p.ledger.status(owned)
    m.tenants.set(status.tenants)
    m.tenants_below_trigger.set(status.below_trigger)
    m.tenants_exhausted.set(status.exhausted)
    m.recharge_outstanding.set(status.outstanding)
    m.messages_held_now.set(p.ledger.held_total(owned))
    # Only the topics this pipeline consumes: changelogs and Faust's own are noise here.
    consumed = set(p.kind_by_topic) | {p.topics["ledger"].get_topic_name()}
    by_topic: dict[str, int] = dict.fromkeys(consumed, 0)
    consumer = p.app.consumer
    m.consumer_lag.clear()  # forget partitions revoked since the last update
    for tp in p.app.assignor.assigned_actives():
        if tp.topic in consumed:
            by_topic[tp.topic] += 1
            _set_lag(p, consumer, tp)
    for topic, count in by_topic.items():
        m.partitions_owned.labels(topic).set(count)
    if p.rocksdb_memory is not None:
        m.rocksdb_memory.labels("memtables").set(p.rocksdb_memory.memtable_usage())
        m.rocksdb_memory.labels("block_cache").set(p.rocksdb_memory.block_cache_usage())


def _set_lag(p: Pipeline, consumer: Any, tp: TP) -> None:
    # highwater = the partition's end offset from the last fetch; the committed offset is
    # the next one this group will read. Faust keeps it privately; lag is best effort.
    try:
        high = consumer.highwater(tp)
        committed = consumer._committed_offset.get(tp)
    except Exception:
        return
    if high is None or committed is None:
        return
    p.metrics.consumer_lag.labels(tp.topic, str(tp.partition)).set(max(0, high - committed))


__all__ = ["Pipeline", "RateCardError", "create_app", "partition_of"]
