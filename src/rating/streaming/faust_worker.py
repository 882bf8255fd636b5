"""The Faust worker `rating worker` runs: Faust's, without the terminal spinner's logging.

At a log level of WARNING or above, Faust's worker installs a progress spinner on the root
logger for start-up, and for that sets the root logger to DEBUG (the spinner advances once
per log call; its handler stays after start-up). Every ``logger.debug`` in Faust, mode and
aiokafka then builds a LogRecord: one per record sent (``Topic.publish_message`` logs each
send), measured at ~6% of the worker's CPU under load. The spinner is for interactive
terminals; a worker under a supervisor wants its root logger at the level it was given.
"""

from __future__ import annotations

import logging

from faust.worker import Worker


class QuietWorker(Worker):
    """Faust's Worker; the root logger keeps the configured level (no spinner handler)."""

    def on_setup_root_logger(self, logger: logging.Logger, level: int) -> None:
        self.spinner = None
        super().on_setup_root_logger(logger, level)
