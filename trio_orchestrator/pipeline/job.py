"""A request's journey through the pipeline: its outcome, its cancel scope, its event path."""

from __future__ import annotations

import enum
from collections.abc import Sequence
from typing import Any

import attrs
import trio

from ..errors import WorkerCrashed
from ..events import (
    Accumulator,
    Completion,
    Done,
    EventGrammarError,
    StreamEvent,
    TextDelta,
)
from ..types import Document, PromptRequest
from .post import TextFilter

__all__ = ["FinishedRequest", "Job", "Outcome"]


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
    """Seconds from submission to the first event from the worker, when there was one."""


@attrs.define(eq=False, slots=True)
class Job:
    """The pipeline's private record of one request in flight."""

    request: PromptRequest
    deadline: float
    submitted_at: float
    scope: trio.CancelScope
    done: trio.Event = attrs.field(factory=trio.Event)
    stream: trio.MemorySendChannel[StreamEvent] | None = None
    prepared: PromptRequest | None = None
    documents: Sequence[Document] = ()
    filter: TextFilter | None = None
    generation: trio.CancelScope | None = None
    accumulator: Accumulator = attrs.field(factory=Accumulator)
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
        elif isinstance(event, Done):
            self.worker_done = event
            return
        self.accumulator.add(event)
        if self.stream is not None:
            try:
                self.stream.send_nowait(event)
            except trio.WouldBlock:
                await self.stream.send(event)

    def complete(self) -> Completion:
        """Close the text filter and build the completion (the post stage's work)."""
        accumulator = self.accumulator
        if self.filter is not None:
            self.tail = self.filter.finish()
        done = self.worker_done
        if done is None and not self.stopped:
            raise WorkerCrashed("the worker returned without emitting Done")
        finish_reason = "stop" if self.stopped or done is None else done.finish_reason
        return Completion(
            request_id=self.request.request_id,
            text=accumulator.text + self.tail,
            finish_reason=finish_reason,
            usage=(done.usage if done else None) or accumulator.usage,
            tool_calls=(done.tool_calls if done else ()) or accumulator.tool_calls(),
            model=done.model if done else None,
        )

    def result(self) -> Completion:
        """Return the completion, or raise the error the request ended with."""
        if self.outcome is Outcome.COMPLETED and self.completion is not None:
            return self.completion
        assert self.error is not None, "result() before the job ended"
        raise self.error
