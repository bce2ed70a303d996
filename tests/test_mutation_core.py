"""The pipeline's own behaviour (pipeline/core.py) that no other test pins.

Written for the mutation session (scripts/mutation.py): hooks, reload, the statistics each
stage reports, the failures of the retriever, assembler and post-processors, embeddings
skipping retrieval and assembly, shedding reasons, replay, misuse of the handles, and the
deadline bookkeeping.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import attrs
import pytest
import trio
import trio.testing
from test_pipeline import small

from trio_orchestrator import (
    DeadlineExceeded,
    Document,
    EchoWorker,
    PipelineConfig,
    PriorityConfig,
    PromptRequest,
    RequestCancelled,
    RequestShed,
    ServerError,
    open_pipeline,
)
from trio_orchestrator.errors import PipelineClosed, WorkerCrashed
from trio_orchestrator.events import Done, TextDelta
from trio_orchestrator.pipeline import FinishedRequest
from trio_orchestrator.pipeline.core import PendingRequest, Pipeline
from trio_orchestrator.pipeline.job import Job
from trio_orchestrator.types import GenerationParams
from trio_orchestrator.workers.base import EventSink


@attrs.define(eq=False)
class Held:
    """Answers "ok" once ``release`` is set (or after ``delay``), counting calls."""

    release: trio.Event = attrs.field(factory=trio.Event)
    delay: float | None = None
    running: int = 0
    calls: int = 0

    async def generate(self, request: PromptRequest, emit: EventSink) -> None:
        self.calls += 1
        self.running += 1
        try:
            if self.delay is None:
                await self.release.wait()
            else:
                await trio.sleep(self.delay)
        finally:
            self.running -= 1
        await emit(TextDelta("ok"))
        await emit(Done("stop", "ok"))


@attrs.define(eq=False)
class Recorder:
    """Pipeline hooks that log each call as (what, request input, detail)."""

    log: list[tuple[str, str, str]] = attrs.field(factory=list)

    def started(self, job: Job) -> None:
        self.log.append(("started", str(job.request.input), ""))

    def stage_entered(self, job: Job, stage: str) -> None:
        self.log.append(("entered", str(job.request.input), stage))

    def stage_left(self, job: Job) -> None:
        self.log.append(("left", str(job.request.input), ""))

    @contextmanager
    def inference(self, job: Job) -> Iterator[None]:
        self.log.append(("inference", str(job.request.input), ""))
        yield

    def finished(self, job: Job) -> None:
        assert job.outcome is not None
        self.log.append(("finished", str(job.request.input), job.outcome.value))


async def test_hooks_follow_a_request_through_every_stage_and_are_set_once() -> None:
    """Hooks hear started, each stage entered and left in order, the inference, and the end;
    setting a second set of hooks is refused."""
    hooks = Recorder()
    async with open_pipeline(EchoWorker()) as pipeline:
        pipeline.set_hooks(hooks)
        with pytest.raises(RuntimeError, match=r"^this pipeline's hooks are set already \("):
            pipeline.set_hooks(Recorder())
        await pipeline.submit(PromptRequest(input="a"))
    assert [(what, detail) for what, _, detail in hooks.log] == [
        ("started", ""),
        ("entered", "rag"),
        ("left", ""),
        ("entered", "assemble"),
        ("left", ""),
        ("entered", "inference"),
        ("inference", ""),
        ("left", ""),
        ("entered", "post"),
        ("left", ""),
        ("entered", "stream"),
        ("finished", "completed"),
    ]


async def test_hooks_hear_a_request_refused_at_the_door_end() -> None:
    """A request refused by a closed pipeline is started and finished for the hooks too."""
    hooks = Recorder()
    async with open_pipeline(EchoWorker()) as pipeline:
        pipeline.set_hooks(hooks)
    with pytest.raises(PipelineClosed):
        await pipeline.submit(PromptRequest(input="late"))
    assert [(what, detail) for what, _, detail in hooks.log] == [
        ("started", ""),
        ("finished", "shed"),
    ]


async def test_reconfigure_changes_concurrency_at_once_and_timeouts_for_new_requests(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A reloaded [pipeline] widens the inference slots for requests already waiting, and its
    request timeout applies to the next request; nothing is refused."""
    worker = Held()
    async with open_pipeline(worker, small(inference_concurrency=1)) as pipeline:
        async with trio.open_nursery() as nursery:
            for _ in range(3):
                nursery.start_soon(pipeline.submit, PromptRequest(input="x"))
            await trio.testing.wait_all_tasks_blocked()
            assert worker.running == 1
            section = PipelineConfig(inference_concurrency=3, request_timeout=2.0)
            assert pipeline.reconfigure(section) == []
            await trio.testing.wait_all_tasks_blocked()
            assert worker.running == 3
            assert pipeline.config.pipeline is section
            assert pipeline.statistics().inference_concurrency == 3
            worker.release.set()
        worker.release = trio.Event()
        start = trio.current_time()
        with pytest.raises(DeadlineExceeded):
            await pipeline.submit(PromptRequest(input="late"))
        assert trio.current_time() == start + 2.0


