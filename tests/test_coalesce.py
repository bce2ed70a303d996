"""The coalescing layer: identical requests in flight share one upstream call."""

from __future__ import annotations

from typing import Any

import attrs
import pytest
import trio
import trio.testing

from trio_orchestrator import (
    Config,
    DeadlineExceeded,
    Done,
    EchoWorker,
    GenerationParams,
    Overloaded,
    Passthrough,
    PipelineConfig,
    PromptRequest,
    StreamEvent,
    TextDelta,
    Tool,
    Usage,
    open_gateway,
    open_pipeline,
)
from trio_orchestrator.errors import ProviderTimeout, RequestCancelled
from trio_orchestrator.resilience import CoalescingConfig, CoalescingLayer, request_key
from trio_orchestrator.resilience.config import ResilienceConfig
from trio_orchestrator.resilience.stack import iter_layers
from trio_orchestrator.types import RequestNotes, reset_request_notes, set_request_notes
from trio_orchestrator.workers import EventSink, collect

GREEDY = GenerationParams(temperature=0)


def greedy(text: str = "hello there world", **params: Any) -> PromptRequest:
    return PromptRequest(input=text, params=attrs.evolve(GREEDY, **params))


@attrs.define(eq=False)
class CountingWorker:
    """Counts upstream calls and delegates to an EchoWorker."""

    inner: EchoWorker = attrs.field(factory=lambda: EchoWorker(token_delay=0.1))
    calls: int = 0

    async def generate(self, request: PromptRequest, emit: EventSink) -> None:
        self.calls += 1
        await self.inner.generate(request, emit)


@attrs.define(eq=False)
class GatedWorker:
    """Emits one token, waits for ``gate``, then finishes; records being cancelled."""

    gate: trio.Event = attrs.field(factory=trio.Event)
    first_sent: trio.Event = attrs.field(factory=trio.Event)
    calls: int = 0
    cancelled: bool = False
    error: Exception | None = None

    async def generate(self, request: PromptRequest, emit: EventSink) -> None:
        self.calls += 1
        await emit(TextDelta("first "))
        self.first_sent.set()
        try:
            await self.gate.wait()
        except trio.Cancelled:
            self.cancelled = True
            raise
        if self.error is not None:
            raise self.error
        await emit(TextDelta("second"))
        await emit(Usage(1, 2))
        await emit(Done("stop", "first second", Usage(1, 2)))


EXPECTED = [
    TextDelta("first "),
    TextDelta("second"),
    Usage(1, 2),
    Done("stop", "first second", Usage(1, 2)),
]


def big_config(n: int) -> Config:
    return Config(
        PipelineConfig(
            rag_capacity=n,
            assemble_capacity=n,
            inference_capacity=n,
            post_capacity=n,
            stream_capacity=n,
            inference_concurrency=n,
        )
    )


async def subscribe(
    layer: CoalescingLayer, request: PromptRequest, into: list[StreamEvent]
) -> None:
    async def emit(event: StreamEvent) -> None:
        into.append(event)

    await layer.generate(request, emit)


