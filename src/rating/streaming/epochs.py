"""Owner epochs on the accounts changelog: the late writes of a deposed owner never count.

A worker frozen past its session timeout (a GC pause, SIGSTOP, a stalled VM) loses its ledger
partitions to another worker. When it wakes it may still send the changelog records of the
batch it was in, before a failed heartbeat or commit tells it it was expelled: nothing on the
broker stops it (the changelog is written without transactions). Those records land after
the new owner's. Replayed by a later recovery (the partition's next owner, a restart without
the data dir, a standby) they put the deposed owner's stale account on top of the new
owner's: the new owner's markers then look ahead of that account and a re-sent CDR is charged
a second time (``tests/integration/test_zombie.py`` caught exactly that on Apache Kafka).

The fence has three parts.

1. Every changelog record carries its writer's epoch in a header (:data:`HEADER`): the
   consumer group generation in which the writer fetched the batch that wrote it (Faust's
   ``Message.generation_id``), never below the highest epoch the writer has read or written
   on that partition. A partition's next owner joined a later generation than the one its
   deposed owner is still in, so the next owner's epoch is higher.
2. Recovery reads a partition in offset order and drops every record whose epoch is below
   the highest already seen there (:class:`EpochFilter`): the deposed owner's writes that
   came after its successor's. Records without the header are epoch 0.
3. The writer knows where its own records landed (the broker acks their offsets), so a gap
   between them is someone else's records (``streaming/store.py`` reads them back). A record
   of a *higher* epoch there means this worker is the deposed one: it keeps nothing of that
   batch there (not in RocksDB, not in the memory store), publishes none of its outputs, and
   never commits that partition again in this generation (the partition is *fenced* until it
   is assigned again; its records are acked all the same, since Faust's revocation waits for
   that). Records of a *lower* epoch are a deposed owner's: log compaction keeps only the
   last record of a key, which may be such a record (and the filter drops it), so the live
   owner writes its own value of each of those keys again (a *repair*), after which the last
   record of every key is the live owner's. Keys recovery dropped are repaired the same way
   by whoever owns the partition next. Not covered: a deposed owner's records that land
   after the live owner's last write on a partition it then never writes again (nothing
   reveals them until the next recovery, which drops and repairs them) while compaction runs
   in between. Comparing the end offset at every clock tick would find them; with that done
   through Faust's consumer (``highwaters``) a recovery stalled on Apache Kafka in 1 of 8
   runs (not shown to be the cause), so it is left out.

Why a deposed owner's records that land *before* the new owner's first write may stay: it
built them against the state the new owner recovered (it could not write while frozen) and
from the same ledger records (``now`` is the record's timestamp), so they are what the new
owner writes for those records too, and a recovery that stops between the two is a prefix
of the kind ``ledger.py`` already handles (a marker ahead of its account counts for nothing).
"""

from __future__ import annotations

from collections.abc import Iterable

#: The changelog record header that holds the writer's epoch (ASCII decimal).
HEADER = "epoch"


def headers_of(epoch: int) -> list[tuple[str, bytes]]:
    """The headers of a changelog record written at ``epoch``."""
    return [(HEADER, str(epoch).encode())]


def epoch_of(headers: Iterable[tuple[str, bytes]] | None) -> int:
    """The epoch a changelog record was written at; 0 if it has none (or an unreadable one:
    a record this code did not write is never given precedence by its header)."""
    for name, value in headers or ():
        if name == HEADER:
            try:
                return int(value)
            except (TypeError, ValueError):
                return 0
    return 0


class EpochFilter:
    """Per partition, the highest epoch seen in offset order; admits a record unless its
    epoch is below it."""

    def __init__(self) -> None:
        self.highest: dict[int, int] = {}

    def admit(self, partition: int, epoch: int) -> bool:
        top = self.highest.get(partition, 0)
        if epoch < top:
            return False
        if epoch > top:
            self.highest[partition] = epoch
        return True

    def seen(self, partition: int, epoch: int) -> None:
        """Raise the partition's highest epoch (a write, or one restored from disk)."""
        if epoch > self.highest.get(partition, 0):
            self.highest[partition] = epoch

    def reset(self, partition: int) -> None:
        """Forget a partition (its changelog will be read again from the start)."""
        self.highest.pop(partition, None)
