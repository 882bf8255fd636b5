"""HTTP on every worker: /metrics, /health, /ready, tenants, and token-protected admin calls.

``GET /tenants/{id}`` is answered by whichever worker owns the tenant's ledger partition; any
other worker forwards the request there, so a load balancer may hit any worker.
Admin calls never touch state directly: they publish to the contract topics, so every
change goes through the same ledger path as billing's and the platform's messages.
"""

from __future__ import annotations

import hmac
import json
import uuid
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from faust.web import Request, Response, View
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import ValidationError

from rating.contracts import AutoRecharge, FundsEvent, FundsKind, format_money
from rating.domain.validation import summarize_validation_error
from rating.partitioning import partition_of
from rating.streaming import admin_ops
from rating.streaming.routing import ROUTED_HEADER, Route, Routing
from rating.usage import RangeError, parse_range, usage_report

if TYPE_CHECKING:
    from rating.streaming.app import Pipeline


def unknown_tenant(view: View, p: Pipeline, tenant_id: str) -> Response:
    """The 404 of a tenant-scoped read; it says when messages are held for the tenant."""
    body: dict[str, Any] = {"error": f"unknown tenant {tenant_id!r}"}
    held = p.ledger.held_count(tenant_id)
    if held:
        body["pending_messages"] = held
        body["error"] += f": {held} message(s) are pending, held until its settings arrive"
    return view.json(body, status=404)


