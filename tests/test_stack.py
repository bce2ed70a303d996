"""The layers composed in the request path: configured, ordered, and end to end."""

from __future__ import annotations

import attrs
import pytest
import trio
import trio.testing
from _scripted import OK, Recorder, ScriptedWorker, Step, fail
from hypothesis import given, settings
from hypothesis import strategies as st

from trio_orchestrator import Config, EchoWorker, PromptRequest, open_gateway
from trio_orchestrator.errors import (
    BadRequest,
    CircuitOpen,
    DeadlineExceeded,
    OrchestratorError,
    RateLimited,
    RateLimitExceeded,
    ServerError,
)
from trio_orchestrator.events import (
    Done,
    StreamEvent,
    TextDelta,
    ToolCallDelta,
    ToolCallStart,
    Usage,
)
from trio_orchestrator.pipeline import Pipeline, PipelineStatistics
from trio_orchestrator.resilience import (
    BreakerConfig,
    CircuitBreakerLayer,
    LimitConfig,
    RateLimitLayer,
    RateLimitsConfig,
    ResilienceConfig,
    RetryConfig,
    RetryLayer,
    iter_layers,
)
from trio_orchestrator.types import GenerationParams, ToolCall
from trio_orchestrator.workers.base import EventSink, ModelWorker, collect

BREAKER = BreakerConfig(enabled=True, failure_threshold=2, cooldown=30.0, jitter=0.0)
RETRY = RetryConfig(enabled=True, max_attempts=3, initial_backoff=0.1)


def _config(**sections: object) -> Config:
    return Config(resilience=ResilienceConfig(**sections))  # type: ignore[arg-type]


def _limits(*limits: LimitConfig) -> RateLimitsConfig:
    return RateLimitsConfig(enabled=True, limits=limits)


def _accounted(stats: PipelineStatistics) -> PipelineStatistics:
    ended = stats.completed + stats.failed + stats.shed + stats.expired + stats.cancelled
    assert stats.in_flight == 0
    assert stats.submitted == ended
    return stats


def _layer(pipeline: Pipeline, kind: type) -> object:
    return next(w for w in iter_layers(pipeline.worker) if isinstance(w, kind))


async def test_no_layer_enabled_leaves_the_worker_unwrapped() -> None:
    """With the default configuration requests go straight to the given worker."""
    worker = EchoWorker()
    async with open_gateway(worker=worker) as gateway:
        pipeline = gateway.pipeline
        assert pipeline.worker is worker


async def test_layers_stack_in_the_configured_order() -> None:
    """Enabled layers wrap the provider as rate limit → circuit breaker → retry → provider."""
    worker = EchoWorker()
    config = _config(
        rate_limits=_limits(LimitConfig("model", requests_per_second=100.0)),
        breaker=BREAKER,
        retry=RETRY,
    )
    async with open_gateway(config, worker=worker) as gateway:
        pipeline = gateway.pipeline
        kinds = [type(w) for w in iter_layers(pipeline.worker)]
    assert kinds == [RateLimitLayer, CircuitBreakerLayer, RetryLayer, EchoWorker]


async def test_open_breaker_fails_requests_fast(autojump_clock: trio.testing.MockClock) -> None:
    """After two upstream failures the third request fails with CircuitOpen, uncalled."""
    worker = ScriptedWorker([fail(ServerError("upstream down"))])
    async with open_gateway(_config(breaker=BREAKER), worker=worker) as gateway:
        pipeline = gateway.pipeline
        for _ in range(2):
            with pytest.raises(ServerError):
                await pipeline.submit(PromptRequest(input="hi"))
        with pytest.raises(CircuitOpen) as info:
            await pipeline.submit(PromptRequest(input="hi"))
        stats = _accounted(pipeline.statistics())
    assert worker.calls == 2
    assert info.value.retry_after == pytest.approx(30.0)
    assert stats.failed == 3


