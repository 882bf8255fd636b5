"""The fast CDR decoder (msgspec, ``ingest._fast_cdr``) against the pydantic model it stands in
for: whatever it accepts, :class:`CDR` accepts with the same values, so the verdicts, values
and rejection reasons of :func:`ingest.parse_cdr` are pydantic's. And it does accept the
common CDR (else it would be a slow no-op)."""

from __future__ import annotations

import json
from datetime import UTC
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from rating.contracts import CDR, CDRFields, Product
from rating.ingest import Invalid, _CDRShape, _fast_cdr, parse_cdr, parse_value

VALID: dict[str, Any] = {
    "cdr_id": "cdr-000000001",
    "tenant_id": "tenant-0001",
    "product": "conferencing_dialout",
    "call_start": "2026-11-01T10:00:00Z",
    "duration_seconds": 61,
    "origin": "+18005550100",
    "destination": "+4420794000",
    "user_id": "user-1",
    "conference_id": "conf-2",
}

# Characters where the two regex engines and Python's str methods could disagree: Unicode
# and ASCII whitespace, separators Python calls space (\x1c-\x1f) but Unicode does not,
# non-ASCII digits, NUL, lone surrogates, astral characters.
TRICKY = (
    " \t\n\r\x0b\x0c\x1c\x1d\x1e\x1f\x85\xa0\u1680\u2000\u2028\u2029\u202f\u3000"
    "\u200b\ufeff\x00\ud800\udc00\U0001f600\u0663\xb2+-Zz:.T"
)
tricky_text = st.text(alphabet=st.sampled_from(TRICKY + "az09AZ_"), max_size=20)
any_text = st.text(alphabet=st.characters(codec=None), max_size=300)
numbers = st.from_regex("\\A\\+?[0-9\u0660-\u0669]{0,17}\n?\\Z") | tricky_text
times = (
    st.from_regex(
        r"\A[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt ][0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,10})?"
        r"([Zz]|[+-][0-9]{2}:[0-9]{2})?\n?\Z"
    )
    | st.sampled_from(
        [
            "2026-02-30T00:00:00Z",
            "2026-11-01T23:59:60Z",
            "0000-01-01T00:00:00Z",
            "2026-11-01T24:00:00Z",
            "2026-11-01t10:00:00z",
            "2026-11-01T10:00:00.9999999Z",
            "2026-11-01T10:00:00-00:00",
            "2026-11-01T10:00:00+01:00",
            "2026-11-01",
        ]
    )
    | tricky_text
)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | any_text,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner),
    max_leaves=5,
)
durations = (
    st.integers(min_value=-2, max_value=3)
    | st.integers(min_value=604_798, max_value=604_802)
    | st.integers()
    | st.sampled_from([60.0, 1e2, True, False, "60", -0.0])
)
FIELD_VALUES: dict[str, st.SearchStrategy[Any]] = {
    "cdr_id": any_text | tricky_text | st.text(min_size=255, max_size=258),
    "tenant_id": tricky_text | any_text | st.text(min_size=127, max_size=130),
    "product": st.sampled_from([*(p.value for p in Product), "TOLLFREE_INBOUND", ""]),
    "call_start": times,
    "duration_seconds": durations,
    "origin": numbers,
    "destination": numbers,
    "user_id": st.none() | any_text | st.just(""),
    "conference_id": st.none() | any_text | st.just(""),
    "toll_free_number": st.none() | numbers,
}


@st.composite
def cdr_documents(draw: st.DrawFn) -> dict[str, Any]:
    """A valid CDR with some fields replaced by tricky values, dropped or added."""
    doc = dict(VALID)
    for name in draw(st.sets(st.sampled_from(sorted(FIELD_VALUES)), max_size=3)):
        choice = draw(st.integers(0, 9))
        if choice == 0:
            doc.pop(name, None)
        elif choice == 1:
            doc[name] = draw(json_values)
        else:
            doc[name] = draw(FIELD_VALUES[name])
    if draw(st.booleans()):
        doc[draw(st.text(max_size=8))] = draw(json_values)
    return doc


