"""`rating reconcile`: read the topics, ask the workers, print the drift (``rating.reconcile``).

The topics are read from their beginning to the end offsets they have when the check
starts, with ``isolation_level=read_committed`` and no consumer group (``assign`` and
``seek_to_beginning``: nothing is committed, nobody's offsets move). Balances are asked
from the workers' ``GET /tenants/{id}``; any worker answers for any tenant.

Exit codes: 0 every balance matches, 1 drift (a balance or currency differs, a tenant
without an answer, or a finding such as a cdr_id charged with two amounts), 2 the check
could not be made (broker or workers unreachable, a topic missing or truncated by retention,
bad configuration).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

from rating.contracts import format_money
from rating.errors import RatingBaseError
from rating.reconcile import (
    Answer,
    Answered,
    Counts,
    Finding,
    Record,
    Report,
    Status,
    TenantCheck,
    Unanswered,
    compare,
    describe,
    describe_finding,
    recompute,
    summary,
)
from rating.settings import Settings, SettingsError, load_settings

#: How often a 503 (partition assignment in progress) is retried per tenant, 1 s apart.
BUSY_RETRIES = 5
HTTP_TIMEOUT_SECONDS = 10.0
FETCH_THREADS = 8


class ReconcileError(RatingBaseError):
    """The check could not be made (exit 2). ``transient``: ``--wait`` may retry it."""

    def __init__(self, message: str, *, transient: bool) -> None:
        super().__init__(message)
        self.transient = transient


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--tenant",
        action="append",
        metavar="T",
        help="check only this tenant (repeatable; default: every tenant with settings)",
    )
    p.add_argument(
        "--url",
        action="append",
        metavar="URL",
        help="a worker's base URL (repeatable: the next is tried when one is unreachable; "
        "default: http://127.0.0.1:$RATING_WEB_PORT)",
    )
    p.add_argument(
        "--bootstrap", default=None, help="Kafka bootstrap (default: RATING_KAFKA_BOOTSTRAP)"
    )
    p.add_argument(
        "--wait",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="re-read and re-check until consistent or this many seconds passed (workers may "
        "still be processing what is on the topics); default 0: check once",
    )
    p.add_argument(
        "--interval", type=float, default=1.0, metavar="SECONDS", help="pause between re-checks"
    )
    p.add_argument(
        "--read-timeout",
        type=float,
        default=300.0,
        metavar="SECONDS",
        help="give up reading the topics after this long",
    )
    p.add_argument("--all", action="store_true", help="print a line for every tenant, OK ones too")


# --- reading the topics -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Topics:
    settings: str
    funds: str
    charges: str
    rejected: str

    @classmethod
    def of(cls, settings: Settings) -> Topics:
        t = settings.topics
        return cls(t.tenant_settings, t.funds, t.charges, t.rejected)

    def names(self) -> list[str]:
        return [self.settings, self.funds, self.charges, self.rejected]

    def history(self) -> list[str]:
        """Topics whose whole history the recomputation needs (not compacted)."""
        return [self.funds, self.charges, self.rejected]


async def read_topics(bootstrap: str, topics: Topics, seconds: float) -> dict[str, list[Record]]:
    """Every record of ``topics`` from the beginning to their end offsets as of now."""
    from aiokafka import AIOKafkaConsumer, TopicPartition  # type: ignore[import-untyped]
    from aiokafka.errors import KafkaError  # type: ignore[import-untyped]

    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        isolation_level="read_committed",
        request_timeout_ms=int(min(seconds, 30) * 1000),
    )
    try:
        await asyncio.wait_for(consumer.start(), seconds)
    except (KafkaError, OSError, TimeoutError) as exc:
        await consumer.stop()
        raise ReconcileError(
            f"cannot reach the Kafka brokers at {bootstrap}: {exc}", transient=True
        ) from exc
    try:
        return await asyncio.wait_for(_read_all(consumer, topics, TopicPartition), seconds)
    except TimeoutError as exc:
        raise ReconcileError(
            f"could not read the topics to their end within {seconds:.0f}s "
            "(--read-timeout): broker slow or unreachable",
            transient=True,
        ) from exc
    except KafkaError as exc:
        raise ReconcileError(f"reading the topics failed: {exc!r}", transient=True) from exc
    finally:
        await consumer.stop()


async def _read_all(consumer: Any, topics: Topics, tp_type: Any) -> dict[str, list[Record]]:
    # A consumer without subscriptions only knows the topics of its bootstrap metadata.
    await consumer._client.force_metadata_update()
    tps = []
    for name in topics.names():
        parts = consumer.partitions_for_topic(name)
        if not parts:
            raise ReconcileError(
                f"topic {name!r} does not exist (check RATING_KAFKA_BOOTSTRAP and the "
                "RATING_TOPIC_* names)",
                transient=False,
            )
        tps += [tp_type(name, p) for p in sorted(parts)]
    consumer.assign(tps)
    starts = await consumer.beginning_offsets(tps)
    truncated = [
        f"{tp.topic}[{tp.partition}] starts at offset {starts[tp]}"
        for tp in tps
        if tp.topic in topics.history() and starts[tp] > 0
    ]
    if truncated:
        raise ReconcileError(
            "the topics no longer hold the whole history (deleted by retention): "
            + "; ".join(truncated)
            + ". Balances cannot be recomputed from them (README, 'Reconciling balances').",
            transient=False,
        )
    ends = await consumer.end_offsets(tps)
    await consumer.seek_to_beginning(*tps)
    out: dict[str, list[Record]] = {name: [] for name in topics.names()}

    def take(batch: dict[Any, list[Any]]) -> None:
        for tp, msgs in batch.items():
            out[tp.topic].extend(
                Record(tp.topic, tp.partition, m.offset, m.key, m.value) for m in msgs
            )

    # Records fetched past an end offset are kept: some brokers (the embedded Tansu) report
    # the end as the last batch's base offset + 1, and the rest of that batch is history too.
    pending = [tp for tp in tps if ends[tp] > 0]
    consumer.pause(*[tp for tp in tps if tp not in pending])
    while pending:
        take(await consumer.getmany(*pending, timeout_ms=200))
        done = [tp for tp in pending if await consumer.position(tp) >= ends[tp]]
        consumer.pause(*done)  # what was published since the start is not read
        pending = [tp for tp in pending if tp not in done]
    return out


# --- asking the workers -------------------------------------------------------------------


def _ask(url: str, tenant: str) -> Answer:
    """One worker's answer for ``tenant``; ``OSError`` when the worker cannot be reached."""
    target = f"{url}/tenants/{urllib.parse.quote(tenant, safe='')}"
    for attempt in range(BUSY_RETRIES + 1):
        try:
            with urllib.request.urlopen(target, timeout=HTTP_TIMEOUT_SECONDS) as resp:  # noqa: S310 - operator's URL
                body = json.loads(resp.read())
            return Answered(Decimal(str(body["balance"])), str(body["currency"]))
        except urllib.error.HTTPError as exc:
            status, text = exc.code, exc.read().decode("utf-8", "replace")
            if status == 503 and attempt < BUSY_RETRIES:
                time.sleep(1.0)  # a rebalance: the owner is being decided
                continue
            try:
                detail = str(json.loads(text).get("error", text))
            except (ValueError, AttributeError):
                detail = text.strip()[:200]
            return Unanswered(status, detail or exc.reason)
        except (ValueError, KeyError, TypeError, InvalidOperation) as exc:
            return Unanswered(200, f"unreadable answer: {exc!r}")
    raise AssertionError("unreachable")  # pragma: no cover - the loop always returns