async def test_thousand_identical_requests_make_one_upstream_call(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """1000 identical concurrent requests through the pipeline cost exactly one worker call:
    the coalescing layer is put in the request path by configuration."""
    worker = CountingWorker()
    answers: list[str] = []
    config = attrs.evolve(
        big_config(1024), resilience=ResilienceConfig(coalescing=CoalescingConfig(enabled=True))
    )
    async with open_gateway(config, worker=worker) as gateway:
        pipeline = gateway.pipeline
        (layer,) = [w for w in iter_layers(pipeline.worker) if isinstance(w, CoalescingLayer)]
        async with trio.open_nursery() as n:

            async def ask() -> None:
                answers.append((await pipeline.submit(greedy())).text)

            for _ in range(1000):
                n.start_soon(ask)
        stats = layer.statistics()
    assert worker.calls == 1
    assert answers == ["hello there world"] * 1000
    assert (stats.upstream_calls, stats.coalesced, stats.in_flight_keys) == (1, 999, 0)


async def test_late_joiner_receives_the_whole_stream() -> None:
    """A subscriber joining after tokens have been emitted still gets the stream from its start."""
    worker = GatedWorker()
    early: list[StreamEvent] = []
    late: list[StreamEvent] = []
    async with trio.open_nursery() as nursery:
        layer = CoalescingLayer(worker, CoalescingConfig(), nursery)
        nursery.start_soon(subscribe, layer, greedy(), early)
        await worker.first_sent.wait()
        await trio.testing.wait_all_tasks_blocked()
        assert early == [TextDelta("first ")]
        nursery.start_soon(subscribe, layer, greedy(), late)
        await trio.testing.wait_all_tasks_blocked()
        worker.gate.set()
    assert worker.calls == 1
    assert early == EXPECTED
    assert late == EXPECTED


async def test_one_subscriber_leaving_keeps_the_upstream_call() -> None:
    """The first subscriber leaving does not cancel the call the second one still waits on."""
    worker = GatedWorker()
    stays: list[StreamEvent] = []
    async with trio.open_nursery() as nursery:
        layer = CoalescingLayer(worker, CoalescingConfig(), nursery)
        leaver = trio.CancelScope()
        nursery.start_soon(subscribe, layer, greedy(), stays)
        nursery.start_soon(_subscribe_in, leaver, layer)
        await trio.testing.wait_all_tasks_blocked()
        assert layer.statistics().subscribers == 2
        leaver.cancel()
        await trio.testing.wait_all_tasks_blocked()
        assert layer.statistics().subscribers == 1
        worker.gate.set()
    assert not worker.cancelled
    assert stays == EXPECTED


async def _subscribe_in(scope: trio.CancelScope, layer: CoalescingLayer) -> None:
    with scope:
        await subscribe(layer, greedy(), [])


async def test_last_subscriber_leaving_cancels_the_upstream_call() -> None:
    """When every subscriber has left, the worker's call is cancelled and the key is free."""
    worker = GatedWorker()
    async with trio.open_nursery() as nursery:
        layer = CoalescingLayer(worker, CoalescingConfig(), nursery)
        scopes = [trio.CancelScope(), trio.CancelScope()]
        for scope in scopes:
            nursery.start_soon(_subscribe_in, scope, layer)
        await trio.testing.wait_all_tasks_blocked()
        for scope in scopes:
            scope.cancel()
    stats = layer.statistics()
    assert worker.cancelled
    assert (stats.abandoned, stats.in_flight_keys, stats.subscribers) == (1, 0, 0)
    assert stats.buffered_events == 0  # the abandoned answer's buffer is freed too


async def test_upstream_error_reaches_every_subscriber_as_the_same_type() -> None:
    """An upstream failure fails each coalesced request with an error of the worker's type."""
    worker = GatedWorker(error=Overloaded("busy, try later", provider="p", retry_after=3.0))
    errors: list[BaseException] = []
    async with trio.open_nursery() as layers:
        layer = CoalescingLayer(worker, CoalescingConfig(), layers)
        async with open_pipeline(layer) as pipeline:

            async def call() -> None:
                try:
                    await pipeline.submit(greedy())
                except Overloaded as exc:
                    errors.append(exc)

            async with trio.open_nursery() as callers:
                for _ in range(3):
                    callers.start_soon(call)
                await worker.first_sent.wait()
                await trio.testing.wait_all_tasks_blocked()
                worker.gate.set()
            assert pipeline.statistics().failed == 3
    assert worker.calls == 1
    assert [type(e) for e in errors] == [Overloaded] * 3
    assert {(str(e), e.retry_after) for e in errors} == {("busy, try later", 3.0)}  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    "other",
    [
        greedy("another prompt"),
        greedy(max_tokens=2),
        greedy(model="other"),
        greedy(stop=("x",)),
        greedy(seed=7),
        greedy(top_p=0.5),
        greedy(extra={"logprobs": True}),
    ],
)
async def test_requests_differing_in_output_parameters_do_not_coalesce(
    other: PromptRequest,
) -> None:
    """Requests that could get different answers each make their own upstream call."""
    worker = GatedWorker()
    async with trio.open_nursery() as nursery:
        layer = CoalescingLayer(worker, CoalescingConfig(), nursery)
        nursery.start_soon(subscribe, layer, greedy(), [])
        nursery.start_soon(subscribe, layer, other, [])
        await trio.testing.wait_all_tasks_blocked()
        worker.gate.set()
    assert worker.calls == 2


async def test_labels_and_scheduling_fields_do_not_split_a_key() -> None:
    """request_id, session, meta, timeout and priority do not change the identity key."""
    base = greedy()
    relabelled = attrs.evolve(
        base, request_id="req_other", session="s", meta={"user": "u"}, timeout=5.0, priority=0
    )
    assert request_key(relabelled) == request_key(base)


