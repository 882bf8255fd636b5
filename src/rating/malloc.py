"""glibc malloc tuning for the worker process (``rating worker`` calls it at start).

glibc serves a large block (128 KiB and up) with its own mmap, returned to the system when
freed, but each time it frees such a block it raises that threshold to the block's size (up
to 32 MiB). From then on, blocks of that size come from the heap, where a freed one stays in
the process's RSS whenever anything allocated after it is still alive. The worker allocates
such blocks all the time (fetched record batches, RocksDB memtable arena blocks and write
batches), so its RSS grew with the history it had processed and recovered, not with what it
holds (``bench/bench_state.py``: 468 B per remembered CDR; 147 B with the threshold pinned).
Pinning the threshold (``mallopt(M_MMAP_THRESHOLD)``, which also turns the adjustment off)
gives such blocks back when they are freed.
"""

from __future__ import annotations

import ctypes
import os

#: mallopt's parameter number for the mmap threshold (glibc's malloc.h).
M_MMAP_THRESHOLD = -3
#: glibc's own starting value; pinned, it stays there.
MMAP_THRESHOLD = 128 * 1024


def pin_mmap_threshold(threshold: int = MMAP_THRESHOLD) -> bool:
    """Pin glibc's mmap threshold. False, changing nothing, where there is no glibc mallopt
    (musl, macOS) or an operator chose a threshold with ``MALLOC_MMAP_THRESHOLD_``."""
    if "MALLOC_MMAP_THRESHOLD_" in os.environ:
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, threshold) == 1)
