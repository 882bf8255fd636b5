"""ingest.validate: every input record becomes an Envelope or a Rejection carrying its bytes."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime
from typing import Any

import pytest

from rating.contracts import Rejection, RejectReason
from rating.ingest import Envelope, Kind, Source, make_rejection, validate

NOW = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)
TOPICS: dict[Kind, str] = {
    "cdr": "cdr.audio-conferencing",
    "settings": "rating.tenant-settings",
    "funds": "billing.funds",
}

CDR: dict[str, Any] = {
    "cdr_id": "c-1",
    "tenant_id": "t1",
    "product": "conferencing_dialout",
    "call_start": "2026-11-20T10:00:00Z",
    "duration_seconds": 60,
    "origin": "+14155550100",
    "destination": "+14155550199",
}
SETTINGS: dict[str, Any] = {
    "tenant_id": "t1",
    "currency": "USD",
    "auto_recharge": {"enabled": True, "recharge_amount": "25", "trigger_balance": "10"},
}
FUNDS: dict[str, Any] = {
    "event_id": "e-1",
    "tenant_id": "t1",
    "kind": "manual_add",
    "amount": "50.00",
    "currency": "USD",
}
VALID: dict[Kind, dict[str, Any]] = {"cdr": CDR, "settings": SETTINGS, "funds": FUNDS}


def src(kind: Kind = "cdr", key: bytes | None = b"t1", offset: int = 42) -> Source:
    return Source(TOPICS[kind], 3, offset, key)


def raw(doc: Any) -> bytes:
    return json.dumps(doc).encode()


def with_(doc: dict[str, Any], **changes: Any) -> dict[str, Any]:
    """A copy of ``doc`` with fields replaced; a value of ``...`` removes the field."""
    out = {**doc, **changes}
    return {k: v for k, v in out.items() if v is not ...}


def rejected(kind: Kind, data: bytes | None, key: bytes | None = b"t1") -> Rejection:
    result = validate(kind, src(kind, key), data, NOW)
    assert isinstance(result, Rejection), result
    return result


# --- accepted -------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["cdr", "settings", "funds"])
def test_valid_message_becomes_envelope_with_original_text(kind: Kind) -> None:
    data = raw(VALID[kind])
    env = validate(kind, src(kind), data, NOW)
    assert env == Envelope(kind=kind, tenant_id="t1", source=src(kind), payload=data.decode())


@pytest.mark.parametrize("kind", ["cdr", "settings", "funds"])
def test_missing_key_is_accepted(kind: Kind) -> None:
    # The contract only rejects a key that is present and differs.
    env = validate(kind, src(kind, key=None), raw(VALID[kind]), NOW)
    assert isinstance(env, Envelope)
    assert env.source.key is None
    assert env.tenant_id == "t1"


def test_unknown_extra_fields_are_ignored() -> None:
    # Producers may add optional fields without breaking us.
    env = validate("cdr", src(), raw(with_(CDR, new_field={"x": 1})), NOW)
    assert isinstance(env, Envelope)


def test_optional_cdr_fields_are_accepted() -> None:
    doc = with_(CDR, user_id="u1", conference_id="conf-9", toll_free_number="+18005550100")
    assert isinstance(validate("cdr", src(), raw(doc), NOW), Envelope)


# --- malformed ------------------------------------------------------------------------------


def test_non_utf8_value_is_malformed_and_payload_is_base64() -> None:
    data = b'{"cdr_id": "\xff\xfe"}'
    rej = rejected("cdr", data)
    assert rej.reason is RejectReason.MALFORMED
    assert rej.payload_encoding == "base64"
    assert base64.b64decode(rej.payload) == data  # nothing is lost
    assert "UTF-8" in rej.detail


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"{not json", id="broken-object"),
        pytest.param(b"", id="empty"),
        pytest.param(b'{"cdr_id": "c-1",}', id="trailing-comma"),
        pytest.param(b"hello", id="bare-word"),
    ],
)
def test_not_json_is_malformed_with_payload_as_text(data: bytes) -> None:
    rej = rejected("cdr", data)
    assert rej.reason is RejectReason.MALFORMED
    assert rej.payload == data.decode()
    assert rej.payload_encoding is None
    assert "not JSON" in rej.detail


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(raw([CDR]), id="array"),
        pytest.param(b"null", id="null"),
        pytest.param(b'"a string"', id="string"),
        pytest.param(b"42", id="number"),
    ],
)
def test_json_that_is_not_an_object_is_schema(data: bytes) -> None:
    # CONTRACTS.md: malformed = not UTF-8 JSON; schema = valid JSON that fails validation.
    rej = rejected("cdr", data)
    assert rej.reason is RejectReason.SCHEMA
    assert rej.payload == data.decode()
    assert "not an object" in rej.detail


def test_tombstone_is_malformed() -> None:
    rej = rejected("settings", None)
    assert rej.reason is RejectReason.MALFORMED
    assert rej.payload == ""
    assert "tombstone" in rej.detail


# --- schema ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "doc", "field"),
    [
        pytest.param("cdr", with_(CDR, cdr_id=...), "cdr_id", id="cdr-missing-cdr_id"),
        pytest.param("cdr", with_(CDR, tenant_id=...), "tenant_id", id="cdr-missing-tenant"),
        pytest.param("cdr", with_(CDR, duration_seconds="60"), "duration_seconds", id="str-int"),
        pytest.param("cdr", with_(CDR, duration_seconds=60.0), "duration_seconds", id="float-int"),
        pytest.param("cdr", with_(CDR, duration_seconds=-1), "duration_seconds", id="negative"),
        pytest.param("cdr", with_(CDR, destination="14155550199"), "destination", id="no-plus"),
        pytest.param("cdr", with_(CDR, origin="+0123"), "origin", id="e164-leading-zero"),
        pytest.param("cdr", with_(CDR, origin="+1-415-555"), "origin", id="e164-dashes"),
        pytest.param(
            "cdr", with_(CDR, call_start="2026-11-20T10:00:00"), "call_start", id="naive-time"
        ),
        pytest.param(
            "cdr", with_(CDR, call_start="2026-11-20T10:00:00+01:00"), "call_start", id="not-utc"
        ),
        pytest.param("cdr", with_(CDR, product="sms"), "product", id="unknown-product"),
        pytest.param("funds", with_(FUNDS, amount=1.5), "amount", id="float-money"),
        pytest.param("funds", with_(FUNDS, amount=50), "amount", id="int-money"),
        pytest.param("funds", with_(FUNDS, amount="1e3"), "amount", id="exponent-money"),
        pytest.param("funds", with_(FUNDS, kind="refund"), "kind", id="unknown-funds-kind"),
        pytest.param("funds", with_(FUNDS, currency="usd"), "currency", id="lowercase-currency"),
        pytest.param("settings", with_(SETTINGS, currency=...), "currency", id="no-currency"),
        pytest.param(
            "settings",
            with_(SETTINGS, auto_recharge={**SETTINGS["auto_recharge"], "enabled": "yes"}),
            "auto_recharge.enabled",
            id="str-bool",
        ),
    ],
)
def test_schema_violation_names_the_field(kind: Kind, doc: dict[str, Any], field: str) -> None:
    data = raw(doc)
    rej = rejected(kind, data)
    assert rej.reason is RejectReason.SCHEMA
    assert field in rej.detail
    assert rej.payload == data.decode()
    assert rej.payload_encoding is None


def test_schema_detail_names_every_offending_field() -> None:
    rej = rejected("cdr", raw(with_(CDR, duration_seconds="60", destination="nope")))
    assert "duration_seconds" in rej.detail
    assert "destination" in rej.detail


@pytest.mark.parametrize("bad", [[], "yes", None, 5])
def test_nested_non_object_is_schema_not_malformed(bad: Any) -> None:
    rej = rejected("settings", raw(with_(SETTINGS, auto_recharge=bad)))
    assert rej.reason is RejectReason.SCHEMA
    assert "auto_recharge" in rej.detail


# --- key ------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["cdr", "settings", "funds"])
@pytest.mark.parametrize("key", [b"t2", b"T1", b"t1 ", b"", b"\xff"])
def test_present_key_that_differs_from_tenant_is_key_mismatch(kind: Kind, key: bytes) -> None:
    data = raw(VALID[kind])
    rej = rejected(kind, data, key=key)
    assert rej.reason is RejectReason.KEY_MISMATCH
    assert "t1" in rej.detail
    assert rej.payload == data.decode()
    # The key is shown as text even when it is not UTF-8.
    assert rej.key == key.decode("utf-8", "backslashreplace")


def test_schema_error_wins_over_key_mismatch() -> None:
    # Without a valid tenant_id there is nothing to compare the key with.
    rej = rejected("cdr", raw(with_(CDR, tenant_id=...)), key=b"t2")
    assert rej.reason is RejectReason.SCHEMA


# --- rejection coordinates ------------------------------------------------------------------


def test_rejection_carries_source_coordinates_and_time() -> None:
    rej = rejected("funds", b"{", key=b"t9")
    assert rej.source_topic == "billing.funds"
    assert rej.partition == 3
    assert rej.offset == 42
    assert rej.key == "t9"
    assert rej.rejected_at == NOW
    # And it serialises to the contract shape.
    wire = json.loads(rej.model_dump_json())
    assert wire["rejected_at"] == "2026-11-20T12:00:00Z"
    assert set(wire) >= {
        "reason",
        "detail",
        "source_topic",
        "partition",
        "offset",
        "key",
        "payload",
        "rejected_at",
    }


def test_rejection_of_keyless_record_has_null_key() -> None:
    rej = rejected("cdr", b"{", key=None)
    assert rej.key is None


def test_make_rejection_accepts_text_and_bytes() -> None:
    s = src()
    as_text = make_rejection(s, "{}", RejectReason.SCHEMA, "d", NOW)
    as_bytes = make_rejection(s, b"{}", RejectReason.SCHEMA, "d", NOW)
    assert as_text == as_bytes
    assert as_text.payload_encoding is None


# --- Envelope wire format -------------------------------------------------------------------


@pytest.mark.parametrize("key", [b"t1", None])
@pytest.mark.parametrize("kind", ["cdr", "settings", "funds"])
def test_envelope_round_trips(kind: Kind, key: bytes | None) -> None:
    # Non-ASCII payload text must survive the ledger topic unchanged.
    doc = with_(VALID[kind], tenant_id="t1")
    if kind == "cdr":
        doc["user_id"] = "Zoë ☎"
    env = validate(kind, src(kind, key), json.dumps(doc, ensure_ascii=False).encode(), NOW)
    assert isinstance(env, Envelope)
    assert Envelope.from_dict(env.to_dict()) == env
    assert Envelope.decode(env.encode()) == env
    assert Envelope.decode(env.encode()).source.ref == env.source.ref


def test_envelope_to_dict_is_compact_json() -> None:
    env = validate("cdr", src(), raw(CDR), NOW)
    assert isinstance(env, Envelope)
    assert env.to_dict() == {
        "k": "cdr",
        "t": "t1",
        "st": "cdr.audio-conferencing",
        "sp": 3,
        "so": 42,
        "sk": "t1",
        "p": raw(CDR).decode(),
    }
    assert env.encode() == json.dumps(env.to_dict(), separators=(",", ":")).encode()


def test_source_ref_names_topic_partition_offset() -> None:
    assert Source("cdr.toll-free", 2, 7, b"k").ref == "cdr.toll-free:2:7"
    # The key is not part of the identity of a record.
    assert Source("cdr.toll-free", 2, 7, None).ref == "cdr.toll-free:2:7"


# --- one validation per message: the ledger may reuse ingest's model ----------------------


def test_parse_validated_reuses_the_model_ingest_validated() -> None:
    from rating.contracts import CDR
    from rating.ingest import VALIDATED, parse_validated

    key, raw = (
        b"acme",
        (
            b'{"cdr_id":"pv-1","tenant_id":"acme","product":"tollfree_inbound",'
            b'"call_start":"2026-11-22T10:00:00Z","duration_seconds":5,'
            b'"origin":"+4520123456","destination":"+18005550100"}'
        ),
    )
    env = validate("cdr", Source("cdr.toll-free", 0, 1, key), raw, NOW)
    assert isinstance(env, Envelope)
    # The ledger decodes its own copy of the record: an equal text, another object.
    again = Envelope.decode(env.encode())
    first = parse_validated(again)
    assert first == CDR.model_validate_json(raw)
    second = parse_validated(again)  # taken once; then validated again, to an equal model
    assert second == first
    assert second is not first
    assert ("cdr", again.payload) not in VALIDATED._models


def test_the_validated_cache_is_bounded() -> None:
    from rating.contracts import TenantSettings
    from rating.ingest import Validated

    cache = Validated(size=2)
    model = TenantSettings(tenant_id="t", currency="USD")
    for text in ("a", "b", "c"):
        cache.put("settings", text, model)
    assert len(cache) == 2
    assert cache.take("settings", "a") is None  # the oldest went first
    assert cache.take("settings", "c") is model
