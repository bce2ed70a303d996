"""A worker that plays a script of outcomes, for the resilience tests."""

from __future__ import annotations

import attrs
import trio

from trio_orchestrator.errors import WorkerError
from trio_orchestrator.events import Done, StreamEvent, TextDelta, Usage
from trio_orchestrator.types import PromptRequest
from trio_orchestrator.workers.base import EventSink


@attrs.frozen
class Step:
    """One call's behaviour: wait ``delay``, emit ``tokens``, then raise ``error`` or finish."""

    error: WorkerError | None = None
    delay: float = 0.0
    tokens: tuple[str, ...] = ("ok",)


OK = Step()


def fail(error: WorkerError, *, delay: float = 0.0) -> Step:
    """A step that raises ``error`` before emitting anything."""
    return Step(error, delay, ())


@attrs.define(eq=False)
class ScriptedWorker:
    """Each call plays the next step of ``script``; the last step repeats forever."""

    script: list[Step]
    calls: int = 0
    models: list[str] = attrs.field(factory=list)

    async def generate(self, request: PromptRequest, emit: EventSink) -> None:
        step = self.script[min(self.calls, len(self.script) - 1)]
        self.calls += 1
        self.models.append(request.params.model)
        await trio.sleep(step.delay)
        for token in step.tokens:
            await emit(TextDelta(token))
        if step.error is not None:
            raise step.error
        usage = Usage(3, len(step.tokens))
        await emit(usage)
        await emit(Done("stop", "".join(step.tokens), usage, (), request.params.model))


class Recorder:
    """An event sink that keeps what it is given."""

    def __init__(self) -> None:
        self.events: list[StreamEvent] = []

    async def __call__(self, event: StreamEvent) -> None:
        self.events.append(event)
