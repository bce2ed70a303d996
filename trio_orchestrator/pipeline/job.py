"""A request's journey through the pipeline: its outcome, its cancel scope, its event path."""

from __future__ import annotations

import enum
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import attrs
import trio

from ..errors import WorkerCrashed
from ..events import (
    Accumulator,
    Completion,
    Done,
    Embeddings,
    EventGrammarError,
    Passthrough,
    StreamEvent,
    TextDelta,
    TextPieces,
    Usage,
    merge_passthrough,
)
from ..types import Document, PromptRequest
from .post import TextFilter

__all__ = ["EventPipe", "FinishedRequest", "Job", "Outcome"]


class Outcome(enum.Enum):
    """How a request ended. Every submitted request ends in exactly one."""

    COMPLETED = "completed"
    FAILED = "failed"
    SHED = "shed"
    EXPIRED = "expired"
    CANCELLED = "cancelled"


@attrs.frozen
class FinishedRequest:
    """What a pipeline listener learns about each request once it has ended."""

    request: PromptRequest
    """The request as submitted."""
    outcome: Outcome
    """How it ended."""
    completion: Completion | None
    """The answer, when completed."""
    error: BaseException | None
    """The error the caller saw, when not completed."""
    latency: float
    """Seconds from submission to the end, on Trio's clock."""
    time_to_first_token: float | None
    """Seconds from submission to the first event from the worker, when there was one and
    the request was streaming (a whole answer comes unstreamed from the provider, its first
    event with its last)."""


def _wake(task: trio.lowlevel.Task | None) -> None:
    if task is not None:
        trio.lowlevel.reschedule(task)


@attrs.define(eq=False, slots=True)
class EventPipe:
    """One streaming caller's bounded buffer of events: the worker puts, the caller gets.

    Like a memory channel with one sender and one receiver, plus one thing a channel cannot
    do: when the caller is cancelled while it waits, ``on_abandon`` runs synchronously during
    Trio's cancellation delivery, before any other task runs, so the request is counted
    cancelled before anything else (its deadline, say) can end it otherwise.
    """

    capacity: int
    on_abandon: Callable[[], None]
    # A list, not a deque: an empty deque costs a 64-slot block (760 B) per stream for its
    # whole life, while the buffer holds one or two events at a time.
    _buffer: list[StreamEvent] = attrs.field(factory=list)
    _reader: trio.lowlevel.Task | None = None
    _writer: trio.lowlevel.Task | None = None
    closed: bool = False

    async def put(self, event: StreamEvent) -> None:
        """Add an event, waiting while the buffer is full; dropped once the pipe is closed."""
        while not self.closed and len(self._buffer) >= self.capacity:
            self._writer = trio.lowlevel.current_task()

            def abort(_: trio.lowlevel.RaiseCancelT) -> trio.lowlevel.Abort:
                self._writer = None
                return trio.lowlevel.Abort.SUCCEEDED

            await trio.lowlevel.wait_task_rescheduled(abort)
        if not self.closed:
            self._buffer.append(event)
            _wake(self._reader)
            self._reader = None

    def close(self) -> None:
        """No more events; the reader drains what is buffered, then sees the end."""
        self.closed = True
        _wake(self._reader)
        _wake(self._writer)
        self._reader = self._writer = None

    async def get(self) -> StreamEvent | None:
        """Return the next event, or None once the pipe is closed and drained."""
        while not self._buffer:
            if self.closed:
                return None
            self._reader = trio.lowlevel.current_task()

            def abort(_: trio.lowlevel.RaiseCancelT) -> trio.lowlevel.Abort:
                self._reader = None
                self.on_abandon()
                return trio.lowlevel.Abort.SUCCEEDED

            await trio.lowlevel.wait_task_rescheduled(abort)
        _wake(self._writer)
        self._writer = None
        return self._buffer.pop(0)


@attrs.define(eq=False, slots=True)
class Job:
    """The pipeline's private record of one request in flight."""

    request: PromptRequest
    deadline: float
    submitted_at: float
    scope: trio.CancelScope
    waiter: trio.lowlevel.Task | None = None
    deadline_seq: int = 0
    """The job's entry in the pipeline's deadline reaper (0: none)."""
    on_end: Callable[[], None] | None = None
    """Called once the job has ended (``Pipeline.try_start``'s caller is told this way)."""
    stream: EventPipe | None = None
    push: Callable[[StreamEvent], Awaitable[None]] | None = None
    """A streaming caller's sink, awaited in the worker's task (``try_start_stream``)."""
    prepared: PromptRequest | None = None
    documents: Sequence[Document] = ()
    filter: TextFilter | None = None
    generation: trio.CancelScope | None = None
    text: TextPieces = attrs.field(factory=TextPieces)
    usage: Usage | None = None
    passthrough: Passthrough | None = None
    embeddings: tuple[tuple[float, ...], ...] = ()
    tool_calls: Accumulator | None = None
    worker_done: Done | None = None
    stopped: bool = False
    first_token_at: float | None = None
    tail: str = ""
    outcome: Outcome | None = None
    completion: Completion | None = None
    error: BaseException | None = None
    observation: Any = None
    """What the pipeline's hooks keep for this request (trace spans, stage timings)."""

    async def emit(self, event: StreamEvent) -> None:
        """The worker's event sink: post-filter text, accumulate, forward to a streaming caller."""
        if self.worker_done is not None:
            raise EventGrammarError(f"{type(event).__name__} after Done")
        if self.first_token_at is None:
            self.first_token_at = trio.current_time()
        if isinstance(event, TextDelta):
            if self.filter is not None:
                text = self.filter.feed(event.text)
                if self.filter.stopped and not self.stopped:
                    self.stopped = True
                    if self.generation is not None:
                        self.generation.cancel()
                if not text:
                    return
                event = TextDelta(text)
            self.text.append(event.text)
        elif isinstance(event, Done):
            self.worker_done = event
            return
        elif isinstance(event, Usage):
            self.usage = event
        elif isinstance(event, Passthrough):
            self.passthrough = merge_passthrough(self.passthrough, event)
        elif isinstance(event, Embeddings):
            self.embeddings = event.vectors
        else:
            if self.tool_calls is None:
                self.tool_calls = Accumulator()
            self.tool_calls.add(event)
        if self.stream is not None:
            await self.stream.put(event)
        elif self.push is not None and self.outcome is None:
            await self.push(event)

    def complete(self) -> Completion:
        """Close the text filter and build the completion (the post stage's work)."""
        if self.filter is not None:
            self.tail = self.filter.finish()
        done = self.worker_done
        if done is None and not self.stopped:
            raise WorkerCrashed("the worker returned without emitting Done")
        finish_reason = "stop" if self.stopped or done is None else done.finish_reason
        return Completion(
            request_id=self.request.request_id,
            text=self.text.text() + self.tail,
            finish_reason=finish_reason,
            usage=(done.usage if done else None) or self.usage,
            tool_calls=(done.tool_calls if done else ())
            or (self.tool_calls.tool_calls() if self.tool_calls else ()),
            model=done.model if done else None,
            passthrough=self.passthrough,
            embeddings=self.embeddings,
        )

    def result(self) -> Completion:
        """Return the completion, or raise the error the request ended with."""
        if self.outcome is Outcome.COMPLETED and self.completion is not None:
            return self.completion
        assert self.error is not None, "result() before the job ended"
        raise self.error
