"""Priority admission to a saturated inference stage, with aging and bounded holding."""

from __future__ import annotations

import math

import attrs
import pytest
import trio
import trio.testing
from hypothesis import given
from hypothesis import strategies as st

from trio_orchestrator import (
    Config,
    DeadlineExceeded,
    PipelineConfig,
    Priority,
    PromptRequest,
    RequestCancelled,
    RequestShed,
    open_pipeline,
)
from trio_orchestrator.config.model import PriorityConfig
from trio_orchestrator.events import Done
from trio_orchestrator.pipeline import Pipeline
from trio_orchestrator.workers import EventSink


@attrs.define(eq=False)
class RecordingWorker:
    """Records the order requests start in; each takes ``duration`` seconds, or waits for
    ``gate`` when the prompt is ``"blocker"``."""

    duration: float = 0.0
    gate: trio.Event = attrs.field(factory=trio.Event)
    started: list[str] = attrs.field(factory=list)

    async def generate(self, request: PromptRequest, emit: EventSink) -> None:
        name = request.input or ""
        self.started.append(name)
        if name == "blocker":
            await self.gate.wait()
        await trio.sleep(self.duration)
        await emit(Done("stop"))


def one_slot(**priority: float) -> Config:
    return Config(
        PipelineConfig(
            inference_concurrency=1,
            grace_period=0,
            priority=PriorityConfig(**priority),  # type: ignore[arg-type]
        )
    )


async def submit_quietly(pipeline: Pipeline, request: PromptRequest) -> None:
    try:
        await pipeline.submit(request)
    except (RequestCancelled, DeadlineExceeded, RequestShed):
        pass


async def test_higher_priorities_go_first_when_saturated() -> None:
    """Requests waiting for the one busy slot are served by level, first come first served."""
    worker = RecordingWorker()
    levels = [Priority.LOW, Priority.NORMAL, Priority.CRITICAL, Priority.HIGH] * 2
    async with open_pipeline(worker, one_slot()) as pipeline, trio.open_nursery() as n:
        n.start_soon(pipeline.submit, PromptRequest(input="blocker"))
        await trio.testing.wait_all_tasks_blocked()
        for i, level in enumerate(levels):
            n.start_soon(pipeline.submit, PromptRequest(input=f"{level.name}{i}", priority=level))
            await trio.testing.wait_all_tasks_blocked()
        worker.gate.set()
    assert worker.started == [
        "blocker",
        "CRITICAL2",
        "CRITICAL6",
        "HIGH3",
        "HIGH7",
        "NORMAL1",
        "NORMAL5",
        "LOW0",
        "LOW4",
    ]


async def _flood(
    aging_interval: float, autojump_clock: trio.testing.MockClock
) -> tuple[list[str], int]:
    """One LOW request against 40 CRITICAL ones arriving twice as fast as they are served.

    Returns the start order and the index of the LOW request in it.
    """
    worker = RecordingWorker(duration=1.0)
    config = one_slot(aging_interval=aging_interval)
    async with open_pipeline(worker, config) as pipeline, trio.open_nursery() as n:
        n.start_soon(pipeline.submit, PromptRequest(input="c0", priority=Priority.CRITICAL))
        await trio.testing.wait_all_tasks_blocked()
        n.start_soon(pipeline.submit, PromptRequest(input="low", priority=Priority.LOW))
        for i in range(1, 41):
            await trio.sleep(0.5)
            request = PromptRequest(input=f"c{i}", priority=Priority.CRITICAL)
            n.start_soon(pipeline.submit, request)
    return worker.started, worker.started.index("low")


