"""The Communication Credits page in a real browser (issue 13).

Two real workers on the embedded broker; Debian's chromium driven by Playwright. The browser
talks to the worker that does NOT own the tenant, so every read on the page is forwarded to
the owner. Each step saves a screenshot under the test's tmp dir; with
RATING_UPDATE_DOCS_SCREENSHOT=1 the English tenant page is also copied to
docs/admin-tenant.png (shown in the README), so an ordinary run leaves the tree clean.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote

import pytest

from rating.web import i18n
from tests.integration.harness import (
    REPO,
    Env,
    Worker,
    cdr_msg,
    http_get,
    metric_value,
    produce,
    read_json,
    settings_msg,
    wait_until,
)

T = TypeVar("T")
TOKEN = "page-admin-token-0123456789"
CHROMIUM = Path("/usr/bin/chromium")
LAUNCH_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def off_loop(fn: Callable[..., T], *args: Any) -> T:
    """Run a Kafka helper (it calls asyncio.run) outside Playwright's running event loop."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(fn, *args).result()


def owner_of(workers: list[Worker], tenant: str) -> tuple[Worker, Worker]:
    def agreed() -> str | None:
        docs = []
        for w in workers:
            status, body = http_get(f"{w.url}/tenants/{quote(tenant, safe='')}")
            docs.append(json.loads(body) if status == 200 else None)
        served = {d["served_by"] for d in docs if d is not None}
        return served.pop() if len(served) == 1 and all(docs) else None

    url = wait_until(agreed, 60, f"both workers to agree on {tenant}'s owner")
    owner = next(w for w in workers if w.url == url)
    return owner, next(w for w in workers if w is not owner)


def usage(worker: Worker, tenant: str, query: str = "") -> dict[str, Any]:
    status, body = http_get(f"{worker.url}/tenants/{quote(tenant, safe='')}/usage{query}")
    assert status == 200, (status, body)
    doc: dict[str, Any] = json.loads(body)
    return doc


@pytest.fixture
def browser() -> Iterator[Any]:
    if not CHROMIUM.exists():
        pytest.fail(
            f"{CHROMIUM} is missing: install Debian's chromium (`make tools` does: "
            "apt-get install chromium); the admin page's browser test needs it"
        )
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=LAUNCH_ARGS)
        try:
            yield b
        finally:
            b.close()