async def test_statistics_describe_each_stage_and_the_inference_slots() -> None:
    """Each stage is reported by name with its capacity and how many it took; the slots in
    use and their number are the limiter's."""
    config = small(
        rag_capacity=3,
        assemble_capacity=4,
        inference_capacity=5,
        post_capacity=6,
        stream_capacity=7,
        inference_concurrency=2,
    )
    worker = Held()
    async with open_pipeline(worker, config) as pipeline:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(pipeline.submit, PromptRequest(input="x"))
            await trio.testing.wait_all_tasks_blocked()
            running = pipeline.statistics()
            worker.release.set()
        stats = pipeline.statistics()
    assert [(s.name, s.capacity) for s in stats.stages] == [
        ("rag", 3),
        ("assemble", 4),
        ("inference", 5),
        ("post", 6),
        ("stream", 7),
    ]
    assert [s.processed for s in stats.stages] == [1, 1, 1, 1, 1]
    assert [s.processed for s in running.stages] == [1, 1, 1, 0, 0]
    assert [s.held for s in stats.stages] == [0, 0, 0, 0, 0]
    assert (running.inference_active, running.inference_concurrency) == (1, 2)
    assert (stats.inference_active, stats.in_flight, stats.waiting_to_enter) == (0, 0, 0)


@attrs.define(eq=False)
class Failing:
    """A retriever, assembler and post-processor that raise ``error``."""

    error: Exception

    async def retrieve(self, request: PromptRequest) -> Sequence[Document]:
        raise self.error

    def assemble(self, request: PromptRequest, documents: Sequence[Document]) -> PromptRequest:
        raise self.error

    def open(self, request: PromptRequest) -> None:
        raise self.error


@pytest.mark.parametrize("part", ["retriever", "assembler"])
async def test_a_failing_stage_part_fails_the_request_saying_which(part: str) -> None:
    """A retriever or assembler that raises fails its request as a worker crash naming it
    and the error, with the error as its cause; the worker is never called."""
    error = ValueError("index gone")
    worker = Held(delay=0)
    async with open_pipeline(worker, **{part: Failing(error)}) as pipeline:  # type: ignore[arg-type]
        with pytest.raises(WorkerCrashed) as info:
            await pipeline.submit(PromptRequest(input="x"))
        stats = pipeline.statistics()
    assert str(info.value) == f"the {part} raised ValueError: index gone"
    assert info.value.__cause__ is error
    assert (worker.calls, stats.failed) == (0, 1)


async def test_a_post_processor_failing_to_open_fails_only_its_request() -> None:
    """A post-processor whose open() raises fails that request as a crash naming it, without
    calling the worker; the pipeline goes on and answers the next request."""
    error = KeyError("k")
    broken = Failing(error)
    worker = Held(delay=0)

    @attrs.define
    class BrokenFor:
        """Raises for the request whose input is "bad", and has no filter for others."""

        def open(self, request: PromptRequest) -> None:
            if request.input == "bad":
                broken.open(request)

    async with open_pipeline(worker, post_processors=[BrokenFor()]) as pipeline:
        with pytest.raises(WorkerCrashed) as info:
            await pipeline.submit(PromptRequest(input="bad"))
        assert (await pipeline.submit(PromptRequest(input="good"))).text == "ok"
        stats = pipeline.statistics()
    assert str(info.value) == "the post-processor raised KeyError: 'k'"
    assert info.value.__cause__ is error
    assert (worker.calls, stats.failed, stats.completed) == (1, 1, 1)


@attrs.define(eq=False)
class Counting:
    """A retriever and assembler that count their calls and change nothing."""

    retrieved: int = 0
    assembled: int = 0

    async def retrieve(self, request: PromptRequest) -> Sequence[Document]:
        self.retrieved += 1
        return (Document("d1", "context"),)

    def assemble(self, request: PromptRequest, documents: Sequence[Document]) -> PromptRequest:
        self.assembled += 1
        return request


async def test_an_embedding_request_skips_retrieval_and_assembly() -> None:
    """Embeddings have no chat: neither the retriever nor the assembler sees them, while a
    chat request goes through both."""
    parts = Counting()
    async with open_pipeline(EchoWorker(), retriever=parts, assembler=parts) as pipeline:
        await pipeline.submit(PromptRequest(embed=("a",)))
        assert (parts.retrieved, parts.assembled) == (0, 0)
        await pipeline.submit(PromptRequest(input="chat"))
    assert (parts.retrieved, parts.assembled) == (1, 1)


@attrs.define(eq=False)
class SlowRetriever:
    """A retriever that takes ``delay`` seconds (or returns at once if ``delay`` is 0)."""

    delay: float

    async def retrieve(self, request: PromptRequest) -> Sequence[Document]:
        await trio.sleep(self.delay)
        return ()


