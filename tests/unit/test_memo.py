"""RememberLast: the per-batch memo of the Charge encoder and the account's UTC day."""

from __future__ import annotations

from datetime import UTC, datetime

from rating.memo import RememberLast


def test_the_result_is_computed_once_per_argument_object() -> None:
    calls: list[datetime] = []

    def day(value: datetime) -> str:
        calls.append(value)
        return value.date().isoformat()

    remembered = RememberLast(day)
    first = datetime(2026, 12, 1, 23, 59, tzinfo=UTC)
    second = datetime(2026, 12, 2, 0, 0, tzinfo=UTC)
    equal_to_first = datetime(2026, 12, 1, 23, 59, tzinfo=UTC)
    assert [remembered(v) for v in (first, first, second, first, equal_to_first)] == [
        "2026-12-01",
        "2026-12-01",
        "2026-12-02",
        "2026-12-01",
        "2026-12-01",
    ]
    # Again only for a new object: an equal value in another object is computed afresh.
    assert calls == [first, second, first, equal_to_first]
