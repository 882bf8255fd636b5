"""CPython's cyclic garbage collector tuned for the worker (``rating worker`` calls it once
the app is built).

With Python's thresholds (700, 10, 10) a worker collected ~2,600 times while charging 60,000
CDRs: 2.4 s of its 21.9 s of CPU, the full (generation 2) collections alone 1.6 s, because
each of those walks every object the worker holds, and a memory-store worker holds its
state as Python objects (``bench_pipeline``, measured with ``gc.callbacks``). With
(50,000, 20, 100) the same run collected 6 times, 0.15 s of 18.6 s. Young garbage cycles
are still collected, every 50,000 net allocations; ``gc.freeze()`` first moves what start-up
built (modules, Faust's services, the rate book) out of every later collection.
``RATING_GC_TUNING=false`` keeps Python's defaults.
"""

from __future__ import annotations

import gc
from typing import Final

THRESHOLDS: Final = (50_000, 20, 100)


def tune_gc(thresholds: tuple[int, int, int] = THRESHOLDS) -> None:
    gc.freeze()
    gc.set_threshold(*thresholds)