@st.composite
def raw_inputs(draw: st.DrawFn) -> bytes | str:
    doc = draw(cdr_documents())
    text = json.dumps(doc, ensure_ascii=draw(st.booleans()))
    how = draw(st.integers(0, 7))
    if how == 1 and doc:  # a duplicate key: the last one wins in both, or both refuse
        name = draw(st.sampled_from(sorted(doc)))
        text = text[:-1] + f", {json.dumps(name)}: {json.dumps(draw(json_values))}}}"
    elif how == 2:
        text = draw(st.sampled_from(["\ufeff", " ", "\n", "[", "x"])) + text
    elif how == 3:
        text += draw(st.sampled_from([" ", "\n", "}", ",", "x", "\x00"]))
    elif how == 4:
        cut = draw(st.integers(0, len(text)))
        text = text[:cut]
    if draw(st.booleans()):
        return text
    raw = text.encode("utf-8", "surrogatepass")
    if how == 5:
        at = draw(st.integers(0, len(raw)))
        raw = raw[:at] + draw(st.sampled_from([b"\xff", b"\xc3", b"\xed\xa0\x80"])) + raw[at:]
    return raw


def test_the_decoded_shapes_have_the_models_fields_in_order() -> None:
    # A field added to CDR must be added to both (or the fast path would drop it).
    names = list(CDR.model_fields)
    assert [f.name for f in msgspec.structs.fields(CDRFields)] == names
    assert [f.name for f in msgspec.structs.fields(_CDRShape)] == names


def reference(raw: bytes | str) -> CDRFields | Invalid:
    """What the pydantic model alone says."""
    parsed = parse_value(CDR, raw)
    return parsed if isinstance(parsed, Invalid) else CDRFields.of(parsed)


@settings(max_examples=3000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(raw_inputs())
@example(json.dumps({**VALID, "tenant_id": "t\x1c1"}))  # valid for pydantic: declined, not lost
@example(json.dumps({**VALID, "origin": "+4420794\n"}))  # Python's $ takes a final newline
@example(json.dumps({**VALID, "tenant_id": "t1\n"}))
@example(json.dumps({**VALID, "call_start": "2026-11-01 10:00:00Z"}))  # fromisoformat takes it
@example(json.dumps({**VALID, "call_start": "2026-11-01T10:00:00.9999999Z"}))  # truncated
@example(json.dumps({**VALID, "duration_seconds": 60.0}))
@example("\ufeff" + json.dumps(VALID))
@example(json.dumps(VALID)[:-1] + ', "tenant_id": "t2"}')
def test_fast_path_accepts_only_what_the_model_accepts_with_the_same_values(
    raw: bytes | str,
) -> None:
    fast = _fast_cdr(raw)
    expected = reference(raw)
    if fast is not None:
        assert not isinstance(expected, Invalid), (raw, expected)
        assert fast == expected
        assert fast.call_start.tzinfo is UTC
        assert type(fast.product) is Product
    assert parse_cdr(raw) == expected


@settings(max_examples=300, deadline=None)
@given(
    tenant=st.from_regex(r"\A[!-~]{1,128}\Z"),
    number=st.from_regex(r"\A\+[1-9][0-9]{1,14}\Z"),
    duration=st.integers(0, 7 * 24 * 3600),
    fraction=st.sampled_from(["", ".5", ".123456", ".123456789"]),
    product=st.sampled_from(list(Product)),
)
def test_the_common_cdr_takes_the_fast_path(
    tenant: str, number: str, duration: int, fraction: str, product: Product
) -> None:
    doc = {
        **VALID,
        "tenant_id": tenant,
        "product": product.value,
        "origin": number,
        "destination": number,
        "duration_seconds": duration,
        "call_start": f"2026-11-01T10:00:00{fraction}Z",
        "toll_free_number": number,
    }
    raw = json.dumps(doc).encode()
    fast = _fast_cdr(raw)
    assert fast is not None
    assert fast == CDRFields.of(CDR.model_validate_json(raw))


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b'{"cdr_id": "x"', "malformed"),
        (b"\xff", "malformed"),
        (b"[]", "schema"),
        (json.dumps({**VALID, "duration_seconds": "60"}).encode(), "schema"),
    ],
)
def test_declined_input_gets_the_models_reason(raw: bytes, reason: str) -> None:
    assert _fast_cdr(raw) is None
    result = parse_cdr(raw)
    assert isinstance(result, Invalid)
    assert result.reason.value == reason
    assert result == reference(raw)


def test_deep_nesting_in_an_unknown_field_is_declined_not_raised() -> None:
    raw = json.dumps(VALID)[:-1] + ', "x": ' + "[" * 100_000 + "]" * 100_000 + "}"
    assert _fast_cdr(raw) is None
    assert parse_cdr(raw) == reference(raw)