async def test_breaker_probes_and_closes_after_cooldown(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Once the cool-down has passed, successful probes close the circuit again."""
    worker = ScriptedWorker([fail(ServerError("a")), fail(ServerError("b")), OK])
    config = _config(breaker=BREAKER)
    async with open_gateway(config, worker=worker) as gateway:
        pipeline = gateway.pipeline
        for _ in range(2):
            with pytest.raises(ServerError):
                await pipeline.submit(PromptRequest(input="hi"))
        await trio.sleep(30.0)
        for _ in range(4):
            await pipeline.submit(PromptRequest(input="hi"))
        breaker = _layer(pipeline, CircuitBreakerLayer)
        assert isinstance(breaker, CircuitBreakerLayer)
        assert breaker.statistics()[0].state == "closed"
        assert _accounted(pipeline.statistics()).completed == 4


async def test_deadline_timeout_counts_for_the_breaker(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Requests that run out of time are expired and count as breaker failures."""
    worker = ScriptedWorker([Step(delay=60.0)])
    async with open_gateway(_config(breaker=BREAKER), worker=worker) as gateway:
        pipeline = gateway.pipeline
        for _ in range(2):
            with pytest.raises(DeadlineExceeded):
                await pipeline.submit(PromptRequest(input="hi", timeout=1.0))
        with pytest.raises(CircuitOpen):
            await pipeline.submit(PromptRequest(input="hi", timeout=1.0))
        stats = _accounted(pipeline.statistics())
    assert (stats.expired, stats.failed) == (2, 1)


async def test_caller_leaving_a_stream_does_not_count_for_the_breaker(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Closing a stream early cancels the call without opening the circuit."""
    worker = ScriptedWorker([Step(tokens=("a", "b", "c"), delay=1.0)])
    config = _config(breaker=BreakerConfig(enabled=True, failure_threshold=1))
    async with open_gateway(config, worker=worker) as gateway:
        pipeline = gateway.pipeline
        for _ in range(3):
            async with pipeline.stream(PromptRequest(input="hi")) as events:
                await events.__anext__()
        breaker = _layer(pipeline, CircuitBreakerLayer)
        assert isinstance(breaker, CircuitBreakerLayer)
        stats = breaker.statistics()[0]
        assert (stats.state, stats.failures) == ("closed", 0)
        assert _accounted(pipeline.statistics()).cancelled == 3


async def test_retry_recovers_a_transient_server_error(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A ServerError then success: the request completes and counts once."""
    worker = ScriptedWorker([fail(ServerError("blip")), OK])
    async with open_gateway(_config(retry=RETRY), worker=worker) as gateway:
        pipeline = gateway.pipeline
        completion = await pipeline.submit(PromptRequest(input="hi"))
        stats = _accounted(pipeline.statistics())
    assert completion.text == "ok"
    assert (stats.completed, stats.failed, worker.calls) == (1, 0, 2)


async def test_rate_limit_reject_mode_fails_the_request(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Past its burst, a reject-mode limit fails requests with RateLimitExceeded."""
    limits = _limits(LimitConfig("model", requests_per_second=1.0, mode="reject"))
    async with open_gateway(_config(rate_limits=limits), worker=EchoWorker()) as gateway:
        pipeline = gateway.pipeline
        await pipeline.submit(PromptRequest(input="hi"))
        with pytest.raises(RateLimitExceeded) as info:
            await pipeline.submit(PromptRequest(input="hi"))
        stats = _accounted(pipeline.statistics())
    assert info.value.retry_after == pytest.approx(1.0)
    assert (stats.completed, stats.failed) == (1, 1)


async def test_rate_limit_wait_mode_spaces_requests(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """At 2 requests/s with burst 1, five concurrent requests finish over two seconds."""
    limits = _limits(LimitConfig("model", requests_per_second=2.0, burst=1.0))
    finished: list[float] = []
    async with open_gateway(_config(rate_limits=limits), worker=EchoWorker()) as gateway:
        pipeline = gateway.pipeline
        start = trio.current_time()

        async def call() -> None:
            await pipeline.submit(PromptRequest(input="hi"))
            finished.append(trio.current_time() - start)

        async with trio.open_nursery() as nursery:
            for _ in range(5):
                nursery.start_soon(call)
        stats = _accounted(pipeline.statistics())
    assert sorted(finished) == pytest.approx([0.0, 0.5, 1.0, 1.5, 2.0])
    assert stats.completed == 5


async def test_open_gateway_lets_the_bodys_exception_through_unwrapped() -> None:
    """An error in the body of a gateway with layers comes out as itself, not inside an
    ExceptionGroup."""
    with pytest.raises(KeyError):
        async with open_gateway(_config(breaker=BREAKER, retry=RETRY), worker=EchoWorker()):
            raise KeyError("boom")


def test_limit_needs_exactly_one_rate() -> None:
    """A limit with no rate, or two, is a configuration error naming the problem."""
    with pytest.raises(ValueError, match="exactly one"):
        LimitConfig("model")
    with pytest.raises(ValueError, match="exactly one"):
        LimitConfig("model", requests_per_second=1.0, tokens_per_minute=10.0)


# ------------------------------------------------------------------ the worker contract

STREAM: list[StreamEvent] = [
    TextDelta("Hel"),
    TextDelta("lo"),
    ToolCallStart(0, "call_1", "lookup"),
    ToolCallDelta(0, '{"q": 1}'),
    Usage(4, 3),
    Done("tool_calls", "Hello", Usage(4, 3), (ToolCall("call_1", "lookup", '{"q": 1}'),), "m"),
]


@attrs.define(eq=False)
class _Streamer:
    """Emits STREAM, then raises ``error`` instead of returning if one is given."""

    error: Exception | None = None

    async def generate(self, request: PromptRequest, emit: EventSink) -> None:
        for event in STREAM if self.error is None else STREAM[:2]:
            await emit(event)
        if self.error is not None:
            raise self.error


def _wrap_each(inner: ModelWorker) -> list[ModelWorker]:
    return [
        RateLimitLayer(
            inner,
            _limits(
                LimitConfig("model", requests_per_second=100.0),
                LimitConfig("model", tokens_per_minute=1e6),
            ),
        ),
        CircuitBreakerLayer(inner, BREAKER),
        RetryLayer(inner, RETRY),
    ]


@pytest.mark.parametrize("index", range(3), ids=["rate_limit", "breaker", "retry"])
async def test_every_layer_passes_events_through_unchanged(index: int) -> None:
    """Each layer delivers the stream exactly as emitted, in grammar, one Done."""
    layer = _wrap_each(_Streamer())[index]
    completion = await collect(layer, PromptRequest(input="hi", params=GenerationParams("m")))
    recorder = Recorder()
    await layer.generate(PromptRequest(input="hi", params=GenerationParams("m")), recorder)
    assert recorder.events == STREAM
    assert completion.text == "Hello"


@pytest.mark.parametrize("index", range(3), ids=["rate_limit", "breaker", "retry"])
async def test_every_layer_raises_the_workers_typed_error(index: int) -> None:
    """A worker's typed error reaches the caller as the same object, with nothing after it."""
    error = ServerError("mid-stream")
    layer = _wrap_each(_Streamer(error))[index]
    recorder = Recorder()
    with pytest.raises(ServerError) as info:
        await layer.generate(PromptRequest(input="hi"), recorder)
    assert info.value is error
    assert recorder.events == STREAM[:2]


# ------------------------------------------------------------------ accounting under faults

steps = st.one_of(
    st.just(OK),
    st.builds(Step, delay=st.sampled_from([0.5, 3.0, 30.0])),
    st.sampled_from(
        [ServerError("5xx"), BadRequest("4xx"), RateLimited("429", retry_after=2.0)]
    ).map(fail),
    st.just(Step(ServerError("cut"), tokens=("a",))),
)


@settings(max_examples=40)
@given(
    script=st.lists(steps, min_size=1, max_size=12),
    timeouts=st.lists(st.sampled_from([1.0, 5.0, 60.0]), min_size=1, max_size=25),
)
def test_every_request_ends_exactly_once_with_all_layers_on(
    script: list[Step], timeouts: list[float]
) -> None:
    """With every layer on and random faults, every request ends in exactly one outcome."""
    config = _config(
        rate_limits=_limits(LimitConfig("model", requests_per_second=2.0, burst=2.0)),
        breaker=BreakerConfig(enabled=True, failure_threshold=2, cooldown=3.0, half_open_probes=1),
        retry=RETRY,
    )
    errors: list[BaseException] = []

    async def run() -> PipelineStatistics:
        async with open_gateway(config, worker=ScriptedWorker(script)) as gateway:
            pipeline = gateway.pipeline

            async def call(seconds: float) -> None:
                try:
                    await pipeline.submit(PromptRequest(input="hi", timeout=seconds))
                except OrchestratorError as exc:
                    errors.append(exc)

            async with trio.open_nursery() as nursery:
                for timeout in timeouts:
                    nursery.start_soon(call, timeout)
                    await trio.sleep(0.3)
            return pipeline.statistics()

    stats = trio.run(run, clock=trio.testing.MockClock(autojump_threshold=0))
    _accounted(stats)
    assert stats.submitted == len(timeouts)
    assert stats.completed + len(errors) == len(timeouts)
