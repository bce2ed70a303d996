"""The worker protocol: how a request becomes a stream of events.

A worker is any object with ``async def generate(request, emit)``. It calls ``await
emit(event)`` for each event, in the grammar of :mod:`trio_orchestrator.events` (ending with
exactly one ``Done``), or raises a :class:`~trio_orchestrator.errors.WorkerError`.

Why a callback and not an async generator: under Trio an async generator cannot safely
``yield`` from inside a cancel scope or nursery it opened (the scope would be suspended in
its consumer's frame), and an abandoned generator is finalized by the garbage collector
outside any task. A callback keeps the whole call inside the caller's task and its cancel
scope: cancelling the request cancels the worker at its next checkpoint, deterministically,
and the worker may open nurseries and timeouts freely. ``emit`` also carries backpressure: it
returns when the consumer has taken the event. Layers wrap workers by wrapping ``emit``.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from ..events import Accumulator, Completion, StreamEvent
from ..types import PromptRequest

__all__ = ["EventSink", "ModelWorker", "collect"]


class EventSink(Protocol):
    """Where a worker sends its events: ``await emit(event)``."""

    async def __call__(self, event: StreamEvent, /) -> None:
        """Take one event; may wait (backpressure) and is a cancellation point."""


@runtime_checkable
class ModelWorker(Protocol):
    """Turns one request into a stream of events."""

    async def generate(self, request: PromptRequest, emit: EventSink) -> None:
        """Generate the answer to ``request``, calling ``emit`` for each event.

        Raises:
            WorkerError: a typed failure; nothing is emitted after it.
        """


async def collect(worker: ModelWorker, request: PromptRequest) -> Completion:
    """Run ``worker`` on ``request`` outside any pipeline and return the accumulated answer.

    Raises:
        WorkerError: whatever the worker raised.
        EventGrammarError: the worker broke the event grammar.
    """
    accumulator = Accumulator()

    async def emit(event: StreamEvent) -> None:
        accumulator.add(event)

    await worker.generate(request, emit)
    return accumulator.completion(request.request_id)