def register_views(p: Pipeline) -> None:
    app = p.app
    token = p.settings.admin_token
    routing = Routing(p)
    local_url = routing.local_url

    def admin_denied(view: View, request: Request) -> Response | None:
        if token is None:
            return view.json(
                {"error": "admin endpoints are off: set RATING_ADMIN_TOKEN"}, status=403
            )
        given = request.headers.get("Authorization", "")
        expected = f"Bearer {token.get_secret_value()}"
        if not hmac.compare_digest(given.encode(), expected.encode()):
            resp = view.json({"error": "missing or wrong bearer token"}, status=401)
            resp.headers["WWW-Authenticate"] = 'Bearer realm="rating-admin"'
            return resp
        return None

    async def forward(view: View, request: Request, tenant: str) -> Response | None:
        """Send the request to the owner of ``tenant``'s partition, unless we are it (None).

        The tenant comes from the route (already percent-decoded); the forwarded path is the
        request's own raw path, so an id with ``/`` or ``%`` reaches the owner unchanged."""
        where = routing.route(tenant, request.headers.get(ROUTED_HEADER) is not None)
        if where is Route.LOCAL:
            return None
        if where is Route.BUSY:
            return view.json(
                {"error": "partition assignment in progress"},
                status=503,
                headers={"Retry-After": "1"},
            )
        headers = {}
        if "Authorization" in request.headers:
            headers["Authorization"] = request.headers["Authorization"]
        # Faust's Request type does not declare aiohttp's raw_path (path + query, undecoded).
        raw_path: str = request.raw_path  # type: ignore[attr-defined]
        answer = await routing.send(
            str(where), request.method, raw_path, headers, await request.read()
        )
        return view.bytes(answer.body, content_type=answer.content_type, status=answer.status)

    async def admin_body(view: View, request: Request, tenant: str) -> dict[str, Any] | Response:
        """Authorise, forward to the owner if need be, and parse the JSON object body.

        Returns the body (a dict) to act on, or a response to send as is. (faust.web's
        Response is an abstract type aiohttp's responses do not inherit, so callers test
        for the dict.)"""
        denied = admin_denied(view, request)
        if denied is not None:
            return denied
        routed = await forward(view, request, tenant)
        if routed is not None:
            return routed
        body = await read_json(request)
        if not isinstance(body, dict):
            return view.json({"error": "body must be a JSON object"}, status=400)
        return body

    async def read_json(request: Request) -> Any:
        try:
            return json.loads(await request.read() or b"{}")
        except ValueError:
            return None

    @app.page("/metrics")
    class MetricsView(View):
        async def get(self, request: Request) -> Response:
            return self.bytes(
                generate_latest(p.metrics.registry), content_type=CONTENT_TYPE_LATEST.split(";")[0]
            )

    @app.page("/health")
    class HealthView(View):
        async def get(self, request: Request) -> Response:
            return self.json({"status": "ok"})

    @app.page("/ready")
    class ReadyView(View):
        async def get(self, request: Request) -> Response:
            ready = app.consumer_generation_id is not None and not app.rebalancing
            # TableManagerT does not declare the recovery service its TableManager has.
            ready = ready and app.tables.recovery.completed.is_set()  # type: ignore[attr-defined]
            return self.json({"ready": bool(ready)}, status=200 if ready else 503)

    @app.page("/tenants/{tenant_id}")
    class TenantView(View):
        async def get(self, request: Request, tenant_id: str) -> Response:
            routed = await forward(self, request, tenant_id)
            if routed is not None:
                return routed
            account = p.ledger.account(tenant_id)
            if account is None:
                return unknown_tenant(self, p, tenant_id)
            doc = account.public_view()
            doc["served_by"] = local_url()
            doc["partition"] = partition_of(tenant_id, p.settings.partitions)
            return self.json(doc)

    @app.page("/tenants/{tenant_id}/usage")
    class UsageView(View):
        """Consumption per UTC day and product (rating.usage), from the owner's ledger."""

        async def get(self, request: Request, tenant_id: str) -> Response:
            routed = await forward(self, request, tenant_id)
            if routed is not None:
                return routed
            account = p.ledger.account(tenant_id)
            if account is None:
                return unknown_tenant(self, p, tenant_id)
            try:
                first, last = parse_range(
                    request.query.get("from"), request.query.get("to"), admin_ops.today()
                )
            except RangeError as exc:
                return self.json({"error": str(exc)}, status=400)
            return self.json(usage_report(p.store, tenant_id, account.currency, first, last))

    @app.page("/tenants/{tenant_id}/overview")
    class OverviewView(View):
        """Everything the admin page shows of one tenant (admin token; forwarded)."""

        async def get(self, request: Request, tenant_id: str) -> Response:
            denied = admin_denied(self, request)
            if denied is not None:
                return denied
            routed = await forward(self, request, tenant_id)
            if routed is not None:
                return routed
            doc = admin_ops.overview(p, tenant_id)
            if doc is None:
                return self.json({"error": f"unknown tenant {tenant_id!r}"}, status=404)
            return self.json(doc)

    @app.page("/admin/api/local-tenants")
    class LocalTenantsView(View):
        """This worker's own tenants (admin token): the admin page merges every worker's."""

        async def get(self, request: Request) -> Response:
            denied = admin_denied(self, request)
            if denied is not None:
                return denied
            return self.json({"served_by": local_url(), "tenants": admin_ops.local_tenants(p)})

    @app.page("/tenants/{tenant_id}/funds")
    class FundsView(View):
        async def post(self, request: Request, tenant_id: str) -> Response:
            body = await admin_body(self, request, tenant_id)
            if not isinstance(body, dict):  # a refusal or the owner's answer
                return body
            account = p.ledger.account(tenant_id)
            currency = body.get("currency") or (account.currency if account else None)
            if currency is None:
                return self.json({"error": "unknown tenant: give a currency"}, status=400)
            try:
                event = FundsEvent(
                    event_id=body.get("event_id") or f"admin-{uuid.uuid4()}",
                    tenant_id=tenant_id,
                    kind=FundsKind(body.get("kind", "manual_add")),
                    amount=body.get("amount"),
                    currency=currency,
                    reason=body.get("reason"),
                )
            except (ValidationError, ValueError) as exc:
                detail = (
                    summarize_validation_error(exc)
                    if isinstance(exc, ValidationError)
                    else str(exc)
                )
                return self.json({"error": detail}, status=400)
            if event.kind not in (FundsKind.MANUAL_ADD, FundsKind.ADJUSTMENT):
                return self.json({"error": "kind must be manual_add or adjustment"}, status=400)
            await admin_ops.send_funds(p, event)
            return self.json({"accepted": True, "event_id": event.event_id}, status=202)

    @app.page("/tenants/{tenant_id}/auto-recharge")
    class AutoRechargeView(View):
        async def put(self, request: Request, tenant_id: str) -> Response:
            body = await admin_body(self, request, tenant_id)
            if not isinstance(body, dict):  # a refusal or the owner's answer
                return body
            account = p.ledger.account(tenant_id)
            if account is None:
                return self.json({"error": f"unknown tenant {tenant_id!r}"}, status=404)
            try:
                auto = AutoRecharge(
                    enabled=body.get("enabled", account.auto_recharge_enabled),
                    recharge_amount=body.get(
                        "recharge_amount", format_money(account.recharge_amount)
                    ),
                    trigger_balance=body.get(
                        "trigger_balance", format_money(account.trigger_balance)
                    ),
                )
            except ValidationError as exc:
                return self.json({"error": summarize_validation_error(exc)}, status=400)
            if auto.recharge_amount <= Decimal(0) and auto.enabled:
                return self.json({"error": "recharge_amount must be > 0"}, status=400)
            settings = admin_ops.with_auto_recharge(account.public_view(), auto)
            await admin_ops.send_settings(p, settings)
            return self.json(
                {"accepted": True, "settings": json.loads(settings.model_dump_json())}, status=202
            )

    # Registered for completeness of the closure set above.
    _ = (MetricsView, HealthView, ReadyView, TenantView, FundsView, AutoRechargeView)
    _ = (UsageView, OverviewView, LocalTenantsView)

    from rating.web.page import register_admin_page

    register_admin_page(p, routing)