def ask_workers(urls: Sequence[str], tenants: Sequence[str]) -> dict[str, Answer]:
    """Every tenant's balance from the first of ``urls`` that can be reached."""

    def one(tenant: str) -> Answer:
        errors = []
        for url in urls:
            try:
                return _ask(url, tenant)
            except OSError as exc:  # URLError, refused, timed out: try the next worker
                errors.append(f"{url}: {getattr(exc, 'reason', exc)}")
        raise ReconcileError(
            "cannot reach the workers' API: " + "; ".join(errors) + " (give --url)",
            transient=True,
        )

    with ThreadPoolExecutor(FETCH_THREADS) as pool:
        return dict(zip(tenants, pool.map(one, tenants), strict=True))


# --- the command --------------------------------------------------------------------------


def check(
    args: argparse.Namespace, settings: Settings, urls: Sequence[str], only: set[str] | None
) -> Report:
    """Read the topics, recompute the balances of ``only`` (None: all), ask the workers."""
    topics = Topics.of(settings)
    bootstrap = args.bootstrap or settings.kafka_bootstrap
    records = asyncio.run(read_topics(bootstrap, topics, args.read_timeout))
    recomputed = recompute(
        records[topics.settings],
        records[topics.funds],
        records[topics.charges],
        records[topics.rejected],
        tenants=only,
    )
    answers = ask_workers(urls, list(recomputed.tenants))
    report = compare(recomputed, answers)
    # A tenant asked for by name but without accepted settings is reported, not skipped.
    missing = sorted((only or set()) - set(recomputed.tenants))
    if not missing:
        return report
    extra = []
    for tenant, answer in ask_workers(urls, missing).items():
        said = (
            f"the workers hold balance {format_money(answer.balance)} {answer.currency}"
            if isinstance(answer, Answered)
            else f"the workers answer {answer.status}: {answer.detail}"
        )
        detail = f"no accepted settings on the settings topic; {said}"
        extra.append(TenantCheck(tenant, "?", Decimal(0), None, Status.UNKNOWN, detail))
    return Report(report.checks + tuple(extra), report.findings, report.counts)


