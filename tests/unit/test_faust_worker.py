"""The worker's root logger stays at the configured level (no spinner, no DEBUG records)."""

from __future__ import annotations

import logging

import faust
from faust.worker import Worker

from rating.streaming.faust_worker import QuietWorker


def root_after_setup(worker_class: type[Worker]) -> logging.Logger:
    app = faust.App("logging-test", autodiscover=False)
    worker = worker_class(app, loglevel="warning", quiet=True)
    logger = logging.Logger("root-under-test", level=logging.WARNING)
    logger.addHandler(logging.StreamHandler())
    worker.on_setup_root_logger(logger, logging.WARNING)
    return logger


def test_at_warning_the_root_logger_does_not_take_debug_records() -> None:
    logger = root_after_setup(QuietWorker)
    assert not logger.isEnabledFor(logging.DEBUG)
    assert len(logger.handlers) == 1


def test_faust_own_worker_still_lowers_the_root_logger_to_debug() -> None:
    # The reason for QuietWorker: if Faust stops doing this, QuietWorker can go.
    logger = root_after_setup(Worker)
    assert logger.isEnabledFor(logging.DEBUG)
