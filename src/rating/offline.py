"""``rating rate``: rate a file of CDRs offline, e.g. to try a price change before publishing it.

Reads CDR JSON lines and writes exactly one JSON line per non-blank input line, in input order:
the Charge (without ``balance_after``: no balance is involved) or
``{"cdr_id", "reason", "detail"}``. Blank lines are skipped and produce no output. Rejected CDRs
do not change the exit status (0); unusable inputs (rate cards, tenants, CDR file, options) exit 2
before anything is written.

Each line is decoded once, by pydantic, straight from the raw bytes; input is streamed, so the
file can be larger than memory.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

from pydantic import TypeAdapter, ValidationError

from rating.contracts import Currency, OfflineRejection, RejectReason, TenantSettings, UtcTime
from rating.domain.ratecard import RateBook, RateCardError, load_rate_cards
from rating.domain.rating import RatingError, rate_cdr
from rating.domain.validation import describe_validation_error
from rating.errors import RatingBaseError
from rating.ingest import Invalid, parse_cdr

_MAX_PROBLEMS = 20


class _InputError(RatingBaseError):
    """An input the whole run cannot go on without: exit 2 with this message."""


def _utc_time(text: str) -> datetime:
    try:
        return TypeAdapter(UtcTime).validate_python(text)
    except ValidationError as exc:
        raise argparse.ArgumentTypeError(
            f"expected RFC 3339 UTC such as 2026-11-22T10:00:00Z, got {text!r}"
        ) from exc


def _currency(text: str) -> str:
    try:
        return TypeAdapter(Currency).validate_python(text)
    except ValidationError as exc:
        raise argparse.ArgumentTypeError(
            f"expected an ISO 4217 code such as USD, got {text!r}"
        ) from exc


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``rating rate`` (CONTRACTS.md, "Command line")."""
    parser.add_argument("--rate-cards", required=True, metavar="FILE", help="rate-card file")
    parser.add_argument(
        "--cdrs",
        required=True,
        metavar="FILE",
        help="CDR JSON lines ('-' reads standard input); blank lines are skipped",
    )
    parser.add_argument(
        "--tenants",
        metavar="FILE",
        help="tenant settings (JSON lines, or a JSON array) giving each tenant's plan and "
        "currency; the last entry for a tenant wins",
    )
    parser.add_argument(
        "--currency",
        type=_currency,
        help="currency for tenants not in --tenants (without it they are rejected as "
        "unknown_tenant)",
    )
    parser.add_argument(
        "--plan", default="standard", help="plan for tenants not in --tenants (default: standard)"
    )
    parser.add_argument(
        "--rated-at",
        type=_utc_time,
        metavar="TIME",
        help="rated_at for every charge, RFC 3339 UTC, for reproducible output (default: now)",
    )


def _tenants_from_array(text: str, source: str, problems: list[str]) -> list[TenantSettings]:
    try:
        items: Any = json.loads(text)
    except json.JSONDecodeError as exc:
        raise _InputError(
            f"{source}: line {exc.lineno} column {exc.colno}: not valid JSON: {exc.msg}"
        ) from exc
    found = []
    for i, item in enumerate(items):
        try:
            found.append(TenantSettings.model_validate(item))
        except ValidationError as exc:
            problems.extend(f"{source}: entry [{i}]: {p}" for p in describe_validation_error(exc))
    return found


def _tenants_from_lines(text: str, source: str, problems: list[str]) -> list[TenantSettings]:
    found = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            found.append(TenantSettings.model_validate_json(line))
        except ValidationError as exc:
            problems.extend(f"{source}:{lineno}: {p}" for p in describe_validation_error(exc))
    return found


def load_tenants(path: str | Path) -> dict[str, TenantSettings]:
    """Tenant settings from JSON lines or a JSON array, the last entry of a tenant winning
    (as on the compacted topic). Problems name the file, the line (or array entry) and the
    field."""
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise _InputError(f"cannot read tenants file {source}: {reason}") from exc
    problems: list[str] = []
    parse = _tenants_from_array if text.lstrip().startswith("[") else _tenants_from_lines
    tenants = {settings.tenant_id: settings for settings in parse(text, source, problems)}
    if problems:
        shown = problems[:_MAX_PROBLEMS]
        if len(problems) > _MAX_PROBLEMS:
            shown.append(f"... and {len(problems) - _MAX_PROBLEMS} more problems")
        raise _InputError("bad tenants file:\n" + "\n".join(shown))
    return tenants


