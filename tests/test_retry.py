"""The retry layer: what is retried, how long it waits, and when it gives up."""

from __future__ import annotations

import random

import attrs
import pytest
import trio
import trio.testing
from _scripted import OK, Recorder, ScriptedWorker, Step, fail
from hypothesis import given
from hypothesis import strategies as st

from trio_orchestrator.errors import BadRequest, RateLimited, ServerError
from trio_orchestrator.events import Done, Passthrough, TextDelta
from trio_orchestrator.observability.spans import CURRENT_TRACER
from trio_orchestrator.resilience import RetryConfig, RetryLayer
from trio_orchestrator.resilience.retry import backoff_cap
from trio_orchestrator.types import (
    PromptRequest,
    RequestNotes,
    reset_request_notes,
    set_request_notes,
)
from trio_orchestrator.workers.base import EventSink

REQUEST = PromptRequest(input="hi")


def _layer(script: list[Step], **overrides: object) -> tuple[RetryLayer, ScriptedWorker]:
    worker = ScriptedWorker(script)
    config = RetryConfig(enabled=True, **overrides)  # type: ignore[arg-type]
    return RetryLayer(worker, config, rng=random.Random(0)), worker


async def _sleeps(layer: RetryLayer, clock: trio.testing.MockClock) -> float:
    """Run one request through ``layer`` and return the Trio time it took."""
    start = trio.current_time()
    await layer.generate(REQUEST, Recorder())
    return trio.current_time() - start


