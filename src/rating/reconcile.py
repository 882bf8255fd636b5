"""Reconciliation: every tenant's balance recomputed from the contract topics (pure).

``rating reconcile`` reads ``rating.tenant-settings``, ``billing.funds``, ``rating.charges``
and ``rating.rejected`` from their beginning, recomputes the balance the ledger must hold
for every tenant and compares it with what the workers answer. This module is the
arithmetic and the comparison, with no Faust and no Kafka: records in, typed values out
(``rating.reconcile_cli`` is the adapter that reads the topics and asks the workers).

How the balance is recomputed, and why it matches the ledger (``rating.ledger``,
``rating.domain.account``):

* A tenant exists from its first *accepted* settings message (balance 0). Settings are
  accepted when ingest's classifier accepts them (``ingest.validate``: schema, key) and no
  Rejection names their coordinates (the ledger's own refusals: bad amounts, a currency
  change with money on the account). Its currency is that of its last accepted settings.
* Every Charge debits its ``amount`` once per ``(tenant_id, cdr_id)``: a Charge published
  again after a crash is the same Charge (same content, counted once). Two copies with
  different amounts are a finding: the ledger debited one of them, nobody can tell which.
* A funds event credits its ``amount`` (``manual_add``, ``recharge_succeeded``, and
  ``adjustment``, which may be negative); a ``recharge_failed`` moves no money. Whether
  the ledger *applied* an event depends on its state (a recharge result for a command that
  is not outstanding credits nothing, funds in another currency are refused, funds of a
  tenant without settings are held and possibly rejected as ``unknown_tenant``). That state
  is not on any topic, so instead of re-running the state machine we read what the ledger
  decided: every refusal is a Rejection on ``rating.rejected`` carrying the refused
  message's source topic, partition and offset. A funds message is refused iff ingest's
  classifier refuses it or a Rejection names it; the first copy of an ``(tenant_id,
  event_id)`` that is not refused is the one applied (the ledger's funds marker makes every
  later copy a duplicate, dropped without a Rejection). A rejected copy that an operator
  replayed is a new message at a new offset, and is applied (or refused) on its own.
* Funds of a tenant with no accepted settings are held by the ledger (or rejected later):
  they credit no account, so they are only counted.

What it cannot see: a message still in flight (published, not processed yet) looks like a
difference until the workers catch up; ``rating reconcile --wait`` re-checks until they do.
Order across input partitions: copies of one event on different partitions (a producer that
does not key by tenant) reach the ledger in an order the topics do not record; when such
copies differ, that is reported as a finding rather than guessed.

Money is ``Decimal`` in a context that traps inexact results: a sum is exact or fails.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from decimal import Context, Decimal, Inexact, InvalidOperation, Overflow, Underflow
from enum import StrEnum
from typing import Final

from pydantic import ValidationError

from rating.contracts import Charge, FundsEvent, FundsKind, Rejection, TenantSettings, format_money
from rating.ingest import Envelope, Kind, Source, validate

_CTX: Final = Context(prec=60, traps=[Inexact, InvalidOperation, Overflow, Underflow])
_ZERO: Final = Decimal(0)
# ingest.validate stamps rejections with a time; reconciliation never looks at it.
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class Record:
    """One Kafka record as read from a topic."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None

    @property
    def ref(self) -> str:
        return f"{self.topic}:{self.partition}:{self.offset}"


class FindingKind(StrEnum):
    #: Two Charges with the same (tenant, cdr_id) and different amounts.
    CONFLICTING_CHARGE = "conflicting_charge"
    #: Copies of a Charge with the same amount that differ in another field (the contract
    #: says a republished Charge has the same content).
    CHARGE_COPIES_DIFFER = "charge_copies_differ"
    #: Copies of a funds event (same tenant and event_id, none refused) with different
    #: content: which one the ledger applied depends on an order the topics do not record.
    CONFLICTING_FUNDS = "conflicting_funds"
    #: A Charge for a tenant that has no accepted settings.
    CHARGE_WITHOUT_TENANT = "charge_without_tenant"
    #: A record on rating.charges or rating.rejected that is not a valid message.
    UNREADABLE = "unreadable"


@dataclass(frozen=True, slots=True)
class Finding:
    kind: FindingKind
    tenant_id: str | None
    detail: str


