"""Consumption per tenant, UTC day and product, and each tenant's recent activity.

Pure (no Faust): the ledger calls :func:`record_activity` once per ledger record, in the same
batch as the debit or credit, between the marker writes and the account write (see
``ledger.py``), and the web layer reads with :func:`usage_report` and :func:`recent`.

Exactly once. Every row carries ``lo``, the ledger offset that last changed it. A crash
keeps a prefix of the changelog, written in the order marker -> usage row -> recent ring ->
account, so when the ledger repairs a debit whose marker landed but whose account did not,
the row tells whether *it* landed too: the charge is added only when ``row.lo`` < the
marker's offset. A redelivered record that was fully applied (offset <= the account's
``lo``) never reaches these functions. So the rows are exactly the sum of the Charges,
whatever the crashes and replays; the amounts add exactly (a trapping Decimal context).

Retention: a row carries ``exp`` (its day + :data:`RETENTION_DAYS`), so the ledger's
marker expiry (bounded per tick) deletes it with the markers. The day of a charge is the UTC
day of its ``call_start``, like the CDR's own dedup horizon, so a replay lands on the same row.

Recent activity: the last :data:`RECENT_CHARGES` charges and :data:`RECENT_FUNDS` funds events
(compact), newest first, in one page per tenant and kind, ``r/{tenant}/{kind}``, with the same
``lo`` rule. (Before: a ring of slot keys ``r/{tenant}/{kind}/{i}`` counted by ``r/{tenant}``:
read as a fallback and migrated by the tenant's next record, see :func:`_legacy_pages`.)
"""

from __future__ import annotations

from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from decimal import Context, Decimal, Inexact, InvalidOperation, Overflow
from typing import Any, Final

from rating import keys
from rating.contracts import ChargeFields, FundsEvent, Product, format_money, format_time
from rating.errors import RatingBaseError

#: Rows are deleted this long after their day (documented in README "Consumption").
RETENTION_DAYS: Final = 400
#: The longest period one usage query may cover.
MAX_RANGE_DAYS: Final = 400
RECENT_CHARGES: Final = 20
RECENT_FUNDS: Final = 20

_CTX: Final = Context(prec=50, traps=[Inexact, InvalidOperation, Overflow])
_ZERO: Final = Decimal(0)


@dataclass(frozen=True, slots=True)
class UsageRow:
    """Totals of one tenant, UTC day and product."""

    calls: int
    billable_seconds: int
    amount: Decimal
    lo: int  # the ledger offset that last changed this row
    exp: int  # epoch seconds after which the ledger's expiry deletes it

    def to_dict(self) -> dict[str, Any]:
        return {
            "calls": self.calls,
            "bs": self.billable_seconds,
            "amt": format_money(self.amount),
            "lo": self.lo,
            "exp": self.exp,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> UsageRow:
        return cls(
            calls=int(d["calls"]),
            billable_seconds=int(d["bs"]),
            amount=Decimal(str(d["amt"])),
            lo=int(d["lo"]),
            exp=int(d["exp"]),
        )

    def plus(self, charge: ChargeFields, offset: int) -> UsageRow:
        return UsageRow(
            calls=self.calls + 1,
            billable_seconds=self.billable_seconds + charge.billable_seconds,
            amount=_CTX.add(self.amount, charge.amount),
            lo=offset,
            exp=self.exp,
        )


def day_of(charge: ChargeFields) -> date:
    return charge.call_start.astimezone(UTC).date()


def expiry_of(day: date) -> int:
    end = datetime.combine(day + timedelta(days=RETENTION_DAYS + 1), time(), UTC)
    return int(end.timestamp())


def record_activity(
    store: MutableMapping[str, Any],
    charges: list[ChargeFields],
    funds: list[tuple[FundsEvent, datetime]],
    offset: int,
) -> list[tuple[int, str]]:
    """Add one ledger record's charges and applied funds (at ledger ``offset``) to the usage
    rows and the recent ring: each row and the ring written at most once, and only if its
    ``lo`` is older than ``offset`` (else this record's changes already landed).

    One record may carry several (held messages applied by a tenant's creating settings), all
    at one offset; so the rows are summed here first, never "row.lo == offset, skip" per
    charge. Returns ``(exp, key)`` of the rows it created, for the ledger's expiry index."""
    by_row: dict[str, list[ChargeFields]] = {}
    for charge in charges:
        day = day_of(charge)
        key = keys.usage_key(charge.tenant_id, day.isoformat(), charge.product.value)
        by_row.setdefault(key, []).append(charge)
    created: list[tuple[int, str]] = []
    for key, mine in by_row.items():
        raw = store.get(key)
        if raw is None:
            row = UsageRow(0, 0, _ZERO, -1, expiry_of(day_of(mine[0])))
            created.append((row.exp, key))
        else:
            row = UsageRow.from_dict(raw)
        if row.lo >= offset:
            continue
        for charge in mine:
            row = row.plus(charge, offset)
        store[key] = row.to_dict()
    entries = [("charges", _compact_charge(c)) for c in charges]
    entries += [("funds", _compact_funds(e, at)) for e, at in funds]
    if entries:
        _push_recent(
            store, (charges[0].tenant_id if charges else funds[0][0].tenant_id), offset, entries
        )
    return created


def _compact_funds(event: FundsEvent, now: datetime) -> dict[str, Any]:
    entry = {
        "id": event.event_id,
        "kind": event.kind.value,
        "amt": format_money(event.amount),
        "at": format_time(now),
    }
    if event.command_id is not None:
        entry["cmd"] = event.command_id
    return entry


def _compact_charge(charge: ChargeFields) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "id": charge.cdr_id,
        "p": charge.product.value,
        "t": format_time(charge.call_start),
        "d": charge.duration_seconds,
        "bs": charge.billable_seconds,
        "amt": format_money(charge.amount),
        "n": charge.rated_number,
    }
    if charge.balance_after is not None:
        entry["bal"] = format_money(charge.balance_after)
    return entry


