"""One classifier of bad input: the streaming path and `rating rate` give the same reason."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from rating.contracts import OfflineRejection, Rejection, RejectReason
from rating.domain.ratecard import RateBook
from rating.ingest import Source, validate
from rating.offline import OfflineRater

T0 = datetime(2026, 11, 22, 10, 0, tzinfo=UTC)
GOOD = {
    "cdr_id": "c1",
    "tenant_id": "t1",
    "product": "conferencing_dialout",
    "call_start": "2026-11-22T09:00:00Z",
    "duration_seconds": 60,
    "origin": "+15550100",
    "destination": "+15550199",
}


def doc(**changes: object) -> bytes:
    return json.dumps({**GOOD, **changes}).encode()


CORPUS: list[tuple[str, bytes, RejectReason]] = [
    ("truncated", doc()[:-7], RejectReason.MALFORMED),
    ("not-utf8", b'{"cdr_id": "\xff\xfe"}', RejectReason.MALFORMED),
    ("latin1-body", doc(cdr_id="cafe").replace(b"cafe", b"caf\xe9"), RejectReason.MALFORMED),
    ("deep-nesting", b"[" * 50_000 + b"]" * 50_000, RejectReason.MALFORMED),
    ("deep-object", b'{"a":' * 5_000 + b"1" + b"}" * 5_000, RejectReason.MALFORMED),
    ("garbage", b"\x00\x01\x02", RejectReason.MALFORMED),
    ("array", b"[]", RejectReason.SCHEMA),
    ("null", b"null", RejectReason.SCHEMA),
    ("number", b"42", RejectReason.SCHEMA),
    ("string", b'"x"', RejectReason.SCHEMA),
    ("wrong-type", doc(duration_seconds="sixty"), RejectReason.SCHEMA),
    ("negative", doc(duration_seconds=-1), RejectReason.SCHEMA),
    ("missing", json.dumps({"cdr_id": "c1"}).encode(), RejectReason.SCHEMA),
    ("bad-product", doc(product="fax"), RejectReason.SCHEMA),
    ("bad-number", doc(destination="555"), RejectReason.SCHEMA),
    ("long-id", doc(cdr_id="x" * 100_000), RejectReason.SCHEMA),
    ("space-in-id", doc(tenant_id="t 1"), RejectReason.SCHEMA),
    ("money-number", doc(duration_seconds=1.5), RejectReason.SCHEMA),
]


def streaming_reason(raw: bytes | None) -> RejectReason:
    out = validate("cdr", Source("cdr.audio-conferencing", 0, 1, None), raw, T0)
    assert isinstance(out, Rejection), out
    return out.reason


def offline_reason(raw: bytes) -> RejectReason:
    rater = OfflineRater(book=RateBook.from_cards([]), rated_at=T0, currency="USD")
    line = rater.rate_line(raw, lineno=1)
    assert line is not None
    return OfflineRejection.model_validate_json(line).reason


@pytest.mark.parametrize(
    ("raw", "reason"), [(r, why) for _, r, why in CORPUS], ids=[n for n, _, _ in CORPUS]
)
def test_both_paths_classify_bad_input_alike(raw: bytes, reason: RejectReason) -> None:
    assert streaming_reason(raw) is reason
    assert offline_reason(raw) is reason


def test_a_tombstone_is_malformed_on_the_streaming_path() -> None:
    # `rating rate` reads lines, so it has no tombstone; an empty line is skipped there.
    assert streaming_reason(None) is RejectReason.MALFORMED