def _cdr_id_of(raw: bytes | str) -> str | None:
    """Best effort, for the rejection of a CDR that failed validation (slow path only)."""
    try:
        data = json.loads(raw)
    except ValueError:
        return None
    cdr_id = data.get("cdr_id") if isinstance(data, dict) else None
    return cdr_id if isinstance(cdr_id, str) else None


@dataclass(slots=True)
class OfflineRater:
    """Turns one input line into one output line. Holds everything the run needs."""

    book: RateBook
    rated_at: datetime
    tenants: dict[str, TenantSettings] = field(default_factory=dict)
    tenants_source: str | None = None
    plan: str = "standard"
    currency: str | None = None

    def rate_line(self, raw: bytes | str, lineno: int = 0) -> str | None:
        """The JSON output line (without newline) for one input line; ``None`` when blank."""
        cdr = parse_cdr(raw)
        if isinstance(cdr, Invalid):
            if not raw.strip():
                return None  # blank lines are checked here, off the hot path
            return self._reject_invalid(raw, cdr, lineno)
        settings = self.tenants.get(cdr.tenant_id)
        if settings is not None:
            plan, currency = settings.plan, settings.currency
        elif self.currency is not None:
            plan, currency = self.plan, self.currency
        else:
            where = f"in {self.tenants_source}" if self.tenants_source else "known (no --tenants)"
            return self._reject(
                cdr.cdr_id,
                RatingError(
                    RejectReason.UNKNOWN_TENANT,
                    f"tenant_id {cdr.tenant_id!r} is not {where} and no --currency was given",
                ),
            )
        result = rate_cdr(cdr, self.book, plan=plan, currency=currency, rated_at=self.rated_at)
        if isinstance(result, RatingError):
            return self._reject(cdr.cdr_id, result)
        return result.model_dump_json(exclude={"balance_after"})

    def _reject_invalid(self, raw: bytes | str, invalid: Invalid, lineno: int) -> str:
        # The same classifier as the streaming path (ingest.parse_cdr); the line number
        # and the CDR id (when one can be read) are what an offline run adds.
        where = f"line {lineno}: " if lineno else ""
        cdr_id = _cdr_id_of(raw) if invalid.reason is RejectReason.SCHEMA else None
        return self._reject(cdr_id, RatingError(invalid.reason, where + invalid.detail))

    @staticmethod
    def _reject(cdr_id: str | None, error: RatingError) -> str:
        return OfflineRejection(
            cdr_id=cdr_id, reason=error.reason, detail=error.detail
        ).model_dump_json()


@contextmanager
def _cdr_lines(name: str, stdin: TextIO) -> Iterator[Iterable[bytes | str]]:
    """Binary lines when possible, so invalid UTF-8 is one rejected line, not a crash."""
    if name == "-":
        lines: Iterable[bytes | str] = getattr(stdin, "buffer", stdin)
        yield lines
        return
    try:
        handle = Path(name).open("rb")  # noqa: SIM115 - closed by this context manager
    except OSError as exc:
        raise _InputError(f"cannot read CDR file {name}: {exc.strerror or exc}") from exc
    with handle:
        yield handle


def _prepare(args: argparse.Namespace) -> OfflineRater:
    if args.tenants is None and args.currency is None:
        raise _InputError("give --tenants FILE and/or --currency C: every CDR needs a currency")
    try:
        book = load_rate_cards(args.rate_cards)
    except RateCardError as exc:
        raise _InputError(f"bad rate-card file:\n{exc}") from exc
    tenants = load_tenants(args.tenants) if args.tenants is not None else {}
    return OfflineRater(
        book=book,
        rated_at=args.rated_at or datetime.now(UTC),
        tenants=tenants,
        tenants_source=args.tenants,
        plan=args.plan,
        currency=args.currency,
    )


def run(args: argparse.Namespace, stdin: TextIO, stdout: TextIO, stderr: TextIO) -> int:
    """Run ``rating rate`` with parsed ``args``; returns the exit status (0, or 2 on unusable
    input)."""
    try:
        rater = _prepare(args)
        with _cdr_lines(args.cdrs, stdin) as lines:
            write = stdout.write
            for lineno, raw in enumerate(lines, start=1):
                out = rater.rate_line(raw, lineno)
                if out is not None:
                    write(out)
                    write("\n")
    except _InputError as exc:
        stderr.write(f"rating rate: error: {exc}\n")
        return 2
    finally:
        stdout.flush()
    return 0
