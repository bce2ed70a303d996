"""Coalescing: identical requests in flight at the same time share one upstream call.

The first request for a key starts the upstream call as a background task in the layer's
nursery (a *flight*); the worker's events are appended to one list shared by every subscriber.
Each subscriber holds only an index into that list and parks on a Trio parking lot until more
arrives, so a subscriber that joins after tokens have begun replays the stream from its start,
and no subscriber copies the text. The buffer holds one answer's events, however many
subscribers there are and however slow: the upstream call never waits for a subscriber.

Leaving (cancellation, deadline, a stop sequence) detaches one subscriber; the upstream call
goes on for the others. When the last subscriber leaves before the answer is complete, the
flight's cancel scope is cancelled and the provider call stops. An upstream failure is raised
in every subscriber, each getting its own copy of the error (same type, same message and
attributes, the original as ``__cause__``), since one exception object must not be raised in
several tasks at once.
"""

from __future__ import annotations

import copy
import math
from typing import ClassVar

import attrs
import trio

from ..errors import ProviderTimeout, RequestCancelled
from ..events import StreamEvent
from ..types import PromptRequest, request_notes
from ..workers.base import EventSink, ModelWorker
from .config import CoalescingConfig, refuse_toggle
from .keys import is_deterministic, request_key

__all__ = ["CoalescingConfig", "CoalescingLayer", "CoalescingStatistics"]


@attrs.frozen
class CoalescingStatistics:
    """A snapshot of a coalescing layer."""

    in_flight_keys: int
    """Keys with an upstream call running now."""
    subscribers: int
    """Callers receiving a shared answer now (from a running call, or still replaying the
    buffer of one that has ended)."""
    upstream_calls: int
    """Upstream calls started since the layer was made."""
    coalesced: int
    """Requests that joined a call already in flight instead of starting one."""
    bypassed: int
    """Requests passed straight through because they were not eligible (sampled)."""
    abandoned: int
    """Upstream calls cancelled because every subscriber left before the answer ended."""
    buffered_events: int
    """Events held in shared buffers now: one answer's events per call that is running or
    still being replayed to a subscriber, however many subscribers it has."""


@attrs.define(eq=False, slots=True)
class _Flight:
    """One upstream call and its shared event buffer."""

    key: str
    deadline: float
    events: list[StreamEvent] = attrs.field(factory=list)
    lot: trio.lowlevel.ParkingLot = attrs.field(factory=trio.lowlevel.ParkingLot)
    scope: trio.CancelScope = attrs.field(factory=trio.CancelScope)
    subscribers: int = 0
    finished: bool = False
    error: BaseException | None = None

    async def append(self, event: StreamEvent) -> None:
        """The upstream worker's sink: store the event and wake every parked subscriber."""
        self.events.append(event)
        self.lot.unpark_all()
        await trio.lowlevel.checkpoint()

    def end(self, error: BaseException | None = None) -> None:
        if not self.finished:
            self.finished, self.error = True, error
        self.lot.unpark_all()


def _copy_error(error: BaseException) -> BaseException:
    """A fresh copy of ``error`` for one subscriber; the shared original as its cause."""
    try:
        clone = copy.copy(error)
    except Exception:  # an exception class whose __init__ cannot be replayed from its args
        return error
    clone.__cause__, clone.__traceback__ = error, None
    return clone


