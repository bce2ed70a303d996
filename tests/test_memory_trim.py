"""Trimming the memory of a finished burst: only when idle, once per burst, never per request."""

from __future__ import annotations

import gc
import math
import weakref

import attrs
import trio
import trio.testing

from trio_orchestrator.config import Config
from trio_orchestrator.service.connections import Requests
from trio_orchestrator.service.memory import malloc_trim, trim_when_idle


@attrs.define
class Trims:
    """A stand-in for malloc_trim: counts, and wakes the test."""

    count: int = 0
    happened: trio.Event = attrs.field(factory=trio.Event)

    def __call__(self) -> None:
        self.count += 1
        self.happened.set()

    async def wait(self) -> None:
        await self.happened.wait()
        self.happened = trio.Event()


async def test_a_burst_is_trimmed_once_after_it_ends(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """No trim while requests are in flight, one once they have ended, none while idle."""
    requests, trims = Requests(), Trims()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(trim_when_idle, requests, 5.0, trims)
        await trio.testing.wait_all_tasks_blocked()  # it has started, as at the service's start
        for _ in range(3):
            requests.begin()
        await trio.sleep(12)
        assert trims.count == 0  # busy all along
        for _ in range(3):
            requests.end()
        await trims.wait()
        await trio.sleep(60)
        assert trims.count == 1  # idle since: nothing more to give back
        requests.begin()
        requests.end()
        await trims.wait()
        assert trims.count == 2
        nursery.cancel_scope.cancel()


async def test_steady_traffic_with_gaps_is_never_trimmed(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Traffic that never stops is not a burst that ended, even though no request is in
    flight at most instants: no full collection every interval while it runs (each one was
    tens of milliseconds of CPU and of a request's latency), one once it stops."""
    requests, trims = Requests(), Trims()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(trim_when_idle, requests, 5.0, trims)
        await trio.testing.wait_all_tasks_blocked()
        for _ in range(600):  # 60 s of one short request every 100 ms
            requests.begin()
            await trio.sleep(0.01)
            requests.end()
            await trio.sleep(0.09)
        assert trims.count == 0
        await trims.wait()
        await trio.sleep(60)
        assert trims.count == 1
        nursery.cancel_scope.cancel()


async def test_an_infinite_interval_never_trims(autojump_clock: trio.testing.MockClock) -> None:
    """``idle_trim_interval = inf`` turns the trimming off: the task returns at once."""
    requests = Requests()
    with trio.fail_after(1):
        await trim_when_idle(requests, math.inf, lambda: None)


def test_the_service_trims_every_five_seconds_by_default() -> None:
    """The default interval is 5 s, and glibc's malloc_trim is found on this platform."""
    assert Config().service.idle_trim_interval == 5.0
    trim = malloc_trim()
    assert trim is not None
    trim()


class _Cycle:
    """An object in a reference cycle: only the garbage collector frees it."""

    def __init__(self) -> None:
        self.me = self


async def _one_burst_trimmed() -> None:
    """One request, then the quiet that ends its burst: return once it was trimmed."""
    requests, trims = Requests(), Trims()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(trim_when_idle, requests, 5.0, trims)
        await trio.testing.wait_all_tasks_blocked()
        requests.begin()
        requests.end()
        await trims.wait()
        nursery.cancel_scope.cancel()


async def test_a_burst_end_frees_garbage_the_frozen_heap_held(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A cycle frozen with the heap (service.freeze_heap) that became garbage is freed once
    a burst ends, and the heap is frozen again: a gc.collect() alone never frees it."""
    cycle = _Cycle()
    alive = weakref.ref(cycle)
    gc.collect()
    gc.freeze()
    try:
        del cycle
        gc.collect()
        assert alive() is not None  # frozen: out of the collector's sight
        await _one_burst_trimmed()
        assert alive() is None
        assert gc.get_freeze_count() > 0  # frozen again after the collection
    finally:
        gc.unfreeze()


async def test_an_unfrozen_heap_stays_unfrozen_after_a_burst(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A process that did not freeze its heap (a library's, or freeze_heap = false) is not
    frozen by the collection after a burst."""
    assert gc.get_freeze_count() == 0
    await _one_burst_trimmed()
    assert gc.get_freeze_count() == 0
