"""The Communication Credits admin page (issue 13): views, data gathering and form handling.

Every worker serves every page. Reads go to the tenant's owner (``/tenants/{id}/overview``,
forwarded with the admin token) and the tenant list is gathered from every worker
(``/admin/api/local-tenants``). Actions publish to the contract topics through the same
functions as the REST endpoints (``admin_ops``), then wait briefly until the owner's ledger
shows the change, else say it is being applied.

Security: a signed session cookie (``session.py``), a CSRF token in every form, sign-in
failures slowed per client, no secret ever rendered or logged, a strict CSP (no inline
script; the chart script is a static file), ``no-store`` caching.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from decimal import Decimal
from importlib import resources
from typing import TYPE_CHECKING, Any, ClassVar, Final, cast
from urllib.parse import quote, urlencode

import jinja2
from aiohttp import web
from faust.web import Request, Response, View
from pydantic import ValidationError

from rating.contracts import AutoRecharge, FundsEvent, FundsKind, Product, format_money
from rating.errors import RatingBaseError
from rating.streaming import admin_ops
from rating.streaming.routing import Answer, Route, Routing
from rating.web import i18n
from rating.web.i18n import Lang
from rating.web.session import COOKIE, LANG_COOKIE, Session, Sessions, Throttle

if TYPE_CHECKING:
    from rating.streaming.app import Pipeline

log = logging.getLogger(__name__)

#: How long an action waits for the ledger to show its effect before saying "being applied".
APPLY_WAIT_SECONDS: Final = 4.0
#: The most tenants the list renders (search narrows it).
LIST_LIMIT: Final = 500
_MAX_AMOUNT: Final = Decimal(10) ** 15
_STATIC: Final = {"admin.css": "text/css", "chart.js": "text/javascript"}
_HEADERS: Final = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
        "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
}

_env = jinja2.Environment(
    loader=jinja2.PackageLoader("rating.web", "templates"),
    autoescape=True,
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)


class UnavailableError(RatingBaseError):
    """The tenant's owner is unknown (rebalancing) or did not answer."""


@dataclass
class Ctx:
    """One request's rendering context: language, session, helpers for templates."""

    lang: Lang
    session: Session | None
    path: str
    extra: dict[str, Any] = field(default_factory=dict)

    def vars(self) -> dict[str, Any]:
        lang = self.lang
        return {
            "lang": lang.value,
            "langs": [(code.value, name) for code, name in i18n.LANG_NAMES.items()],
            "t": lambda key: i18n.text(lang, key),
            "money": lambda v, cur: i18n.money(v, cur, lang),
            "minutes": lambda s: i18n.minutes(s, lang),
            "day": lambda d: i18n.day(date.fromisoformat(d), lang),
            "moment": lambda t: i18n.moment(_parse_time(t), lang),
            "csrf": self.session.csrf if self.session else "",
            "signed_in": self.session is not None,
            "path": self.path,
            "quote": lambda s: quote(s, safe=""),
            **self.extra,
        }


def _aio(resp: Response) -> web.Response:
    # faust.web's types are abstract; its aiohttp driver hands us aiohttp's own objects.
    return cast(web.Response, resp)


def _req(request: Request) -> web.Request:
    return cast(web.Request, request)


def _out(resp: web.StreamResponse) -> Response:
    return cast(Response, resp)


