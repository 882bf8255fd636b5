"""Declaring the contract topics, so a worker starts against an empty cluster.

On a production cluster the topics are created up front (deploy/k8s/topics job) and this
only confirms they exist; it never changes an existing topic.
"""

from __future__ import annotations

import asyncio
import logging

from aiokafka.admin import AIOKafkaAdminClient, NewTopic  # type: ignore[import-untyped]
from aiokafka.errors import (  # type: ignore[import-untyped]
    KafkaError,
    TopicAlreadyExistsError,
)

from rating.settings import Settings

log = logging.getLogger(__name__)


def contract_topics(settings: Settings) -> dict[str, dict[str, str]]:
    """Topic name -> config for every topic in CONTRACTS.md."""
    t = settings.topics
    compacted = {"cleanup.policy": "compact"}
    return {
        t.cdr_audio: {},
        t.cdr_tollfree: {},
        t.tenant_settings: compacted,
        t.funds: {},
        t.charges: {},
        t.recharge_commands: {},
        t.balance_events: {},
        t.rejected: {},
    }


async def ensure_topics(settings: Settings, wait_seconds: float = 30.0) -> list[str]:
    """Create missing contract topics; return the names created."""
    admin = AIOKafkaAdminClient(
        bootstrap_servers=settings.kafka_bootstrap, request_timeout_ms=int(wait_seconds * 1000)
    )
    await asyncio.wait_for(admin.start(), wait_seconds)
    try:
        existing = set(await admin.list_topics())
        wanted = contract_topics(settings)
        missing = [
            NewTopic(name, settings.partitions, settings.replication, topic_configs=cfg)
            for name, cfg in wanted.items()
            if name not in existing
        ]
        created = []
        for topic in missing:  # one by one: a race with another worker is not an error
            try:
                await admin.create_topics([topic])
                created.append(topic.name)
            except TopicAlreadyExistsError:
                pass
            except KafkaError as exc:
                log.warning("could not create topic %s: %s", topic.name, exc)
        return created
    finally:
        await admin.close()
