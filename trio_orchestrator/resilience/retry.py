"""Retries of failed provider calls: capped exponential backoff with full jitter.

The rules, in the order they are checked after a failed attempt:

1. only an error whose class is ``retryable`` is retried;
2. once an event has reached the caller, nothing is retried, unless ``restart_stream`` is on
   (then the new attempt must repeat the events already sent; see :class:`_Resume`). A
   non-streaming request (``request.streaming`` is False) shows the caller nothing before
   its end: an attempt's events are held here until it succeeds (:class:`_Held`), so a
   fault in the middle of the upstream's answer is retried like one before it;
3. at most ``max_attempts`` attempts in all;
4. a ``Retry-After`` (``exc.retry_after``) longer than ``max_retry_after`` is not waited for;
5. the backoff is drawn uniformly from ``[0, min(max_backoff, initial · multiplier**n)]``
   ("full jitter"); when the provider (or a resting key) named a ``retry_after``, that is
   added to the draw, so the calls told to wait the same time do not all wake at once;
6. if sleeping that long would reach the call's effective deadline, give up now, with the
   last error, rather than sleep into a cancellation.

Why not tenacity or stamina (both run under Trio): their time budgets are measured with
``time.monotonic`` from the first attempt, not against the caller's absolute deadline on
Trio's clock (so they neither respect the request's cancel scope nor run under
``MockClock``); stamina's jitter is additive rather than full; and neither knows whether
events have already been streamed, which rule 2 needs. Fitting those in would mean custom
stop, wait and retry callbacks around a loop this short.
"""

from __future__ import annotations

import random
from typing import ClassVar

import attrs
import trio

from ..errors import WorkerError
from ..events import Passthrough, StreamEvent
from ..observability.spans import attempt_span
from ..types import PromptRequest, request_notes
from ..workers.base import EventSink, ModelWorker
from .config import RetryConfig, refuse_toggle

__all__ = ["GIVE_UP_REASONS", "RetryLayer", "RetryStatistics", "backoff_cap"]

GIVE_UP_REASONS = ("not_retryable", "streamed", "attempts", "retry_after", "deadline", "diverged")


@attrs.frozen
class RetryStatistics:
    """A snapshot of a retry layer's counters."""

    calls: int
    """Requests the layer was given."""
    attempts: int
    """Calls made to the inner worker (first attempts and retries)."""
    retries: int
    """Attempts after the first."""
    recovered: int
    """Requests that succeeded after at least one retry."""
    gave_up: dict[str, int]
    """Errors passed to the caller, by reason: ``not_retryable``, ``streamed`` (events had
    reached the caller), ``attempts`` (max_attempts used), ``retry_after`` (the provider asked
    for too long a wait), ``deadline`` (the backoff would cross the deadline), ``diverged`` (a
    restarted stream did not repeat what was sent)."""


def backoff_cap(config: RetryConfig, retry: int) -> float:
    """The upper bound of the backoff before retry number ``retry`` (1 for the first)."""
    return min(config.max_backoff, config.initial_backoff * config.multiplier ** (retry - 1))


class StreamDiverged(Exception):
    """A restarted attempt emitted something other than what the caller already has."""


def _same(new: StreamEvent, old: StreamEvent) -> bool:
    """Whether a restarted attempt repeats an event: by value (a Passthrough, which
    compares by identity, by its members)."""
    if isinstance(new, Passthrough) and isinstance(old, Passthrough):
        return (new.response, new.choice, new.message) == (old.response, old.choice, old.message)
    return new == old


@attrs.define(eq=False)
class _Resume:
    """The emit of every attempt: forwards events, counting them; on a restarted attempt,
    swallows the replay of what was already forwarded, and raises if it differs."""

    emit: EventSink
    keep: bool
    """Remember forwarded events (only needed when a stream may be restarted)."""
    sent: list[StreamEvent] = attrs.field(factory=list)
    forwarded: int = 0
    position: int = 0

    def restart(self) -> None:
        self.position = 0

    async def __call__(self, event: StreamEvent) -> None:
        if self.position < self.forwarded:
            if not _same(event, self.sent[self.position]):
                raise StreamDiverged
            self.position += 1
            return
        if self.keep:
            self.sent.append(event)
        self.forwarded += 1
        self.position += 1
        await self.emit(event)