def run_reconcile(args: argparse.Namespace) -> int:
    try:
        settings = load_settings()
    except SettingsError as exc:
        return _error(str(exc))
    urls = [str(u).rstrip("/") for u in (args.url or [f"http://127.0.0.1:{settings.web_port}"])]
    deadline = time.monotonic() + max(args.wait, 0.0)
    # Under traffic a tenant's balance and its topics are rarely read at the same instant,
    # so --wait re-checks only the tenants that still differ: a tenant whose balance matched
    # the topics once is confirmed. Findings are facts about the topics: they stay.
    remaining = None if not args.tenant else set(args.tenant)
    confirmed: dict[str, TenantCheck] = {}
    findings: dict[Finding, None] = {}
    counts: Counts | None = None
    drifted: tuple[TenantCheck, ...] = ()
    while True:
        try:
            report = check(args, settings, urls, remaining)
        except ReconcileError as exc:
            if not exc.transient or time.monotonic() >= deadline:
                return _error(str(exc))
            what = str(exc)
        else:
            counts = counts or report.counts  # the first read covers every tenant asked for
            confirmed.update((c.tenant_id, c) for c in report.checks if c.status is Status.OK)
            findings.update(dict.fromkeys(report.findings))
            drifted = report.drifted
            if not drifted or time.monotonic() >= deadline:
                break
            remaining = {c.tenant_id for c in drifted}
            what = f"{len(drifted)} tenants differ"
        left = deadline - time.monotonic()
        print(f"reconcile: {what}; re-checking ({left:.0f}s left)", file=sys.stderr, flush=True)
        time.sleep(max(min(args.interval, left), 0.0))
    checks = tuple(sorted((*confirmed.values(), *drifted), key=lambda c: c.tenant_id))
    final = Report(checks, tuple(findings), counts)
    for c in final.checks:
        if args.all or c.status is not Status.OK:
            print(describe(c))
    for f in final.findings:
        print(describe_finding(f))
    print(summary(final), flush=True)
    return 0 if final.consistent else 1


def _error(message: str) -> int:
    print(f"rating reconcile: {message}", file=sys.stderr)
    return 2
