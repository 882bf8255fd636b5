"""JSON Schemas (draft 2020-12) generated from the wire models in rating.contracts."""

from __future__ import annotations

import json
from pathlib import Path

from rating.contracts import SCHEMA_MODELS

DRAFT = "https://json-schema.org/draft/2020-12/schema"
SCHEMA_DIR = Path(__file__).resolve().parents[2] / "schemas"


def render_all() -> dict[str, str]:
    """File name -> JSON text for every contract message and file."""
    out = {}
    for stem, model in SCHEMA_MODELS.items():
        schema = {
            "$schema": DRAFT,
            "$id": f"urn:rating:schema:{stem}",
            **model.model_json_schema(mode="serialization" if stem in _OUTPUTS else "validation"),
        }
        out[f"{stem}.schema.json"] = json.dumps(schema, indent=2, sort_keys=True) + "\n"
    return out


# Messages we emit are described as we write them; the rest as we accept them.
_OUTPUTS = {
    "charge",
    "recharge-command",
    "balance-event",
    "rejection",
    "offline-rejection",
    "usage-report",
}


def write_all(directory: Path = SCHEMA_DIR) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in render_all().items():
        path = directory / name
        path.write_text(text, encoding="utf-8")
        written.append(path)
    return written


def drift(directory: Path = SCHEMA_DIR) -> list[str]:
    """Names of schema files that are missing or differ from the models."""
    return [
        name
        for name, text in render_all().items()
        if not (directory / name).is_file()
        or (directory / name).read_text(encoding="utf-8") != text
    ]
