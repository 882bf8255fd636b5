"""The worker's garbage-collector settings: fewer collections, start-up frozen out of them."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from rating.gc_tuning import THRESHOLDS, tune_gc
from rating.settings import load_settings


@pytest.fixture
def restored_gc() -> Iterator[None]:
    before = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*before)


@pytest.mark.usefixtures("restored_gc")
def test_tune_gc_raises_the_thresholds_and_freezes_what_exists() -> None:
    gc.unfreeze()
    assert gc.get_freeze_count() == 0
    tune_gc()
    assert gc.get_threshold() == THRESHOLDS
    assert gc.get_freeze_count() > 0  # this process's objects so far: out of collections


def test_tuning_is_on_by_default_and_can_be_turned_off(monkeypatch: pytest.MonkeyPatch) -> None:
    assert load_settings().gc_tuning is True
    monkeypatch.setenv("RATING_GC_TUNING", "false")
    assert load_settings().gc_tuning is False