def _parse_time(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def _is_https(request: web.Request) -> bool:
    proto = request.headers.get("X-Forwarded-Proto", "").split(",")[0].strip().lower()
    return request.scheme == "https" or proto == "https"


def _safe_next(value: str | None) -> str:
    # Only our own pages: never an open redirect.
    if value and value.startswith("/admin/") and not value.startswith("//"):
        return value
    return "/admin/"


def _field_errors(exc: ValidationError, names: dict[str, str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for err in exc.errors():
        loc = str(err["loc"][0]) if err["loc"] else ""
        if loc in names:
            out.setdefault(names[loc], "e_malformed")
    # Never a silent refusal: an error on a field the form does not show lands on the first.
    return out or {next(iter(names.values())): "e_malformed"}


def check_funds(amount_text: str, lang: Lang) -> tuple[str, dict[str, str]]:
    """(normalised amount, errors by form field) for the add-funds form."""
    amount = i18n.parse_amount(amount_text, lang)
    if not amount:
        return amount, {"amount": "e_required"}
    try:
        value = AutoRecharge(enabled=False, recharge_amount=amount, trigger_balance="0")
    except ValidationError:
        return amount, {"amount": "e_malformed"}
    if value.recharge_amount < 0:
        return amount, {"amount": "e_negative"}
    if value.recharge_amount == 0:
        return amount, {"amount": "e_positive"}
    if value.recharge_amount >= _MAX_AMOUNT:
        return amount, {"amount": "e_too_large"}
    return amount, {}


def check_settings(
    enabled: bool, amount_text: str, trigger_text: str, lang: Lang
) -> tuple[AutoRecharge | None, dict[str, str]]:
    """The settings form through the contract model; errors by form field."""
    amount = i18n.parse_amount(amount_text, lang)
    trigger = i18n.parse_amount(trigger_text, lang)
    errors: dict[str, str] = {}
    if not amount and (enabled or trigger):
        errors["recharge_amount"] = "e_amount_for_trigger" if trigger else "e_required"
    try:
        auto = AutoRecharge(
            enabled=enabled, recharge_amount=amount or "0", trigger_balance=trigger or "0"
        )
    except ValidationError as exc:
        names = {"recharge_amount": "recharge_amount", "trigger_balance": "trigger"}
        return None, {**_field_errors(exc, names), **errors}
    for name, value in (
        ("recharge_amount", auto.recharge_amount),
        ("trigger", auto.trigger_balance),
    ):
        if value < 0:
            errors.setdefault(name, "e_negative")
        elif value >= _MAX_AMOUNT:
            errors.setdefault(name, "e_too_large")
    if enabled and auto.recharge_amount == 0:
        errors.setdefault("recharge_amount", "e_positive")
    return (None, errors) if errors else (auto, {})


def chart_points(usage: dict[str, Any], today: date, lang: Lang) -> list[dict[str, str]]:
    """The last 30 days (oldest first): label, amount (decimal string), formatted amount."""
    per_day: dict[str, Decimal] = {}
    for row in usage["rows"]:
        per_day[row["day"]] = per_day.get(row["day"], Decimal(0)) + Decimal(row["amount"])
    points = []
    for back in range(admin_ops.CHART_DAYS - 1, -1, -1):
        d = today - timedelta(days=back)
        amount = per_day.get(d.isoformat(), Decimal(0))
        points.append(
            {
                "day": d.isoformat(),
                "label": i18n.day(d, lang, year=False),
                "amount": format_money(amount),
                "text": i18n.money(amount, usage["currency"], lang),
            }
        )
    return points


def month_by_product(usage: dict[str, Any], today: date) -> dict[str, Any]:
    """This calendar month's usage per product and in total (from the rows)."""
    month = today.replace(day=1).isoformat()
    acc: dict[str, tuple[int, int, Decimal]] = {p.value: (0, 0, Decimal(0)) for p in Product}
    for row in usage["rows"]:
        if row["day"] >= month:
            calls, secs, amt = acc[row["product"]]
            acc[row["product"]] = (
                calls + row["calls"],
                secs + row["billable_seconds"],
                amt + Decimal(row["amount"]),
            )
    total = (
        sum(a[0] for a in acc.values()),
        sum(a[1] for a in acc.values()),
        sum((a[2] for a in acc.values()), Decimal(0)),
    )
    return {"products": acc, "total": total}


class AdminPage:
    def __init__(self, p: Pipeline, routing: Routing) -> None:
        self.p = p
        self.routing = routing
        token = p.settings.admin_token
        self._token = token.get_secret_value() if token is not None else None
        self.sessions = Sessions(self._token) if self._token is not None else None
        self.throttle = Throttle()

    # --- request helpers --------------------------------------------------------------------

    def lang(self, request: web.Request) -> Lang:
        chosen = i18n.parse_lang(request.query.get("lang"))
        if chosen is None:
            chosen = i18n.parse_lang(request.cookies.get(LANG_COOKIE))
        return chosen or i18n.negotiate(request.headers.get("Accept-Language"))

    def session(self, request: web.Request) -> Session | None:
        if self.sessions is None:
            return None
        return self.sessions.read(request.cookies.get(COOKIE))

    def ctx(self, request: web.Request, **extra: Any) -> Ctx:
        return Ctx(self.lang(request), self.session(request), request.path, extra)

    def render(
        self, view: View, request: web.Request, template: str, ctx: Ctx, status: int = 200
    ) -> web.Response:
        body = _env.get_template(template).render(**ctx.vars())
        resp = _aio(view.html(body, status=status, headers=dict(_HEADERS)))
        chosen = i18n.parse_lang(request.query.get("lang"))
        if chosen is not None:  # the switcher: remember the choice
            resp.set_cookie(
                LANG_COOKIE,
                chosen.value,
                max_age=365 * 86400,
                path="/admin/",
                samesite="Strict",
                secure=_is_https(request),
            )
        return resp

    def redirect(self, view: View, location: str) -> web.Response:
        return _aio(view.html("", status=303, headers={**_HEADERS, "Location": location}))

    def sign_in_page(
        self, view: View, request: web.Request, *, error: str | None = None, status: int = 200
    ) -> web.Response:
        if self.sessions is None:
            ctx = self.ctx(request, error="admin_off", next="/admin/")
            return self.render(view, request, "sign_in.html", ctx, status=403)
        here = request.path_qs if request.method == "GET" else None
        nxt = _safe_next(request.query.get("next") or here)
        return self.render(
            view, request, "sign_in.html", self.ctx(request, error=error, next=nxt), status
        )

    def _auth(self) -> dict[str, str]:
        assert self._token is not None
        return {"Authorization": f"Bearer {self._token}"}

    # --- data -------------------------------------------------------------------------------

    async def overview(self, tenant: str) -> dict[str, Any] | None:
        where = self.routing.route(tenant, routed=False)
        if where is Route.LOCAL:
            return admin_ops.overview(self.p, tenant)
        if where is Route.BUSY:
            raise UnavailableError("rebalancing")
        try:
            answer = await self.routing.send(
                str(where), "GET", f"/tenants/{quote(tenant, safe='')}/overview", self._auth()
            )
        except (OSError, TimeoutError) as exc:
            raise UnavailableError(str(exc)) from exc
        if answer.status == 404:
            return None
        if answer.status != 200:
            raise UnavailableError(f"owner answered {answer.status}")
        doc: dict[str, Any] = json.loads(answer.body)
        return doc

    async def _overview_or_none(self, tenant: str) -> dict[str, Any] | None:
        # For actions: an unknown or unreachable owner both end on tenant_page's message.
        try:
            return await self.overview(tenant)
        except UnavailableError:
            return None

    async def all_tenants(self) -> tuple[list[dict[str, Any]], bool]:
        """Every worker's own tenants, merged; ``complete`` is False if a worker was missing."""
        local = self.routing.local_url()

        async def one(url: str) -> list[dict[str, Any]]:
            if url == local:
                return admin_ops.local_tenants(self.p)
            answer: Answer = await self.routing.send(
                url, "GET", "/admin/api/local-tenants", self._auth()
            )
            if answer.status != 200:
                raise UnavailableError(f"{url} answered {answer.status}")
            rows: list[dict[str, Any]] = json.loads(answer.body)["tenants"]
            return rows

        peers = self.routing.peers()
        results = await asyncio.gather(*(one(u) for u in peers), return_exceptions=True)
        merged: dict[str, dict[str, Any]] = {}
        complete = not self.p.app.rebalancing
        for url, result in zip(peers, results, strict=True):
            if isinstance(result, BaseException):
                log.warning("tenant list: %s did not answer: %s", url, type(result).__name__)
                complete = False
                continue
            for row in result:
                merged.setdefault(row["tenant_id"], row)
        return sorted(merged.values(), key=lambda r: r["tenant_id"]), complete

    async def wait_applied(self, tenant: str, done: Any) -> bool:
        """Poll the owner until ``done(overview)`` holds, for at most APPLY_WAIT_SECONDS."""
        deadline = time.monotonic() + APPLY_WAIT_SECONDS
        while True:
            try:
                doc = await self.overview(tenant)
                if doc is not None and done(doc):
                    return True
            except UnavailableError:
                pass
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(0.1)

    # --- pages ------------------------------------------------------------------------------

    async def tenant_page(
        self,
        view: View,
        request: web.Request,
        tenant: str,
        *,
        errors: dict[str, str] | None = None,
        form: dict[str, str] | None = None,
        status: int = 200,
    ) -> web.Response:
        ctx = self.ctx(request, tenant_id=tenant, errors=errors or {}, form=form or {})
        try:
            doc = await self.overview(tenant)
        except UnavailableError:
            ctx.extra["notice"] = "busy"
            return self.render(view, request, "message.html", ctx, status=503)
        if doc is None:
            ctx.extra["notice"] = "unknown_tenant"
            return self.render(view, request, "message.html", ctx, status=404)
        today = date.fromisoformat(doc["today"])
        ctx.extra.update(
            account=doc["account"],
            state=doc["state"],
            usage=doc["usage"],
            month=month_by_product(doc["usage"], today),
            # "<" escaped: the JSON sits in a <script> data block.
            chart=json.dumps(chart_points(doc["usage"], today, ctx.lang)).replace("<", "\\u003c"),
            chart_title=i18n.text(ctx.lang, "chart_label"),
            recent=doc["recent"],
            products=[p.value for p in Product],
            event_id=f"page-{uuid.uuid4()}",  # a fresh one per rendered form: retries dedupe
            flash=request.query.get("flash"),
        )
        return self.render(view, request, "tenant.html", ctx, status=status)

    async def add_funds(self, view: View, request: web.Request, tenant: str) -> web.Response:
        form = await request.post()
        lang = self.lang(request)
        amount, errors = check_funds(str(form.get("amount", "")), lang)
        event_id = str(form.get("event_id", ""))
        event: FundsEvent | None = None
        if not errors:
            doc = await self._overview_or_none(tenant)
            if doc is None:
                return await self.tenant_page(view, request, tenant, status=404)
            try:
                event = FundsEvent(
                    event_id=event_id,
                    tenant_id=tenant,
                    kind=FundsKind.MANUAL_ADD,
                    amount=amount,
                    currency=doc["account"]["currency"],
                    reason="admin page",
                )
            except ValidationError as exc:
                errors = _field_errors(exc, {"amount": "amount", "event_id": "amount"})
        if event is None:
            form_values = {"amount": str(form.get("amount", ""))}
            return await self.tenant_page(
                view, request, tenant, errors=errors, form=form_values, status=400
            )
        await admin_ops.send_funds(self.p, event)
        applied = await self.wait_applied(
            tenant, lambda d: any(f["id"] == event.event_id for f in d["recent"]["funds"])
        )
        return self.redirect(view, self._tenant_url(tenant, applied))

    async def save_settings(self, view: View, request: web.Request, tenant: str) -> web.Response:
        form = await request.post()
        lang = self.lang(request)
        enabled = form.get("auto_recharge") == "on"
        amount_text = str(form.get("recharge_amount", ""))
        trigger_text = str(form.get("trigger", ""))
        auto, errors = check_settings(enabled, amount_text, trigger_text, lang)
        if auto is None:
            values = {"recharge_amount": amount_text, "trigger": trigger_text}
            values["auto_recharge"] = "on" if enabled else ""
            return await self.tenant_page(
                view, request, tenant, errors=errors, form=values, status=400
            )
        doc = await self._overview_or_none(tenant)
        if doc is None:
            return await self.tenant_page(view, request, tenant, status=404)
        await admin_ops.send_settings(self.p, admin_ops.with_auto_recharge(doc["account"], auto))

        def shows(d: dict[str, Any]) -> bool:
            ar = d["account"]["auto_recharge"]
            return bool(
                ar["enabled"] == auto.enabled
                and Decimal(ar["recharge_amount"]) == auto.recharge_amount
                and Decimal(ar["trigger_balance"]) == auto.trigger_balance
            )

        applied = await self.wait_applied(tenant, shows)
        return self.redirect(view, self._tenant_url(tenant, applied))

    @staticmethod
    def _tenant_url(tenant: str, applied: bool) -> str:
        flash = urlencode({"flash": "applied" if applied else "pending"})
        return f"/admin/tenants/{quote(tenant, safe='')}?{flash}"

    async def sign_in(self, view: View, request: web.Request) -> web.Response:
        if self.sessions is None:
            return self.sign_in_page(view, request)
        form = await request.post()
        nxt = _safe_next(str(form.get("next", "")))
        client = request.remote or "?"
        if not self.sessions.token_ok(str(form.get("token", ""))):
            await asyncio.sleep(self.throttle.failed(client))
            log.info("admin sign-in failed from %s", client)  # never the token given
            ctx = self.ctx(request, error="sign_in_failed", next=nxt)
            return self.render(view, request, "sign_in.html", ctx, status=401)
        self.throttle.succeeded(client)
        cookie, _ = self.sessions.issue()
        resp = self.redirect(view, nxt)
        resp.set_cookie(
            COOKIE,
            cookie,
            max_age=self.sessions.lifetime,
            path="/admin/",
            httponly=True,
            samesite="Strict",
            secure=_is_https(request),
        )
        return resp

    async def guarded_post(self, view: View, request: web.Request) -> web.Response | None:
        """A refusal for a POST without a valid session and CSRF token (None: go ahead)."""
        session = self.session(request)
        form = await request.post()
        given = form.get("csrf")
        if session is None or not Sessions.csrf_ok(
            session, given if isinstance(given, str) else None
        ):
            return self.sign_in_page(view, request, error="session_expired", status=403)
        return None


class AdminView(View):
    """A view of the admin page: only copies bound to one worker's :class:`AdminPage` are
    registered (see :func:`register_admin_page`), as ``streaming/web.py`` does."""

    page: ClassVar[AdminPage]


class AdminRoot(AdminView):
    async def get(self, request: Request) -> Response:
        return _out(self.page.redirect(self, "/admin/"))


class TenantList(AdminView):
    async def get(self, request: Request) -> Response:
        page, req = self.page, _req(request)
        if page.session(req) is None:
            return _out(page.sign_in_page(self, req))
        query = req.query.get("q", "").strip()
        rows, complete = await page.all_tenants()
        if query:
            rows = [r for r in rows if query.lower() in r["tenant_id"].lower()]
        ctx = page.ctx(
            req,
            q=query,
            rows=rows[:LIST_LIMIT],
            count=len(rows),
            complete=complete,
            limit=LIST_LIMIT,
        )
        return _out(page.render(self, req, "tenants.html", ctx))


class SignIn(AdminView):
    async def post(self, request: Request) -> Response:
        return _out(await self.page.sign_in(self, _req(request)))


class SignOut(AdminView):
    async def post(self, request: Request) -> Response:
        refused = await self.page.guarded_post(self, _req(request))
        if refused is not None:
            return _out(refused)
        resp = self.page.redirect(self, "/admin/")
        resp.del_cookie(COOKIE, path="/admin/")
        return _out(resp)


class TenantPage(AdminView):
    async def get(self, request: Request, tenant_id: str) -> Response:
        if self.page.session(_req(request)) is None:
            return _out(self.page.sign_in_page(self, _req(request)))
        return _out(await self.page.tenant_page(self, _req(request), tenant_id))


class AddFunds(AdminView):
    async def post(self, request: Request, tenant_id: str) -> Response:
        refused = await self.page.guarded_post(self, _req(request))
        if refused is not None:
            return _out(refused)
        return _out(await self.page.add_funds(self, _req(request), tenant_id))


class SaveSettings(AdminView):
    async def post(self, request: Request, tenant_id: str) -> Response:
        refused = await self.page.guarded_post(self, _req(request))
        if refused is not None:
            return _out(refused)
        return _out(await self.page.save_settings(self, _req(request), tenant_id))


class Static(AdminView):
    async def get(self, request: Request, name: str) -> Response:
        if name not in _STATIC:
            return self.notfound()
        data = resources.files("rating.web").joinpath("static", name).read_bytes()
        headers = {"Cache-Control": "max-age=300", "X-Content-Type-Options": "nosniff"}
        return self.bytes(data, content_type=_STATIC[name], headers=headers)


ADMIN_ROUTES: tuple[tuple[str, type[AdminView]], ...] = (
    ("/admin", AdminRoot),
    ("/admin/", TenantList),
    ("/admin/sign-in", SignIn),
    ("/admin/sign-out", SignOut),
    ("/admin/tenants/{tenant_id}", TenantPage),
    ("/admin/tenants/{tenant_id}/funds", AddFunds),
    ("/admin/tenants/{tenant_id}/settings", SaveSettings),
    ("/admin/static/{name}", Static),
)


def register_admin_page(p: Pipeline, routing: Routing) -> None:
    """Register :data:`ADMIN_ROUTES` on ``p.app``, each a copy bound to this worker's page."""
    page = AdminPage(p, routing)
    for path, view in ADMIN_ROUTES:
        # A subclass of the same name per app (Faust keeps view_name on the class).
        p.app.page(path)(type(view.__name__, (view,), {"page": page}))
