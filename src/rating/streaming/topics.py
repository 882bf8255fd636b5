"""Declaring the topics, so a worker starts against an empty cluster.

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


DAY_MS = 24 * 3600 * 1000
# The same figures as deploy/kafka/create-topics.sh (tests/unit/test_deploy.py keeps them equal).
# CDRs and funds: as long as the workers remember cdr_ids (the default dedup horizon, 35 days).
INPUT_RETENTION_MS = 35 * DAY_MS
# Outputs others consume: room for a consumer that was down over a long weekend.
OUTPUT_RETENTION_MS = 7 * DAY_MS
# Charges and rejections are what operators replay or reconcile from: at least the horizon.
AUDIT_RETENTION_MS = 35 * DAY_MS


def ledger_topic(settings: Settings) -> str:
    return f"{settings.app_id}-ledger"


def changelog_topic(settings: Settings) -> str:
    """The accounts table's changelog, named as Faust names it."""
    return f"{settings.app_id}-accounts-changelog"


def contract_topics(settings: Settings) -> dict[str, dict[str, str]]:
    """Topic name -> config for every topic in CONTRACTS.md and the two internal ones.

    Identical to what deploy/kafka/create-topics.sh creates for compose and Kubernetes, so a
    worker that creates a missing topic creates it as the deployment would.
    """
    t = settings.topics
    min_isr = {"min.insync.replicas": "2" if settings.replication > 1 else "1"}

    def delete(retention_ms: int) -> dict[str, str]:
        return {**min_isr, "cleanup.policy": "delete", "retention.ms": str(retention_ms)}

    # Latest settings per tenant and the accounts' state forever: compacted, never by age.
    compacted = {**min_isr, "cleanup.policy": "compact"}
    return {
        t.cdr_audio: delete(INPUT_RETENTION_MS),
        t.cdr_tollfree: delete(INPUT_RETENTION_MS),
        t.funds: delete(INPUT_RETENTION_MS),
        t.tenant_settings: compacted,
        t.charges: delete(AUDIT_RETENTION_MS),
        t.rejected: delete(AUDIT_RETENTION_MS),
        t.recharge_commands: delete(OUTPUT_RETENTION_MS),
        t.balance_events: delete(OUTPUT_RETENTION_MS),
        # Created here rather than by Faust, which would leave retention and min ISR to the
        # broker's defaults: the ledger is a repartition topic, the changelog is the state.
        ledger_topic(settings): delete(INPUT_RETENTION_MS),
        changelog_topic(settings): compacted,
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