async def test_a_responses_body_splits_a_key() -> None:
    """A /v1/responses request (whose body a native upstream receives) never shares a key
    with the chat request of the same translation, nor with another body; a chat key is
    unchanged."""
    base = greedy()
    native = attrs.evolve(base, responses_body={"model": "m", "input": "hi"})
    other = attrs.evolve(base, responses_body={"model": "m", "input": "hi", "store": False})
    assert len({request_key(base), request_key(native), request_key(other)}) == 3
    assert request_key(attrs.evolve(base, responses_body=None)) == request_key(base)


async def test_sampled_requests_do_not_coalesce_by_default() -> None:
    """Without coalesce_sampled, requests at an unset temperature each get their own call."""
    worker = GatedWorker()
    sampled = PromptRequest(input="hi")
    async with trio.open_nursery() as nursery:
        layer = CoalescingLayer(worker, CoalescingConfig(), nursery)
        for _ in range(2):
            nursery.start_soon(subscribe, layer, sampled, [])
        await trio.testing.wait_all_tasks_blocked()
        worker.gate.set()
    assert worker.calls == 2
    assert layer.statistics().bypassed == 2


async def test_sampled_requests_coalesce_when_configured() -> None:
    """With coalesce_sampled, identical sampled requests share one call."""
    worker = GatedWorker()
    sampled = PromptRequest(input="hi", params=GenerationParams(temperature=0.7))
    async with trio.open_nursery() as nursery:
        layer = CoalescingLayer(worker, CoalescingConfig(coalesce_sampled=True), nursery)
        for _ in range(2):
            nursery.start_soon(subscribe, layer, sampled, [])
        await trio.testing.wait_all_tasks_blocked()
        worker.gate.set()
    assert worker.calls == 1


async def test_slow_subscriber_does_not_hold_back_others_or_grow_the_buffer() -> None:
    """A stuck subscriber neither delays a fast one nor makes the buffer exceed one answer."""
    worker = GatedWorker()
    fast: list[StreamEvent] = []
    unstick = trio.Event()

    async def stuck_emit(event: StreamEvent) -> None:
        await unstick.wait()

    async with trio.open_nursery() as nursery:
        layer = CoalescingLayer(worker, CoalescingConfig(), nursery)
        nursery.start_soon(layer.generate, greedy(), stuck_emit)
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(subscribe, layer, greedy(), fast)
        worker.gate.set()
        await trio.testing.wait_all_tasks_blocked()
        assert fast == EXPECTED
        stats = layer.statistics()
        assert (stats.subscribers, stats.in_flight_keys) == (1, 0)
        assert stats.buffered_events == len(EXPECTED)
        unstick.set()
    assert worker.calls == 1


