"""Admin endpoints and the admin CLI (issue #5), against real workers on the embedded broker.

Two workers with ``RATING_ADMIN_TOKEN`` are shared by the tests of this module (each test uses
its own tenant ids); the "admin endpoints off" check gets its own worker without a token.
"""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.integration.harness import (
    Env,
    Worker,
    http_call,
    http_get,
    produce,
    read_json,
    settings_msg,
    wait_until,
)

TOKEN = "s3cret-admin-token-for-tests"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def tenant_doc(worker: Worker, tenant: str) -> dict[str, Any] | None:
    status, body = http_get(f"{worker.url}/tenants/{tenant}")
    return json.loads(body) if status == 200 else None


def existing(worker: Worker, tenant: str) -> dict[str, Any]:
    doc = tenant_doc(worker, tenant)
    assert doc is not None, (worker.url, tenant)
    return doc


@dataclass
class Cluster:
    env: Env
    workers: list[Worker]

    def by_url(self, url: str) -> Worker:
        return next(w for w in self.workers if w.url == url.rstrip("/"))

    def owner_and_other(self, tenant: str) -> tuple[Worker, Worker]:
        """The worker owning the tenant's partition (per ``served_by``) and the other one."""

        def agreed() -> str | None:
            docs = [tenant_doc(w, tenant) for w in self.workers]
            served = {d["served_by"] for d in docs if d is not None}
            return served.pop() if len(served) == 1 and all(docs) else None

        owner = self.by_url(wait_until(agreed, 60, f"both workers to agree on {tenant}'s owner"))
        other = next(w for w in self.workers if w is not owner)
        return owner, other

    def create(self, tenant: str, **kw: Any) -> None:
        produce(self.env.bootstrap, self.env.topic("tenant_settings"), [settings_msg(tenant, **kw)])
        wait_until(lambda: tenant_doc(self.workers[0], tenant), 30, f"{tenant} to exist")


@pytest.fixture(scope="module")
def cluster(bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    env = Env(bootstrap)
    env.create_topics()
    log_dir = tmp_path_factory.mktemp("admin")
    workers = [Worker(env, log_dir, i, RATING_ADMIN_TOKEN=TOKEN) for i in range(2)]
    try:
        for w in workers:
            w.start(wait_ready=False)
        for w in workers:
            w.wait_ready(90)
        yield Cluster(env, workers)
    finally:
        for w in workers:
            w.stop()


def new_tenant(label: str) -> str:
    return f"{label}-{uuid.uuid4().hex[:8]}"


def test_admin_endpoints_are_off_without_a_token(
    pipeline_env: Env, workers: list[Worker], tmp_path: Path
) -> None:
    w = Worker(pipeline_env, tmp_path, 0)  # no RATING_ADMIN_TOKEN
    workers.append(w)
    w.start()
    t = new_tenant("notoken")
    produce(pipeline_env.bootstrap, pipeline_env.topic("tenant_settings"), [settings_msg(t)])
    wait_until(lambda: tenant_doc(w, t), 30, f"{t} to exist")
    for headers in ({}, AUTH):
        status, _, body = http_call(
            "POST", f"{w.url}/tenants/{t}/funds", {"amount": "5.00"}, headers
        )
        assert status == 403, body
        assert "RATING_ADMIN_TOKEN" in body["error"]
        status, _, body = http_call(
            "PUT", f"{w.url}/tenants/{t}/auto-recharge", {"enabled": True}, headers
        )
        assert status == 403, body
    assert read_json(pipeline_env.bootstrap, pipeline_env.topic("funds")) == []
    settings = read_json(pipeline_env.bootstrap, pipeline_env.topic("tenant_settings"))
    assert len(settings) == 1, settings  # nothing published by the refused PUTs


def test_admin_endpoints_refuse_a_missing_or_wrong_token(cluster: Cluster) -> None:
    t = new_tenant("noauth")
    cluster.create(t)
    for w in cluster.workers:  # owner and non-owner alike
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}):
            status, resp_headers, body = http_call(
                "POST", f"{w.url}/tenants/{t}/funds", {"amount": "1.00"}, headers
            )
            assert status == 401, (w.url, headers, body)
            assert resp_headers.get("WWW-Authenticate", "").startswith("Bearer"), resp_headers
            status, resp_headers, body = http_call(
                "PUT", f"{w.url}/tenants/{t}/auto-recharge", {"enabled": True}, headers
            )
            assert status == 401, (w.url, headers, body)
            assert resp_headers.get("WWW-Authenticate", "").startswith("Bearer"), resp_headers
    funds = read_json(cluster.env.bootstrap, cluster.env.topic("funds"))
    assert [f for f in funds if f["tenant_id"] == t] == []
    published = read_json(cluster.env.bootstrap, cluster.env.topic("tenant_settings"))
    assert len([s for s in published if s["tenant_id"] == t]) == 1, published


def _assert_token_not_logged(cluster: Cluster) -> None:
    for w in cluster.workers:
        assert TOKEN not in w.log_path.read_text(errors="replace"), w.log_path


