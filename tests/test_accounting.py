"""Properties: every request ends exactly once, as its caller saw it; backpressure is bounded."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Iterator

import attrs
import trio
import trio.testing
from hypothesis import given
from hypothesis import strategies as st

from trio_orchestrator import (
    Config,
    DeadlineExceeded,
    Done,
    EventSink,
    FinishedRequest,
    Outcome,
    PendingRequest,
    Pipeline,
    PipelineConfig,
    PriorityConfig,
    PromptRequest,
    RequestCancelled,
    RequestShed,
    ServerError,
    TextDelta,
    WorkerError,
    open_pipeline,
)

MODES = ("submit", "try_submit", "stream", "start", "start_disconnect")
FAILURES = ("none", "typed", "crash")


@attrs.frozen
class Plan:
    """One request of a generated workload."""

    arrival: float
    mode: str
    latency: float
    failure: str
    timeout: float | None
    cancel_after: float | None


@attrs.frozen
class Workload:
    capacities: tuple[int, int, int, int, int]
    concurrency: int
    grace: float
    shutdown_at: float | None
    plans: tuple[Plan, ...]


half_steps = st.integers(0, 16).map(lambda n: n / 2)

plans = st.builds(
    Plan,
    arrival=half_steps,
    mode=st.sampled_from(MODES),
    latency=half_steps,
    failure=st.sampled_from(FAILURES),
    timeout=st.none() | st.integers(1, 16).map(lambda n: n / 2),
    cancel_after=st.none() | half_steps,
)

workloads = st.builds(
    Workload,
    capacities=st.tuples(*[st.integers(1, 6)] * 5),
    concurrency=st.integers(1, 6),
    grace=half_steps,
    shutdown_at=st.none() | half_steps,
    plans=st.lists(plans, min_size=1, max_size=40).map(tuple),
)


@attrs.define
class PlannedWorker:
    """Follows each request's plan: two deltas over its latency, then success or a failure."""

    plans: dict[str, Plan]

    async def generate(self, request: PromptRequest, emit: EventSink) -> None:
        plan = self.plans[request.request_id]
        await trio.sleep(plan.latency / 2)
        await emit(TextDelta("half "))
        await trio.sleep(plan.latency / 2)
        if plan.failure == "typed":
            raise ServerError("scripted 500", status=500)
        if plan.failure == "crash":
            raise RuntimeError("scripted crash")
        await emit(TextDelta("done"))
        await emit(Done("stop", "half done"))


def outcome_of(pending: PendingRequest) -> str:
    """The outcome a started request's handle reports."""
    try:
        pending.result()
    except RequestShed:
        return "shed"
    except DeadlineExceeded:
        return "expired"
    except RequestCancelled:
        return "cancelled"
    except WorkerError:
        return "failed"
    return "completed"


async def wait_started(
    pipeline: Pipeline, request: PromptRequest, disconnect_at: float, started: list[PendingRequest]
) -> None:
    """Wait as the service does, in one task: read for a disconnect (here: at
    ``disconnect_at``) until the request's end cancels the read; a disconnect cancels it."""
    with trio.CancelScope() as ended:
        pending = pipeline.try_start(request, ended.cancel)
        started.append(pending)
        try:
            while not pending.done:
                await trio.sleep_until(disconnect_at)  # receive() returning http.disconnect
                pending.cancel("the client disconnected")
        except BaseException:
            pending.cancel()
            raise


async def call_started(
    pipeline: Pipeline, plan: Plan, request: PromptRequest, record: Callable[[str, str], None]
) -> None:
    """Start one request as planned (the caller cancelled, or its client disconnecting, at
    ``cancel_after``) and record the outcome its handle reports."""
    await trio.sleep(plan.arrival)
    now = trio.current_time()
    cancel_at = math.inf if plan.cancel_after is None else now + plan.cancel_after
    disconnect = plan.mode == "start_disconnect"
    started: list[PendingRequest] = []
    with trio.CancelScope(deadline=math.inf if disconnect else cancel_at):
        await wait_started(pipeline, request, cancel_at if disconnect else math.inf, started)
    (pending,) = started
    assert pending.done, "the caller left a started request running"
    record(request.request_id, outcome_of(pending))


async def call(
    pipeline: object, plan: Plan, request: PromptRequest, record: Callable[[str, str], None]
) -> None:
    """Make one request as planned and record the outcome its caller observed."""
    if plan.mode.startswith("start"):
        await call_started(pipeline, plan, request, record)  # type: ignore[arg-type]
        return
    p = pipeline
    await trio.sleep(plan.arrival)
    observed = "cancelled"  # what a caller whose own scope fired sees
    with trio.move_on_after(plan.cancel_after if plan.cancel_after is not None else 1e9):
        try:
            if plan.mode == "submit":
                await p.submit(request)  # type: ignore[attr-defined]
            elif plan.mode == "try_submit":
                await p.try_submit(request)  # type: ignore[attr-defined]
            else:
                async with p.stream(request) as events:  # type: ignore[attr-defined]
                    async for _ in events:
                        pass
            observed = "completed"
        except RequestShed:
            observed = "shed"
        except DeadlineExceeded:
            observed = "expired"
        except RequestCancelled:
            observed = "cancelled"
        except WorkerError:
            observed = "failed"
    record(request.request_id, observed)


def live_tasks() -> set[trio.lowlevel.Task]:
    """Every task in the run, from the root down."""

    def walk(task: trio.lowlevel.Task) -> Iterator[trio.lowlevel.Task]:
        yield task
        for nursery in task.child_nurseries:
            for child in nursery.child_tasks:
                yield from walk(child)

    root = trio.lowlevel.current_root_task()
    assert root is not None
    return set(walk(root))