async def test_a_retrieval_outlasting_the_deadline_expires_the_request_at_it(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Retrieval is cut at the request's deadline: the request expires then and the worker
    is never called."""
    worker = Held(delay=0)
    async with open_pipeline(worker, retriever=SlowRetriever(100.0)) as pipeline:
        with pytest.raises(DeadlineExceeded, match="req_slow passed its deadline"):
            await pipeline.submit(PromptRequest(input="x", timeout=3.0, request_id="req_slow"))
        assert trio.current_time() == 3.0
        stats = pipeline.statistics()
    assert (worker.calls, stats.expired) == (0, 1)


async def test_shed_reasons_name_the_full_channel_and_its_size(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A request shed at the entry says the entry channel is full with its size; one shed
    between stages names the stage and its capacity, and counts against that stage."""
    worker = Held()
    fifo = PriorityConfig(enabled=False)
    config = small(rag_capacity=1, inference_capacity=1, inference_concurrency=1, priority=fifo)
    async with open_pipeline(worker, config) as pipeline:
        for i in range(3):  # one running, one waiting for its slot, one in the channel
            pipeline.try_start(PromptRequest(input=f"r{i}"))
            await trio.testing.wait_all_tasks_blocked()
        shed = pipeline.try_start(PromptRequest(input="shed"))
        await trio.testing.wait_all_tasks_blocked()
        with pytest.raises(RequestShed) as between:
            shed.result()
        retriever_full = RetrieverFull()
        stats = pipeline.statistics()
        worker.release.set()
    async with open_pipeline(EchoWorker(), small(rag_capacity=2), retriever=retriever_full) as p:
        p.try_start(PromptRequest(input="in retrieval"))
        await trio.testing.wait_all_tasks_blocked()
        p.try_start(PromptRequest(input="q1"))
        p.try_start(PromptRequest(input="q2"))
        refused = p.try_start(PromptRequest(input="refused"))
        with pytest.raises(RequestShed) as entry:
            refused.result()
        retriever_full.release.set()
    assert between.value.stage == "inference"
    assert between.value.reason == "the inference stage's input channel is full (1)"
    assert stats.stage("inference").shed == 1
    assert [s.shed for s in stats.stages] == [0, 0, 1, 0, 0]
    assert entry.value.reason == "the entry channel is full (2 requests)"
    assert [letter.reason for letter in p.dead_letters.list()] == [entry.value.reason]
    assert p.dead_letters.list()[0].stage == "admission"


@attrs.define
class RetrieverFull:
    """A retriever that holds the retrieval stage until released."""

    release: trio.Event = attrs.field(factory=trio.Event)

    async def retrieve(self, request: PromptRequest) -> Sequence[Document]:
        await self.release.wait()
        return ()


async def test_replay_drops_an_absolute_deadline_and_keeps_a_relative_timeout(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A replayed dead letter whose absolute deadline has passed is answered, while its
    relative timeout still bounds it anew."""
    worker = Held(delay=5.0)
    fifo = PriorityConfig(enabled=False)
    config = small(inference_capacity=1, inference_concurrency=1, priority=fifo)
    async with open_pipeline(worker, config) as pipeline:
        for i in range(3):
            pipeline.try_start(PromptRequest(input=f"r{i}"))
            await trio.testing.wait_all_tasks_blocked()
        absolute = pipeline.try_start(PromptRequest(input="abs", deadline=trio.current_time() + 1))
        relative = pipeline.try_start(PromptRequest(input="rel", timeout=1.0))
        await trio.testing.wait_all_tasks_blocked()
        assert (absolute.done, relative.done) == (True, True)
        await trio.sleep(20.0)  # the absolute deadline is long past
        assert (await pipeline.replay(absolute.request_id)).text == "ok"
        start = trio.current_time()
        with pytest.raises(DeadlineExceeded):
            await pipeline.replay(relative.request_id)
        assert trio.current_time() == start + 1.0


async def test_a_stream_used_without_async_with_says_how() -> None:
    """Iterating a stream that was never entered raises RuntimeError saying how to use it."""
    async with open_pipeline(EchoWorker()) as pipeline:
        stream = pipeline.stream(PromptRequest(input="x"))
        message = r"^use the stream as `async with pipeline\.stream\(request\) as s:`$"
        with pytest.raises(RuntimeError, match=message):
            await stream.__anext__()


async def test_a_stream_refused_at_the_door_raises_on_entry() -> None:
    """Opening a stream on a closed pipeline raises PipelineClosed from the async with."""
    async with open_pipeline(EchoWorker()) as pipeline:
        pass
    with pytest.raises(PipelineClosed):
        async with pipeline.stream(PromptRequest(input="late")):
            raise AssertionError("a refused stream is never entered")


async def test_a_stream_ends_with_the_held_back_tail_then_done_then_stops() -> None:
    """Text a stop filter held back comes as a last TextDelta before the Done (which carries
    the completion's fields), the stream's completion is set, and it then stops for good."""
    request = PromptRequest(input="one two thr", params=GenerationParams(stop=("three",)))
    async with open_pipeline(EchoWorker()) as pipeline, pipeline.stream(request) as events:
        assert events.completion is None
        seen = [event async for event in events]
        with pytest.raises(StopAsyncIteration):
            await events.__anext__()
    texts = [e.text for e in seen if isinstance(e, TextDelta)]
    assert texts[-1] == "thr"
    done = seen[-1]
    assert isinstance(done, Done)
    assert events.completion is not None
    assert done == Done(
        events.completion.finish_reason,
        "one two thr",
        events.completion.usage,
        events.completion.tool_calls,
        events.completion.model,
    )
    assert events.request_id == request.request_id


async def test_a_body_error_leaves_open_pipeline_as_itself() -> None:
    """An exception raised in the pipeline's block reaches the caller unwrapped."""
    with pytest.raises(LookupError) as info:
        async with open_pipeline(EchoWorker()):
            raise LookupError("mine")
    assert type(info.value) is LookupError


async def test_cancel_in_flight_ends_every_request_with_the_reason(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """cancel_in_flight ends each request in flight as cancelled with the reason given, and
    says how many it ended."""
    async with open_pipeline(Held(), small(inference_concurrency=1)) as pipeline:
        handles = [pipeline.try_start(PromptRequest(input=f"r{i}")) for i in range(3)]
        await trio.testing.wait_all_tasks_blocked()
        assert pipeline.cancel_in_flight("draining") == 3
        assert pipeline.cancel_in_flight("again") == 0
        for handle in handles:
            with pytest.raises(RequestCancelled, match=r"^draining$"):
                handle.result()
        assert pipeline.statistics().cancelled == 3


@attrs.define(eq=False)
class RaisingInNursery:
    """Raises ``errors`` from tasks of its own nursery (wrapped in an exception group)."""

    errors: Sequence[Exception]

    async def generate(self, request: PromptRequest, emit: EventSink) -> None:
        async def fail(error: Exception) -> None:
            raise error

        async with trio.open_nursery() as nursery:
            for error in self.errors:
                nursery.start_soon(fail, error)


async def test_a_worker_error_from_the_workers_nursery_reaches_the_caller_unwrapped() -> None:
    """A typed worker error raised inside the worker's nursery reaches the caller as itself,
    not as the group wrapping it; a group of two errors is a crash."""
    error = ServerError("upstream 500", provider="p", status=500)
    async with open_pipeline(RaisingInNursery([error])) as pipeline:
        with pytest.raises(ServerError) as info:
            await pipeline.submit(PromptRequest(input="x"))
        assert info.value is error
    two = RaisingInNursery([ValueError("a"), ValueError("b")])
    async with open_pipeline(two) as pipeline:
        with pytest.raises(WorkerCrashed, match=r"^the worker raised ExceptionGroup: "):
            await pipeline.submit(PromptRequest(input="x"))


async def test_a_later_request_with_an_earlier_deadline_expires_at_its_own(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Waiting requests expire each at its own deadline, earliest first, whatever order they
    came in (the reaper is woken for a deadline earlier than the one it sleeps until)."""
    ended: list[tuple[str, float]] = []
    async with open_pipeline(Held(), small(inference_concurrency=1)) as pipeline:
        pipeline.add_listener(lambda f: ended.append((str(f.request.input), f.latency)))
        pipeline.try_start(PromptRequest(input="running"))
        await trio.testing.wait_all_tasks_blocked()
        for name, timeout in (("late", 9.0), ("early", 2.0), ("middle", 5.0)):
            pipeline.try_start(PromptRequest(input=name, timeout=timeout))
        await trio.sleep(10.0)
        assert ended == [("early", 2.0), ("middle", 5.0), ("late", 9.0)]
        pipeline.cancel_in_flight("done")


@attrs.define(eq=False)
class HoldsSome:
    """Holds requests whose input is "hold" until cancelled; answers the others at once."""

    async def generate(self, request: PromptRequest, emit: EventSink) -> None:
        if request.input == "hold":
            await trio.sleep_forever()
        await emit(Done("stop", ""))


async def test_the_deadline_heap_sheds_ended_entries_once_past_64_and_twice_the_live() -> None:
    """An ended request's deadline entry is dropped lazily: the heap is swept only once it
    holds more than 64 entries and more than twice as many as are live, so memory stays
    bounded at O(live) without a sweep per request."""
    async with open_pipeline(HoldsSome()) as pipeline:
        for _ in range(40):
            pipeline.try_start(PromptRequest(input="hold"))
        await trio.testing.wait_all_tasks_blocked()
        sizes = []
        for _ in range(45):
            await pipeline.submit(PromptRequest(input="x"))
            sizes.append(len(pipeline._deadlines))
        # 40 live: past 64 at 65 entries, but swept only past 2 x 40 = 80, back to the 40.
        assert sizes == [*range(41, 81), 40, 41, 42, 43, 44]
        assert pipeline.cancel_in_flight("stop holding") == 40
        assert len(pipeline._deadlines) == 44  # none live now, but not past 64: kept
        sizes = []
        for _ in range(22):
            await pipeline.submit(PromptRequest(input="x"))
            sizes.append(len(pipeline._deadlines))
        assert sizes == [*range(45, 65), 0, 1]


@pytest.mark.parametrize(("concurrency", "burst", "kept"), [(4, 10, 4), (300, 300, 256)])
async def test_runner_tasks_kept_parked_are_bounded_by_the_slots_and_256(
    autojump_clock: trio.testing.MockClock, concurrency: int, burst: int, kept: int
) -> None:
    """After a burst, at most min(inference concurrency, 256) runner tasks stay parked for
    the next requests; the rest end."""
    capacities = {f"{stage}_capacity": burst for stage in ("rag", "assemble", "inference")}
    capacities |= {"post_capacity": burst, "stream_capacity": burst}
    config = small(inference_concurrency=concurrency, **capacities)
    async with open_pipeline(Held(delay=1.0), config) as pipeline:
        async with trio.open_nursery() as nursery:
            for _ in range(burst):
                nursery.start_soon(pipeline.submit, PromptRequest(input="x"))
        await trio.testing.wait_all_tasks_blocked()
        assert len(pipeline._idle_runners) == kept
        assert pipeline.statistics().completed == burst


@attrs.define(eq=False)
class Seeing:
    """Records each request it is given; answers "ok" after ``delay`` seconds."""

    delay: float = 0.0
    seen: list[PromptRequest] = attrs.field(factory=list)

    async def generate(self, request: PromptRequest, emit: EventSink) -> None:
        self.seen.append(request)
        await trio.sleep(self.delay)
        await emit(TextDelta("ok"))
        await emit(Done("stop", "ok"))


async def test_streamed_requests_reach_the_worker_marked_streamed() -> None:
    """A pushed or iterated stream reaches the worker with streaming True even when built
    with False (a retry layer must never start it over); a submit keeps it as given."""
    worker = Seeing()
    ended = trio.Event()

    async def push(event: object) -> None:
        pass

    async with open_pipeline(worker) as pipeline:
        pipeline.try_start_stream(PromptRequest(input="pushed", streaming=False), push, ended.set)
        await ended.wait()
        async with pipeline.stream(PromptRequest(input="iterated", streaming=False)) as events:
            _ = [event async for event in events]
        await pipeline.submit(PromptRequest(input="whole", streaming=False))
    assert [(r.input, r.streaming) for r in worker.seen] == [
        ("pushed", True),
        ("iterated", True),
        ("whole", False),
    ]


async def test_listeners_get_the_completion_and_time_to_first_token_and_survive_a_raiser(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    """A listener gets the request's completion and its time to first token counted from
    submission (not from the clock's zero); a listener that raises is logged and ignored,
    and the next listener is still called."""
    records: list[FinishedRequest] = []

    def explode(record: FinishedRequest) -> None:
        raise ValueError("listener down")

    async with open_pipeline(Seeing(delay=2.0)) as pipeline:
        pipeline.add_listener(explode)
        pipeline.add_listener(records.append)
        await trio.sleep(5.0)
        completion = await pipeline.submit(PromptRequest(input="x"))
    [record] = records
    assert record.completion is completion
    assert (record.latency, record.time_to_first_token) == (2.0, 2.0)
    messages = [r.getMessage() for r in caplog.records if r.name == "trio_orchestrator.pipeline"]
    assert messages == ["a pipeline listener raised; it was ignored"]


async def test_a_request_cancelled_while_waiting_for_a_slot_gives_the_slot_on(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Without priority admission, a request whose caller leaves while it waits for the one
    inference slot never runs, and the slot goes on to the next request."""
    worker = Seeing(delay=1.0)
    fifo = PriorityConfig(enabled=False)
    async with open_pipeline(worker, small(inference_concurrency=1, priority=fifo)) as pipeline:
        first = pipeline.try_start(PromptRequest(input="first"))
        await trio.testing.wait_all_tasks_blocked()
        waiting = pipeline.try_start(PromptRequest(input="waiting"))
        await trio.testing.wait_all_tasks_blocked()
        assert waiting.cancel()
        after = await pipeline.submit(PromptRequest(input="after"))
        assert first.result().text == after.text == "ok"
        stats = pipeline.statistics()
    assert [r.input for r in worker.seen] == ["first", "after"]
    assert (stats.completed, stats.cancelled, stats.inference_active) == (2, 1, 0)


async def test_cancelling_a_handle_without_a_reason_says_the_caller_stopped_waiting() -> None:
    """PendingRequest.cancel() with no reason ends the request with RequestCancelled saying
    the caller stopped waiting."""
    async with open_pipeline(Held()) as pipeline:
        pending = pipeline.try_start(PromptRequest(input="x"))
        assert pending.cancel()
        with pytest.raises(RequestCancelled) as info:
            pending.result()
    assert str(info.value) == "the caller stopped waiting"


async def test_a_stream_ending_early_says_how_its_caller_left(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A streamed request is cancelled with a reason saying how its caller left: it stopped
    waiting for the next event, it closed the stream, or it gave up waiting to enter."""
    errors: dict[str, str] = {}
    retriever = RetrieverFull()

    def record(finished: FinishedRequest) -> None:
        errors[str(finished.request.input)] = f"{type(finished.error).__name__}: {finished.error}"

    async with open_pipeline(EchoWorker(token_delay=1.0), small(rag_capacity=1)) as pipeline:
        pipeline.add_listener(record)
        async with pipeline.stream(PromptRequest(input="waited a b c")) as events:
            with trio.move_on_after(1.5):
                _ = [event async for event in events]
        async with pipeline.stream(PromptRequest(input="closed a b c")) as events:
            async for _event in events:
                break
    async with open_pipeline(EchoWorker(), small(rag_capacity=1), retriever=retriever) as p:
        p.add_listener(record)
        p.try_start(PromptRequest(input="in retrieval"))
        await trio.testing.wait_all_tasks_blocked()
        p.try_start(PromptRequest(input="queued"))
        with trio.move_on_after(2.0) as scope:
            async with p.stream(PromptRequest(input="entering")):
                raise AssertionError("the entry is full: the stream is never entered")
        assert scope.cancelled_caught
        retriever.release.set()
    assert errors == {
        "waited a b c": "RequestCancelled: the caller stopped waiting",
        "closed a b c": "RequestCancelled: the caller closed the stream",
        "entering": "RequestCancelled: the caller stopped waiting",
        "in retrieval": "NoneType: None",
        "queued": "NoneType: None",
    }


async def test_requests_refused_by_a_closed_pipeline_are_dead_lettered_saying_so(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Whether submitted, started or streamed, a request refused because the pipeline is
    shutting down is dead-lettered at the admission stage with that reason and the time."""
    async with open_pipeline(EchoWorker()) as pipeline:
        pass
    await trio.sleep(5.0)
    with pytest.raises(PipelineClosed):
        await pipeline.submit(PromptRequest(input="submitted", request_id="req_1"))
    pipeline.try_start(PromptRequest(input="started", request_id="req_2"))
    with pytest.raises(PipelineClosed):
        async with pipeline.stream(PromptRequest(input="streamed", request_id="req_3")):
            pass
    letters = [(x.id, x.stage, x.reason, x.time) for x in pipeline.dead_letters.list()]
    assert letters == [
        (f"req_{i}", "admission", "the pipeline is shutting down", 5.0) for i in (1, 2, 3)
    ]


@attrs.define(eq=False)
class FinishFails:
    """A post-processor whose filter passes text through and raises when finished."""

    stopped: bool = False

    def open(self, request: PromptRequest) -> FinishFails:
        return self

    def feed(self, text: str) -> str:
        return text

    def finish(self) -> str:
        raise ArithmeticError("cannot finish")


async def test_a_post_processor_failing_at_the_end_fails_the_request_naming_it() -> None:
    """A filter that raises when the answer is finished fails the request as a crash of the
    post-processor (not the worker)."""
    async with open_pipeline(Held(delay=0), post_processors=[FinishFails()]) as pipeline:
        with pytest.raises(WorkerCrashed) as info:
            await pipeline.submit(PromptRequest(input="x"))
    assert str(info.value) == "the post-processor raised ArithmeticError: cannot finish"


@attrs.define(eq=False)
class BrokenSink:
    """An output sink that records what it is given, then raises."""

    given: list[PromptRequest] = attrs.field(factory=list)

    def deliver(self, request: PromptRequest, completion: object) -> None:
        self.given.append(request)
        raise OSError("disk full")


async def test_each_sink_failure_is_counted_and_logged_naming_the_sink(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A sink gets each request with its answer; every failure counts once in sink_errors
    and is logged with the sink's repr."""
    sink = BrokenSink()
    requests = [PromptRequest(input="a"), PromptRequest(input="b")]
    async with open_pipeline(EchoWorker(), sinks=[sink]) as pipeline:
        for request in requests:
            await pipeline.submit(request)
        stats = pipeline.statistics()
    assert sink.given == requests
    assert stats.sink_errors == 2
    messages = [r.getMessage() for r in caplog.records if r.name == "trio_orchestrator.pipeline"]
    assert messages == [f"output sink {sink!r} raised; it was ignored"] * 2


async def test_a_submit_whose_caller_leaves_is_cancelled_saying_so(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A caller of submit that stops waiting, for the answer or for room at the entry, ends
    its request as cancelled because the caller stopped waiting."""
    errors: dict[str, str] = {}
    retriever = RetrieverFull()

    def record(finished: FinishedRequest) -> None:
        errors[str(finished.request.input)] = f"{type(finished.error).__name__}: {finished.error}"

    async with open_pipeline(Held(), small(rag_capacity=1), retriever=retriever) as pipeline:
        pipeline.add_listener(record)
        pipeline.try_start(PromptRequest(input="in retrieval"))
        await trio.testing.wait_all_tasks_blocked()
        pipeline.try_start(PromptRequest(input="queued"))
        with trio.move_on_after(1.0):
            await pipeline.submit(PromptRequest(input="entering"))
        assert errors == {"entering": "RequestCancelled: the caller stopped waiting"}
        retriever.release.set()
        with trio.move_on_after(1.0):
            await pipeline.submit(PromptRequest(input="answer"))
        assert errors["answer"] == "RequestCancelled: the caller stopped waiting"
        pipeline.cancel_in_flight("done")


def task_names() -> list[str]:
    """The names of every task in the run, for a task dump to be read by."""
    names: list[str] = []
    tasks = [trio.lowlevel.current_root_task()]
    while tasks:
        task = tasks.pop()
        assert task is not None
        names.append(task.name)
        tasks += [child for nursery in task.child_nurseries for child in nursery.child_tasks]
    return names


async def test_the_pipelines_tasks_are_named_for_a_task_dump() -> None:
    """Each stage task and each inference runner carries a name saying what it is."""
    worker = Held()
    async with open_pipeline(worker) as pipeline:
        pipeline.try_start(PromptRequest(input="x"))
        await trio.testing.wait_all_tasks_blocked()
        names = task_names()
        worker.release.set()
    ours = sorted(name for name in names if name.startswith("trio_orchestrator."))
    assert ours == [
        "trio_orchestrator.assemble_stage",
        "trio_orchestrator.inference_runner",
        "trio_orchestrator.inference_stage",
        "trio_orchestrator.post_stage",
        "trio_orchestrator.rag_stage",
        "trio_orchestrator.reap_deadlines",
        "trio_orchestrator.stream_stage",
    ]


@attrs.define(eq=False)
class Witness:
    """A retriever and assembler that keep what they are given and answer with their own."""

    documents: tuple[Document, ...] = (Document("d1", "context"),)
    retrieved_for: list[PromptRequest] = attrs.field(factory=list)
    assembled: list[tuple[PromptRequest, Sequence[Document]]] = attrs.field(factory=list)

    async def retrieve(self, request: PromptRequest) -> Sequence[Document]:
        self.retrieved_for.append(request)
        return self.documents

    def assemble(self, request: PromptRequest, documents: Sequence[Document]) -> PromptRequest:
        self.assembled.append((request, documents))
        return attrs.evolve(request, input=f"{request.input} [{documents[0].text}]")


async def test_the_retriever_gets_the_request_and_the_assembler_its_documents() -> None:
    """Retrieval is asked about the request itself; assembly gets that request with what
    retrieval found, and the worker answers what assembly made."""
    parts = Witness()
    request = PromptRequest(input="question")
    async with open_pipeline(EchoWorker(), retriever=parts, assembler=parts) as pipeline:
        completion = await pipeline.submit(request)
    assert parts.retrieved_for == [request]
    assert parts.assembled == [(request, parts.documents)]
    assert completion.text == "question [context]"


async def test_every_request_shed_between_stages_counts_against_that_stage() -> None:
    """The per-stage shed count adds up: three requests shed at a full inference channel
    count three there."""
    worker = Held()
    fifo = PriorityConfig(enabled=False)
    config = small(inference_capacity=1, inference_concurrency=1, priority=fifo)
    async with open_pipeline(worker, config) as pipeline:
        handles = []
        for i in range(5):  # one running, one waiting for its slot, one in the channel, ...
            handles.append(pipeline.try_start(PromptRequest(input=f"r{i}")))
            await trio.testing.wait_all_tasks_blocked()
        handles.append(pipeline.try_start(PromptRequest(input="r5")))
        await trio.testing.wait_all_tasks_blocked()
        stats = pipeline.statistics()
        worker.release.set()
    assert [handle.done for handle in handles] == [True] * 6
    assert [s.shed for s in stats.stages] == [0, 0, 3, 0, 0]
    assert stats.shed == 3


@attrs.define(eq=False)
class ShieldedRetriever:
    """A retriever that cannot be cancelled until ``release`` is set."""

    entered: trio.Event = attrs.field(factory=trio.Event)
    release: trio.Event = attrs.field(factory=trio.Event)

    async def retrieve(self, request: PromptRequest) -> Sequence[Document]:
        self.entered.set()
        with trio.CancelScope(shield=True):
            await self.release.wait()
        return ()


async def test_a_request_whose_next_stage_has_stopped_is_cancelled_saying_so(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """When the pipeline's tasks are cancelled from outside while a request is in a stage
    that cannot be interrupted, the request ends cancelled because the pipeline shut down
    once it is handed on, instead of waiting for a stage that is gone."""
    retriever = ShieldedRetriever()
    errors: list[BaseException] = []

    async def ask(pipeline: Pipeline) -> None:
        try:
            await pipeline.submit(PromptRequest(input="x"))
        except RequestCancelled as exc:
            errors.append(exc)

    with trio.CancelScope() as outside:
        async with open_pipeline(EchoWorker(), retriever=retriever) as opened:
            # The body goes on, shielded, while the stages are cancelled under it.
            with trio.CancelScope(shield=True), trio.move_on_after(10.0):
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(ask, opened)
                    await retriever.entered.wait()
                    outside.cancel()
                    await trio.testing.wait_all_tasks_blocked()
                    retriever.release.set()
    assert [str(error) for error in errors] == ["the pipeline shut down"]
    assert opened.statistics().cancelled == 1


async def test_a_retrieval_cut_at_the_deadline_never_reaches_assembly(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A retrieval cut at the request's deadline ends the request there: the assembly
    stage never takes it."""
    async with open_pipeline(EchoWorker(), retriever=SlowRetriever(100.0)) as pipeline:
        with pytest.raises(DeadlineExceeded):
            await pipeline.submit(PromptRequest(input="x", timeout=3.0))
        await trio.testing.wait_all_tasks_blocked()
        stats = pipeline.statistics()
    assert [s.processed for s in stats.stages] == [1, 0, 0, 0, 0]


async def test_requests_cut_at_their_deadline_in_the_worker_never_reach_post(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A worker call cut at the request's deadline expires the request where it ran: the
    post stage never takes it (each of twenty deadlines falls at its own instant)."""
    worker = Held(delay=100.0)
    async with open_pipeline(worker, small(inference_concurrency=20)) as pipeline:
        for i in range(1, 21):
            pipeline.try_start(PromptRequest(input=f"r{i}", timeout=float(i)))
        await trio.sleep(30.0)
        stats = pipeline.statistics()
    assert stats.expired == 20
    assert [s.processed for s in stats.stages] == [20, 20, 20, 0, 0]


async def test_shutdown_drains_requests_started_after_the_pipeline_was_once_idle(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Leaving the block waits for every request in flight, however many and whenever they
    end within the grace period, even after the pipeline was idle once; one still running
    at the end of the grace period is cancelled saying the pipeline shut down before it
    finished. The pipeline says it is closing only once shutdown has begun."""
    async with open_pipeline(Held(delay=1.0), small(grace_period=10.0)) as pipeline:
        assert pipeline.closing is False
        await pipeline.submit(PromptRequest(input="first"))  # nothing in flight: idle
        short = pipeline.try_start(PromptRequest(input="a"))
        await trio.sleep(0.5)
        longer = pipeline.try_start(PromptRequest(input="b"))
    assert pipeline.closing
    assert (short.result().text, longer.result().text) == ("ok", "ok")
    async with open_pipeline(Held(delay=100.0), small(grace_period=2.0)) as pipeline:
        stuck = pipeline.try_start(PromptRequest(input="c"))
    with pytest.raises(RequestCancelled) as info:
        stuck.result()
    assert str(info.value) == "the pipeline shut down before the request finished"


async def test_each_stage_counts_every_request_it_took() -> None:
    """A stage's processed count adds up over requests; a handle's result before the end
    says it has not ended, and cancelling a request that has ended changes nothing."""
    async with open_pipeline(EchoWorker()) as pipeline:
        for _ in range(3):
            await pipeline.submit(PromptRequest(input="x"))
        handle = pipeline.try_start(PromptRequest(input="y", request_id="req_y"))
        with pytest.raises(RuntimeError, match=r"^request req_y has not ended yet$"):
            handle.result()
        await trio.testing.wait_all_tasks_blocked()
        assert handle.done
        assert handle.cancel() is False
        stats = pipeline.statistics()
    assert [s.processed for s in stats.stages] == [4, 4, 4, 4, 4]
    assert (stats.completed, stats.cancelled) == (4, 0)


@attrs.define(eq=False)
class SchedulerPasses(trio.abc.Instrument):
    """Counts the scheduler's passes (each runs the tasks runnable when it began)."""

    count: int = 0

    def after_io_wait(self, timeout: float) -> None:
        self.count += 1


@attrs.define(eq=False)
class StartsInPass:
    """Notes the scheduler pass in which each call starts; holds every call until released."""

    passes: SchedulerPasses
    started: list[int] = attrs.field(factory=list)
    release: trio.Event = attrs.field(factory=trio.Event)

    async def generate(self, request: PromptRequest, emit: EventSink) -> None:
        self.started.append(self.passes.count)
        await self.release.wait()
        await emit(Done("stop", ""))


@pytest.mark.parametrize("priority", [True, False])
@pytest.mark.parametrize(("concurrency", "per_pass"), [(2, 1), (6, 1), (8, 2), (10, 2), (12, 3)])
async def test_a_burst_starts_a_quarter_of_the_slots_per_scheduler_pass(
    concurrency: int, per_pass: int, priority: bool
) -> None:
    """A burst that fills every inference slot starts its provider calls a quarter of the
    slots (at least one) per scheduler pass, in consecutive passes, not all in one pass."""
    passes = SchedulerPasses()
    worker = StartsInPass(passes)
    config = small(inference_concurrency=concurrency, priority=PriorityConfig(enabled=priority))
    async with open_pipeline(worker, config) as pipeline:
        trio.lowlevel.add_instrument(passes)
        try:
            handles = [pipeline.try_start(PromptRequest(input="x")) for _ in range(concurrency)]
            await trio.testing.wait_all_tasks_blocked()
        finally:
            trio.lowlevel.remove_instrument(passes)
        worker.release.set()
    groups = [(count, len(list(calls))) for count, calls in itertools.groupby(worker.started)]
    first = groups[0][0]
    assert groups == [(first + i, per_pass) for i in range(concurrency // per_pass)]
    assert [handle.result().text for handle in handles] == [""] * concurrency


@attrs.define(eq=False)
class GivesUpOnB:
    """A retriever during whose call the caller of request "b" gives up on it (its handle is
    cancelled then); returns no documents, without a checkpoint."""

    handles: dict[str, PendingRequest] = attrs.field(factory=dict)

    async def retrieve(self, request: PromptRequest) -> Sequence[Document]:
        if request.input == "b":
            self.handles["b"].cancel("gave up")
        return ()


async def test_a_request_cancelled_during_retrieval_is_never_dead_lettered() -> None:
    """A request its caller cancelled while it was being retrieved stays cancelled when the
    next stage then turns out to be full: it is not shed, so no dead letter is kept for it."""
    retriever = GivesUpOnB()
    async with open_pipeline(EchoWorker(), small(assemble_capacity=1), retriever=retriever) as p:
        await trio.testing.wait_all_tasks_blocked()
        # The first goes straight to the waiting assembly task, the second fills its buffer.
        answered = [p.try_start(PromptRequest(input=text)) for text in ("a", "c")]
        retriever.handles["b"] = p.try_start(PromptRequest(input="b"))
        await trio.testing.wait_all_tasks_blocked()
        stats = p.statistics()
    assert [handle.result().text for handle in answered] == ["a", "c"]
    with pytest.raises(RequestCancelled, match=r"^gave up$"):
        retriever.handles["b"].result()
    assert (stats.completed, stats.cancelled, stats.shed) == (2, 1, 0)
    assert p.dead_letters.list() == []


async def test_a_request_reaching_a_stage_at_its_deadline_is_expired_there(
    mock_clock: trio.testing.MockClock,
) -> None:
    """A request whose deadline falls as a stage takes it ends there, expired: whether the
    stage or the deadline reaper (woken in the same scheduler pass, in trio's random order)
    gets to it first, the next stage never takes it. Twenty rounds, so both orders occur."""
    async with open_pipeline(EchoWorker()) as pipeline:
        for _ in range(20):
            await trio.testing.wait_all_tasks_blocked()
            handle = pipeline.try_start(PromptRequest(input="x", timeout=1.0))
            mock_clock.jump(1.0)  # the retrieval stage wakes for it exactly at its deadline
            await trio.testing.wait_all_tasks_blocked()
            with pytest.raises(DeadlineExceeded):
                handle.result()
        stats = pipeline.statistics()
    assert stats.expired == 20
    assert [s.processed for s in stats.stages] == [20, 0, 0, 0, 0]