def _push_recent(
    store: MutableMapping[str, Any],
    tenant: str,
    offset: int,
    entries: list[tuple[str, dict[str, Any]]],
) -> None:
    # One page per kind, rewritten whole: the store sends a key once per batch
    # (rating.coalescing), so under load one changelog record carries a tenant's tens of
    # charges of a batch, where a slot key per entry cost one record per CDR: the largest
    # share of the changelog and of the ledger's latency (issue 11). Each page has its own
    # ``lo``, so a crash between the pages and the account rewrites nothing twice.
    legacy = _legacy_pages(store, tenant)
    for kind, limit in _KINDS:
        new = [entry for k, entry in entries if k == kind]
        key = keys.recent_key(tenant, kind)
        page = store.get(key) or (legacy or {}).get(kind) or {"lo": -1, "e": []}
        if new and int(page["lo"]) < offset:
            page = {"lo": offset, "e": (new[::-1] + list(page["e"]))[:limit]}
        elif legacy is None or key in store:
            continue
        store[key] = page
    if legacy is not None:
        # The pages hold everything the slots did; deleted after them (a deletion is a
        # barrier in the changelog, so no prefix has the deletions without the pages).
        for kind, limit in _KINDS:
            for i in range(limit):
                store.pop(_legacy_slot(tenant, kind, i), None)
        store.pop(keys.recent_key(tenant), None)


_KINDS: Final = (("charges", RECENT_CHARGES), ("funds", RECENT_FUNDS))


def _legacy_slot(tenant: str, kind: str, i: int) -> str:
    return keys.make_key(keys.KeyKind.RECENT, tenant, kind, str(i))


def _legacy_pages(store: Mapping[str, Any], tenant: str) -> dict[str, dict[str, Any]] | None:
    """The pages of a ring written before pages (slots ``r/{tenant}/{kind}/{n % limit}``
    holding ``seq`` n, counter ``r/{tenant}``), or None if the tenant has none."""
    counts = store.get(keys.recent_key(tenant))
    if counts is None:
        return None
    pages = {}
    for kind, limit in _KINDS:
        total = int(counts.get(kind, 0))
        entries = []
        for n in range(total - 1, max(total - limit, 0) - 1, -1):
            slot = store.get(_legacy_slot(tenant, kind, n % limit))
            if slot is not None and slot.get("seq") == n:
                entries.append({k: v for k, v in slot.items() if k != "seq"})
        pages[kind] = {"lo": int(counts["lo"]), "e": entries}
    return pages


def recent(store: Mapping[str, Any], tenant: str) -> dict[str, list[dict[str, Any]]]:
    """The tenant's last charges and funds events, newest first (compact entries)."""
    legacy = _legacy_pages(store, tenant) or {}
    out: dict[str, list[dict[str, Any]]] = {}
    for kind, _ in _KINDS:
        page = store.get(keys.recent_key(tenant, kind)) or legacy.get(kind) or {"e": []}
        out[kind] = [dict(entry) for entry in page["e"]]
    return out


# --- queries --------------------------------------------------------------------------------


class RangeError(RatingBaseError, ValueError):
    """A usage query's period is malformed, reversed or too long."""


def parse_range(start: str | None, end: str | None, today: date) -> tuple[date, date]:
    """``from``/``to`` query values (YYYY-MM-DD, inclusive); default: the last 30 days."""

    def one(value: str | None, name: str, default: date) -> date:
        if value is None or value == "":
            return default
        try:
            if len(value) != 10:
                raise ValueError(value)
            return date.fromisoformat(value)
        except ValueError:
            raise RangeError(f"{name} must be a date YYYY-MM-DD, got {value!r}") from None

    last = one(end, "to", today)
    first = one(start, "from", last - timedelta(days=29))
    if first > last:
        raise RangeError(f"from ({first}) is after to ({last})")
    if (last - first).days + 1 > MAX_RANGE_DAYS:
        raise RangeError(f"the period is longer than {MAX_RANGE_DAYS} days")
    return first, last


def _figures(calls: int, seconds: int, amount: Decimal) -> dict[str, Any]:
    return {"calls": calls, "billable_seconds": seconds, "amount": format_money(amount)}


def usage_report(
    store: Mapping[str, Any], tenant: str, currency: str, first: date, last: date
) -> dict[str, Any]:
    """The ``GET /tenants/{id}/usage`` document (contracts.UsageReport): rows + totals."""
    rows: list[dict[str, Any]] = []
    per_product: dict[str, list[Any]] = {p.value: [0, 0, _ZERO] for p in Product}
    total: list[Any] = [0, 0, _ZERO]
    day = first
    while day <= last:
        for product in Product:
            raw = store.get(keys.usage_key(tenant, day.isoformat(), product.value))
            if raw is None:
                continue
            row = UsageRow.from_dict(raw)
            rows.append(
                {"day": day.isoformat(), "product": product.value}
                | _figures(row.calls, row.billable_seconds, row.amount)
            )
            for acc in (per_product[product.value], total):
                acc[0] += row.calls
                acc[1] += row.billable_seconds
                acc[2] = _CTX.add(acc[2], row.amount)
        day += timedelta(days=1)
    return {
        "tenant_id": tenant,
        "currency": currency,
        "from": first.isoformat(),
        "to": last.isoformat(),
        "rows": rows,
        "by_product": {k: _figures(*v) for k, v in per_product.items()},
        "totals": _figures(*total),
    }