async def run_workload(workload: Workload) -> None:
    requests = [
        PromptRequest(input=f"r{i}", timeout=plan.timeout) for i, plan in enumerate(workload.plans)
    ]
    worker = PlannedWorker({r.request_id: p for r, p in zip(requests, workload.plans, strict=True)})
    rag, assemble, inference, post, stream = workload.capacities
    config = Config(
        pipeline=PipelineConfig(
            rag_capacity=rag,
            assemble_capacity=assemble,
            inference_capacity=inference,
            post_capacity=post,
            stream_capacity=stream,
            inference_concurrency=workload.concurrency,
            grace_period=workload.grace,
        )
    )
    records: list[FinishedRequest] = []
    seen: dict[str, str] = {}
    before = live_tasks()
    all_seen = trio.Event()

    def record(request_id: str, outcome: str) -> None:
        seen[request_id] = outcome
        if len(seen) == len(requests):
            all_seen.set()

    async with trio.open_nursery() as callers, open_pipeline(worker, config) as pipeline:
        pipeline.add_listener(records.append)
        for request, plan in zip(requests, workload.plans, strict=True):
            callers.start_soon(call, pipeline, plan, request, record)
        if workload.shutdown_at is not None:
            await trio.sleep(workload.shutdown_at)
        else:
            await all_seen.wait()
    assert live_tasks() == before, "tasks outlived the pipeline"

    stats = pipeline.statistics()
    by_id = Counter(r.request.request_id for r in records)
    assert all(n == 1 for n in by_id.values()), "a request ended more than once"
    assert set(by_id) == set(seen) == {r.request_id for r in requests}
    recorded = {r.request.request_id: r.outcome.value for r in records}
    assert recorded == seen, "a caller saw another outcome than the one counted"
    counts = Counter(recorded.values())
    assert stats.submitted == len(requests)
    assert stats.in_flight == 0
    assert {o.value: getattr(stats, o.value) for o in Outcome} == {
        o.value: counts.get(o.value, 0) for o in Outcome
    }


@given(workloads)
def test_every_request_ends_exactly_once_as_its_caller_saw_it(workload: Workload) -> None:
    """For random workloads, faults, deadlines, cancellations and shutdowns, the outcome
    counts sum to the requests submitted, each caller saw the outcome counted for it, and
    no task is left running."""
    trio.run(run_workload, workload, clock=trio.testing.MockClock(autojump_threshold=0))


@attrs.define
class Stalled:
    """A worker that starts every request and then waits for ``release``."""

    release: trio.Event = attrs.field(factory=trio.Event)

    async def generate(self, request: PromptRequest, emit: EventSink) -> None:
        await self.release.wait()
        await emit(Done("stop", ""))


async def run_backpressure(
    concurrency: int, capacities: tuple[int, ...], n: int, max_waiting: int | None
) -> None:
    rag, assemble, inference = capacities
    post = stream = 64  # room for everything held to finish at once when released
    priority = (
        PriorityConfig(enabled=False)
        if max_waiting is None
        else PriorityConfig(max_waiting=max_waiting)
    )
    config = Config(
        pipeline=PipelineConfig(
            rag_capacity=rag,
            assemble_capacity=assemble,
            inference_capacity=inference,
            post_capacity=post,
            stream_capacity=stream,
            inference_concurrency=concurrency,
            priority=priority,
        )
    )
    worker = Stalled()
    shed_at: list[str] = []

    async def submit(i: int) -> None:
        try:
            await pipeline.submit(PromptRequest(input=str(i)))
        except RequestShed as exc:
            shed_at.append(exc.stage)

    async with open_pipeline(worker, config) as pipeline:
        async with trio.open_nursery() as nursery:
            for i in range(n):
                nursery.start_soon(submit, i)
                await trio.testing.wait_all_tasks_blocked()
            running = min(n, concurrency)
            # Taken off the channel by the stage to wait for a slot: one in FIFO admission,
            # up to max_waiting in priority admission (ranked while they wait).
            limit = 1 if max_waiting is None else max_waiting
            held = min(n - running, limit)
            queued = min(n - running - held, inference)
            stats = pipeline.statistics()
            stage = stats.stage("inference")
            assert (stage.queue_depth, stage.peak_depth) == (queued, queued)
            assert shed_at == ["inference"] * (n - running - held - queued)
            assert stats.inference_active == running
            # Upstream keeps moving: nothing waits anywhere else.
            assert all(s.queue_depth == 0 for s in stats.stages if s.name != "inference")
            assert stats.in_flight == running + held + queued
            worker.release.set()
        stats = pipeline.statistics()
    assert stats.completed == running + held + queued
    assert stats.shed == len(shed_at)


@given(
    concurrency=st.integers(1, 5),
    capacities=st.tuples(*[st.integers(1, 8)] * 3),
    n=st.integers(1, 40),
    max_waiting=st.none() | st.integers(1, 6),
)
def test_a_stalled_worker_fills_its_channel_to_capacity_and_sheds_the_rest(
    concurrency: int, capacities: tuple[int, ...], n: int, max_waiting: int | None
) -> None:
    """With inference stalled, its channel fills to exactly its capacity, later requests are
    shed at that stage, upstream stages stay empty, and the requests held stay bounded."""
    trio.run(
        run_backpressure,
        concurrency,
        capacities,
        n,
        max_waiting,
        clock=trio.testing.MockClock(autojump_threshold=0),
    )
