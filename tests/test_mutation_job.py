"""How the pipeline builds a request's answer from its worker's events (pipeline/job.py).

Written for the mutation session (scripts/mutation.py): each test submits through a pipeline
and checks one part of the Completion, the worker errors, or the streaming buffer.
"""

from __future__ import annotations

from collections.abc import Sequence

import attrs
import pytest
import trio
import trio.testing

from trio_orchestrator import Config, PipelineConfig, PromptRequest, open_pipeline
from trio_orchestrator.errors import WorkerCrashed
from trio_orchestrator.events import (
    Done,
    Embeddings,
    Passthrough,
    StreamEvent,
    TextDelta,
    ToolCallDelta,
    ToolCallStart,
    Usage,
)
from trio_orchestrator.pipeline import FinishedRequest
from trio_orchestrator.types import GenerationParams, ToolCall
from trio_orchestrator.workers.base import EventSink

REQUEST = PromptRequest(input="hi", request_id="req_fixed")


@attrs.define(eq=False)
class Playing:
    """A worker that emits ``events`` in order, then returns."""

    events: Sequence[StreamEvent]

    async def generate(self, request: PromptRequest, emit: EventSink) -> None:
        for event in self.events:
            await emit(event)


async def test_the_completion_gathers_every_kind_of_event() -> None:
    """Request id, text, the Done's finish reason and model, the Usage event (when Done has
    none), tool calls built from their deltas, and merged passthrough members."""
    worker = Playing(
        [
            Passthrough({"service_tier": "a"}),
            TextDelta("x"),
            ToolCallStart(0, "call_1", "lookup"),
            ToolCallDelta(0, '{"q": 1}'),
            Passthrough({"system_fingerprint": "b"}),
            Usage(2, 3),
            Done("length", "x", None, (), "m-upstream"),
        ]
    )
    async with open_pipeline(worker) as pipeline:
        completion = await pipeline.submit(REQUEST)
    assert (completion.request_id, completion.text) == ("req_fixed", "x")
    assert (completion.finish_reason, completion.model) == ("length", "m-upstream")
    assert completion.usage == Usage(2, 3)
    assert [(c.id, c.name, c.arguments) for c in completion.tool_calls] == [
        ("call_1", "lookup", '{"q": 1}')
    ]
    assert completion.passthrough is not None
    assert completion.passthrough.response == {"service_tier": "a", "system_fingerprint": "b"}


async def test_the_dones_own_usage_wins() -> None:
    """A Done carrying usage gives that usage, not an earlier Usage event's."""
    worker = Playing([TextDelta("x"), Usage(1, 1), Done("stop", "x", Usage(5, 6))])
    async with open_pipeline(worker) as pipeline:
        assert (await pipeline.submit(REQUEST)).usage == Usage(5, 6)


async def test_embeddings_reach_the_completion() -> None:
    """An Embeddings event's vectors are the completion's embeddings."""
    worker = Playing([Embeddings(((0.5, 1.0),)), Done("stop", "", Usage(2, 0))])
    async with open_pipeline(worker) as pipeline:
        completion = await pipeline.submit(PromptRequest(embed=("a",)))
    assert completion.embeddings == ((0.5, 1.0),)


@pytest.mark.parametrize(
    ("events", "message"),
    [
        ([TextDelta("x")], "^the worker returned without emitting Done$"),
        ([Done("stop", ""), TextDelta("x")], "TextDelta after Done"),
    ],
)
async def test_a_worker_breaking_the_event_grammar_fails_the_request(
    events: list[StreamEvent], message: str
) -> None:
    """No Done, or an event after Done, fails the request as a worker crash saying which."""
    async with open_pipeline(Playing(events)) as pipeline:
        with pytest.raises(WorkerCrashed, match=message):
            await pipeline.submit(REQUEST)


