"""schemas/ is generated from the wire models; these tests fail when the two drift apart."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest

from rating.contracts import SCHEMA_MODELS
from rating.schemas import SCHEMA_DIR, drift, render_all

EXAMPLES = {
    "cdr": {
        "cdr_id": "c1",
        "tenant_id": "acme",
        "product": "conferencing_dialout",
        "call_start": "2026-11-22T10:00:00Z",
        "duration_seconds": 61,
        "origin": "+4520123456",
        "destination": "+14155550100",
    },
    "tenant-settings": {
        "tenant_id": "acme",
        "currency": "USD",
        "plan": "standard",
        "auto_recharge": {"enabled": True, "recharge_amount": "50.00", "trigger_balance": "10.00"},
    },
    "funds-event": {
        "event_id": "e1",
        "tenant_id": "acme",
        "kind": "manual_add",
        "amount": "25.00",
        "currency": "USD",
    },
}


def test_checked_in_schemas_match_the_models() -> None:
    assert drift(SCHEMA_DIR) == [], "run `rating schemas --write` and commit schemas/"


def test_every_contract_message_has_a_schema_file() -> None:
    names = {p.name for p in SCHEMA_DIR.glob("*.schema.json")}
    assert names == {f"{stem}.schema.json" for stem in SCHEMA_MODELS}
    for required in (
        "cdr",
        "tenant-settings",
        "funds-event",
        "charge",
        "recharge-command",
        "balance-event",
        "rejection",
        "rate-card-file",
    ):
        assert f"{required}.schema.json" in names


@pytest.mark.parametrize("stem", sorted(render_all()))
def test_schemas_are_valid_draft_2020_12(stem: str) -> None:
    schema = json.loads((SCHEMA_DIR / stem).read_text())
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    jsonschema.Draft202012Validator.check_schema(schema)


@pytest.mark.parametrize("stem", sorted(EXAMPLES))
def test_schema_and_model_agree_on_examples(stem: str) -> None:
    schema = json.loads((SCHEMA_DIR / f"{stem}.schema.json").read_text())
    good = EXAMPLES[stem]
    jsonschema.validate(good, schema)
    SCHEMA_MODELS[stem].model_validate(good)
    # Money as a JSON number is refused by both: no float ever reaches the arithmetic.
    if "amount" in good:
        bad = {**good, "amount": 25.0}
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(bad, schema)


def test_drift_is_detected(tmp_path: Path) -> None:
    for name, text in render_all().items():
        (tmp_path / name).write_text(text)
    assert drift(tmp_path) == []
    (tmp_path / "cdr.schema.json").write_text("{}")
    assert drift(tmp_path) == ["cdr.schema.json"]
