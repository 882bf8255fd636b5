"""Which worker owns a tenant, and asking it: shared by the REST views and the admin page.

Faust's assignor knows, for the accounts table's changelog, which host (canonical URL) holds
which partition; the ledger partition of a tenant is the changelog partition. A request for
a tenant this worker does not own is sent to the owner with :data:`ROUTED_HEADER`, so the
owner never forwards it again.
"""

from __future__ import annotations

import asyncio
import enum
from dataclasses import dataclass
from typing import TYPE_CHECKING

from rating.partitioning import partition_of

if TYPE_CHECKING:
    from rating.streaming.app import Pipeline

ROUTED_HEADER = "X-Rating-Routed"
#: A peer that does not answer within this is reported as missing, never waited for.
PEER_TIMEOUT_SECONDS = 5.0


class Route(enum.Enum):
    LOCAL = "local"  # this worker owns the tenant: answer from local state
    BUSY = "busy"  # the assignment is being (re)computed: ask again in a moment


@dataclass(frozen=True, slots=True)
class Answer:
    """The owner's answer to a forwarded request."""

    status: int
    body: bytes
    content_type: str


class Routing:
    def __init__(self, p: Pipeline) -> None:
        self.p = p

    def _changelog(self) -> str:
        return str(self.p.table.changelog_topic.get_topic_name())

    def local_url(self) -> str:
        return str(self.p.app.conf.canonical_url).rstrip("/")

    def owner_url(self, tenant: str) -> str | None:
        """Base URL of the worker owning the tenant's partition (None: unknown yet)."""
        partition = partition_of(tenant, self.p.settings.partitions)
        changelog = self._changelog()
        for host, topics in self.p.app.assignor.table_metadata(changelog).items():
            if partition in topics.get(changelog, ()):
                return str(host).rstrip("/")
        return None

    def peers(self) -> list[str]:
        """Base URLs of every worker holding active partitions of the table (us included)."""
        changelog = self._changelog()
        hosts = {
            str(host).rstrip("/")
            for host, topics in self.p.app.assignor.table_metadata(changelog).items()
            if topics.get(changelog)
        }
        return sorted(hosts | {self.local_url()})

    def route(self, tenant: str, routed: bool) -> Route | str:
        """LOCAL, BUSY, or the owner's base URL. ``routed``: the request was forwarded to us."""
        if routed:
            return Route.LOCAL
        url = self.owner_url(tenant)
        if url is None or self.p.app.rebalancing:
            return Route.BUSY
        return Route.LOCAL if url == self.local_url() else url

    async def send(
        self,
        base_url: str,
        method: str,
        raw_path: str,
        headers: dict[str, str] | None = None,
        data: bytes | None = None,
    ) -> Answer:
        """One request to a peer; the path is sent raw (percent-encoding kept)."""
        all_headers = {ROUTED_HEADER: "1", **(headers or {})}
        async with asyncio.timeout(PEER_TIMEOUT_SECONDS):
            async with self.p.app.http_client.request(
                method, f"{base_url}{raw_path}", headers=all_headers, data=data
            ) as resp:
                return Answer(
                    resp.status,
                    await resp.read(),
                    resp.headers.get("Content-Type", "application/json").split(";")[0],
                )
