"""The garbage collector settled for a long-running server process (the CLI's run and
connector commands call it once they serve)."""

from __future__ import annotations

import gc
from typing import Final

#: Net new tracked objects between young-generation collections once the heap is settled
#: (CPython's default: 700). See :func:`settle_heap`.
GC_GEN0_THRESHOLD: Final = 5000


def settle_heap() -> int:
    """Take what start-up allocated out of the garbage collector's way; how many objects.

    A full (generation 2) collection walks every tracked object, and the start-up heap
    (modules, configuration, the trust engine, the dedupe window as loaded) never turns
    into garbage: walking it cost a turn 10-20 ms now and then at 1,000 msg/s
    (docs/benchmarks.md). Collected once and frozen after READY, the collector keeps only
    the objects made since. The CLIs (``run``, ``connector``) do this because they own
    the process; an application embedding ``run_gateway`` or the connector decides for its
    own. The price: a frozen object that later becomes part of cyclic garbage (say, the
    first connection's tasks after a reconnect) is never collected, a one-off bounded by
    the start-up heap.

    It also raises the young generation's threshold to :data:`GC_GEN0_THRESHOLD`. A
    message's objects die by reference count, so collections come from the slow net growth
    of what is kept (windows, records). At CPython's 700 the bench gateway ran 130-230
    young and 11-20 middle collections per 4,500-7,500 messages, 12-22 µs of CPU per
    message; at 5,000, 6-7 young ones per 7,500, ~2 µs per message, ~2.4 ms of CPU each
    (docs/benchmarks.md, "Gateway cost per message").
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_GEN0_THRESHOLD, *gc.get_threshold()[1:])
    return gc.get_freeze_count()
