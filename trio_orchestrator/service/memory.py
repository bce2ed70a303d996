"""Handing the memory of a burst of requests back to the operating system.

A burst of concurrent streams grows the C heap; when they end, CPython frees their objects,
but glibc's ``malloc`` keeps the freed pages of its heap (it only returns the top of the heap,
and a heap is rarely free at its top). ``malloc_trim(0)`` returns every free page. The
service calls it once the traffic has stopped: after a whole ``service.idle_trim_interval``
in which no request began, with none in flight, following one in which some did. So once per
burst, never under steady traffic (however many gaps it has between requests: a look that
only asked "is one in flight now?" found one idle at most looks at 100 requests a second, and
collected the whole heap every interval, tens of milliseconds of CPU each time and of latency
for whoever came next), and never while idle. A full garbage collection comes first:
finished requests leave reference cycles that only it frees. Both run in the event loop
(tens of milliseconds, which only a request arriving in that instant waits for); from a
worker thread, the Trio clock of a test could jump past its deadlines meanwhile.

CPython's own small-object allocator (pymalloc, the default) keeps an arena (1 MiB) while any
object in it lives, so most of a burst's memory comes back only under ``PYTHONMALLOC=malloc``
(measured: 1,000 streams, 94.6 MB at their peak, 74.0 MB five seconds after, from 56.3 MB;
with pymalloc 90.9 and 89.6 MB; 2,000 streams, 105.1 MB, 77.3 MB eight seconds after, from
61.0 MB; with pymalloc 110.8 and 109.3 MB). No cache grows with a burst: what outlives one is
a few hundred small objects (the parked inference runners, the deadline heap's entries not yet
swept, trio's bookkeeping) out of some 60,000, but spread over the burst's arenas they keep
every one of them (2,000 streams took 56 arenas; 61 were still held after they ended, 56
with no parked runner at all).
See docs/operations.md.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import gc
import math
from collections.abc import Callable

import trio

from .connections import Requests

__all__ = ["collect_whole_heap", "freeze_heap", "malloc_trim", "trim_when_idle"]


@functools.cache
def malloc_trim() -> Callable[[], object] | None:
    """glibc's ``malloc_trim(0)``, or None where the C library has none (musl, macOS)."""
    name = ctypes.util.find_library("c")
    try:
        function = ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError, TypeError):
        return None
    function.argtypes = [ctypes.c_size_t]
    function.restype = ctypes.c_int
    return functools.partial(function, 0)


async def trim_when_idle(
    requests: Requests, interval: float, trim: Callable[[], object] | None = None
) -> None:
    """Collect garbage and trim the C heap once the traffic has stopped: at the end of an
    ``interval`` in which no request began and none is in flight, when some began in the
    interval before it. Runs until cancelled; returns at once when ``interval`` is infinite
    or the C library cannot trim.

    Args:
        requests: the service's requests.
        interval: the seconds between two looks (and so between two trims).
        trim: what trims (default :func:`malloc_trim`'s).
    """
    trim = trim or malloc_trim()
    if trim is None or math.isinf(interval):
        return
    seen = requests.served
    busy = False  # requests began in the interval before this one
    while True:
        await trio.sleep(interval)
        quiet = requests.served == seen and not requests.active
        seen = requests.served
        if not (quiet and busy):
            busy = not quiet
            continue
        busy = False
        # Finished requests leave reference cycles (tasks, cancelled scopes, tracebacks)
        # that only a full collection frees; the young-generation passes seldom reach them.
        collect_whole_heap()
        trim()


def freeze_heap() -> None:
    """Collect the garbage, then move every object alive now out of the collector's sight
    (``gc.freeze``): the full collections that follow scan only what is made after.

    For a process that has finished starting (see ``service.freeze_heap``): what it holds
    then lives as long as it does, and a full collection of it under load stalls every
    request in flight.
    """
    gc.collect()
    gc.freeze()


def collect_whole_heap() -> None:
    """A full collection, of the frozen objects too when the heap was frozen (they are
    frozen again after): a frozen object that became garbage is freed only so."""
    frozen = gc.get_freeze_count() > 0
    if frozen:
        gc.unfreeze()
    gc.collect()
    if frozen:
        gc.freeze()
