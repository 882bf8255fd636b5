"""HTTP on every worker: /metrics, /health, /ready, tenants, and token-protected admin calls.

``GET /tenants/{id}`` is answered by whichever worker owns the tenant's ledger partition; any
other worker forwards the request there, so a load balancer may hit any worker.
Admin calls never touch state directly: they publish to the contract topics, so every
change goes through the same ledger path as billing's and the platform's messages.

The views are Faust ``View`` classes at module level. :func:`register_views` registers, per
app, a copy of each bound to that worker's :class:`~rating.streaming.app.Pipeline` (class
attributes ``pipeline`` and ``routing``), so two apps in one process never share state.
Tenant-scoped views share :class:`TenantScopedView`: the tenant id comes from the route
(``{tenant_id}``, already percent-decoded), the owner is looked up and the request forwarded
there unless this worker is it, and an unknown tenant gets the same 404.
"""

from __future__ import annotations

import hmac
import json
import uuid
from decimal import Decimal
from typing import TYPE_CHECKING, Any, ClassVar

from faust.web import Request, Response, View
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import ValidationError

from rating.contracts import AutoRecharge, FundsEvent, FundsKind, format_money
from rating.domain.account import Account
from rating.domain.validation import summarize_validation_error
from rating.partitioning import partition_of
from rating.streaming import admin_ops
from rating.streaming.routing import ROUTED_HEADER, Route, Routing
from rating.usage import RangeError, parse_range, usage_report

if TYPE_CHECKING:
    from rating.streaming.app import Pipeline


class PipelineView(View):
    """A view of one worker: only copies bound to its pipeline are registered (see
    :func:`register_views`)."""

    pipeline: ClassVar[Pipeline]
    routing: ClassVar[Routing]

    def admin_denied(self, request: Request) -> Response | None:
        """The refusal of a request without the admin bearer token (None: authorised)."""
        token = self.pipeline.settings.admin_token
        if token is None:
            return self.json(
                {"error": "admin endpoints are off: set RATING_ADMIN_TOKEN"}, status=403
            )
        given = request.headers.get("Authorization", "")
        expected = f"Bearer {token.get_secret_value()}"
        if not hmac.compare_digest(given.encode(), expected.encode()):
            resp = self.json({"error": "missing or wrong bearer token"}, status=401)
            resp.headers["WWW-Authenticate"] = 'Bearer realm="rating-admin"'
            return resp
        return None


class TenantScopedView(PipelineView):
    """A view of one tenant, the route's ``{tenant_id}``: answered by the worker that owns
    the tenant's ledger partition, forwarded there by any other."""

    async def forward(self, request: Request, tenant: str) -> Response | None:
        """Send the request to the owner of ``tenant``'s partition, unless we are it (None).

        The tenant comes from the route (already percent-decoded); the forwarded path is the
        request's own raw path, so an id with ``/`` or ``%`` reaches the owner unchanged."""
        where = self.routing.route(tenant, request.headers.get(ROUTED_HEADER) is not None)
        if where is Route.LOCAL:
            return None
        if where is Route.BUSY:
            return self.json(
                {"error": "partition assignment in progress"},
                status=503,
                headers={"Retry-After": "1"},
            )
        headers = {}
        if "Authorization" in request.headers:
            headers["Authorization"] = request.headers["Authorization"]
        # Faust's Request type does not declare aiohttp's raw_path (path + query, undecoded).
        raw_path: str = request.raw_path  # type: ignore[attr-defined]
        answer = await self.routing.send(
            str(where), request.method, raw_path, headers, await request.read()
        )
        return self.bytes(answer.body, content_type=answer.content_type, status=answer.status)

    async def admin_forward(self, request: Request, tenant: str) -> Response | None:
        """Authorise, then forward to the owner if need be (None: this worker acts)."""
        denied = self.admin_denied(request)
        if denied is not None:
            return denied
        return await self.forward(request, tenant)

    async def admin_body(self, request: Request, tenant: str) -> dict[str, Any] | Response:
        """Authorise, forward to the owner if need be, and parse the JSON object body.

        Returns the body (a dict) to act on, or a response to send as is. (faust.web's
        Response is an abstract type aiohttp's responses do not inherit, so callers test
        for the dict.)"""
        routed = await self.admin_forward(request, tenant)
        if routed is not None:
            return routed
        body = await read_json(request)
        if not isinstance(body, dict):
            return self.json({"error": "body must be a JSON object"}, status=400)
        return body

    async def owned_account(self, request: Request, tenant_id: str) -> Account | Response:
        """The tenant's account, when this worker owns it; else the owner's answer (the
        request forwarded) or the 404 of an unknown tenant."""
        routed = await self.forward(request, tenant_id)
        if routed is not None:
            return routed
        account = self.pipeline.ledger.account(tenant_id)
        return self.unknown_tenant(tenant_id) if account is None else account

    def unknown_tenant(self, tenant_id: str, *, held: bool = True) -> Response:
        """The 404 of a tenant this worker's ledger does not know. ``held``: say when
        messages are held for the tenant (the public reads do; the admin calls do not)."""
        body: dict[str, Any] = {"error": f"unknown tenant {tenant_id!r}"}
        pending = self.pipeline.ledger.held_count(tenant_id) if held else 0
        if pending:
            body["pending_messages"] = pending
            body["error"] += f": {pending} message(s) are pending, held until its settings arrive"
        return self.json(body, status=404)