def test_the_credits_page_in_a_browser(
    pipeline_env: Env, workers: list[Worker], tmp_path: Path, browser: Any
) -> None:
    env = pipeline_env
    shots = tmp_path / "screenshots"
    shots.mkdir()
    workers.extend(
        Worker(env, tmp_path, i, RATING_ADMIN_TOKEN=TOKEN).start(wait_ready=False) for i in range(2)
    )
    for w in workers:
        w.wait_ready(90)

    # A tenant whose id needs percent-encoding, with calls of two products.
    tenant = f"acme/eu-{uuid.uuid4().hex[:6]}"
    off_loop(produce, env.bootstrap, env.topic("tenant_settings"), [settings_msg(tenant, low="5")])
    owner, other = owner_of(workers, tenant)
    cdrs = [cdr_msg(tenant, f"out-{i}", duration=45 + 17 * i) for i in range(5)]
    cdrs += [
        cdr_msg(
            tenant,
            f"tf-{i}",
            product="tollfree_inbound",
            origin="+14155550123",
            destination="+18005550100",
            duration=30 + i,
        )
        for i in range(3)
    ]
    off_loop(produce, env.bootstrap, env.topic("cdr_audio"), cdrs[:5])
    off_loop(produce, env.bootstrap, env.topic("cdr_tollfree"), cdrs[5:])
    wait_until(lambda: usage(other, tenant)["totals"]["calls"] == 8, 60, "8 calls in the usage")

    # The usage endpoint (forwarded by the non-owner) sums the Charges to the last decimal.
    # Usage lands in ledger state with the debit; the Charges are published once the batch's
    # changelog is acked (the outbox), so wait for them on the topic too.
    def tenant_charges() -> dict[str, Any]:
        return {
            c["cdr_id"]: c
            for c in off_loop(read_json, env.bootstrap, env.topic("charges"))
            if c["tenant_id"] == tenant
        }

    charges = wait_until(lambda: len(tenant_charges()) == 8 and tenant_charges(), 60, "8 Charges")
    assert len(charges) == 8
    days = sorted({c["call_start"][:10] for c in charges.values()})
    doc = usage(other, tenant, f"?from={days[0]}&to={days[-1]}")
    charged = sum((Decimal(c["amount"]) for c in charges.values()), Decimal(0))
    assert Decimal(doc["totals"]["amount"]) == charged
    assert doc["totals"]["billable_seconds"] == sum(c["billable_seconds"] for c in charges.values())
    status, body = http_get(f"{other.url}/tenants/{quote(tenant, safe='')}/usage?from=yesterday")
    assert status == 400, body
    assert "from" in json.loads(body)["error"], body

    context = browser.new_context(locale="en-US", viewport={"width": 1200, "height": 1600})
    page = context.new_page()
    base = other.url
    step = iter(range(1, 100))

    def shot(name: str) -> Path:
        path = shots / f"{next(step):02d}-{name}.png"
        page.screenshot(path=str(path), full_page=True)
        return path

    # 1. Sign in: a wrong token is refused on the form, revealing nothing else.
    page.goto(f"{base}/admin/")
    page.get_by_label("Admin token").fill("not-the-token")
    page.get_by_role("button", name="Sign in").click()
    assert page.get_by_role("alert").inner_text().startswith("Sign-in failed")
    assert TOKEN not in page.content()
    shot("sign-in-refused")
    page.get_by_label("Admin token").fill(TOKEN)
    page.get_by_role("button", name="Sign in").click()
    cookie = next(c for c in context.cookies() if c["name"] == "rating_admin")
    assert cookie["httpOnly"], cookie
    assert cookie["sameSite"] == "Strict", cookie
    assert TOKEN not in cookie["value"]

    # 2. The tenant list, gathered from both workers, searchable by id.
    page.get_by_label("Search by tenant id").fill(tenant)
    page.get_by_role("button", name="Search").click()
    page.get_by_role("link", name=tenant).wait_for()
    shot("tenant-list")
    page.get_by_role("link", name=tenant).click()
    assert page.url.endswith(f"/admin/tenants/{quote(tenant, safe='')}")

    # 3. The balance (forwarded read: this worker does not own the tenant).
    balance = -charged
    assert page.get_by_label("Balance", exact=True).inner_text() == i18n.money(
        balance, "USD", i18n.Lang.EN
    )
    page.locator("#usage-chart[data-ready=true]").wait_for()
    assert page.locator("#usage-chart rect").count() == 30  # a bar per day, drawn by chart.js
    shot("tenant-page")

    # 4. Add funds, then the same form again (a browser retry): credited once.
    page.get_by_label("Amount to add").fill("25.00")
    form = {
        name: page.locator(f"#funds-form input[name={name}]").input_value()
        for name in ("csrf", "event_id", "amount")
    }
    page.get_by_role("button", name="Add funds").click()
    balance += Decimal("25.00")
    assert page.get_by_label("Balance", exact=True).inner_text() == i18n.money(
        balance, "USD", i18n.Lang.EN
    )
    assert page.locator(".flash-applied").inner_text().startswith("Done")
    shot("funds-added")
    resp = context.request.post(
        f"{base}/admin/tenants/{quote(tenant, safe='')}/funds", form=form, max_redirects=0
    )
    assert resp.status == 303, resp.status
    wait_until(
        lambda: (
            metric_value(owner.metrics(), "rating_funds_events_total", outcome="duplicate") >= 1
        ),
        30,
        "the resubmitted funds event to be dropped as a duplicate",
    )
    page.reload()
    assert page.get_by_label("Balance", exact=True).inner_text() == i18n.money(
        balance, "USD", i18n.Lang.EN
    )
    assert page.locator(f'#recent-funds tr[data-event="{form["event_id"]}"]').count() == 1
    funds = [
        f
        for f in off_loop(read_json, env.bootstrap, env.topic("funds"))
        if f["tenant_id"] == tenant
    ]
    assert [f["event_id"] for f in funds] == [form["event_id"]] * 2  # published twice...
    # ... credited once (the balance above).

    # 5. Change the settings.
    page.get_by_label("Auto-recharge", exact=True).check()
    page.get_by_label("Recharge amount").fill("30")
    page.get_by_label("When the balance falls below").fill("2.50")
    page.get_by_role("button", name="Save changes").click()
    state = page.locator("#auto-state").inner_text()
    assert state.startswith("On"), state
    assert "USD 30.00" in state, state
    assert "USD 2.50" in state, state
    shot("settings-saved")
    if os.environ.get("RATING_UPDATE_DOCS_SCREENSHOT") == "1":
        shutil.copyfile(shot("tenant-page-after-changes"), REPO / "docs" / "admin-tenant.png")

    # 6. Validation errors beside the fields, nothing published.
    page.get_by_label("Recharge amount").fill("-5")
    page.get_by_role("button", name="Save changes").click()
    assert page.locator("#recharge_amount-error").inner_text() == "The amount cannot be negative."
    assert page.get_by_label("Recharge amount").get_attribute("aria-invalid") == "true"
    shot("settings-negative-amount")
    page.get_by_label("Recharge amount").fill("")
    page.get_by_label("When the balance falls below").fill("4")
    page.get_by_role("button", name="Save changes").click()
    assert "recharge amount" in page.locator("#recharge_amount-error").inner_text()
    page.get_by_label("Amount to add").fill("12,5x")
    page.get_by_role("button", name="Add funds").click()
    assert page.locator("#amount-error").inner_text() == "Enter an amount such as 12.50."
    shot("funds-malformed-amount")
    settings_sent = off_loop(read_json, env.bootstrap, env.topic("tenant_settings"))
    assert len([s for s in settings_sent if s["tenant_id"] == tenant]) == 2  # create + save

    # 7. Dansk: strings and formats per locale; consumption totals against the Charges.
    page.goto(f"{base}/admin/tenants/{quote(tenant, safe='')}")
    page.get_by_role("link", name="Dansk").click()
    assert page.locator("html").get_attribute("lang") == "da"
    da = i18n.Lang.DA
    assert page.get_by_label("Saldo", exact=True).inner_text() == i18n.money(balance, "USD", da)
    assert page.get_by_role("button", name="Indsæt penge").is_visible()
    assert page.get_by_role("button", name="Gem ændringer").is_visible()
    month = datetime.now(UTC).strftime("%Y-%m")
    in_month = [c for c in charges.values() if c["call_start"].startswith(month)]
    month_total = sum((Decimal(c["amount"]) for c in in_month), Decimal(0))
    assert page.locator("#month-total").inner_text() == i18n.money(month_total, "USD", da)
    rows = page.locator("#recent-charges tbody tr")
    assert rows.count() == 8
    shot("tenant-page-dansk")
    # The choice sticks (a cookie) for the next page.
    page.goto(f"{base}/admin/")
    assert page.get_by_role("heading", name="Lejere").is_visible()
    shot("tenant-list-dansk")
    for w in workers:
        assert TOKEN not in w.log_path.read_text(errors="replace")