@attrs.define(eq=False)
class _Held:
    """The emit of every attempt of a non-streaming request: keeps the attempt's events
    until it succeeds (nothing reaches the caller before the end anyway)."""

    events: list[StreamEvent] = attrs.field(factory=list)
    forwarded: int = 0
    """Events the caller has seen during an attempt: always none."""

    def restart(self) -> None:
        self.events.clear()

    async def __call__(self, event: StreamEvent) -> None:
        self.events.append(event)


@attrs.define(eq=False)
class RetryLayer:
    """A worker that retries ``inner`` on retryable errors; see the module docstring.

    Args:
        inner: the worker to retry.
        config: attempts, backoff, ``Retry-After`` and stream-restart policy.
        rng: the source of jitter (seed it in tests).
    """

    inner: ModelWorker
    config: RetryConfig
    rng: random.Random = attrs.field(factory=random.Random, kw_only=True)
    _calls: int = attrs.field(default=0, init=False)
    _attempts: int = attrs.field(default=0, init=False)
    _recovered: int = attrs.field(default=0, init=False)
    _gave_up: dict[str, int] = attrs.field(
        factory=lambda: dict.fromkeys(GIVE_UP_REASONS, 0), init=False
    )

    metric_kind: ClassVar[str] = "retry"
    metric_counters: ClassVar[tuple[str, ...]] = ("calls", "attempts", "retries", "recovered")

    def statistics(self) -> RetryStatistics:
        """A snapshot of the counters."""
        return RetryStatistics(
            calls=self._calls,
            attempts=self._attempts,
            retries=self._attempts - self._calls,
            recovered=self._recovered,
            gave_up=dict(self._gave_up),
        )

    def reconfigure(self, section: RetryConfig, /) -> list[str]:
        """Apply a reloaded ``[resilience.retry]`` (attempts, backoff, policy) to what starts
        next."""
        refused = refuse_toggle("retry", self.config.enabled, section.enabled)
        if not refused:
            self.config = section
        return refused

    async def generate(self, request: PromptRequest, emit: EventSink) -> None:
        """Call ``inner``, retrying by the rules in the module docstring.

        Raises:
            WorkerError: the last attempt's error, when the rules say to stop.
        """
        self._calls += 1
        sink: _Resume | _Held = (
            _Resume(emit, keep=self.config.restart_stream) if request.streaming else _Held()
        )
        last_error: WorkerError | None = None
        attempt = 0
        while True:
            attempt += 1
            self._attempts += 1
            if attempt > 1 and (notes := request_notes()) is not None:
                notes.retries += 1
            sink.restart()
            try:
                with attempt_span("upstream attempt", attempt=attempt):
                    await self.inner.generate(request, sink)
            except WorkerError as exc:
                last_error = exc
                delay = self._backoff_or_raise(exc, attempt, streamed=sink.forwarded > 0)
            except StreamDiverged:
                assert last_error is not None  # only a restarted attempt can diverge
                self._gave_up["diverged"] += 1
                raise last_error from None
            else:
                self._recovered += attempt > 1
                if isinstance(sink, _Held):
                    for event in sink.events:
                        await emit(event)
                return
            await trio.sleep(delay)

    def _backoff_or_raise(self, exc: WorkerError, attempt: int, *, streamed: bool) -> float:
        """The seconds to wait before the next attempt; raises ``exc`` to give up."""
        reason = self._give_up_reason(exc, attempt, streamed)
        if reason is None:
            delay = self.rng.uniform(0.0, backoff_cap(self.config, attempt))
            if exc.retry_after is not None:
                delay += exc.retry_after
            if trio.current_time() + delay < trio.current_effective_deadline():
                return delay
            reason = "deadline"
        self._gave_up[reason] += 1
        raise exc

    def _give_up_reason(self, exc: WorkerError, attempt: int, streamed: bool) -> str | None:
        if not exc.retryable:
            return "not_retryable"
        if streamed and not self.config.restart_stream:
            return "streamed"
        if attempt >= self.config.max_attempts:
            return "attempts"
        if exc.retry_after is not None and exc.retry_after > self.config.max_retry_after:
            return "retry_after"
        return None