@attrs.define(eq=False)
class CoalescingLayer:
    """A worker layer that merges identical requests in flight into one call to ``inner``.

    Args:
        inner: the worker that makes the upstream call.
        config: which requests to merge.
        nursery: where upstream calls run, so a caller leaving does not cancel a call that
            others still wait on. It must outlive every request made through the layer (the
            nursery that runs the pipeline, or the one ``open_layers`` opens).
    """

    _inner: ModelWorker
    _config: CoalescingConfig
    _nursery: trio.Nursery
    _flights: dict[str, _Flight] = attrs.field(factory=dict, init=False)
    _live: set[_Flight] = attrs.field(factory=set, init=False)
    _upstream_calls: int = attrs.field(default=0, init=False)
    _coalesced: int = attrs.field(default=0, init=False)
    _bypassed: int = attrs.field(default=0, init=False)
    _abandoned: int = attrs.field(default=0, init=False)

    def reconfigure(self, section: CoalescingConfig, /) -> list[str]:
        """Apply a reloaded ``[resilience.coalescing]``: eligibility, subscriber bound."""
        refused = refuse_toggle("coalescing", self._config.enabled, section.enabled)
        if not refused:
            self._config = section
        return refused

    @property
    def inner(self) -> ModelWorker:
        """The worker this layer wraps."""
        return self._inner

    async def generate(self, request: PromptRequest, emit: EventSink) -> None:
        """Answer ``request`` from a shared upstream call when an identical one is in flight.

        Raises:
            WorkerError: the upstream call failed (each subscriber gets its own copy).
        """
        if not (self._config.coalesce_sampled or is_deterministic(request)):
            self._bypassed += 1
            await self._inner.generate(request, emit)
            return
        flight = self._join(request_key(request), request)
        try:
            await self._follow(flight, emit)
        finally:
            self._leave(flight)

    metric_kind: ClassVar[str] = "coalescing"
    metric_counters: ClassVar[tuple[str, ...]] = (
        "upstream_calls",
        "coalesced",
        "bypassed",
        "abandoned",
    )

    def statistics(self) -> CoalescingStatistics:
        """Return a snapshot of the layer's counters."""
        flights = self._live
        return CoalescingStatistics(
            in_flight_keys=len(self._flights),
            subscribers=sum(f.subscribers for f in flights),
            upstream_calls=self._upstream_calls,
            coalesced=self._coalesced,
            bypassed=self._bypassed,
            abandoned=self._abandoned,
            buffered_events=sum(len(f.events) for f in flights),
        )

    def _join(self, key: str, request: PromptRequest) -> _Flight:
        # The upstream call may run until the latest deadline among its subscribers, so a
        # retry layer below sees a deadline to bound its attempts by.
        deadline = trio.current_effective_deadline()
        flight = self._flights.get(key)
        if flight is not None and flight.subscribers < self._config.max_subscribers:
            self._coalesced += 1
            if (notes := request_notes()) is not None:
                notes.coalesced = True
            if deadline > flight.deadline:
                flight.deadline = flight.scope.deadline = deadline
        else:
            flight = _Flight(key, deadline)
            flight.scope.deadline = deadline
            self._flights[key] = flight
            self._live.add(flight)
            self._upstream_calls += 1
            # Streamed whoever leads it: a caller that streams may join a call begun for one
            # that takes its answer whole, and must get the text as it comes.
            self._nursery.start_soon(
                self._upstream, flight, request.streamed(True), name=f"coalesced {key[:12]}"
            )
        flight.subscribers += 1
        return flight

    async def _follow(self, flight: _Flight, emit: EventSink) -> None:
        """Replay the shared buffer from the start, then follow it until the call ends."""
        events, seen = flight.events, 0
        while True:
            while seen < len(events):
                seen += 1
                await emit(events[seen - 1])
            if flight.finished:
                break
            await flight.lot.park()
        if flight.error is not None:
            raise _copy_error(flight.error)

    def _leave(self, flight: _Flight) -> None:
        flight.subscribers -= 1
        if flight.subscribers:
            return
        if flight.finished:
            self._live.discard(flight)  # the buffer goes with the last subscriber
        else:
            self._abandoned += 1
            self._forget(flight)
            flight.scope.cancel()

    def _forget(self, flight: _Flight) -> None:
        if self._flights.get(flight.key) is flight:
            del self._flights[flight.key]

    async def _upstream(self, flight: _Flight, request: PromptRequest) -> None:
        error: BaseException | None = None
        returned = False
        try:
            with flight.scope:
                await self._inner.generate(request, flight.append)
                returned = True
        except Exception as exc:  # reported to every subscriber, never to the nursery
            error = exc
        finally:
            # Runs on success, failure and cancellation alike: no subscriber is left parked.
            self._forget(flight)
            if error is None and not returned:
                error = self._cancelled_error(flight)
            flight.end(error)
            if not flight.subscribers:
                self._live.discard(flight)

    @staticmethod
    def _cancelled_error(flight: _Flight) -> BaseException:
        """What subscribers see when the call was cancelled under them (not by their leaving)."""
        if flight.scope.cancelled_caught and math.isfinite(flight.deadline):
            return ProviderTimeout(
                "the shared upstream call reached the latest deadline of its callers; "
                "give the request a longer timeout"
            )
        return RequestCancelled("the shared upstream call was cancelled")
