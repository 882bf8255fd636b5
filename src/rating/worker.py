"""`rating worker`: check the configuration, declare topics, run one Faust worker."""

from __future__ import annotations

import asyncio
import logging
import sys

from rating.gc_tuning import tune_gc
from rating.malloc import pin_mmap_threshold
from rating.settings import SettingsError, load_settings

log = logging.getLogger("rating.worker")


def _fail(message: str) -> int:
    print(f"rating worker: {message}", file=sys.stderr, flush=True)
    return 2


def run_worker() -> int:
    # Before anything large is allocated: RSS that follows what the worker holds (malloc.py).
    pin_mmap_threshold()
    try:
        settings = load_settings()
        settings.check_rate_cards_readable()
    except SettingsError as exc:
        return _fail(str(exc))

    from rating.domain.ratecard import RateCardError

    try:
        from rating.streaming.app import create_app

        pipeline = create_app(settings)
    except RateCardError as exc:
        return _fail(f"RATING_RATE_CARDS: {exc}")
    except SettingsError as exc:  # e.g. a Kafka codec library missing
        return _fail(str(exc))

    if settings.gc_tuning:
        tune_gc()  # after the app is built: what start-up made is frozen out of collections

    from aiokafka.errors import KafkaError  # type: ignore[import-untyped]

    from rating.streaming.topics import ensure_topics

    try:
        created = asyncio.run(ensure_topics(settings))
    except (KafkaError, OSError, TimeoutError) as exc:
        return _fail(
            f"cannot reach Kafka at RATING_KAFKA_BOOTSTRAP={settings.kafka_bootstrap}: {exc!r}"
        )
    if created:
        print(f"rating worker: created topics {', '.join(created)}", flush=True)

    from rating.streaming.faust_worker import QuietWorker

    print(
        f"rating worker: app {settings.app_id} on {settings.kafka_bootstrap}, "
        f"http://{settings.web_advertised_host}:{settings.web_port}/metrics",
        flush=True,
    )
    worker = QuietWorker(
        pipeline.app, loglevel=settings.log_level.lower(), quiet=True, override_logging=True
    )
    # Faust leaves the root logger where its own loglevel says; aiokafka is chatty at INFO.
    logging.getLogger("aiokafka").setLevel(
        max(logging.WARNING, logging.getLevelName(settings.log_level))
    )
    worker.execute_from_commandline()
    return 0  # pragma: no cover - execute_from_commandline exits the process
