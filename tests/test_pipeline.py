"""The pipeline's behaviour: concurrency, deadlines, cancellation, shedding, failures, shutdown."""

from __future__ import annotations

import gc
import math
import os
import weakref

import attrs
import pytest
import trio
import trio.testing

from trio_orchestrator import (
    CallbackSink,
    Completion,
    Config,
    DeadlineExceeded,
    Document,
    Done,
    EchoWorker,
    EventSink,
    FinishedRequest,
    GenerationParams,
    MemorySink,
    Outcome,
    PipelineClosed,
    PipelineConfig,
    PriorityConfig,
    PromptRequest,
    RequestCancelled,
    RequestShed,
    ServerError,
    TextDelta,
    Usage,
    WorkerCrashed,
    open_pipeline,
)


def small(**kwargs: object) -> Config:
    """A config with small channels, so tests can fill them."""
    return Config(pipeline=PipelineConfig(**kwargs))  # type: ignore[arg-type]


@attrs.define(eq=False)
class SlowWorker:
    """Answers "ok" after ``delay`` seconds, tracking concurrency and cancellations."""

    delay: float = 1.0
    running: int = 0
    peak: int = 0
    cancelled_at: list[float] = attrs.field(factory=list)
    release: trio.Event | None = None

    async def generate(self, request: PromptRequest, emit: EventSink) -> None:
        self.running += 1
        self.peak = max(self.peak, self.running)
        try:
            if self.release is not None:
                await self.release.wait()
            else:
                await trio.sleep(self.delay)
        except trio.Cancelled:
            self.cancelled_at.append(trio.current_time())
            raise
        finally:
            self.running -= 1
        await emit(TextDelta("ok"))
        await emit(Done("stop", "ok"))


def assert_accounted(stats: object) -> None:
    """Every submitted request is in exactly one outcome or still in flight."""
    s = stats
    total = s.completed + s.failed + s.shed + s.expired + s.cancelled + s.in_flight  # type: ignore[attr-defined]
    assert total == s.submitted  # type: ignore[attr-defined]


async def test_submit_returns_the_completion() -> None:
    """submit() returns the worker's accumulated answer with its usage and finish reason."""
    async with open_pipeline(EchoWorker()) as pipeline:
        completion = await pipeline.submit(PromptRequest(input="one two three"))
    assert completion.text == "one two three"
    assert completion.finish_reason == "stop"
    assert completion.usage == Usage(3, 3)


async def test_stream_yields_deltas_then_one_done_with_the_same_text() -> None:
    """stream() yields each delta as produced, then exactly one Done whose text joins them."""
    async with (
        open_pipeline(EchoWorker()) as pipeline,
        pipeline.stream(PromptRequest(input="a b c d")) as events,
    ):
        seen = [event async for event in events]
    deltas = [e.text for e in seen if isinstance(e, TextDelta)]
    assert deltas == ["a ", "b ", "c ", "d"]
    assert [type(e) for e in seen].count(Done) == 1
    assert isinstance(seen[-1], Done)
    assert seen[-1].text == "".join(deltas)