@dataclass(frozen=True, slots=True)
class Expected:
    """A tenant's balance as the topics say it must be."""

    tenant_id: str
    currency: str
    credited: Decimal  # net funds applied (negative adjustments included)
    charged: Decimal  # sum of its distinct Charges
    charges: int  # distinct Charges
    funds_applied: int  # distinct funds events applied (recharge_failed included)

    @property
    def balance(self) -> Decimal:
        return _CTX.subtract(self.credited, self.charged)


@dataclass(frozen=True, slots=True)
class Counts:
    """What was read, for the summary line."""

    settings: int = 0
    funds: int = 0
    funds_duplicates: int = 0  # later copies of an applied event_id
    funds_refused: int = 0  # refused by ingest's classifier or named by a Rejection
    funds_pending: int = 0  # not refused, but the tenant has no accepted settings (held)
    charges: int = 0
    charge_duplicates: int = 0  # later copies of a cdr_id
    rejections: int = 0


@dataclass(frozen=True, slots=True)
class Recomputation:
    tenants: Mapping[str, Expected]
    findings: tuple[Finding, ...]
    counts: Counts


@dataclass(frozen=True, slots=True)
class Answered:
    """A worker's ``GET /tenants/{id}``: the balance it holds."""

    balance: Decimal
    currency: str


@dataclass(frozen=True, slots=True)
class Unanswered:
    """No balance: HTTP ``status`` (404 unknown tenant, 503 rebalancing, ...) and why."""

    status: int
    detail: str


Answer = Answered | Unanswered


class Status(StrEnum):
    OK = "ok"
    DRIFT = "drift"  # the worker answered another balance (or currency)
    UNKNOWN = "unknown"  # the worker did not answer a balance: counts as drift


@dataclass(frozen=True, slots=True)
class TenantCheck:
    tenant_id: str
    currency: str
    expected: Decimal
    answered: Decimal | None
    status: Status
    detail: str = ""

    @property
    def difference(self) -> Decimal | None:
        """answered - expected (negative: the worker holds less than the topics say)."""
        if self.answered is None:
            return None
        return _CTX.subtract(self.answered, self.expected)


@dataclass(frozen=True, slots=True)
class Report:
    checks: tuple[TenantCheck, ...]
    findings: tuple[Finding, ...]
    counts: Counts

    @property
    def drifted(self) -> tuple[TenantCheck, ...]:
        return tuple(c for c in self.checks if c.status is not Status.OK)

    @property
    def consistent(self) -> bool:
        return not self.drifted and not self.findings


# --- recomputation ------------------------------------------------------------------------


@dataclass(slots=True)
class _Tenant:
    currency: str
    credited: Decimal = _ZERO
    charged: Decimal = _ZERO
    charges: int = 0
    funds_applied: int = 0


@dataclass(slots=True)
class _Funds:
    first: FundsEvent
    ref: str
    others: list[tuple[FundsEvent, str]] = field(default_factory=list)


@dataclass(slots=True)
class _Copies:
    first: Charge
    ref: str
    others: list[Charge] = field(default_factory=list)


def _ordered(records: Iterable[Record]) -> list[Record]:
    return sorted(records, key=lambda r: (r.topic, r.partition, r.offset))


def refused_refs(rejections: Iterable[Record]) -> tuple[set[str], list[Finding], int]:
    """Coordinates (``topic:partition:offset``) of every message a Rejection names."""
    refs: set[str] = set()
    findings: list[Finding] = []
    read = 0
    for rec in rejections:
        read += 1
        try:
            rej = Rejection.model_validate_json(rec.value or b"")
        except ValidationError:
            findings.append(Finding(FindingKind.UNREADABLE, None, f"{rec.ref}: not a Rejection"))
            continue
        refs.add(f"{rej.source_topic}:{rej.partition}:{rej.offset}")
    return refs, findings, read


def _accepted(kind: Kind, rec: Record, refused: set[str]) -> Envelope | None:
    """The message if ingest accepts it and no Rejection names it, else None."""
    if rec.ref in refused:
        return None
    source = Source(rec.topic, rec.partition, rec.offset, rec.key)
    checked = validate(kind, source, rec.value, _EPOCH)
    return checked if isinstance(checked, Envelope) else None