async def test_a_slow_streaming_reader_gets_every_event_in_order(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """With a small stream buffer, the worker waits for a slow reader: every event arrives,
    in order, and the answer completes."""
    worker = Playing([*(TextDelta(str(i)) for i in range(20)), Done("stop", "")])
    received: list[str] = []
    async with open_pipeline(worker, Config(PipelineConfig(stream_buffer=2))) as pipeline:
        async with pipeline.stream(REQUEST) as events:
            async for event in events:
                if isinstance(event, TextDelta):
                    received.append(event.text)
                await trio.sleep(1.0)
        assert pipeline.statistics().completed == 1
    assert received == [str(i) for i in range(20)]


async def test_a_streaming_reader_leaving_mid_answer_is_counted_cancelled(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A reader cancelled while it waits for the next event ends its request as cancelled."""

    @attrs.define(eq=False)
    class Slow:
        async def generate(self, request: PromptRequest, emit: EventSink) -> None:
            await emit(TextDelta("a"))
            await trio.sleep(10.0)
            await emit(Done("stop", "a"))

    async with open_pipeline(Slow()) as pipeline:
        with trio.move_on_after(1.0):
            async with pipeline.stream(REQUEST) as events:
                async for _ in events:
                    pass
        await trio.testing.wait_all_tasks_blocked()
        assert pipeline.statistics().cancelled == 1


async def test_the_worker_runs_at_most_the_stream_buffer_ahead_of_its_reader(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """With stream_buffer 2 and a reader that has taken one event and stopped, the worker's
    emit returns only for the taken event and the two buffered after it, then waits."""
    emitted: list[int] = []

    @attrs.define(eq=False)
    class Counting:
        async def generate(self, request: PromptRequest, emit: EventSink) -> None:
            for i in range(10):
                await emit(TextDelta(str(i)))
                emitted.append(i)
            await emit(Done("stop", ""))

    config = Config(PipelineConfig(stream_buffer=2))
    async with open_pipeline(Counting(), config) as pipeline:
        with trio.move_on_after(5.0):
            async with pipeline.stream(REQUEST) as events:
                async for _ in events:
                    await trio.sleep_forever()
    assert emitted == [0, 1, 2]


async def test_a_shielded_worker_is_not_left_waiting_when_its_reader_leaves(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A worker emitting under a shield (its last events, say) while its streaming caller
    has left with the buffer full is let go: the rest of its events are dropped, and it
    finishes without waiting out its shield's own deadline."""
    cut_by_deadline: list[bool] = []

    @attrs.define(eq=False)
    class Shielded:
        async def generate(self, request: PromptRequest, emit: EventSink) -> None:
            with trio.CancelScope(shield=True, deadline=trio.current_time() + 60.0) as scope:
                for i in range(5):
                    await emit(TextDelta(str(i)))
            cut_by_deadline.append(scope.cancelled_caught)

    config = Config(PipelineConfig(stream_buffer=1))
    async with open_pipeline(Shielded(), config) as pipeline:
        async with pipeline.stream(REQUEST):
            await trio.sleep(1.0)  # the worker fills the buffer and waits for room
        await trio.testing.wait_all_tasks_blocked()
        assert pipeline.statistics().cancelled == 1
    assert cut_by_deadline == [False]


async def test_time_to_first_token_is_when_the_first_event_came(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A listener learns the time to the first event (2 s), not to a later one."""

    @attrs.define(eq=False)
    class Paced:
        async def generate(self, request: PromptRequest, emit: EventSink) -> None:
            await trio.sleep(2.0)
            await emit(TextDelta("a"))
            await trio.sleep(3.0)
            await emit(Done("stop", "a"))

    finished: list[FinishedRequest] = []
    async with open_pipeline(Paced()) as pipeline:
        pipeline.add_listener(finished.append)
        await pipeline.submit(REQUEST)
    assert [f.time_to_first_token for f in finished] == [2.0]


async def test_a_stop_sequence_ends_with_stop_even_if_the_worker_said_otherwise() -> None:
    """Text cut at a stop sequence finishes with "stop", though the worker's Done (sent
    before the cut took effect) says "length"."""
    worker = Playing([TextDelta("abcEND tail"), Done("length", "abcEND tail")])
    request = PromptRequest(input="hi", params=GenerationParams(stop=("END",)))
    async with open_pipeline(worker) as pipeline:
        completion = await pipeline.submit(request)
    assert (completion.text, completion.finish_reason) == ("abc", "stop")


async def test_tool_calls_the_done_carries_are_the_completions() -> None:
    """A worker that reports its tool calls whole on Done (no deltas) has them answered."""
    call = ToolCall("call_1", "lookup", "{}")
    worker = Playing([Done("tool_calls", "", None, (call,))])
    async with open_pipeline(worker) as pipeline:
        assert (await pipeline.submit(REQUEST)).tool_calls == (call,)


async def test_a_pushed_stream_gets_each_event_but_done_in_order() -> None:
    """try_start_stream's sink receives every event the worker emits but Done, as emitted,
    while the request runs; the handle then holds the completion."""
    worker = Playing([TextDelta("a"), Usage(1, 2), TextDelta("b"), Done("stop", "ab")])
    pushed: list[StreamEvent] = []
    ended = trio.Event()

    async def push(event: StreamEvent) -> None:
        pushed.append(event)

    async with open_pipeline(worker) as pipeline:
        pending = pipeline.try_start_stream(REQUEST, push, ended.set)
        await ended.wait()
    assert pushed == [TextDelta("a"), Usage(1, 2), TextDelta("b")]
    assert pending.result().text == "ab"


async def test_a_pushed_stream_gets_nothing_a_shielded_worker_emits_after_its_end(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Events a worker emits under a shield after its pushed request was cancelled are not
    pushed: the sink sees only what came before the cancel."""
    pushed: list[StreamEvent] = []

    @attrs.define(eq=False)
    class Shielded:
        async def generate(self, request: PromptRequest, emit: EventSink) -> None:
            with trio.CancelScope(shield=True):
                await emit(TextDelta("a"))
                await trio.sleep(1.0)
                await emit(TextDelta("b"))

    async def push(event: StreamEvent) -> None:
        pushed.append(event)

    async with open_pipeline(Shielded()) as pipeline:
        pending = pipeline.try_start_stream(REQUEST, push)
        await trio.sleep(0.5)  # between the worker's two events
        assert pending.cancel("gone")
        await trio.sleep(5.0)
        assert pipeline.statistics().cancelled == 1
    assert pushed == [TextDelta("a")]