async def test_inference_runs_requests_concurrently_up_to_the_limit(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The inference stage runs up to inference_concurrency requests at once, not one."""
    worker = SlowWorker(delay=1.0)
    async with (
        open_pipeline(worker, small(inference_concurrency=4)) as pipeline,
        trio.open_nursery() as nursery,
    ):
        for _ in range(10):
            nursery.start_soon(pipeline.submit, PromptRequest(input="x"))
    assert worker.peak == 4
    assert pipeline.statistics().completed == 10


class Rounds(trio.abc.Instrument):
    """Counts scheduler rounds (Trio checks for I/O once per round)."""

    def __init__(self) -> None:
        self.count = 0

    def before_io_wait(self, timeout: float) -> None:
        self.count += 1


@pytest.mark.parametrize("priority", [True, False])
async def test_a_burst_starts_its_calls_over_several_rounds(priority: bool) -> None:
    """Sixteen requests at once, 16 slots: at most a quarter of them start per round."""
    rounds = Rounds()
    started: list[int] = []

    class Recording:
        async def generate(self, request: PromptRequest, emit: EventSink) -> None:
            started.append(rounds.count)
            await emit(Done("stop", ""))

    config = small(inference_concurrency=16, priority=PriorityConfig(enabled=priority))
    async with open_pipeline(Recording(), config) as pipeline, trio.open_nursery() as nursery:
        trio.lowlevel.add_instrument(rounds)
        for _ in range(16):
            nursery.start_soon(pipeline.submit, PromptRequest(input="x"))
    trio.lowlevel.remove_instrument(rounds)
    assert len(started) == 16
    assert max(started.count(r) for r in set(started)) == 4


@pytest.mark.skipif(
    "MUTANT_UNDER_TEST" in os.environ,  # set by mutmut (scripts/mutation.py) in every phase
    reason="mutmut's trampolines hold each call's arguments (a runner's first job) for its life",
)
async def test_finished_requests_are_not_kept_alive_by_the_pipeline() -> None:
    """Once answered, a request and its completion are freed (not held for deadlines)."""
    async with open_pipeline(EchoWorker()) as pipeline:
        first = PromptRequest(input="the first")
        gone = weakref.ref(first)
        await pipeline.submit(first)
        del first
        for _ in range(200):
            await pipeline.submit(PromptRequest(input="x"))
        gc.collect()
        assert gone() is None


async def test_deadline_cancels_the_worker_at_the_deadline(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A request whose deadline passes fails with DeadlineExceeded and its worker stops then."""
    worker = SlowWorker(delay=100.0)
    async with open_pipeline(worker) as pipeline:
        start = trio.current_time()
        with pytest.raises(DeadlineExceeded):
            await pipeline.submit(PromptRequest(input="x", timeout=5.0))
        assert worker.cancelled_at == [start + 5.0]
        assert trio.current_time() == start + 5.0
        assert pipeline.statistics().expired == 1


@attrs.define(eq=False)
class DeadlineWorker:
    """Notes the effective deadline its call runs under, then answers."""

    seen: list[float] = attrs.field(factory=list)

    async def generate(self, request: PromptRequest, emit: EventSink) -> None:
        self.seen.append(trio.current_effective_deadline())
        await emit(Done("stop", ""))


async def test_the_worker_runs_under_its_request_deadline(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The worker's call has its request's deadline as Trio's effective deadline: the layers
    that wait (rate limit, coalescing, the router) read it there, not from the request."""
    worker = DeadlineWorker()
    async with open_pipeline(worker) as pipeline:
        start = trio.current_time()
        await pipeline.submit(PromptRequest(input="x", timeout=5.0))
        await pipeline.submit(PromptRequest(input="x", deadline=start + 7.0))
    assert worker.seen == [start + 5.0, start + 7.0]


async def test_deadline_expires_a_request_still_waiting_in_a_queue(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A request queued behind a busy worker expires at its deadline, not when it is reached."""
    worker = SlowWorker(delay=100.0)
    async with open_pipeline(worker, small(inference_concurrency=1)) as pipeline:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(pipeline.submit, PromptRequest(input="first"))
            await trio.testing.wait_all_tasks_blocked()
            start = trio.current_time()
            with pytest.raises(DeadlineExceeded):
                await pipeline.submit(PromptRequest(input="second", timeout=3.0))
            assert trio.current_time() == start + 3.0
            nursery.cancel_scope.cancel()
        stats = pipeline.statistics()
    assert stats.expired == 1
    assert stats.cancelled == 1


async def test_absolute_deadline_is_honoured(autojump_clock: trio.testing.MockClock) -> None:
    """A request's absolute deadline on Trio's clock bounds it like a timeout does."""
    async with open_pipeline(SlowWorker(delay=10.0)) as pipeline:
        deadline = trio.current_time() + 2.0
        with pytest.raises(DeadlineExceeded):
            await pipeline.submit(PromptRequest(input="x", deadline=deadline))
        assert trio.current_time() == deadline


async def test_caller_cancellation_cancels_the_worker_at_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A caller that stops waiting cancels its request's worker in the same instant."""
    worker = SlowWorker(delay=100.0)
    async with open_pipeline(worker) as pipeline:
        with trio.move_on_after(2.0):
            await pipeline.submit(PromptRequest(input="x"))
        await trio.testing.wait_all_tasks_blocked()
        assert worker.cancelled_at == [trio.current_time()]
        stats = pipeline.statistics()
    assert (stats.cancelled, stats.in_flight) == (1, 0)


async def test_closing_a_stream_early_cancels_the_request(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Leaving a stream's block before Done cancels the worker and counts it cancelled."""
    worker = EchoWorker(token_delay=1.0)
    async with open_pipeline(worker) as pipeline:
        async with pipeline.stream(PromptRequest(input="a b c d e f")) as events:
            async for event in events:
                assert event == TextDelta("a ")
                break
        await trio.testing.wait_all_tasks_blocked()
        stats = pipeline.statistics()
    assert (stats.cancelled, stats.completed, stats.in_flight) == (1, 0, 0)


async def test_stream_raises_deadline_exceeded_mid_stream(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A stream whose deadline passes mid-answer raises DeadlineExceeded after the early deltas."""
    seen: list[object] = []

    async def consume(pipeline_: object) -> None:
        request = PromptRequest(input="a b c d", timeout=1.5)
        async with pipeline_.stream(request) as events:  # type: ignore[attr-defined]
            async for event in events:
                seen.append(event)

    async with open_pipeline(EchoWorker(token_delay=1.0)) as pipeline:
        with pytest.raises(DeadlineExceeded):
            await consume(pipeline)
    assert seen == [TextDelta("a "), TextDelta("b ")]


async def test_typed_worker_error_reaches_the_caller_unchanged() -> None:
    """A typed worker error fails the request with that very error."""

    class Failing:
        async def generate(self, request: PromptRequest, emit: EventSink) -> None:
            raise ServerError("upstream 500", provider="p", status=500)

    async with open_pipeline(Failing()) as pipeline:
        with pytest.raises(ServerError, match="upstream 500"):
            await pipeline.submit(PromptRequest(input="x"))
        assert pipeline.statistics().failed == 1


async def test_a_crashing_worker_fails_its_request_and_the_pipeline_goes_on() -> None:
    """An untyped exception becomes WorkerCrashed (cause kept) and later requests still work."""

    @attrs.define
    class CrashOnce:
        crashed: bool = False

        async def generate(self, request: PromptRequest, emit: EventSink) -> None:
            if not self.crashed:
                self.crashed = True
                raise ZeroDivisionError("boom")
            await EchoWorker().generate(request, emit)

    async with open_pipeline(CrashOnce()) as pipeline:
        with pytest.raises(WorkerCrashed) as info:
            await pipeline.submit(PromptRequest(input="x"))
        assert isinstance(info.value.__cause__, ZeroDivisionError)
        assert (await pipeline.submit(PromptRequest(input="after"))).text == "after"
        stats = pipeline.statistics()
    assert (stats.failed, stats.completed) == (1, 1)


async def test_a_worker_that_never_says_done_fails_the_request() -> None:
    """A worker returning without Done breaks the grammar: the request fails, typed."""

    class NoDone:
        async def generate(self, request: PromptRequest, emit: EventSink) -> None:
            await emit(TextDelta("partial"))

    async with open_pipeline(NoDone()) as pipeline:
        with pytest.raises(WorkerCrashed, match="without emitting Done"):
            await pipeline.submit(PromptRequest(input="x"))


async def test_an_event_after_done_fails_the_request() -> None:
    """A worker emitting after Done fails its request instead of corrupting the answer."""

    class Chatty:
        async def generate(self, request: PromptRequest, emit: EventSink) -> None:
            await emit(Done("stop", ""))
            await emit(TextDelta("more"))

    async with open_pipeline(Chatty()) as pipeline:
        with pytest.raises(WorkerCrashed, match="after Done"):
            await pipeline.submit(PromptRequest(input="x"))


@attrs.define
class BlockedRetriever:
    """A retriever that holds the retrieval stage until released."""

    release: trio.Event = attrs.field(factory=trio.Event)

    async def retrieve(self, request: PromptRequest) -> tuple[Document, ...]:
        await self.release.wait()
        return ()


async def test_try_submit_refuses_at_once_when_the_entry_is_full(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """try_submit raises RequestShed('admission') at once when the entry channel is full,
    while submit waits there and is served once there is room."""
    retriever = BlockedRetriever()
    answers: list[str] = []

    async def submit(text: str) -> None:
        answers.append((await pipeline.submit(PromptRequest(input=text))).text)

    async with open_pipeline(EchoWorker(), small(rag_capacity=2), retriever=retriever) as pipeline:
        async with trio.open_nursery() as nursery:
            for i in range(4):  # one in retrieval, two queued, one waiting to enter
                nursery.start_soon(submit, f"r{i}")
            await trio.testing.wait_all_tasks_blocked()
            assert pipeline.statistics().waiting_to_enter == 1
            before = trio.current_time()
            with pytest.raises(RequestShed) as info:
                await pipeline.try_submit(PromptRequest(input="refused"))
            assert info.value.stage == "admission"
            assert trio.current_time() == before
            retriever.release.set()
        stats = pipeline.statistics()
    assert sorted(answers) == ["r0", "r1", "r2", "r3"]
    assert (stats.completed, stats.shed, stats.dead_letters.size) == (4, 1, 1)


async def test_try_start_tells_on_end_once_and_hands_over_the_completion(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """try_start returns at once; on_end is called once when the request ends, and the
    handle's result is the completion submit would have returned."""
    ended: list[float] = []
    async with open_pipeline(SlowWorker(delay=2.0)) as pipeline:
        pending = pipeline.try_start(
            PromptRequest(input="x"), lambda: ended.append(trio.current_time())
        )
        assert not pending.done
        with pytest.raises(RuntimeError):
            pending.result()
        await trio.sleep(5.0)
        assert ended == [2.0]
        assert pending.done
        assert pending.result().text == "ok"
        assert not pending.cancel()  # it has ended: nothing to cancel
        stats = pipeline.statistics()
    assert (stats.submitted, stats.completed, stats.cancelled, stats.in_flight) == (1, 1, 0, 0)


async def test_cancelling_a_started_request_cancels_its_worker_at_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A started request whose caller gives up (a client that disconnected) is counted
    cancelled, once, and its worker is cancelled in the same instant."""
    worker = SlowWorker(delay=100.0)
    ended: list[float] = []
    async with open_pipeline(worker) as pipeline:
        pending = pipeline.try_start(
            PromptRequest(input="x"), lambda: ended.append(trio.current_time())
        )
        await trio.sleep(3.0)
        assert worker.running == 1
        assert pending.cancel("the client disconnected")
        assert not pending.cancel()
        await trio.testing.wait_all_tasks_blocked()
        assert worker.cancelled_at == ended == [3.0]
        with pytest.raises(RequestCancelled, match="the client disconnected"):
            pending.result()
        stats = pipeline.statistics()
    assert (stats.submitted, stats.cancelled, stats.completed, stats.in_flight) == (1, 1, 0, 0)
    assert_accounted(stats)


async def test_try_start_refused_at_the_entry_has_ended_when_it_returns(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """With the entry channel full, try_start sheds the request before returning: on_end
    has been called and the handle raises RequestShed('admission')."""
    retriever = BlockedRetriever()
    async with open_pipeline(EchoWorker(), small(rag_capacity=1), retriever=retriever) as pipeline:
        first = pipeline.try_start(PromptRequest(input="in retrieval"))
        await trio.testing.wait_all_tasks_blocked()
        second = pipeline.try_start(PromptRequest(input="queued"))
        ended: list[str] = []
        refused = pipeline.try_start(PromptRequest(input="refused"), lambda: ended.append("x"))
        assert (ended, refused.done) == (["x"], True)
        with pytest.raises(RequestShed) as info:
            refused.result()
        assert info.value.stage == "admission"
        retriever.release.set()
        await trio.testing.wait_all_tasks_blocked()
        assert [first.result().text, second.result().text] == ["in retrieval", "queued"]
        stats = pipeline.statistics()
    assert (stats.completed, stats.shed, stats.in_flight) == (2, 1, 0)


async def test_try_start_on_a_closing_pipeline_is_refused() -> None:
    """A request started after shutdown began ends at once with PipelineClosed."""
    async with open_pipeline(EchoWorker()) as pipeline:
        pass
    pending = pipeline.try_start(PromptRequest(input="late"))
    with pytest.raises(PipelineClosed):
        pending.result()


async def test_shed_requests_land_in_the_dead_letter_queue_whole_and_replay(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A shed request is dead-lettered with its payload and reason, and replays to completion."""
    worker = SlowWorker(release=trio.Event())
    config = small(
        inference_concurrency=1, inference_capacity=1, priority=PriorityConfig(max_waiting=1)
    )
    requests = [PromptRequest(input=f"r{i}", meta={"i": str(i)}) for i in range(5)]
    shed: list[RequestShed] = []

    async def submit(request: PromptRequest) -> None:
        try:
            await pipeline.submit(request)
        except RequestShed as exc:
            shed.append(exc)

    async with open_pipeline(worker, config) as pipeline:
        async with trio.open_nursery() as nursery:
            for request in requests:
                nursery.start_soon(submit, request)
                await trio.testing.wait_all_tasks_blocked()
            # 1 running + 1 waiting for the limiter + 1 in the inference channel; 2 shed.
            assert pipeline.statistics().stage("inference").queue_depth == 1
            assert [e.stage for e in shed] == ["inference", "inference"]
            letters = pipeline.dead_letters.list()
            assert [letter.request for letter in letters] == requests[3:]
            assert all("inference" in letter.reason for letter in letters)
            assert worker.release is not None
            worker.release.set()
        completion = await pipeline.replay(letters[0].id)
        assert completion.text == "ok"
        assert len(pipeline.dead_letters) == 1
        assert pipeline.dead_letters.statistics().replayed == 1


async def test_shutdown_drains_in_flight_work_within_the_grace_period(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Leaving the block waits for in-flight requests that finish within the grace period."""
    results: list[Completion] = []

    async def submit(pipeline_: object) -> None:
        results.append(await pipeline_.submit(PromptRequest(input="x")))  # type: ignore[attr-defined]

    async with trio.open_nursery() as callers:
        async with open_pipeline(SlowWorker(delay=3.0), small(grace_period=5.0)) as pipeline:
            for _ in range(3):
                callers.start_soon(submit, pipeline)
            await trio.testing.wait_all_tasks_blocked()
            start = trio.current_time()
        # The block was left with three requests in flight; shutdown waited for them.
        assert trio.current_time() == start + 3.0
    assert [r.text for r in results] == ["ok"] * 3
    assert pipeline.statistics().completed == 3


async def test_shutdown_cancels_and_records_what_outlives_the_grace_period(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """In-flight work past the grace period is cancelled, counted, and its callers told."""
    errors: list[BaseException] = []

    async def submit(pipeline_: object) -> None:
        try:
            await pipeline_.submit(PromptRequest(input="x"))  # type: ignore[attr-defined]
        except RequestCancelled as exc:
            errors.append(exc)

    async with trio.open_nursery() as callers:
        async with open_pipeline(SlowWorker(delay=100.0), small(grace_period=2.0)) as pipeline:
            for _ in range(3):
                callers.start_soon(submit, pipeline)
            await trio.testing.wait_all_tasks_blocked()
            start = trio.current_time()
        assert trio.current_time() == start + 2.0
    stats = pipeline.statistics()
    assert (stats.cancelled, stats.in_flight) == (3, 0)
    assert len(errors) == 3
    assert_accounted(stats)


async def test_a_closed_pipeline_refuses_new_requests() -> None:
    """After shutdown, submit raises PipelineClosed and the refusal is counted as shed."""
    async with open_pipeline(EchoWorker()) as pipeline:
        pass
    with pytest.raises(PipelineClosed):
        await pipeline.submit(PromptRequest(input="late"))
    stats = pipeline.statistics()
    assert (stats.submitted, stats.shed) == (1, 1)


async def test_an_exception_in_the_block_cancels_in_flight_requests_at_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Leaving the block by an exception cancels in-flight work without waiting for grace."""
    worker = SlowWorker(delay=100.0)
    start = trio.current_time()

    async def fail_inside() -> None:
        async with open_pipeline(worker, small(grace_period=50.0)) as pipeline_:
            pipelines.append(pipeline_)
            pipeline_._new_job(PromptRequest(input="stuck"))  # an in-flight job
            raise KeyError("boom")

    pipelines: list[object] = []
    with pytest.raises(KeyError):
        await fail_inside()
    pipeline = pipelines[0]
    assert trio.current_time() == start
    assert pipeline.statistics().cancelled == 1  # type: ignore[attr-defined]


async def test_sinks_receive_completions_and_a_raising_sink_is_contained() -> None:
    """Every completion reaches the sinks; a sink that raises does not fail the request."""
    memory = MemorySink()

    def explode(request: PromptRequest, completion: Completion) -> None:
        raise RuntimeError("sink down")

    async with open_pipeline(EchoWorker(), sinks=[memory, CallbackSink(explode)]) as pipeline:
        completion = await pipeline.submit(PromptRequest(input="kept"))
        stats = pipeline.statistics()
    assert list(memory.completions) == [completion]
    assert (stats.completed, stats.sink_errors) == (1, 1)


async def test_listeners_learn_each_outcome_with_its_latency(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A listener receives one FinishedRequest per request, with outcome and latency."""
    records: list[FinishedRequest] = []
    async with open_pipeline(SlowWorker(delay=2.0)) as pipeline:
        pipeline.add_listener(records.append)
        await pipeline.submit(PromptRequest(input="x"))
        with pytest.raises(DeadlineExceeded):
            await pipeline.submit(PromptRequest(input="y", timeout=1.0))
    assert [(r.outcome, r.latency) for r in records] == [
        (Outcome.COMPLETED, 2.0),
        (Outcome.EXPIRED, 1.0),
    ]


async def test_stop_sequences_cut_the_answer_and_stop_generation(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A stop sequence ends the answer before it, in streams and whole answers, and stops
    the worker instead of letting it generate tokens nobody will see."""
    stopped: list[bool] = []

    class Recording(EchoWorker):
        async def generate(self, request: PromptRequest, emit: EventSink) -> None:
            try:
                await super().generate(request, emit)
            except trio.Cancelled:
                stopped.append(True)
                raise

    request = PromptRequest(input="one two three four", params=GenerationParams(stop=("thr",)))
    async with open_pipeline(Recording(token_delay=1.0)) as pipeline:
        whole = await pipeline.submit(request)
        async with pipeline.stream(request) as events:
            streamed = [e async for e in events]
    assert (whole.text, whole.finish_reason) == ("one two ", "stop")
    texts = [e.text for e in streamed if isinstance(e, TextDelta)]
    assert "".join(texts) == "one two "
    done = streamed[-1]
    assert isinstance(done, Done)
    assert done.text == "one two "
    assert stopped == [True, True]


async def test_timeout_must_be_positive() -> None:
    """A zero or NaN timeout is refused when the request is built, with a clear message."""
    with pytest.raises(ValueError, match="timeout must be positive"):
        PromptRequest(input="x", timeout=0)
    with pytest.raises(ValueError, match="NaN"):
        PromptRequest(input="x", timeout=math.nan)
