"""One base for the project's own exceptions; each keeps the base its callers catch."""

from __future__ import annotations

import pytest

from rating.broker import BrokerError
from rating.demo import DemoError
from rating.domain.ratecard import RateCardError
from rating.errors import RatingBaseError
from rating.kafka_local import LocalKafkaError
from rating.reconcile_cli import ReconcileError
from rating.settings import SettingsError
from rating.usage import RangeError
from rating.web.page import UnavailableError


@pytest.mark.parametrize(
    ("error", "historical"),
    [
        (RateCardError, ValueError),
        (SettingsError, ValueError),
        (BrokerError, RuntimeError),
        (LocalKafkaError, BrokerError),
        (DemoError, RuntimeError),
        (ReconcileError, Exception),
        (UnavailableError, Exception),
        (RangeError, ValueError),
    ],
)
def test_every_project_error_has_the_one_base(error: type, historical: type) -> None:
    assert issubclass(error, RatingBaseError)
    assert issubclass(error, historical)