async def read_json(request: Request) -> Any:
    """The request's JSON body (``{}`` when empty), None when it is not JSON."""
    try:
        return json.loads(await request.read() or b"{}")
    except ValueError:
        return None


class MetricsView(PipelineView):
    async def get(self, request: Request) -> Response:
        return self.bytes(
            generate_latest(self.pipeline.metrics.registry),
            content_type=CONTENT_TYPE_LATEST.split(";")[0],
        )


class HealthView(PipelineView):
    async def get(self, request: Request) -> Response:
        return self.json({"status": "ok"})


class ReadyView(PipelineView):
    async def get(self, request: Request) -> Response:
        app = self.app
        ready = app.consumer_generation_id is not None and not app.rebalancing
        # TableManagerT does not declare the recovery service its TableManager has.
        ready = ready and app.tables.recovery.completed.is_set()  # type: ignore[attr-defined]
        return self.json({"ready": bool(ready)}, status=200 if ready else 503)


class TenantView(TenantScopedView):
    """The tenant's balance and settings (``Account.public_view``), from the owner."""

    async def get(self, request: Request, tenant_id: str) -> Response:
        account = await self.owned_account(request, tenant_id)
        if not isinstance(account, Account):  # forwarded, or unknown
            return account
        p = self.pipeline
        doc = account.public_view()
        doc["served_by"] = self.routing.local_url()
        doc["partition"] = partition_of(tenant_id, p.settings.partitions)
        return self.json(doc)


class UsageView(TenantScopedView):
    """Consumption per UTC day and product (rating.usage), from the owner's ledger."""

    async def get(self, request: Request, tenant_id: str) -> Response:
        account = await self.owned_account(request, tenant_id)
        if not isinstance(account, Account):  # forwarded, or unknown
            return account
        try:
            first, last = parse_range(
                request.query.get("from"), request.query.get("to"), admin_ops.today(self.pipeline)
            )
        except RangeError as exc:
            return self.json({"error": str(exc)}, status=400)
        report = usage_report(self.pipeline.store, tenant_id, account.currency, first, last)
        return self.json(report)


class OverviewView(TenantScopedView):
    """Everything the admin page shows of one tenant (admin token; forwarded)."""

    async def get(self, request: Request, tenant_id: str) -> Response:
        routed = await self.admin_forward(request, tenant_id)
        if routed is not None:
            return routed
        doc = admin_ops.overview(self.pipeline, tenant_id)
        if doc is None:
            return self.unknown_tenant(tenant_id, held=False)
        return self.json(doc)


class LocalTenantsView(PipelineView):
    """This worker's own tenants (admin token): the admin page merges every worker's."""

    async def get(self, request: Request) -> Response:
        denied = self.admin_denied(request)
        if denied is not None:
            return denied
        return self.json(
            {
                "served_by": self.routing.local_url(),
                "tenants": admin_ops.local_tenants(self.pipeline),
            }
        )


class FundsView(TenantScopedView):
    """An admin's ``manual_add`` or ``adjustment``, published to the funds topic."""

    async def post(self, request: Request, tenant_id: str) -> Response:
        body = await self.admin_body(request, tenant_id)
        if not isinstance(body, dict):  # a refusal or the owner's answer
            return body
        p = self.pipeline
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
                summarize_validation_error(exc) if isinstance(exc, ValidationError) else str(exc)
            )
            return self.json({"error": detail}, status=400)
        if event.kind not in (FundsKind.MANUAL_ADD, FundsKind.ADJUSTMENT):
            return self.json({"error": "kind must be manual_add or adjustment"}, status=400)
        await admin_ops.send_funds(p, event)
        return self.json({"accepted": True, "event_id": event.event_id}, status=202)


class AutoRechargeView(TenantScopedView):
    """An admin's change of the tenant's auto-recharge, published as its new settings."""

    async def put(self, request: Request, tenant_id: str) -> Response:
        body = await self.admin_body(request, tenant_id)
        if not isinstance(body, dict):  # a refusal or the owner's answer
            return body
        p = self.pipeline
        account = p.ledger.account(tenant_id)
        if account is None:
            return self.unknown_tenant(tenant_id, held=False)
        try:
            auto = AutoRecharge(
                enabled=body.get("enabled", account.auto_recharge_enabled),
                recharge_amount=body.get("recharge_amount", format_money(account.recharge_amount)),
                trigger_balance=body.get("trigger_balance", format_money(account.trigger_balance)),
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


#: Route -> view: every HTTP endpoint of the worker except the admin page's (web/page.py).
ROUTES: tuple[tuple[str, type[PipelineView]], ...] = (
    ("/metrics", MetricsView),
    ("/health", HealthView),
    ("/ready", ReadyView),
    ("/tenants/{tenant_id}", TenantView),
    ("/tenants/{tenant_id}/usage", UsageView),
    ("/tenants/{tenant_id}/overview", OverviewView),
    ("/admin/api/local-tenants", LocalTenantsView),
    ("/tenants/{tenant_id}/funds", FundsView),
    ("/tenants/{tenant_id}/auto-recharge", AutoRechargeView),
)


def register_views(p: Pipeline) -> None:
    """Register :data:`ROUTES` on ``p.app`` (pipeline views bound to ``p``), then the admin
    page."""
    routing = Routing(p)
    for path, view in ROUTES:
        # A subclass of the same name per app: Faust keeps view_name and view_path on the
        # class, and the pipeline is this app's.
        p.app.page(path)(type(view.__name__, (view,), {"pipeline": p, "routing": routing}))

    from rating.web.page import register_admin_page

    register_admin_page(p, routing)