def test_admin_calls_with_the_token_on_the_owner(cluster: Cluster) -> None:
    t = new_tenant("owner")
    cluster.create(t)
    owner, _ = cluster.owner_and_other(t)

    # Bad input is refused with the field named, before anything is published.
    funds_url = f"{owner.url}/tenants/{t}/funds"
    for bad in ({"amount": "12,50"}, {"amount": 12.5}, {}):
        status, _, body = http_call("POST", funds_url, bad, AUTH)
        assert status == 400, (bad, body)
        assert "amount" in body["error"], body

    status, _, body = http_call("POST", funds_url, {"amount": "12.50"}, AUTH)
    assert status == 202, body
    assert body["accepted"] is True
    wait_until(
        lambda: (tenant_doc(owner, t) or {}).get("balance") == "12.50", 30, "the admin funds"
    )
    mine = [
        f
        for f in read_json(cluster.env.bootstrap, cluster.env.topic("funds"))
        if f["tenant_id"] == t
    ]
    assert len(mine) == 1, mine  # the 400s published nothing
    assert (mine[0]["kind"], mine[0]["amount"], mine[0]["currency"]) == (
        "manual_add",
        "12.50",
        "USD",
    )
    assert mine[0]["event_id"] == body["event_id"]

    ar_url = f"{owner.url}/tenants/{t}/auto-recharge"
    wanted = {"enabled": True, "recharge_amount": "25.00", "trigger_balance": "10.00"}
    status, _, body = http_call("PUT", ar_url, wanted, AUTH)
    assert status == 202, body
    wait_until(
        lambda: (tenant_doc(owner, t) or {}).get("auto_recharge") == wanted,
        30,
        "the new auto-recharge settings",
    )
    for bad, field in (
        ({"recharge_amount": "abc"}, "recharge_amount"),
        ({"trigger_balance": 10}, "trigger_balance"),
        ({"enabled": True, "recharge_amount": "0"}, "recharge_amount"),
        ({"enabled": "yes"}, "enabled"),
    ):
        status, _, body = http_call("PUT", ar_url, bad, AUTH)
        assert status == 400, (bad, body)
        assert field in body["error"], (bad, body)
    published = read_json(cluster.env.bootstrap, cluster.env.topic("tenant_settings"))
    assert len([s for s in published if s["tenant_id"] == t]) == 2  # create + the one PUT
    assert existing(owner, t)["auto_recharge"] == wanted
    _assert_token_not_logged(cluster)


def test_admin_calls_to_the_worker_that_does_not_own_the_tenant_are_forwarded(
    cluster: Cluster,
) -> None:
    t = new_tenant("fwd")
    cluster.create(t)
    owner, other = cluster.owner_and_other(t)

    status, _, body = http_call("POST", f"{other.url}/tenants/{t}/funds", {"amount": "7.25"}, AUTH)
    assert status == 202, body
    wait_until(lambda: (tenant_doc(owner, t) or {}).get("balance") == "7.25", 30, "the funds")
    assert existing(other, t)["balance"] == "7.25"
    mine = [
        f
        for f in read_json(cluster.env.bootstrap, cluster.env.topic("funds"))
        if f["tenant_id"] == t
    ]
    assert [f["event_id"] for f in mine] == [body["event_id"]]

    status, _, body = http_call("POST", f"{other.url}/tenants/{t}/funds", {"amount": "x"}, AUTH)
    assert status == 400, body
    assert "amount" in body["error"]

    wanted = {"enabled": True, "recharge_amount": "25.00", "trigger_balance": "10.00"}
    status, _, body = http_call("PUT", f"{other.url}/tenants/{t}/auto-recharge", wanted, AUTH)
    assert status == 202, body
    wait_until(
        lambda: (tenant_doc(other, t) or {}).get("auto_recharge") == wanted,
        30,
        "the new auto-recharge settings",
    )
    status, _, body = http_call(
        "PUT", f"{other.url}/tenants/{t}/auto-recharge", {"trigger_balance": "1,0"}, AUTH
    )
    assert status == 400, body
    assert "trigger_balance" in body["error"]
    _assert_token_not_logged(cluster)


def rating_cli(env: Env, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "rating", *args],
        env=env.worker_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_admin_cli_sets_a_tenant_adds_funds_and_shows_it(cluster: Cluster) -> None:
    env = cluster.env
    w0, w1 = cluster.workers
    done = rating_cli(
        env,
        "tenants",
        "set",
        "acme",
        "--currency",
        "USD",
        "--recharge-amount",
        "50",
        "--trigger",
        "10",
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["tenant_id"] == "acme"
    wait_until(lambda: tenant_doc(w0, "acme"), 30, "acme to exist")

    done = rating_cli(env, "funds", "add", "acme", "25.00", "--url", w0.url)
    assert done.returncode == 0, done.stderr
    event = json.loads(done.stdout)
    assert (event["kind"], event["amount"], event["currency"]) == ("manual_add", "25.00", "USD")
    wait_until(lambda: (tenant_doc(w0, "acme") or {}).get("balance") == "25.00", 30, "the funds")

    for w in (w0, w1):  # either worker answers, whoever owns acme
        done = rating_cli(env, "tenants", "show", "acme", "--url", w.url)
        assert done.returncode == 0, done.stderr
        shown = json.loads(done.stdout)
        assert shown["balance"] == "25.00"
        assert shown["auto_recharge"] == {
            "enabled": True,
            "recharge_amount": "50",
            "trigger_balance": "10",
        }

    done = rating_cli(env, "tenants", "set", "acme-bad", "--currency", "usd")
    assert done.returncode == 2
    assert "currency" in done.stderr, done.stderr

    done = rating_cli(env, "funds", "add", "acme", "-1", "--url", w0.url)
    assert done.returncode == 2
    assert "amount" in done.stderr, done.stderr

    done = rating_cli(env, "tenants", "show", "nobody-here", "--url", w0.url)
    assert done.returncode == 1

    # Only the one good funds event was published; the refused commands published nothing.
    funds = [f for f in read_json(env.bootstrap, env.topic("funds")) if f["tenant_id"] == "acme"]
    assert len(funds) == 1, funds
    settings = read_json(env.bootstrap, env.topic("tenant_settings"))
    assert [s["tenant_id"] for s in settings if s["tenant_id"].startswith("acme")] == ["acme"]
    assert existing(w1, "acme")["balance"] == "25.00"
