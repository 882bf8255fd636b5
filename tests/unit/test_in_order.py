"""The ledger's records, partition by partition in offset order (streaming/in_order.py)."""

from __future__ import annotations

from rating.streaming.in_order import Gap, InOrder


def test_records_in_order_from_the_start_are_admitted() -> None:
    order = InOrder()
    order.begin(5)
    order.start(0, 10)
    assert [order.admit(0, o) for o in (10, 11, 12)] == [None, None, None]


def test_a_record_after_missing_ones_is_a_gap_until_they_arrive() -> None:
    order = InOrder()
    order.begin(5)
    order.start(0, 10)
    assert order.admit(0, 10) is None
    assert order.admit(0, 13) == Gap(0, 11, 13)  # 11 and 12 never arrived
    assert order.admit(0, 14) == Gap(0, 11, 14)  # nor are later ones admitted meanwhile
    assert [order.admit(0, o) for o in (11, 12, 13, 14)] == [None] * 4  # read again


def test_a_record_at_the_committed_offset_starts_the_partition_and_nothing_before_it_counts() -> (
    None
):
    order = InOrder()
    order.begin(5)
    order.start(0, 10)
    assert order.admit(0, 12) == Gap(0, 10, 12)  # the first records of the generation lost


def test_records_read_again_below_the_next_one_are_redeliveries() -> None:
    order = InOrder()
    order.begin(5)
    order.start(0, 10)
    for offset in (10, 11, 12):
        assert order.admit(0, offset) is None
    assert order.admit(0, 11) is None  # the hole guard read it again: the ledger dedups it
    assert order.admit(0, 13) is None  # and the next one is still the next one
    assert order.admit(0, 15) == Gap(0, 14, 15)


def test_partitions_are_independent_and_an_unknown_start_is_set_by_the_first_record() -> None:
    order = InOrder()
    order.begin(5)
    order.start(0, 10)
    assert not order.knows(1)
    assert order.admit(1, 40) is None
    assert order.admit(1, 42) == Gap(1, 41, 42)
    assert order.admit(0, 10) is None


def test_a_new_generation_starts_every_partition_afresh() -> None:
    order = InOrder()
    order.begin(5)
    order.start(0, 10)
    assert order.admit(0, 10) is None
    order.begin(5)  # the same generation: kept
    assert order.admit(0, 12) == Gap(0, 11, 12)
    order.begin(6)  # a rebalance: read from the committed offset again
    assert not order.knows(0)
    order.start(0, 11)
    order.start(0, 99)  # the first start of a generation counts
    assert order.admit(0, 11) is None


def test_records_deleted_before_they_were_read_are_skipped_once_resumed_past() -> None:
    order = InOrder()
    order.begin(5)
    order.start(0, 10)
    assert order.admit(0, 30) == Gap(0, 10, 30)
    order.resume_at(0, 30)  # retention deleted 10..29
    assert order.admit(0, 30) is None
