"""Priority admission to inference: who gets the next free slot when all are busy.

While a slot is free and nobody is waiting, a request starts at once (no queue work: the
fast path is one ``acquire_on_behalf_of_nowait``). Once every slot is busy, the inference
stage keeps reading its channel into a small heap of at most ``max_waiting`` requests and
each slot that frees goes to the best-ranked of them. A request's rank is
``submitted_at + level * aging_interval`` (level 0 is ``CRITICAL``, 3 is ``LOW``): its
effective priority improves by one level per ``aging_interval`` seconds waited, so a flood
of ``CRITICAL`` requests delays a ``LOW`` one by at most ``3 * aging_interval`` seconds of
arrivals. With the heap full the stage stops reading, its channel fills to capacity and the
stage before it sheds, exactly as without priorities.
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections.abc import Awaitable, Callable
from typing import Generic, Protocol, TypeVar

import attrs
import trio

from ..resilience.config import PriorityConfig
from ..types import Priority, PromptRequest

__all__ = ["PriorityAdmission", "PriorityStatistics"]

_LEVELS = len(Priority)


class Waiting(Protocol):
    """What the admission queue needs of a job (the pipeline's ``Job`` has it)."""

    @property
    def request(self) -> PromptRequest:
        """The request, for its priority."""

    @property
    def submitted_at(self) -> float:
        """When it was submitted, on Trio's clock."""

    @property
    def deadline(self) -> float:
        """The absolute deadline, on Trio's clock."""

    @property
    def outcome(self) -> object | None:
        """Not None once the request has ended (such jobs are skipped)."""


J = TypeVar("J", bound=Waiting)


@attrs.frozen
class PriorityStatistics:
    """A snapshot of priority admission at the inference stage."""

    waiting: int
    """Requests held in the priority queue now (ended ones included until skipped)."""
    max_waiting: int
    """The bound on ``waiting``; at it, the stage stops reading its channel."""
    waiting_by_level: tuple[int, ...]
    """``waiting`` split by level, indexed by :class:`~trio_orchestrator.types.Priority`."""
    admitted_by_level: tuple[int, ...]
    """Requests given a slot since start, by level (straight away or after waiting)."""
    queued: int
    """Requests that had to wait in the priority queue for a slot."""
    aged: int
    """Requests given a slot while one of a higher level waited (aging at work)."""


@attrs.define(eq=False)
class PriorityAdmission(Generic[J]):
    """The inference stage's admission: slots from ``limiter``, ranked waiting, aging.

    Args:
        config: the ``max_waiting`` bound and the aging interval.
        limiter: the inference slots; a job holds its slot as the limiter's borrower.
    """

    _config: PriorityConfig
    _limiter: trio.CapacityLimiter
    _heap: list[tuple[float, int, J]] = attrs.field(factory=list, init=False)
    _order: itertools.count[int] = attrs.field(factory=itertools.count, init=False)
    _start: Callable[[J], None] | None = attrs.field(default=None, init=False)
    _expire: Callable[[J], object] | None = attrs.field(default=None, init=False)
    _room: trio.Event = attrs.field(factory=trio.Event, init=False)
    _waiting: list[int] = attrs.field(factory=lambda: [0] * _LEVELS, init=False)
    _admitted: list[int] = attrs.field(factory=lambda: [0] * _LEVELS, init=False)
    _queued: int = attrs.field(default=0, init=False)
    _aged: int = attrs.field(default=0, init=False)
    _popped_since_prune: int = attrs.field(default=0, init=False)

    @property
    def waiting(self) -> int:
        """Requests held in the queue now."""
        return len(self._heap)

    async def run(
        self,
        next_job: Callable[[], Awaitable[J | None]],
        start: Callable[[J], None],
        expire: Callable[[J], object],
    ) -> None:
        """Admit every job ``next_job`` yields until it yields None.

        Args:
            next_job: the stage's channel reader; it is not called while the queue is full.
            start: called with each job once it holds a slot (starts its inference task).
            expire: called with a waiting job whose deadline has passed instead of starting
                it (ends it as expired).
        """
        self._start, self._expire = start, expire
        while (job := await next_job()) is not None:
            if self._heap or not self._start_now(job):
                self._push(job)
            job = None  # waiting for the next one keeps no request alive
            if len(self._heap) >= self._config.max_waiting:
                await self._wait_for_room()

    def _start_now(self, job: J) -> bool:
        """Start ``job`` if a slot is free; say whether it did."""
        try:
            self._limiter.acquire_on_behalf_of_nowait(job)
        except trio.WouldBlock:
            return False
        self._admitted[job.request.priority] += 1
        assert self._start is not None
        self._start(job)
        return True

    def release(self, job: J) -> None:
        """Give back ``job``'s slot and hand free slots to the best-ranked waiting jobs."""
        self._limiter.release_on_behalf_of(job)
        if self._heap:
            self._dispatch()

    def resized(self) -> None:
        """Hand the slots a larger limiter has (a reload raised the concurrency) to the
        best-ranked waiting jobs now, rather than when a running job next releases one."""
        if self._heap:
            self._dispatch()

    def statistics(self) -> PriorityStatistics:
        """Return a snapshot of the admission counters."""
        return PriorityStatistics(
            waiting=len(self._heap),
            max_waiting=self._config.max_waiting,
            waiting_by_level=tuple(self._waiting),
            admitted_by_level=tuple(self._admitted),
            queued=self._queued,
            aged=self._aged,
        )

    def _rank(self, job: J) -> float:
        level = int(job.request.priority)
        interval = self._config.aging_interval
        if math.isinf(interval):
            return float(level)  # strict priority; the sequence number keeps FIFO per level
        return job.submitted_at + level * interval

    def _push(self, job: J) -> None:
        heapq.heappush(self._heap, (self._rank(job), next(self._order), job))
        self._waiting[job.request.priority] += 1
        self._queued += 1

    def _dispatch(self) -> None:
        assert self._start is not None
        assert self._expire is not None
        limiter, heap, now = self._limiter, self._heap, trio.current_time()
        while heap and limiter.available_tokens >= 1:
            job = heapq.heappop(heap)[2]
            level = job.request.priority
            self._waiting[level] -= 1
            self._popped_since_prune += 1
            if job.outcome is not None:  # expired or cancelled while it waited
                continue
            if now >= job.deadline:  # its caller has not noticed yet (same clock tick)
                self._expire(job)
                continue
            if any(self._waiting[:level]):
                self._aged += 1
            limiter.acquire_on_behalf_of_nowait(job)
            self._admitted[level] += 1
            self._start(job)
        if len(heap) < self._config.max_waiting:
            self._room.set()

    async def _wait_for_room(self) -> None:
        """Wait until the heap is below its bound.

        Jobs that ended while waiting are dropped when popped; a full heap is also swept for
        them, but at most once per ``max_waiting`` pops, so a saturated stage does not pay
        a scan per admission.
        """
        while True:
            if self._popped_since_prune >= self._config.max_waiting:
                self._popped_since_prune = 0
                self._prune()
            if len(self._heap) < self._config.max_waiting:
                return
            self._room = trio.Event()
            await self._room.wait()

    def _prune(self) -> None:
        live = [entry for entry in self._heap if entry[2].outcome is None]
        if len(live) == len(self._heap):
            return
        for entry in self._heap:
            if entry[2].outcome is not None:
                self._waiting[entry[2].request.priority] -= 1
        heapq.heapify(live)
        self._heap = live
