"""Pipeline.try_start_stream: a streamed request whose events the worker's task pushes."""

from __future__ import annotations

import trio
import trio.testing

from trio_orchestrator import PromptRequest, open_pipeline
from trio_orchestrator.errors import RequestCancelled
from trio_orchestrator.events import Done, StreamEvent, TextDelta
from trio_orchestrator.types import GenerationParams
from trio_orchestrator.workers import EchoWorker


async def test_pushed_events_arrive_in_order_and_the_request_completes() -> None:
    """Every event but Done is pushed, in order, and the handle then holds the completion
    and the text a stop sequence held back (tail); the request counts completed."""
    pushed: list[StreamEvent] = []
    ended = trio.Event()

    async def push(event: StreamEvent) -> None:
        pushed.append(event)

    request = PromptRequest(input="one two three", params=GenerationParams(stop=("zzz",)))
    async with open_pipeline(EchoWorker()) as pipeline:
        pending = pipeline.try_start_stream(request, push, ended.set)
        await ended.wait()
        completion = pending.result()
        assert pipeline.statistics().completed == 1
    text = "".join(e.text for e in pushed if isinstance(e, TextDelta)) + pending.tail
    assert text == completion.text
    assert not any(isinstance(e, Done) for e in pushed)


async def test_a_cancelled_pushed_request_pushes_nothing_more(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Once the handle cancels the request, no further event is pushed and it counts cancelled."""
    pushed: list[StreamEvent] = []
    first = trio.Event()

    async def push(event: StreamEvent) -> None:
        pushed.append(event)
        first.set()

    worker = EchoWorker(token_delay=1.0)
    async with open_pipeline(worker) as pipeline:
        pending = pipeline.try_start_stream(PromptRequest(input="a b c d e f"), push)
        await first.wait()
        assert pending.cancel("gone")
        seen = len(pushed)
        await trio.sleep(10)
        assert len(pushed) == seen
        assert pipeline.statistics().cancelled == 1
    try:
        pending.result()
    except RequestCancelled:
        pass
    else:
        raise AssertionError("a cancelled request has no completion")