def recompute(
    settings: Iterable[Record],
    funds: Iterable[Record],
    charges: Iterable[Record],
    rejections: Iterable[Record],
    tenants: Collection[str] | None = None,
) -> Recomputation:
    """Expected balances of every tenant (or only ``tenants``), and what looks wrong."""
    refused, unreadable, rejections_read = refused_refs(rejections)
    run = _Run(refused, tenants, findings=unreadable)
    run.settings(settings)
    run.funds(funds)
    run.charges(charges)
    expected = {
        tenant: Expected(
            tenant_id=tenant,
            currency=a.currency,
            credited=a.credited,
            charged=a.charged,
            charges=a.charges,
            funds_applied=a.funds_applied,
        )
        for tenant, a in sorted(run.accounts.items())
    }
    counts = replace(run.counts, rejections=rejections_read)
    return Recomputation(expected, tuple(run.findings), counts)


@dataclass(slots=True)
class _Run:
    """One recomputation's state: accounts, findings and counts as records are read."""

    refused: set[str]
    only: Collection[str] | None
    findings: list[Finding]
    accounts: dict[str, _Tenant] = field(default_factory=dict)
    counts: Counts = field(default_factory=Counts)

    def wanted(self, tenant: str | None) -> bool:
        return self.only is None or tenant in self.only

    def count(self, **more: int) -> None:
        self.counts = replace(
            self.counts, **{k: getattr(self.counts, k) + v for k, v in more.items()}
        )

    def settings(self, records: Iterable[Record]) -> None:
        for rec in _ordered(records):
            env = _accepted("settings", rec, self.refused)
            if env is None or not self.wanted(env.tenant_id):
                continue
            self.count(settings=1)
            model = TenantSettings.model_validate_json(env.payload)
            acct = self.accounts.setdefault(model.tenant_id, _Tenant(model.currency))
            acct.currency = model.currency  # the last accepted settings win

    def funds(self, records: Iterable[Record]) -> None:
        events: dict[tuple[str, str], _Funds] = {}
        for rec in _ordered(records):
            env = _accepted("funds", rec, self.refused)
            if env is None:
                # Refused, so it moved no money; counted when we can tell whose it was.
                if self.wanted(_tenant_of_raw(rec)):
                    self.count(funds=1, funds_refused=1)
                continue
            if not self.wanted(env.tenant_id):
                continue
            self.count(funds=1)
            event = FundsEvent.model_validate_json(env.payload)
            seen = events.get((event.tenant_id, event.event_id))
            if seen is None:
                events[(event.tenant_id, event.event_id)] = _Funds(event, rec.ref)
            else:
                seen.others.append((event, rec.ref))
        for (tenant, event_id), group in events.items():
            self._apply_funds(tenant, event_id, group)

    def _apply_funds(self, tenant: str, event_id: str, group: _Funds) -> None:
        differing = [ref for other, ref in group.others if other != group.first]
        if differing:
            self.findings.append(
                Finding(
                    FindingKind.CONFLICTING_FUNDS,
                    tenant,
                    f"funds event {event_id!r}: copies at {group.ref} and "
                    f"{', '.join(differing)} differ (counted: the first)",
                )
            )
        acct = self.accounts.get(tenant)
        if acct is None:  # held by the ledger until settings arrive, or rejected later
            self.count(funds_pending=1 + len(group.others))
            return
        self.count(funds_duplicates=len(group.others))
        acct.funds_applied += 1
        if group.first.kind is not FundsKind.RECHARGE_FAILED:
            acct.credited = _CTX.add(acct.credited, group.first.amount)

    def charges(self, records: Iterable[Record]) -> None:
        copies: dict[tuple[str, str], _Copies] = {}
        for rec in _ordered(records):
            try:
                charge = Charge.model_validate_json(rec.value or b"")
            except ValidationError as exc:
                if self.wanted(_tenant_of_raw(rec)):
                    detail = f"{rec.ref}: not a Charge ({exc.error_count()} errors)"
                    self.findings.append(
                        Finding(FindingKind.UNREADABLE, _tenant_of_raw(rec), detail)
                    )
                continue
            if not self.wanted(charge.tenant_id):
                continue
            self.count(charges=1)
            key = (charge.tenant_id, charge.cdr_id)
            if key in copies:
                copies[key].others.append(charge)
                self.count(charge_duplicates=1)
            else:
                copies[key] = _Copies(charge, rec.ref)
        for group in copies.values():
            self._apply_charge(group)

    def _apply_charge(self, group: _Copies) -> None:
        first, tenant, cdr_id = group.first, group.first.tenant_id, group.first.cdr_id
        amounts = {first.amount, *(c.amount for c in group.others)}
        if len(amounts) > 1:
            shown = ", ".join(format_money(a) for a in sorted(amounts))
            self.findings.append(
                Finding(
                    FindingKind.CONFLICTING_CHARGE,
                    tenant,
                    f"cdr_id {cdr_id!r} charged with different amounts: {shown} (first at "
                    f"{group.ref}, counted once with {format_money(first.amount)})",
                )
            )
        elif any(c != first for c in group.others):
            differ = sorted(
                {
                    name
                    for c in group.others
                    for name in Charge.model_fields
                    if getattr(c, name) != getattr(first, name)
                }
            )
            self.findings.append(
                Finding(
                    FindingKind.CHARGE_COPIES_DIFFER,
                    tenant,
                    f"cdr_id {cdr_id!r}: copies of its Charge differ in {', '.join(differ)}",
                )
            )
        acct = self.accounts.get(tenant)
        if acct is None:
            self.findings.append(
                Finding(
                    FindingKind.CHARGE_WITHOUT_TENANT,
                    tenant,
                    f"Charge for cdr_id {cdr_id!r} at {group.ref}, but the tenant has no "
                    "accepted settings on the settings topic",
                )
            )
            return
        acct.charges += 1
        acct.charged = _CTX.add(acct.charged, first.amount)