async def test_streaming_callers_share_one_call_end_to_end(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Two pipeline streams of one request, the second opened mid-answer, see the same events."""
    worker = CountingWorker()
    streams: list[list[StreamEvent]] = [[], []]
    async with trio.open_nursery() as layers:
        layer = CoalescingLayer(worker, CoalescingConfig(), layers)
        async with open_pipeline(layer) as pipeline:

            async def read(into: list[StreamEvent]) -> None:
                async with pipeline.stream(greedy("one two three four")) as events:
                    async for event in events:
                        into.append(event)

            async with trio.open_nursery() as readers:
                readers.start_soon(read, streams[0])
                await trio.sleep(0.15)  # two tokens in
                readers.start_soon(read, streams[1])
    assert worker.calls == 1
    assert streams[0] == streams[1]
    assert "".join(e.text for e in streams[1] if isinstance(e, TextDelta)) == "one two three four"


@pytest.mark.parametrize(
    "request_",
    [
        greedy("a short answer"),
        greedy("cut me short please", max_tokens=2),
        greedy("call a tool", tools=(Tool("lookup"),), tool_choice="required"),
        PromptRequest(input="sampled, so passed straight through"),
    ],
)
async def test_layer_keeps_the_worker_contract(request_: PromptRequest) -> None:
    """Through the layer, the grammar-checked answer equals the bare worker's answer."""
    worker = EchoWorker()
    async with trio.open_nursery() as nursery:
        layer = CoalescingLayer(worker, CoalescingConfig(), nursery)
        assert await collect(layer, request_) == await collect(worker, request_)


async def test_subscriber_expiring_leaves_the_others_their_answer(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Through the pipeline, one coalesced request expiring does not cut the other short."""
    worker = CountingWorker()  # 0.1 s per token: the answer takes 0.2 s
    outcomes: dict[str, object] = {}
    async with trio.open_nursery() as layers:
        layer = CoalescingLayer(worker, CoalescingConfig(), layers)
        async with open_pipeline(layer) as pipeline:

            async def call(name: str, seconds: float) -> None:
                request = attrs.evolve(greedy(), timeout=seconds)
                try:
                    outcomes[name] = (await pipeline.submit(request)).text
                except DeadlineExceeded as exc:
                    outcomes[name] = exc

            async with trio.open_nursery() as callers:
                callers.start_soon(call, "impatient", 0.05)
                callers.start_soon(call, "patient", 10.0)
        stats = layer.statistics()
    assert isinstance(outcomes["impatient"], DeadlineExceeded)
    assert outcomes["patient"] == "hello there world"
    assert (worker.calls, stats.coalesced, stats.abandoned) == (1, 1, 0)


@attrs.define(eq=False)
class RichWorker:
    """Answers slowly with members passed through and usage details, counting its calls."""

    calls: int = 0

    async def generate(self, request: PromptRequest, emit: EventSink) -> None:
        self.calls += 1
        await emit(Passthrough({"service_tier": "default"}, message={"reasoning_content": "so"}))
        await trio.sleep(0.5)
        await emit(TextDelta("Hi"))
        usage = Usage(9, 2, cached_input_tokens=8, details={"prompt_tokens_details": {"x": 1}})
        await emit(usage)
        await emit(Done("stop", "Hi", usage))


async def test_followers_get_passthrough_members_and_usage_details(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A follower of a shared call gets the leader's Passthrough events and usage details."""
    inner = RichWorker()
    completions = []
    async with trio.open_nursery() as flights:
        layer = CoalescingLayer(inner, CoalescingConfig(), flights)

        async def ask() -> None:
            completions.append(await collect(layer, greedy()))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(ask)
            await trio.sleep(0.1)
            nursery.start_soon(ask)
    assert inner.calls == 1
    for completion in completions:
        assert completion.passthrough is not None
        assert completion.passthrough.response == {"service_tier": "default"}
        assert completion.passthrough.message == {"reasoning_content": "so"}
        assert completion.usage is not None
        assert completion.usage.details == {"prompt_tokens_details": {"x": 1}}
        assert completion.usage.cached_input_tokens == 8


# Tests that kill mutants the mutation session (scripts/mutation.py) found surviving.


async def test_max_subscribers_caps_a_flight() -> None:
    """With max_subscribers 1 two identical requests make two upstream calls, counted."""
    worker = CountingWorker()
    async with trio.open_nursery() as nursery:
        layer = CoalescingLayer(worker, CoalescingConfig(max_subscribers=1), nursery)
        answers: list[list[StreamEvent]] = [[], []]
        async with trio.open_nursery() as callers:
            for into in answers:
                callers.start_soon(subscribe, layer, greedy(), into)
    assert worker.calls == 2
    assert layer.statistics().upstream_calls == 2


async def test_each_abandoned_call_is_counted() -> None:
    """Two upstream calls left by all their subscribers count two abandonments."""
    worker = GatedWorker()
    async with trio.open_nursery() as nursery:
        layer = CoalescingLayer(worker, CoalescingConfig(), nursery)
        for _ in range(2):
            scope = trio.CancelScope()
            nursery.start_soon(_subscribe_in, scope, layer)
            await trio.testing.wait_all_tasks_blocked()
            scope.cancel()
            await trio.testing.wait_all_tasks_blocked()
    assert layer.statistics().abandoned == 2


async def test_reconfigure_takes_a_new_cap_but_refuses_a_toggle() -> None:
    """A reload changes max_subscribers for new flights; switching coalescing off is refused."""
    worker = CountingWorker()
    async with trio.open_nursery() as nursery:
        layer = CoalescingLayer(worker, CoalescingConfig(enabled=True), nursery)
        assert layer.reconfigure(CoalescingConfig(enabled=True, max_subscribers=1)) == []
        refused = layer.reconfigure(CoalescingConfig(enabled=False))
        assert refused == [
            "resilience.coalescing.enabled: adding or removing a layer needs a restart True → False"
        ]
        answers: list[list[StreamEvent]] = [[], []]
        async with trio.open_nursery() as callers:
            for into in answers:
                callers.start_soon(subscribe, layer, greedy(), into)
    assert worker.calls == 2


async def test_a_read_answer_frees_its_buffer_when_the_last_subscriber_leaves() -> None:
    """Once every subscriber has read a finished answer, no flight or buffer is left."""
    worker = GatedWorker()
    answers: list[list[StreamEvent]] = [[], []]
    async with trio.open_nursery() as nursery:
        layer = CoalescingLayer(worker, CoalescingConfig(), nursery)
        for into in answers:
            nursery.start_soon(subscribe, layer, greedy(), into)
        await trio.testing.wait_all_tasks_blocked()
        worker.gate.set()
    stats = layer.statistics()
    assert answers == [EXPECTED, EXPECTED]
    assert (stats.subscribers, stats.buffered_events, stats.in_flight_keys) == (0, 0, 0)


async def test_shared_call_cancelled_under_its_subscribers_fails_them_as_cancelled() -> None:
    """When the layer's nursery is cancelled mid-answer (shutdown), each subscriber, even one
    with a deadline of its own, gets RequestCancelled saying the shared call was cancelled,
    not a timeout and not a truncated answer passed off as complete."""
    worker = GatedWorker()
    outcomes: list[BaseException | None] = []

    async def ask(into: list[StreamEvent]) -> None:
        try:
            with trio.fail_after(3600):
                await subscribe(layer, greedy(), into)
        except RequestCancelled as exc:
            outcomes.append(exc)
        else:
            outcomes.append(None)

    received: list[list[StreamEvent]] = [[], []]
    async with trio.open_nursery() as callers, trio.open_nursery() as flights:
        layer = CoalescingLayer(worker, CoalescingConfig(), flights)
        for into in received:
            callers.start_soon(ask, into)
        await worker.first_sent.wait()
        await trio.testing.wait_all_tasks_blocked()
        flights.cancel_scope.cancel()
    assert worker.cancelled
    assert [type(e) for e in outcomes] == [RequestCancelled] * 2
    assert {str(e) for e in outcomes} == {"the shared upstream call was cancelled"}
    assert received == [[TextDelta("first ")]] * 2
    stats = layer.statistics()
    assert (stats.subscribers, stats.buffered_events, stats.in_flight_keys) == (0, 0, 0)


async def test_shared_call_reaching_its_deadline_fails_subscribers_as_a_timeout(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The shared call runs until the deadline its callers had when they joined; a caller who
    moved its own deadline later after joining gets ProviderTimeout saying so when the shared
    call reaches it."""
    worker = GatedWorker()
    outcomes: list[BaseException | None] = []
    caller = trio.CancelScope(deadline=trio.current_time() + 1.0)

    async def ask() -> None:
        with caller:
            try:
                await subscribe(layer, greedy(), [])
            except ProviderTimeout as exc:
                outcomes.append(exc)
            else:
                outcomes.append(None)

    async with trio.open_nursery() as nursery:
        layer = CoalescingLayer(worker, CoalescingConfig(), nursery)
        nursery.start_soon(ask)
        await worker.first_sent.wait()
        caller.deadline = trio.current_time() + 100.0
    assert worker.cancelled
    assert [type(e) for e in outcomes] == [ProviderTimeout]
    assert str(outcomes[0]) == (
        "the shared upstream call reached the latest deadline of its callers; "
        "give the request a longer timeout"
    )


async def test_a_joiner_notes_coalesced_for_the_request_log() -> None:
    """The request that joined a flight notes coalesced; the one that started it does not."""
    worker = GatedWorker()
    notes = [RequestNotes(), RequestNotes()]

    async def noted(layer: CoalescingLayer, into: RequestNotes) -> None:
        token = set_request_notes(into)
        try:
            await subscribe(layer, greedy(), [])
        finally:
            reset_request_notes(token)

    async with trio.open_nursery() as nursery:
        layer = CoalescingLayer(worker, CoalescingConfig(), nursery)
        nursery.start_soon(noted, layer, notes[0])
        await worker.first_sent.wait()
        nursery.start_soon(noted, layer, notes[1])
        await trio.testing.wait_all_tasks_blocked()
        worker.gate.set()
    assert worker.calls == 1
    assert [n.coalesced for n in notes] == [False, True]


async def test_a_shared_call_streams_whoever_leads_it() -> None:
    """A caller that takes its answer whole may be answered unstreamed by the upstream; a
    call it shares with others streams, so that a streaming caller joining it gets the text
    as it comes."""
    seen: list[bool] = []

    @attrs.define(eq=False)
    class Noting(GatedWorker):
        async def generate(self, request: PromptRequest, emit: EventSink) -> None:
            seen.append(request.streaming)
            await super().generate(request, emit)

    worker = Noting()
    streamed: list[StreamEvent] = []
    async with trio.open_nursery() as nursery:
        layer = CoalescingLayer(worker, CoalescingConfig(), nursery)
        nursery.start_soon(subscribe, layer, greedy().streamed(False), [])
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(subscribe, layer, greedy().streamed(True), streamed)
        await trio.testing.wait_all_tasks_blocked()
        assert streamed == [TextDelta("first ")]  # before the call has ended
        worker.gate.set()
    assert (worker.calls, seen) == (1, [True])
