"""Admin tooling: `rating tenants set|show`, `rating funds add`.

They publish to the contract topics (like the admin portal and billing do) instead of
touching state, so every change takes the same path through the ledger.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable
from decimal import Decimal
from typing import Any

from pydantic import BaseModel, ValidationError

from rating.contracts import AutoRecharge, FundsEvent, FundsKind, TenantSettings
from rating.domain.validation import summarize_validation_error
from rating.settings import SettingsError, load_settings

Handler = Callable[[argparse.Namespace], int]


def add_admin_parsers(
    sub: Any, set_handler: Handler, show_handler: Handler, funds_handler: Handler
) -> None:
    tenants = sub.add_parser("tenants", help="tenant settings").add_subparsers(
        dest="tenants_command", required=True, metavar="ACTION"
    )
    p = tenants.add_parser("set", help="publish a tenant's settings (creates the tenant)")
    p.add_argument("tenant")
    p.add_argument("--currency", required=True)
    p.add_argument("--plan", default="standard")
    p.add_argument("--recharge-amount", default="0")
    p.add_argument("--trigger", default="0", help="recharge when the balance falls below this")
    p.add_argument("--low-balance-alert", default=None)
    p.add_argument("--disable", action="store_true", help="auto-recharge off")
    _bootstrap_arg(p)
    p.set_defaults(handler=set_handler)

    p = tenants.add_parser("show", help="a tenant's balance, from any worker")
    p.add_argument("tenant")
    _url_arg(p)
    p.set_defaults(handler=show_handler)

    funds = sub.add_parser("funds", help="credits").add_subparsers(
        dest="funds_command", required=True, metavar="ACTION"
    )
    p = funds.add_parser("add", help="add credits by hand (a manual_add funds event)")
    p.add_argument("tenant")
    p.add_argument("amount")
    p.add_argument("--currency", help="default: the tenant's currency, asked from a worker")
    p.add_argument("--event-id", help="idempotency key; reuse it to retry safely")
    p.add_argument("--reason", default=None)
    _bootstrap_arg(p)
    _url_arg(p)
    p.set_defaults(handler=funds_handler)


def _bootstrap_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--bootstrap", default=None, help="Kafka bootstrap (default: RATING_KAFKA_BOOTSTRAP)"
    )


def _url_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--url",
        default=None,
        help="a worker's base URL (default: http://127.0.0.1:$RATING_WEB_PORT)",
    )


def _worker_url(args: argparse.Namespace) -> str:
    if args.url:
        return str(args.url).rstrip("/")
    return f"http://127.0.0.1:{load_settings().web_port}"


def publish(bootstrap: str, topic: str, key: str, model: BaseModel) -> None:
    from aiokafka import AIOKafkaProducer  # type: ignore[import-untyped]

    async def go() -> None:
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
        await producer.start()
        try:
            await producer.send_and_wait(
                topic, key=key.encode(), value=model.model_dump_json().encode()
            )
        finally:
            await producer.stop()

    asyncio.run(go())


def _err(message: str) -> int:
    print(f"rating: {message}", file=sys.stderr)
    return 2


def set_tenant(args: argparse.Namespace) -> int:
    try:
        settings = load_settings()
        model = TenantSettings(
            tenant_id=args.tenant,
            currency=args.currency,
            plan=args.plan,
            auto_recharge=AutoRecharge(
                enabled=not args.disable,
                recharge_amount=args.recharge_amount,
                trigger_balance=args.trigger,
            ),
            low_balance_alert=args.low_balance_alert,
        )
    except SettingsError as exc:
        return _err(str(exc))
    except ValidationError as exc:
        return _err(summarize_validation_error(exc))
    if model.auto_recharge.enabled and model.auto_recharge.recharge_amount <= Decimal(0):
        return _err("--recharge-amount must be > 0 when auto-recharge is on (or --disable)")
    publish(
        args.bootstrap or settings.kafka_bootstrap,
        settings.topics.tenant_settings,
        model.tenant_id,
        model,
    )
    print(model.model_dump_json())
    return 0


def fetch_tenant(base_url: str, tenant: str) -> tuple[int, Any]:
    url = f"{base_url}/tenants/{urllib.parse.quote(tenant, safe='')}"
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:  # noqa: S310 - operator's URL
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def show_tenant(args: argparse.Namespace) -> int:
    try:
        status, body = fetch_tenant(_worker_url(args), args.tenant)
    except (urllib.error.URLError, OSError) as exc:
        return _err(f"cannot reach the worker: {exc}")
    print(json.dumps(body, indent=2))
    return 0 if status == 200 else 1


def add_funds(args: argparse.Namespace) -> int:
    try:
        settings = load_settings()
        currency = args.currency
        if currency is None:
            status, body = fetch_tenant(_worker_url(args), args.tenant)
            if status != 200:
                return _err(
                    f"cannot learn the tenant's currency ({status}: {body}); give --currency"
                )
            currency = body["currency"]
        event = FundsEvent(
            event_id=args.event_id or f"manual-{uuid.uuid4()}",
            tenant_id=args.tenant,
            kind=FundsKind.MANUAL_ADD,
            amount=args.amount,
            currency=currency,
            reason=args.reason,
        )
    except SettingsError as exc:
        return _err(str(exc))
    except ValidationError as exc:
        return _err(summarize_validation_error(exc))
    except (urllib.error.URLError, OSError) as exc:
        return _err(f"cannot reach the worker for the currency: {exc}; give --currency")
    if event.amount <= 0:
        return _err("amount must be > 0")
    publish(
        args.bootstrap or settings.kafka_bootstrap, settings.topics.funds, event.tenant_id, event
    )
    print(event.model_dump_json())
    return 0