def _tenant_of_raw(rec: Record) -> str | None:
    """The tenant a record is about when it cannot be decoded: its key, if any."""
    if rec.key is None:
        return None
    return rec.key.decode("utf-8", "backslashreplace")


# --- comparison ---------------------------------------------------------------------------


def compare(recomputed: Recomputation, answers: Mapping[str, Answer]) -> Report:
    """Each tenant's expected balance against the worker's answer (missing = unknown)."""
    checks = []
    for tenant, exp in recomputed.tenants.items():
        answer = answers.get(tenant, Unanswered(0, "not asked"))
        expected = exp.balance
        if isinstance(answer, Unanswered):
            checks.append(
                TenantCheck(
                    tenant,
                    exp.currency,
                    expected,
                    None,
                    Status.UNKNOWN,
                    f"no balance from the workers ({answer.status}: {answer.detail})",
                )
            )
            continue
        problems = []
        if answer.balance != expected:
            problems.append("balance")
        if answer.currency != exp.currency:
            problems.append(f"currency: workers say {answer.currency}, settings {exp.currency}")
        checks.append(
            TenantCheck(
                tenant,
                exp.currency,
                expected,
                answer.balance,
                Status.DRIFT if problems else Status.OK,
                "; ".join(p for p in problems if p != "balance"),
            )
        )
    return Report(tuple(checks), recomputed.findings, recomputed.counts)


# --- output -------------------------------------------------------------------------------


def describe(check: TenantCheck) -> str:
    """One line per tenant: ``DRIFT tenant=... expected=... answered=... difference=...``."""
    answered = "?" if check.answered is None else format_money(check.answered)
    diff = check.difference
    difference = "?" if diff is None else _signed(diff)
    line = (
        f"{check.status.value.upper()} tenant={check.tenant_id} "
        f"expected={format_money(check.expected)} answered={answered} "
        f"difference={difference} currency={check.currency}"
    )
    return f"{line} ({check.detail})" if check.detail else line


def describe_finding(finding: Finding) -> str:
    tenant = "-" if finding.tenant_id is None else finding.tenant_id
    return f"FINDING {finding.kind.value} tenant={tenant}: {finding.detail}"


def summary(report: Report) -> str:
    c = report.counts
    unknown = sum(1 for x in report.checks if x.status is Status.UNKNOWN)
    verdict = "consistent" if report.consistent else "NOT consistent"
    return (
        f"reconcile: {verdict}: {len(report.checks)} tenants checked, "
        f"{len(report.drifted)} drifted ({unknown} unknown), {len(report.findings)} findings; "
        f"charges: {c.charges} read, {c.charge_duplicates} duplicates ignored; "
        f"funds: {c.funds} read, {c.funds_duplicates} duplicates ignored, "
        f"{c.funds_refused} refused, {c.funds_pending} held (tenant without settings); "
        f"settings: {c.settings} accepted; rejections: {c.rejections} read"
    )


def _signed(value: Decimal) -> str:
    text = format_money(value)
    return text if text.startswith("-") else f"+{text}"


__all__ = [
    "Answer",
    "Answered",
    "Counts",
    "Expected",
    "Finding",
    "FindingKind",
    "Recomputation",
    "Record",
    "Report",
    "Status",
    "TenantCheck",
    "Unanswered",
    "compare",
    "describe",
    "describe_finding",
    "recompute",
    "summary",
]