async def test_aging_serves_low_despite_a_flood_of_critical(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A LOW request goes ahead of every CRITICAL one submitted 3 aging intervals after it."""
    order, low = await _flood(2.0, autojump_clock)
    served_before = [int(name[1:]) * 0.5 for name in order[:low]]
    assert max(served_before) <= 3 * 2.0  # only CRITICALs submitted by t = 6 s went first
    assert low < len(order) - 1  # and it did not wait for the flood to end


async def test_without_aging_low_waits_for_the_flood_to_end(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """With aging off (inf), the same LOW request is served only after every CRITICAL one."""
    order, low = await _flood(math.inf, autojump_clock)
    assert low == len(order) - 1


async def test_inference_channel_still_fills_to_capacity_and_sheds(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Under a stalled worker: 1 running, max_waiting held, the channel full, then shedding."""
    worker = RecordingWorker()
    config = Config(
        PipelineConfig(
            inference_concurrency=1,
            inference_capacity=4,
            grace_period=0,
            priority=PriorityConfig(max_waiting=3),
        )
    )
    async with open_pipeline(worker, config) as pipeline, trio.open_nursery() as n:
        for i in range(1 + 3 + 4):
            name = "blocker" if i == 0 else f"r{i}"
            n.start_soon(submit_quietly, pipeline, PromptRequest(input=name))
            await trio.testing.wait_all_tasks_blocked()
        with pytest.raises(RequestShed) as shed:
            await pipeline.submit(PromptRequest(input="one too many"))
        stats = pipeline.statistics()
    assert shed.value.stage == "inference"
    inference = stats.stage("inference")
    assert (inference.held, inference.queue_depth, inference.shed) == (3, 4, 1)
    assert stats.inference_active == 1
    assert stats.priority is not None
    assert stats.priority.waiting == 3


async def test_request_expiring_while_waiting_is_never_started(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A waiting request whose deadline passes ends as expired and never reaches the worker."""
    worker = RecordingWorker()
    async with open_pipeline(worker, one_slot()) as pipeline, trio.open_nursery() as n:
        n.start_soon(pipeline.submit, PromptRequest(input="blocker"))
        await trio.testing.wait_all_tasks_blocked()
        with pytest.raises(DeadlineExceeded):
            await pipeline.submit(PromptRequest(input="impatient", timeout=1.0))
        worker.gate.set()
        await pipeline.submit(PromptRequest(input="after"))
        stats = pipeline.statistics()
    assert worker.started == ["blocker", "after"]
    assert (stats.completed, stats.expired) == (2, 1)
    assert stats.priority is not None
    assert stats.priority.waiting == 0


async def test_unsaturated_requests_never_wait_in_the_queue() -> None:
    """With a slot free, every request is admitted at once: nothing is ever queued."""
    async with open_pipeline(RecordingWorker(), one_slot()) as pipeline:
        for i in range(5):
            await pipeline.submit(PromptRequest(input=f"r{i}", priority=Priority(i % 4)))
        stats = pipeline.statistics().priority
    assert stats is not None
    assert stats.queued == 0
    assert sum(stats.admitted_by_level) == 5


@attrs.define(eq=False)
class TimedWorker:
    """Takes ``duration`` seconds per request and records when each one started."""

    duration: float
    started: dict[str, float] = attrs.field(factory=dict)

    async def generate(self, request: PromptRequest, emit: EventSink) -> None:
        self.started[request.request_id] = trio.current_time()
        await trio.sleep(self.duration)
        await emit(Done("stop"))


_ARRIVALS = st.lists(
    st.tuples(
        st.sampled_from(list(Priority)),
        st.sampled_from([0.0, 0.3, 1.0]),  # gap before this arrival
        st.sampled_from([None, 0.5, 2.0, 5.0]),  # timeout
    ),
    max_size=25,
)


@given(arrivals=_ARRIVALS, slots=st.integers(1, 3), max_waiting=st.integers(1, 4))
def test_every_request_ends_once_and_none_starts_after_its_deadline(
    arrivals: list[tuple[Priority, float, float | None]], slots: int, max_waiting: int
) -> None:
    """Under saturation and expiry, outcomes add up and no request starts past its deadline."""

    async def scenario() -> None:
        worker = TimedWorker(duration=1.0)
        config = Config(
            PipelineConfig(
                inference_concurrency=slots,
                inference_capacity=2,
                priority=PriorityConfig(aging_interval=1.0, max_waiting=max_waiting),
            )
        )
        deadlines: dict[str, float] = {}
        async with open_pipeline(worker, config) as pipeline, trio.open_nursery() as n:
            for level, gap, timeout in arrivals:
                await trio.sleep(gap)
                request = PromptRequest(input="x", priority=level, timeout=timeout)
                deadlines[request.request_id] = request.resolve_deadline(trio.current_time())
                n.start_soon(submit_quietly, pipeline, request)
        stats = pipeline.statistics()
        ended = stats.completed + stats.failed + stats.shed + stats.expired + stats.cancelled
        assert (stats.submitted, ended, stats.in_flight) == (len(arrivals), len(arrivals), 0)
        assert stats.completed <= len(worker.started)  # some start, then expire mid-answer
        assert all(at < deadlines[rid] for rid, at in worker.started.items())
        assert stats.priority is not None
        assert stats.priority.waiting == 0

    trio.run(scenario, clock=trio.testing.MockClock(autojump_threshold=0))
