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
from trio_orchestrator.pipeline.priority import PriorityAdmission
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


# Tests that kill mutants the mutation session (scripts/mutation.py) found surviving: the
# admission driven directly, job by job, with one slot.


@attrs.define(eq=False)
class FakeJob:
    """What PriorityAdmission needs of a job."""

    name: str
    request: PromptRequest
    submitted_at: float = 0.0
    deadline: float = math.inf
    outcome: object = None


def job(name: str, level: Priority, at: float = 0.0) -> FakeJob:
    return FakeJob(name, PromptRequest(input=name, priority=level), submitted_at=at)


@attrs.define(eq=False)
class Admission:
    """A PriorityAdmission with one slot, fed from a channel, recording starts and expiries."""

    admission: PriorityAdmission[FakeJob]
    send: trio.MemorySendChannel[FakeJob]
    receive: trio.MemoryReceiveChannel[FakeJob]
    started: list[str] = attrs.field(factory=list)
    expired: list[str] = attrs.field(factory=list)
    read: int = 0

    @classmethod
    def make(cls, **config: float) -> Admission:
        send, receive = trio.open_memory_channel[FakeJob](math.inf)
        admission = PriorityAdmission[FakeJob](
            PriorityConfig(**config),  # type: ignore[arg-type]
            trio.CapacityLimiter(1),
        )
        return cls(admission, send, receive)

    async def next_job(self) -> FakeJob | None:
        try:
            item = await self.receive.receive()
        except trio.EndOfChannel:
            return None
        self.read += 1
        return item

    async def feed(self, *jobs: FakeJob) -> None:
        for item in jobs:
            self.send.send_nowait(item)
            await trio.testing.wait_all_tasks_blocked()

    async def release(self, name: str, jobs: dict[str, FakeJob]) -> None:
        self.admission.release(jobs[name])
        await trio.testing.wait_all_tasks_blocked()


async def drive(admission: Admission, nursery: trio.Nursery) -> None:
    nursery.start_soon(
        admission.admission.run,
        admission.next_job,
        lambda j: admission.started.append(j.name),
        lambda j: admission.expired.append(j.name),
    )
    await trio.testing.wait_all_tasks_blocked()


async def test_statistics_count_each_wait_and_admission_by_level() -> None:
    """Waiting, queued and admitted counts follow every job, level by level."""
    a = Admission.make(max_waiting=8)
    jobs = {
        "n": job("n", Priority.NORMAL),
        "l": job("l", Priority.LOW),
        "c": job("c", Priority.CRITICAL),
        "h": job("h", Priority.HIGH),
    }
    async with trio.open_nursery() as nursery:
        await drive(a, nursery)
        await a.feed(*jobs.values())
        stats = a.admission.statistics()
        assert (stats.waiting, stats.max_waiting, stats.queued) == (3, 8, 3)
        assert stats.waiting_by_level == (1, 1, 0, 1)
        assert stats.admitted_by_level == (0, 0, 1, 0)
        for name in ("n", "c", "h"):
            await a.release(name, jobs)
        stats = a.admission.statistics()
        assert a.started == ["n", "c", "h", "l"]
        assert (stats.waiting, stats.queued, stats.aged) == (0, 3, 0)
        assert stats.waiting_by_level == (0, 0, 0, 0)
        assert stats.admitted_by_level == (1, 1, 1, 1)
        a.send.close()


async def test_aging_is_counted_each_time_a_lower_level_goes_first() -> None:
    """Two LOW requests aged past a later CRITICAL one start first, and count as aged twice."""
    a = Admission.make(aging_interval=2.0)
    jobs = {
        "first": job("first", Priority.NORMAL),
        "low1": job("low1", Priority.LOW, at=0.0),
        "low2": job("low2", Priority.LOW, at=0.0),
        "crit": job("crit", Priority.CRITICAL, at=7.0),
    }
    async with trio.open_nursery() as nursery:
        await drive(a, nursery)
        await a.feed(*jobs.values())
        for name in ("first", "low1", "low2"):
            await a.release(name, jobs)
        assert a.started == ["first", "low1", "low2", "crit"]
        assert a.admission.statistics().aged == 2
        assert a.admission.statistics().admitted_by_level == (1, 0, 1, 2)
        a.send.close()


