"""What the REST admin endpoints and the admin page share: reads of local state and the
one way to publish an admin change (to the contract topics, never into state directly)."""

from __future__ import annotations

from datetime import UTC, date, timedelta
from typing import TYPE_CHECKING, Any

from rating.contracts import AutoRecharge, FundsEvent, TenantSettings
from rating.domain.account import Account
from rating.usage import recent, usage_report

if TYPE_CHECKING:
    from rating.streaming.app import Pipeline

#: The page's chart covers this many days, today included.
CHART_DAYS = 30


def today(p: Pipeline) -> date:
    """Today's UTC date by the worker's (injected) clock."""
    return p.clock.now().astimezone(UTC).date()


def state_of(account: Account) -> dict[str, bool]:
    """The flags the tenant list shows (the same lines the balance events use)."""
    low = account.low_line
    return {
        "exhausted": account.balance <= 0,
        "low": low is not None and account.balance < low,
        "recharge_outstanding": account.outstanding is not None,
        "recharge_failing": account.recharge_failing,
    }


def local_tenants(p: Pipeline) -> list[dict[str, Any]]:
    """Every tenant of the ledger partitions this worker owns, with balance and state."""
    out = []
    for tenant in p.ledger.tenants(p.owned_ledger_partitions()):
        account = p.ledger.account(tenant)
        if account is not None:
            view = account.public_view()
            out.append(
                {
                    "tenant_id": tenant,
                    "balance": view["balance"],
                    "currency": view["currency"],
                    **state_of(account),
                }
            )
    return out


def overview(p: Pipeline, tenant: str) -> dict[str, Any] | None:
    """The tenant page's data, from this (the owning) worker's state."""
    account = p.ledger.account(tenant)
    if account is None:
        return None
    day = today(p)
    first = min(day.replace(day=1), day - timedelta(days=CHART_DAYS - 1))
    return {
        "account": account.public_view(),
        "state": state_of(account),
        "today": day.isoformat(),
        "usage": usage_report(p.store, tenant, account.currency, first, day),
        "recent": recent(p.store, tenant),
    }


def with_auto_recharge(view: dict[str, Any], auto: AutoRecharge) -> TenantSettings:
    """The tenant's settings (from its public view) with new auto-recharge values."""
    return TenantSettings(
        tenant_id=view["tenant_id"],
        currency=view["currency"],
        plan=view["plan"],
        auto_recharge=auto,
        low_balance_alert=view.get("low_balance_alert"),
    )


async def send_settings(p: Pipeline, settings: TenantSettings) -> None:
    await p.topics["settings_out"].send(
        key=settings.tenant_id.encode(), value=settings.model_dump_json().encode()
    )


async def send_funds(p: Pipeline, event: FundsEvent) -> None:
    await p.topics["funds_out"].send(
        key=event.tenant_id.encode(), value=event.model_dump_json().encode()
    )
