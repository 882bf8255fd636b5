"""One batch's state writes, coalesced for the changelog: each key once, in a safe order.

The ledger writes an account, its usage rows and its recent-activity row once per record;
a batch of 500 CDRs over 50 tenants rewrites each ~10 times. Only the last value of a key
matters to recovery, so :class:`CoalescingLog` sends each key once per batch, at the place
of its LAST write. Why every crash prefix of that order is still safe (ledger.py's
argument, rule 1: markers and outbox before the account, deletions after it):

- Moving a write later never puts anything before what it depends on: whatever preceded
  the dropped write also precedes the kept one. The account's last write follows every
  marker and usage row of the batch's records of that tenant.
- A prefix that stops short of a key's kept write holds the key's value from before the
  batch, never an intermediate one: an account from before the batch (its ``lo`` older
  than every record of the batch, so the batch's markers are ahead of it and ignored, and
  its records are charged afresh on redelivery) or a usage row whose ``lo`` says which
  records it counts.
- A deletion may only follow what it follows in the ledger's order (a settings record
  deletes the held messages it applied after writing their markers and the account that
  includes them). A write that moved past a deletion could leave the deletion in a prefix
  without that write: money lost. So a deletion is a barrier: every write before it is
  sent before it, in order, and no later write of the same key moves in front of it.

``tests/unit/test_ledger.py`` and ``test_ledger_hold.py`` replay every prefix of coalesced
batches (and fail if a deletion is not a barrier).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Generic, TypeVar

V = TypeVar("V")


class CoalescingLog(Generic[V]):
    """Writes and deletions of keys (each with the caller's value: what to send for it),
    drained in changelog order."""

    def __init__(self) -> None:
        self._sealed: list[tuple[str, V]] = []  # up to the last deletion: sent in this order
        self._open: dict[str, V] = {}  # since then: one per key, in order of last write

    def put(self, key: str, value: V) -> None:
        self._open.pop(key, None)  # re-inserted: a dict keeps insertion order
        self._open[key] = value

    def delete(self, key: str, value: V) -> None:
        """A deletion (``value``: its tombstone): a barrier, see the module docstring."""
        self._seal()
        self._sealed.append((key, value))

    def _seal(self) -> None:
        if self._open:
            self._sealed.extend(self._open.items())
            self._open = {}

    def drain(self) -> Iterator[tuple[str, V]]:
        """Everything written so far, in changelog order; the log is empty afterwards."""
        self._seal()
        ops, self._sealed = self._sealed, []
        return iter(ops)