async def test_a_level_ages_by_one_per_interval() -> None:
    """With a 2 s interval, LOW submitted at 0 (rank 6) still yields to CRITICAL at 5."""
    a = Admission.make(aging_interval=2.0)
    jobs = {
        "first": job("first", Priority.NORMAL),
        "low": job("low", Priority.LOW, at=0.0),
        "crit": job("crit", Priority.CRITICAL, at=5.0),
    }
    async with trio.open_nursery() as nursery:
        await drive(a, nursery)
        await a.feed(*jobs.values())
        await a.release("first", jobs)
        assert a.started == ["first", "crit"]
        a.send.close()


async def test_resized_hands_new_slots_to_the_best_ranked_waiting_jobs() -> None:
    """Once the limiter grows (a reload), resized() starts waiting jobs at once, best-ranked
    first, as many as the new slots; with no slot free it starts nothing."""
    a = Admission.make()
    jobs = {
        "first": job("first", Priority.NORMAL),
        "low": job("low", Priority.LOW),
        "crit": job("crit", Priority.CRITICAL),
        "high": job("high", Priority.HIGH),
    }
    async with trio.open_nursery() as nursery:
        await drive(a, nursery)
        await a.feed(*jobs.values())
        a.admission.resized()
        assert a.started == ["first"]
        a.admission._limiter.total_tokens = 3
        a.admission.resized()
        assert a.started == ["first", "crit", "high"]
        assert a.admission.waiting == 1
        a.send.close()


async def test_a_dispatch_skips_ended_and_expired_jobs_and_starts_the_next() -> None:
    """A freed slot passes over a cancelled job and expires a late one, then starts the next."""
    a = Admission.make()
    jobs = {
        "first": job("first", Priority.NORMAL),
        "gone": job("gone", Priority.CRITICAL),
        "late": job("late", Priority.HIGH),
        "next": job("next", Priority.NORMAL),
    }
    async with trio.open_nursery() as nursery:
        await drive(a, nursery)
        await a.feed(*jobs.values())
        jobs["gone"].outcome = "cancelled"
        jobs["late"].deadline = -math.inf
        await a.release("first", jobs)
        assert a.started == ["first", "next"]
        assert a.expired == ["late"]
        assert a.admission.statistics().waiting_by_level == (0, 0, 0, 0)
        a.send.close()


async def test_a_full_queue_is_swept_of_ended_jobs_once_per_max_waiting_pops() -> None:
    """With the queue full, ended jobs are swept out after max_waiting pops, making room."""
    a = Admission.make(max_waiting=2)
    jobs = {
        name: job(name, Priority.NORMAL)
        for name in ("j0", "j1", "j2", "j3", "j4", "j5", "j6", "j7")
    }
    async with trio.open_nursery() as nursery:
        await drive(a, nursery)
        await a.feed(jobs["j0"], jobs["j1"], jobs["j2"])  # j0 runs; j1, j2 fill the queue
        assert a.read == 3
        await a.release("j0", jobs)  # j1 starts (one pop), room for j3
        await a.feed(jobs["j3"])
        jobs["j3"].outcome = "cancelled"  # its caller went away while it waited
        await a.release("j1", jobs)  # j2 starts: the second pop, so the queue is swept
        await a.feed(jobs["j4"], jobs["j5"])
        # Without the sweep, [j3, j4] would fill the queue and j5 would not be read.
        assert a.read == 6
        stats = a.admission.statistics()
        assert (stats.waiting, stats.waiting_by_level) == (2, (0, 0, 2, 0))
        jobs["j5"].outcome = "cancelled"
        await a.release("j2", jobs)  # j4 starts: one pop since the sweep, too few for another
        await a.feed(jobs["j6"], jobs["j7"])
        assert a.read == 7  # [j5, j6] fill the queue again: j7 stays in the channel
        assert a.started == ["j0", "j1", "j2", "j4"]
        nursery.cancel_scope.cancel()  # the reader waits for room that never comes