async def test_transient_error_is_retried_until_success(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Two ServerErrors then success: the caller sees only the success."""
    layer, worker = _layer([fail(ServerError("a")), fail(ServerError("b")), OK])
    recorder = Recorder()
    await layer.generate(REQUEST, recorder)
    assert worker.calls == 3
    assert isinstance(recorder.events[-1], Done)
    stats = layer.statistics()
    assert (stats.attempts, stats.retries, stats.recovered) == (3, 2, 1)


async def test_not_retryable_error_is_raised_at_once() -> None:
    """A BadRequest goes to the caller after one attempt."""
    layer, worker = _layer([fail(BadRequest("no")), OK])
    with pytest.raises(BadRequest):
        await layer.generate(REQUEST, Recorder())
    assert worker.calls == 1
    assert layer.statistics().gave_up["not_retryable"] == 1


async def test_attempts_are_bounded_by_max_attempts(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """With max_attempts 3 the worker is called 3 times, then the last error surfaces."""
    layer, worker = _layer([fail(ServerError("down"))], max_attempts=3)
    with pytest.raises(ServerError):
        await layer.generate(REQUEST, Recorder())
    assert worker.calls == 3
    assert layer.statistics().gave_up["attempts"] == 1


async def test_retry_after_is_honoured(autojump_clock: trio.testing.MockClock) -> None:
    """A 429 with Retry-After 7 s waits at least 7 s before the next attempt."""
    layer, _ = _layer([fail(RateLimited("slow down", retry_after=7.0)), OK], initial_backoff=0.1)
    assert await _sleeps(layer, autojump_clock) >= 7.0


async def test_retry_after_beyond_the_maximum_is_not_waited_for() -> None:
    """A Retry-After above max_retry_after gives up at once."""
    layer, worker = _layer(
        [fail(RateLimited("come back tomorrow", retry_after=86400.0)), OK], max_retry_after=60.0
    )
    with pytest.raises(RateLimited):
        await layer.generate(REQUEST, Recorder())
    assert worker.calls == 1
    assert layer.statistics().gave_up["retry_after"] == 1


async def test_backoff_that_would_cross_the_deadline_gives_up(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """With 5 s left and a 7 s Retry-After, the error surfaces at once, not at the deadline."""
    layer, worker = _layer([fail(RateLimited("later", retry_after=7.0)), OK])
    start = trio.current_time()
    with trio.move_on_after(5.0), pytest.raises(RateLimited):
        await layer.generate(REQUEST, Recorder())
    assert trio.current_time() == start
    assert worker.calls == 1
    assert layer.statistics().gave_up["deadline"] == 1


async def test_nothing_is_retried_after_an_event_reached_the_caller() -> None:
    """With restart_stream off, a failure after a token was emitted is not retried."""
    layer, worker = _layer([Step(ServerError("cut"), tokens=("a",)), OK], restart_stream=False)
    with pytest.raises(ServerError):
        await layer.generate(REQUEST, Recorder())
    assert worker.calls == 1
    assert layer.statistics().gave_up["streamed"] == 1


async def test_restart_stream_swallows_the_replayed_prefix(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """With restart_stream, a retry that repeats what was sent continues the stream seamlessly."""
    layer, _ = _layer(
        [Step(ServerError("cut"), tokens=("a",)), Step(tokens=("a", "b"))], restart_stream=True
    )
    recorder = Recorder()
    await layer.generate(REQUEST, recorder)
    texts = [e.text for e in recorder.events if isinstance(e, TextDelta)]
    assert texts == ["a", "b"]
    assert sum(isinstance(e, Done) for e in recorder.events) == 1


async def test_restart_stream_that_diverges_raises_the_original_error(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A restarted attempt that says something else ends with the first attempt's error."""
    original = ServerError("cut")
    layer, _ = _layer([Step(original, tokens=("a",)), Step(tokens=("x", "y"))], restart_stream=True)
    recorder = Recorder()
    with pytest.raises(ServerError) as info:
        await layer.generate(REQUEST, recorder)
    assert info.value is original
    assert recorder.events == [TextDelta("a")]
    assert layer.statistics().gave_up["diverged"] == 1


@given(
    attempt=st.integers(1, 40),
    initial=st.floats(0.01, 10.0),
    multiplier=st.floats(1.0, 4.0),
    maximum=st.floats(0.01, 100.0),
)
def test_backoff_cap_grows_exponentially_and_is_capped(
    attempt: int, initial: float, multiplier: float, maximum: float
) -> None:
    """The backoff bound is initial·multiplier^(n-1), never above max_backoff."""
    config = RetryConfig(initial_backoff=initial, multiplier=multiplier, max_backoff=maximum)
    cap = backoff_cap(config, attempt)
    assert cap <= maximum
    assert cap == pytest.approx(min(maximum, initial * multiplier ** (attempt - 1)))


async def test_backoff_is_full_jitter_below_its_cap(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Each backoff lies in [0, cap]; across requests they vary (jitter)."""
    waits = []
    for seed in range(10):
        worker = ScriptedWorker([fail(ServerError("x")), OK])
        config = RetryConfig(enabled=True, initial_backoff=2.0)
        layer = RetryLayer(worker, config, rng=random.Random(seed))
        waits.append(await _sleeps(layer, autojump_clock))
    assert all(0.0 <= wait <= 2.0 for wait in waits)
    assert len(set(waits)) > 1


@attrs.define(eq=False)
class CutOnce:
    """Sends a passed-through member and a token, fails once, then answers in full."""

    calls: int = 0

    async def generate(self, request: PromptRequest, emit: EventSink) -> None:
        self.calls += 1
        await emit(Passthrough({"system_fingerprint": "fp"}, {"logprobs": {"content": []}}))
        await emit(TextDelta("a"))
        if self.calls == 1:
            raise ServerError("cut")
        await emit(TextDelta("b"))
        await emit(Done("stop", "ab"))


async def test_restart_stream_repeats_passed_through_members_seamlessly(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A restarted attempt that repeats the Passthrough events sent is not taken as diverged."""
    worker = CutOnce()
    layer = RetryLayer(worker, RetryConfig(enabled=True, restart_stream=True))
    recorder = Recorder()
    await layer.generate(REQUEST, recorder)
    assert worker.calls == 2
    assert [type(e).__name__ for e in recorder.events] == [
        "Passthrough", "TextDelta", "TextDelta", "Done",
    ]  # fmt: skip


WHOLE = attrs.evolve(REQUEST, streaming=False)


async def test_a_fault_mid_answer_of_a_non_streaming_request_is_retried(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Nothing reached a non-streaming caller: the retry's answer alone is delivered."""
    layer, worker = _layer([Step(ServerError("cut"), tokens=("a",)), Step(tokens=("x", "y"))])
    recorder = Recorder()
    await layer.generate(WHOLE, recorder)
    assert worker.calls == 2
    texts = [e.text for e in recorder.events if isinstance(e, TextDelta)]
    assert texts == ["x", "y"]
    assert sum(isinstance(e, Done) for e in recorder.events) == 1
    assert layer.statistics().gave_up["streamed"] == 0


async def test_a_non_streaming_request_that_keeps_failing_emits_nothing(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """When every attempt fails mid-answer, the caller gets the error and no partial events."""
    layer, worker = _layer([Step(ServerError("cut"), tokens=("a",))], max_attempts=2)
    recorder = Recorder()
    with pytest.raises(ServerError):
        await layer.generate(WHOLE, recorder)
    assert (worker.calls, recorder.events) == (2, [])
    assert layer.statistics().gave_up["attempts"] == 1


async def test_retries_told_the_same_retry_after_do_not_wake_together(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Calls told to wait 2 s wake between 2 s and 2 s plus the backoff cap, not all at 2 s."""
    waits = []
    for seed in range(10):
        worker = ScriptedWorker([fail(RateLimited("rest", retry_after=2.0)), OK])
        config = RetryConfig(enabled=True, initial_backoff=1.0)
        layer = RetryLayer(worker, config, rng=random.Random(seed))
        waits.append(await _sleeps(layer, autojump_clock))
    assert all(2.0 <= wait <= 3.0 for wait in waits)
    assert len(set(waits)) == len(waits)


# Tests that kill mutants the mutation session (scripts/mutation.py) found surviving.


async def test_counters_add_up_over_several_requests(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """calls, recovered and gave_up count every request, not just the last one."""
    layer, _ = _layer([fail(ServerError("a")), OK, fail(ServerError("b")), OK, OK])
    for _ in range(3):
        await layer.generate(REQUEST, Recorder())
    stats = layer.statistics()
    assert (stats.calls, stats.attempts, stats.retries, stats.recovered) == (3, 5, 2, 2)


async def test_a_first_attempt_success_is_not_a_recovery() -> None:
    """A request that succeeds at once is not counted as recovered."""
    layer, _ = _layer([OK])
    await layer.generate(REQUEST, Recorder())
    assert layer.statistics().recovered == 0


@attrs.define
class _TypeChange:
    """A stream that sends text and fails, then on the retry sends a Passthrough first."""

    calls: int = 0

    async def generate(self, request: PromptRequest, emit: EventSink) -> None:
        self.calls += 1
        if self.calls % 2:
            await emit(TextDelta("a"))
            raise ServerError("cut")
        await emit(Passthrough(response={"system_fingerprint": "x"}))


async def test_a_restarted_stream_of_another_event_kind_diverges(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A retry replaying a different kind of event gives up with the first error, each time."""
    worker = _TypeChange()
    layer = RetryLayer(worker, RetryConfig(enabled=True, restart_stream=True), rng=random.Random(0))
    for _ in range(2):
        with pytest.raises(ServerError, match="cut"):
            await layer.generate(REQUEST, Recorder())
    assert layer.statistics().gave_up["diverged"] == 2


def test_reconfigure_applies_a_new_policy_but_not_a_toggle() -> None:
    """A reload changes attempts at once; switching retry off is refused, named, and not taken."""
    layer, _ = _layer([OK], max_attempts=2)
    assert layer.reconfigure(RetryConfig(enabled=True, max_attempts=5)) == []
    assert layer.config.max_attempts == 5
    refused = layer.reconfigure(RetryConfig(enabled=False, max_attempts=9))
    assert refused == [
        "resilience.retry.enabled: adding or removing a layer needs a restart True → False"
    ]
    assert layer.config.max_attempts == 5
    assert layer.config.enabled


async def test_each_attempt_is_a_span(autojump_clock: trio.testing.MockClock) -> None:
    """Under a tracer, every attempt is an `upstream attempt` span numbered from 1."""
    sdk = pytest.importorskip("opentelemetry.sdk.trace")
    export = pytest.importorskip("opentelemetry.sdk.trace.export")
    memory = pytest.importorskip("opentelemetry.sdk.trace.export.in_memory_span_exporter")
    exporter = memory.InMemorySpanExporter()
    provider = sdk.TracerProvider()
    provider.add_span_processor(export.SimpleSpanProcessor(exporter))
    layer, _ = _layer([fail(ServerError("a")), OK])
    token = CURRENT_TRACER.set(provider.get_tracer("test"))
    try:
        await layer.generate(REQUEST, Recorder())
    finally:
        CURRENT_TRACER.reset(token)
    spans = exporter.get_finished_spans()
    assert [(s.name, dict(s.attributes or {})) for s in spans] == [
        ("upstream attempt", {"attempt": 1}),
        ("upstream attempt", {"attempt": 2}),
    ]


class _LongestWait(random.Random):
    """Jitter that always draws the cap: the wait is known exactly."""

    def uniform(self, a: float, b: float) -> float:
        return b


async def test_a_wait_ending_exactly_at_the_deadline_gives_up(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A backoff that would end at the deadline itself leaves no time to try: give up now."""
    worker = ScriptedWorker([fail(ServerError("down")), OK])
    config = RetryConfig(enabled=True, initial_backoff=0.5)
    layer = RetryLayer(worker, config, rng=_LongestWait())
    with trio.move_on_at(trio.current_time() + 0.5), pytest.raises(ServerError):
        await layer.generate(REQUEST, Recorder())
    assert worker.calls == 1
    assert layer.statistics().gave_up["deadline"] == 1


async def test_retry_after_at_the_maximum_is_waited_for(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A Retry-After equal to max_retry_after is still honoured."""
    layer, worker = _layer([fail(RateLimited("wait", retry_after=60.0)), OK], max_retry_after=60.0)
    await layer.generate(REQUEST, Recorder())
    assert worker.calls == 2


async def test_give_ups_are_counted_per_request() -> None:
    """Each request given up on adds one to its reason."""
    layer, _ = _layer([fail(BadRequest("no"))])
    for _ in range(2):
        with pytest.raises(BadRequest):
            await layer.generate(REQUEST, Recorder())
    assert layer.statistics().gave_up["not_retryable"] == 2


async def test_a_failure_before_any_event_is_retried_with_restart_stream_off(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """With restart_stream off, a streamed attempt that failed before emitting is retried."""
    layer, worker = _layer([fail(ServerError("refused")), OK], restart_stream=False)
    recorder = Recorder()
    await layer.generate(REQUEST, recorder)
    assert worker.calls == 2
    assert isinstance(recorder.events[-1], Done)
    assert layer.statistics().gave_up["streamed"] == 0


async def test_request_notes_count_each_retry(autojump_clock: trio.testing.MockClock) -> None:
    """The request's notes count the attempts after the first, for its request log record."""
    layer, _ = _layer([fail(ServerError("a")), fail(ServerError("b")), OK])
    notes = RequestNotes()
    token = set_request_notes(notes)
    try:
        await layer.generate(REQUEST, Recorder())
    finally:
        reset_request_notes(token)
    assert notes.retries == 2
