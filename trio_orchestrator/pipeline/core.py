"""The five-stage pipeline: one nursery, five stage tasks, bounded channels between them.

::

    caller ─▶ [rag] ─▶ [assemble] ─▶ [inference] ─▶ [post] ─▶ [stream] ─▶ caller / sinks

Requests move between stages as jobs, through Trio memory channels with explicit capacities.
A stage hands a job on with ``send_nowait``: a full channel sheds the job to the dead-letter
queue at once, so no stage ever waits on the one after it; only a caller entering the
pipeline may wait (``submit``) or be refused (``try_submit``). Stages drain whatever is
buffered on each wake, so a burst costs one scheduler round per stage, not one per request.
The inference stage alone takes at most a quarter of its slots' worth of jobs per round: a
burst that started every provider call in the same round would have them answered in one
wave too, and a closed loop of callers (each submitting again once answered) would then lock
into client and provider taking turns instead of working at once.

Tokens do not take the stage hops: the worker's events go straight from the inference task to
the caller (through the post-processing filters, which run incrementally), and the post and
stream stages finish each request once its worker is done.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import math
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AbstractContextManager, asynccontextmanager
from types import TracebackType
from typing import Final

import attrs
import outcome
import trio

from ..config import Config, PipelineConfig
from ..errors import (
    DeadlineExceeded,
    PipelineClosed,
    RequestCancelled,
    RequestShed,
    WorkerCrashed,
    WorkerError,
)
from ..events import Completion, Done, StreamEvent, TextDelta
from ..types import PromptRequest
from ..workers.base import ModelWorker
from .assemble import Assembler, DefaultAssembler
from .dead_letters import DeadLetter, DeadLetterQueue
from .hooks import PipelineHooks
from .job import EventPipe, FinishedRequest, Job, Outcome
from .post import PostProcessor, StopSequences, open_filters
from .priority import PriorityAdmission
from .rag import NoRetriever, Retriever
from .sinks import OutputSink
from .statistics import PipelineStatistics, StageStatistics

__all__ = ["PendingRequest", "Pipeline", "RequestStream", "open_pipeline"]

logger = logging.getLogger("trio_orchestrator.pipeline")

STAGES: Final = ("rag", "assemble", "inference", "post", "stream")
RAG, ASSEMBLE, INFERENCE, POST, STREAM = range(5)

Listener = Callable[[FinishedRequest], None]

# Inference runner tasks kept parked for the next request (the default concurrency): enough
# for a hand-off instead of a spawn under steady load, few enough to cost little idle.
IDLE_RUNNERS: Final = 256


@attrs.define(eq=False, slots=True)
class _StageCounter:
    sent: int = 0
    received: int = 0
    peak: int = 0
    shed: int = 0

    def count_sent(self, channel: trio.MemorySendChannel[Job]) -> None:
        self.sent += 1
        # sent - received overstates the queue by jobs handed straight to a waiting stage,
        # so confirm a new peak with the channel's real buffer (rarely: peaks are rare).
        if self.sent - self.received > self.peak:
            self.peak = max(self.peak, channel.statistics().current_buffer_used)


def _unwrap(exc: BaseException) -> BaseException:
    """The single leaf of nested one-exception groups (a worker's nursery wraps its error)."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


class Pipeline:
    """A running pipeline. Get one from :func:`open_pipeline`; do not construct it directly."""

    def __init__(
        self,
        worker: ModelWorker,
        config: Config,
        *,
        retriever: Retriever,
        assembler: Assembler,
        post_processors: Sequence[PostProcessor],
        sinks: Sequence[OutputSink],
        dead_letters: DeadLetterQueue | None = None,
    ) -> None:
        self._worker = worker
        self._config = config
        cfg = config.pipeline
        self._retriever = None if isinstance(retriever, NoRetriever) else retriever
        self._assembler = assembler
        self._post_processors = tuple(post_processors)
        self._sinks = tuple(sinks)
        self._capacities = (
            cfg.rag_capacity,
            cfg.assemble_capacity,
            cfg.inference_capacity,
            cfg.post_capacity,
            cfg.stream_capacity,
        )
        channels = [trio.open_memory_channel[Job](cap) for cap in self._capacities]
        self._sends = [send for send, _ in channels]
        self._receives = [receive for _, receive in channels]
        self._counters = [_StageCounter() for _ in STAGES]
        self._limiter = trio.CapacityLimiter(cfg.inference_concurrency)
        self._admission = (
            PriorityAdmission[Job](cfg.priority, self._limiter) if cfg.priority.enabled else None
        )
        # `is None`, not `or`: a queue given empty has len 0 and would be replaced.
        if dead_letters is None:
            dead_letters = DeadLetterQueue(cfg.dead_letter_capacity)
        self.dead_letters = dead_letters
        self._in_flight: set[Job] = set()
        self._outcomes = dict.fromkeys(Outcome, 0)
        self._submitted = 0
        self._sink_errors = 0
        self._listeners: list[Listener] = []
        self._hooks: PipelineHooks | None = None
        self._closing = False
        self._idle = trio.Event()
        self._now = trio.current_time()
        self._taken_this_round = 0  # jobs the inference stage took since its last checkpoint
        # Deadlines of jobs in flight: a heap of (deadline, seq), and the job of each seq
        # still running. An ended job leaves the dict at once (so nothing keeps it, its
        # request and its answer alive until its deadline); its heap entry leaves lazily.
        self._deadlines: list[tuple[float, int]] = []
        self._deadline_jobs: dict[int, Job] = {}
        self._seq = itertools.count(1)
        self._reaper_scope: trio.CancelScope | None = None
        # Inference runner tasks parked between requests (a hand-off is cheaper than a spawn).
        self._idle_runners: list[trio.lowlevel.Task] = []

    # ----------------------------------------------------------------- the caller's side

    async def submit(self, request: PromptRequest) -> Completion:
        """Submit a request, waiting for room at the entry if need be, and return its answer.

        Raises:
            RequestShed: a stage's channel was full (``PipelineClosed`` if shutting down).
            DeadlineExceeded: the request's deadline passed.
            RequestCancelled: shutdown cancelled it.
            WorkerError: the worker failed.
        """
        job = self._new_job(request)
        await self._enter_and_wait(job, wait=True)
        return job.result()

    async def try_submit(self, request: PromptRequest) -> Completion:
        """Like :meth:`submit`, but refuse at once when the entry channel is full.

        Raises:
            RequestShed: with stage ``"admission"`` when the entry channel is full, and as
                :meth:`submit` otherwise.
        """
        job = self._new_job(request)
        await self._enter_and_wait(job, wait=False)
        return job.result()

    def try_start(
        self, request: PromptRequest, on_end: Callable[[], None] | None = None
    ) -> PendingRequest:
        """Admit ``request`` without waiting and return its handle at once.

        For a caller that waits for something else meanwhile, in the same task: an HTTP
        handler reading ``http.disconnect`` until ``on_end`` cancels that read, say. Admission
        is :meth:`try_submit`'s: a refused request has ended (shed, or ``PipelineClosed``) by
        the time this returns, and ``on_end`` has been called.

        Args:
            request: the request.
            on_end: called once, synchronously, by whatever ends the request (the worker's
                end, its deadline, a shed, a cancellation); it must not block or raise.

        Returns:
            The handle: the caller that stops waiting before the request has ended must
            :meth:`~PendingRequest.cancel` it (it is then counted cancelled).
        """
        job = self._new_job(request)
        job.on_end = on_end
        self._enter_nowait(job)
        return PendingRequest(self, job)

    def try_start_stream(
        self,
        request: PromptRequest,
        push: Callable[[StreamEvent], Awaitable[None]],
        on_end: Callable[[], None] | None = None,
    ) -> PendingRequest:
        """Admit a streamed ``request`` whose events go to ``push`` as the worker makes them.

        :meth:`try_start`'s streaming twin: ``push`` is awaited in the worker's own task (no
        buffer, no second task per stream), so the caller's task is free to wait for
        something else (an HTTP handler reading ``http.disconnect``). The request completes
        once its last event has been pushed; the text filters' held-back ``tail`` and the
        completion are then on the handle.

        Args:
            request: the request (it is marked streamed: a retry never starts it over).
            push: takes each event; it must not raise (a sink that can no longer deliver
                cancels the request through the handle instead), and should not wait on a
                client: it runs while the request holds its inference slot (the service's
                sink only buffers, see ``service.streaming.PushedEventStream``). Events of a
                request that has ended are not pushed.
            on_end: as for :meth:`try_start`.

        Returns:
            The handle (see :meth:`try_start`).
        """
        job = self._new_job(request.streamed(True))
        job.push = push
        job.on_end = on_end
        self._enter_nowait(job)
        return PendingRequest(self, job)

    def stream(self, request: PromptRequest) -> RequestStream:
        """Return an async context manager that submits ``request`` and yields its events.

        ::

            async with pipeline.stream(request) as events:
                async for event in events:
                    ...

        Leaving the block before the last event cancels the request.
        """
        # Its events reach the caller as they come: a retry must never start it over.
        return RequestStream(self, request.streamed(True))

    async def replay(self, letter_id: str) -> Completion:
        """Take a dead letter out of the queue and submit its request again.

        An absolute deadline is dropped (it has passed); a relative ``timeout`` applies anew.

        Raises:
            KeyError: no such dead letter.
        """
        letter = await self.dead_letters.take_for_replay(letter_id)
        return await self.submit(attrs.evolve(letter.request, deadline=None))

    def add_listener(self, listener: Listener) -> None:
        """Call ``listener`` with a :class:`FinishedRequest` each time a request ends.

        Listeners run inline and must not block or raise.
        """
        self._listeners.append(listener)

    def set_hooks(self, hooks: PipelineHooks) -> None:
        """Have ``hooks`` follow every request from now on (observability sets this).

        Raises:
            RuntimeError: hooks are set already.
        """
        if self._hooks is not None:
            raise RuntimeError("this pipeline's hooks are set already (instrumented twice?)")
        self._hooks = hooks

    @property
    def config(self) -> Config:
        """The configuration in force."""
        return self._config

    def reconfigure(self, section: PipelineConfig, /) -> list[str]:
        """Put a reloaded ``[pipeline]`` in force without dropping a request in flight.

        Its reloadable options change at once (inference concurrency; request timeout,
        stream buffer and grace period for what starts next); the gateway has already kept
        the old values of the others (see :meth:`trio_orchestrator.Gateway.reload`).

        Returns:
            Nothing refused (the list a :class:`~trio_orchestrator.seams.Reloadable` returns).
        """
        self._config = attrs.evolve(self._config, pipeline=section)
        self._limiter.total_tokens = section.inference_concurrency
        if self._admission is not None:
            # The limiter wakes its own waiters; the jobs priority admission holds wait on it.
            self._admission.resized()
        return []

    @property
    def worker(self) -> ModelWorker:
        """The worker requests go to, as given (:func:`~trio_orchestrator.open_gateway` gives
        the outermost layer; walk the chain with :func:`~trio_orchestrator.seams.iter_layers`)."""
        return self._worker

    @property
    def closing(self) -> bool:
        """True once shutdown has begun: no new requests are admitted."""
        return self._closing

    def cancel_in_flight(self, reason: str) -> int:
        """End every request in flight now, each counted cancelled with
        :class:`~trio_orchestrator.errors.RequestCancelled` (``reason``) as its error.

        Its caller learns it the way it learns any ending, so a server can end a stream with
        the stream's own error event before it has to cut the connection.

        Returns:
            How many requests it ended.
        """
        jobs = list(self._in_flight)
        for job in jobs:
            self._cancel(job, reason)
        return len(jobs)

    def statistics(self) -> PipelineStatistics:
        """Return a snapshot of the pipeline's counters."""
        stages = tuple(
            StageStatistics(
                name=name,
                capacity=capacity,
                queue_depth=receive.statistics().current_buffer_used,
                peak_depth=counter.peak,
                processed=counter.received,
                shed=counter.shed,
                held=self._admission.waiting if name == "inference" and self._admission else 0,
            )
            for name, capacity, receive, counter in zip(
                STAGES, self._capacities, self._receives, self._counters, strict=True
            )
        )
        limiter = self._limiter.statistics()
        return PipelineStatistics(
            submitted=self._submitted,
            completed=self._outcomes[Outcome.COMPLETED],
            failed=self._outcomes[Outcome.FAILED],
            shed=self._outcomes[Outcome.SHED],
            expired=self._outcomes[Outcome.EXPIRED],
            cancelled=self._outcomes[Outcome.CANCELLED],
            in_flight=len(self._in_flight),
            stages=stages,
            inference_active=limiter.borrowed_tokens,
            inference_concurrency=int(limiter.total_tokens),
            waiting_to_enter=self._sends[RAG].statistics().tasks_waiting_send,
            dead_letters=self.dead_letters.statistics(),
            sink_errors=self._sink_errors,
            priority=None if self._admission is None else self._admission.statistics(),
        )

    def _new_job(self, request: PromptRequest) -> Job:
        now = trio.current_time()
        if request.deadline is None and request.timeout is None:
            deadline = now + self._config.pipeline.request_timeout
        else:
            deadline = request.resolve_deadline(now)
        # The scope's own deadline is redundant with the reaper's for ending the job, and
        # costs Trio a deadline-heap entry per open stream; but the layers read it
        # (`trio.current_effective_deadline()`: rate limit, coalescing, router).
        job = Job(request, deadline, now, trio.CancelScope(deadline=deadline))
        self._submitted += 1
        self._in_flight.add(job)
        if deadline != math.inf:
            self._watch_deadline(job)
        if self._hooks is not None:
            self._hooks.started(job)
        return job

    def _watch_deadline(self, job: Job) -> None:
        """Have the reaper expire ``job`` at its deadline, wherever it is waiting.

        One reaper task watching a heap costs far less than a cancel scope per caller; the
        job's own scope still bounds the worker call itself.
        """
        seq = job.deadline_seq = next(self._seq)
        self._deadline_jobs[seq] = job
        heapq.heappush(self._deadlines, (job.deadline, seq))
        scope = self._reaper_scope
        if scope is not None and job.deadline < scope.deadline:
            scope.deadline = job.deadline

    def _forget_deadline(self, job: Job) -> None:
        """Drop ended ``job`` from the reaper's watch, and the heap's dead entries when
        they outnumber the live ones (each entry is removed once: amortized O(1))."""
        del self._deadline_jobs[job.deadline_seq]
        heap, live = self._deadlines, self._deadline_jobs
        if len(heap) > 64 and len(heap) > 2 * len(live):
            heap[:] = [entry for entry in heap if entry[1] in live]
            heapq.heapify(heap)

    async def _reap_deadlines(self) -> None:
        heap = self._deadlines
        while True:
            with trio.CancelScope(deadline=heap[0][0] if heap else math.inf) as scope:
                self._reaper_scope = scope
                await trio.sleep_forever()
            now = trio.current_time()
            while heap and heap[0][0] <= now:
                job = self._deadline_jobs.get(heapq.heappop(heap)[1])
                if job is not None:
                    self._expire_if_running(job)

    async def _enter_and_wait(self, job: Job, *, wait: bool) -> None:
        """Admit ``job`` and wait for it to end (the reaper ends it at its deadline)."""
        try:
            if wait:
                await self._enter(job)
            else:
                self._enter_nowait(job)
            if job.outcome is None:
                await self._wait(job)
            else:
                # Refused at the door: still a checkpoint, but one that cannot turn the
                # counted outcome into a Cancelled the caller would see instead.
                await trio.lowlevel.cancel_shielded_checkpoint()
        except BaseException:
            self._cancel(job, "the caller stopped waiting")
            raise

    async def _wait(self, job: Job) -> None:
        """Park until ``job`` ends.

        A caller cancelled while parked ends its job as cancelled inside the abort callback,
        synchronously, so no other ending (a deadline falling due in the same instant) can
        be counted for a request whose caller saw Cancelled.
        """
        job.waiter = trio.lowlevel.current_task()

        def abort(_: trio.lowlevel.RaiseCancelT) -> trio.lowlevel.Abort:
            job.waiter = None
            self._cancel(job, "the caller stopped waiting")
            return trio.lowlevel.Abort.SUCCEEDED

        await trio.lowlevel.wait_task_rescheduled(abort)

    async def _enter(self, job: Job) -> None:
        send = self._sends[RAG]
        try:
            try:
                send.send_nowait(job)
            except trio.WouldBlock:
                await send.send(job)
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            self._shed(job, "admission", "the pipeline is shutting down", PipelineClosed())
        else:
            self._counters[RAG].count_sent(self._sends[RAG])

    def _enter_nowait(self, job: Job) -> None:
        try:
            self._sends[RAG].send_nowait(job)
        except trio.WouldBlock:
            reason = f"the entry channel is full ({self._capacities[RAG]} requests)"
            self._shed(job, "admission", reason)
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            self._shed(job, "admission", "the pipeline is shutting down", PipelineClosed())
        else:
            self._counters[RAG].count_sent(self._sends[RAG])

    def _expire_if_running(self, job: Job) -> bool:
        error = DeadlineExceeded(f"request {job.request.request_id} passed its deadline")
        return self._finish(job, Outcome.EXPIRED, error=error)

    def _cancel(self, job: Job, reason: str) -> None:
        self._finish(job, Outcome.CANCELLED, error=RequestCancelled(reason))

    # ----------------------------------------------------------------- endings

    def _finish(
        self,
        job: Job,
        outcome: Outcome,
        *,
        completion: Completion | None = None,
        error: BaseException | None = None,
    ) -> bool:
        """End ``job`` with ``outcome`` unless it has ended already; say whether it did."""
        if job.outcome is not None:
            return False
        job.outcome, job.completion, job.error = outcome, completion, error
        self._outcomes[outcome] += 1
        self._in_flight.discard(job)
        if job.deadline_seq:
            self._forget_deadline(job)
        if outcome is not Outcome.COMPLETED:  # a completed job's worker has returned already
            job.scope.cancel()
        if job.stream is not None:
            job.stream.close()
        if job.waiter is not None:
            trio.lowlevel.reschedule(job.waiter)
            job.waiter = None
        if job.on_end is not None:
            job.on_end()
        if self._hooks is not None:
            self._hooks.finished(job)
        if self._listeners:
            self._notify(job)
        if self._closing and not self._in_flight:
            self._idle.set()
        return True

    def _notify(self, job: Job) -> None:
        assert job.outcome is not None
        now = trio.current_time()
        # A caller that takes the answer whole is answered unstreamed by the provider: its
        # first event comes with its last, and is no time to a first token.
        first = job.first_token_at if job.request.streaming else None
        record = FinishedRequest(
            request=job.request,
            outcome=job.outcome,
            completion=job.completion,
            error=job.error,
            latency=now - job.submitted_at,
            time_to_first_token=None if first is None else first - job.submitted_at,
        )
        for listener in self._listeners:
            try:
                listener(record)
            except Exception:
                logger.exception("a pipeline listener raised; it was ignored")

    def _shed(self, job: Job, stage: str, reason: str, error: RequestShed | None = None) -> None:
        if self._finish(job, Outcome.SHED, error=error or RequestShed(stage, reason)):
            letter = DeadLetter(job.request, stage, reason, trio.current_time())
            self.dead_letters.add(letter)

    def _fail(self, job: Job, exc: BaseException, what: str = "worker") -> None:
        exc = _unwrap(exc)
        if not isinstance(exc, WorkerError):
            crashed = WorkerCrashed(f"the {what} raised {type(exc).__name__}: {exc}")
            crashed.__cause__ = exc
            exc = crashed
        self._finish(job, Outcome.FAILED, error=exc)

    def _forward(self, job: Job, stage: int) -> None:
        """Hand ``job`` to ``stage`` without waiting; shed it when the channel is full."""
        if self._hooks is not None:
            self._hooks.stage_left(job)
        try:
            self._sends[stage].send_nowait(job)
        except trio.WouldBlock:
            self._counters[stage].shed += 1
            name = STAGES[stage]
            reason = f"the {name} stage's input channel is full ({self._capacities[stage]})"
            self._shed(job, name, reason)
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            self._cancel(job, "the pipeline shut down")
        else:
            self._counters[stage].count_sent(self._sends[stage])

    # ----------------------------------------------------------------- the stages

    async def _next(self, stage: int) -> Job | None:
        """The next live job for ``stage``, or None when its channel has ended.

        Takes buffered jobs without a checkpoint, so a stage drains a burst in one wake; the
        inference stage checkpoints after each quarter of its slots (the module docstring
        says why).
        """
        receive = self._receives[stage]
        counter = self._counters[stage]
        while True:
            if stage == INFERENCE:
                if self._taken_this_round >= max(1, int(self._limiter.total_tokens) // 4):
                    await trio.lowlevel.checkpoint()
                    self._taken_this_round = 0
                    self._now = trio.current_time()
                self._taken_this_round += 1
            try:
                job = receive.receive_nowait()
            except trio.WouldBlock:
                try:
                    job = await receive.receive()
                except trio.EndOfChannel:
                    return None
                self._now = trio.current_time()
                self._taken_this_round = 1
            except trio.EndOfChannel:
                return None
            counter.received += 1
            if job.outcome is None:
                # A drained burst shares one reading of the clock: no time passes without a
                # checkpoint, as far as deadlines are concerned.
                if self._now < job.deadline:
                    if self._hooks is not None:
                        self._hooks.stage_entered(job, STAGES[stage])
                    return job
                self._expire_if_running(job)

    # A stage's loop drops its job before it waits for the next one: a stage parked on its
    # channel must not keep the last request, its answer and its stream alive.

    async def _rag_stage(self) -> None:
        async with self._receives[RAG], self._sends[ASSEMBLE]:
            while (job := await self._next(RAG)) is not None:
                await self._retrieve(job)
                job = None

    async def _retrieve(self, job: Job) -> None:
        # An embedding request has no conversation to retrieve for.
        if self._retriever is not None and job.request.embed is None:
            try:
                with trio.move_on_at(job.deadline):
                    job.documents = await self._retriever.retrieve(job.request)
            except Exception as exc:
                self._fail(job, exc, "retriever")
                return
            if trio.current_time() >= job.deadline:
                self._expire_if_running(job)
                return
        self._forward(job, ASSEMBLE)

    async def _assemble_stage(self) -> None:
        async with self._receives[ASSEMBLE], self._sends[INFERENCE]:
            while (job := await self._next(ASSEMBLE)) is not None:
                self._assemble(job)
                job = None

    def _assemble(self, job: Job) -> None:
        if job.request.embed is None:  # else no chat to assemble: sent as it came
            try:
                job.prepared = self._assembler.assemble(job.request, job.documents)
            except Exception as exc:
                self._fail(job, exc, "assembler")
                return
        self._forward(job, INFERENCE)

    async def _inference_stage(self) -> None:
        async with self._receives[INFERENCE], self._sends[POST], trio.open_nursery() as nursery:
            if self._admission is not None:
                await self._admission.run(
                    lambda: self._next(INFERENCE),
                    lambda job: self._dispatch(nursery, job),
                    self._expire_if_running,
                )
                return
            while (job := await self._next(INFERENCE)) is not None:
                await self._admit(nursery, job)
                job = None

    async def _admit(self, nursery: trio.Nursery, job: Job) -> None:
        limiter = self._limiter
        try:
            limiter.acquire_on_behalf_of_nowait(job)
        except trio.WouldBlock:
            await limiter.acquire_on_behalf_of(job)
        if job.outcome is not None:
            limiter.release_on_behalf_of(job)
            return
        self._dispatch(nursery, job)

    def _dispatch(self, nursery: trio.Nursery, job: Job) -> None:
        """Run ``job`` on a parked runner task, or on a new one when none is idle.

        The limiter bounds how many run at once, so the pool never outgrows it.
        """
        if self._idle_runners:
            trio.lowlevel.reschedule(self._idle_runners.pop(), outcome.Value(job))
        else:
            nursery.start_soon(self._runner, job, name="trio_orchestrator.inference_runner")

    async def _runner(self, job: Job | None) -> None:
        # The inference itself is inline (not a coroutine of its own): a runner lives as
        # long as its stream, and every frame in its chain is held for as long.
        while job is not None:
            try:
                request = self._open_filters(job)
                if request is not None:
                    try:
                        # Here, not in a coroutine of its own: a frame fewer per stream.
                        with job.scope:
                            await self._call_worker(job, request)
                    except Exception as exc:
                        self._fail(job, exc)
                    else:
                        if job.outcome is None and job.scope.cancelled_caught:
                            # Every other cancellation ends the job before cancelling its scope.
                            self._expire_if_running(job)
            finally:
                if self._admission is None:
                    self._limiter.release_on_behalf_of(job)
                else:
                    self._admission.release(job)  # and hands the slot to the best-ranked waiter
            if job.outcome is None:
                self._forward(job, POST)
            job = None  # a parked runner keeps no request alive
            job = await self._park_runner()

    async def _park_runner(self) -> Job | None:
        """Wait for the next job; None means the pool is full and this runner should end.

        The pool keeps at most ``IDLE_RUNNERS`` (or the limiter's size, if smaller): a burst
        of 10,000 streams would otherwise leave 10,000 parked tasks behind it for good.
        """
        if len(self._idle_runners) >= min(self._limiter.total_tokens, IDLE_RUNNERS):
            return None
        task = trio.lowlevel.current_task()
        self._idle_runners.append(task)

        def abort(_: trio.lowlevel.RaiseCancelT) -> trio.lowlevel.Abort:
            self._idle_runners.remove(task)
            return trio.lowlevel.Abort.SUCCEEDED

        job: Job = await trio.lowlevel.wait_task_rescheduled(abort)
        return job

    def _open_filters(self, job: Job) -> PromptRequest | None:
        """The request the worker gets, its text filters opened; None if they failed it."""
        request = job.prepared or job.request
        try:
            job.filter = open_filters(self._post_processors, request)
        except Exception as exc:
            # Fails this request only: raised here, it would end the runner and the pipeline.
            self._fail(job, exc, "post-processor")
            return None
        return request

    def _call_worker(self, job: Job, request: PromptRequest) -> Awaitable[None]:
        # The worker's own coroutine when there is no hooks' context nor filter: no frame of
        # ours in between.
        context = None if self._hooks is None else self._hooks.inference(job)
        if context is not None:
            return self._call_in(context, job, request)
        if job.filter is None:
            return self._worker.generate(request, job.emit)
        return self._call_stoppable(job, request)

    async def _call_in(
        self, context: AbstractContextManager[None], job: Job, request: PromptRequest
    ) -> None:
        """The worker's call in the hooks' inference ``context``."""
        with context:
            if job.filter is None:
                await self._worker.generate(request, job.emit)
            else:
                await self._call_stoppable(job, request)

    async def _call_stoppable(self, job: Job, request: PromptRequest) -> None:
        """The worker's call, in a scope a stop sequence cancels."""
        with trio.CancelScope() as job.generation:
            await self._worker.generate(request, job.emit)

    async def _post_stage(self) -> None:
        async with self._receives[POST], self._sends[STREAM]:
            while (job := await self._next(POST)) is not None:
                self._post(job)
                job = None

    def _post(self, job: Job) -> None:
        try:
            job.completion = job.complete()
        except Exception as exc:
            self._fail(job, exc, "post-processor")
            return
        self._forward(job, STREAM)

    async def _stream_stage(self) -> None:
        async with self._receives[STREAM]:
            while (job := await self._next(STREAM)) is not None:
                self._deliver(job)
                job = None

    def _deliver(self, job: Job) -> None:
        completion = job.completion
        assert completion is not None
        for sink in self._sinks:
            try:
                sink.deliver(job.request, completion)
            except Exception:
                self._sink_errors += 1
                logger.exception("output sink %r raised; it was ignored", sink)
        if job.stream is None:
            self._finish(job, Outcome.COMPLETED, completion=completion)
        else:
            # A streamed request completes when its caller reads the end.
            job.stream.close()

    # ----------------------------------------------------------------- life cycle

    def _start(self, nursery: trio.Nursery) -> None:
        for stage in (
            self._reap_deadlines,
            self._rag_stage,
            self._assemble_stage,
            self._inference_stage,
            self._post_stage,
            self._stream_stage,
        ):
            nursery.start_soon(stage, name=f"trio_orchestrator.{stage.__name__[1:]}")

    async def _shutdown(self, nursery: trio.Nursery, *, graceful: bool) -> None:
        """Stop admitting; drain within the grace period if graceful; cancel the rest."""
        self._closing = True
        self._sends[RAG].close()
        if not self._in_flight:
            self._idle.set()
        if graceful:
            with trio.move_on_after(self._config.pipeline.grace_period):
                await self._idle.wait()
        for job in list(self._in_flight):
            self._cancel(job, "the pipeline shut down before the request finished")
        nursery.cancel_scope.cancel()


@asynccontextmanager
async def open_pipeline(
    worker: ModelWorker,
    config: Config | None = None,
    *,
    retriever: Retriever | None = None,
    assembler: Assembler | None = None,
    post_processors: Sequence[PostProcessor] | None = None,
    sinks: Sequence[OutputSink] = (),
    dead_letters: DeadLetterQueue | None = None,
) -> AsyncIterator[Pipeline]:
    """Run a pipeline around ``worker`` for the duration of the ``async with`` block.

    ``worker`` is called as it is: the resilience layers, routing and shared state that
    the configuration describes are built by :func:`trio_orchestrator.open_gateway`, which
    opens the pipeline around the finished worker.

    Leaving the block normally stops admission, lets in-flight requests finish within
    ``config.pipeline.grace_period`` seconds, then cancels the rest (each recorded as
    cancelled). Leaving it by an exception, cancellation included, cancels in-flight
    requests at once.

    Args:
        worker: turns each request into events.
        config: the configuration; defaults throughout when ``None``.
        retriever: the retrieval stage's retriever (default: none, no context added).
        assembler: the assembly stage's assembler (default: :class:`DefaultAssembler`).
        post_processors: text filters (default: the request's stop sequences).
        sinks: receive every completed answer.
        dead_letters: where shed requests go (default: an in-memory ring buffer of
            ``pipeline.dead_letter_capacity``).
    """
    config = config or Config()
    pipeline = Pipeline(
        worker,
        config,
        retriever=retriever or NoRetriever(),
        assembler=assembler or DefaultAssembler(),
        post_processors=(StopSequences(),) if post_processors is None else post_processors,
        sinks=sinks,
        dead_letters=dead_letters,
    )
    body_error: BaseException | None = None
    async with trio.open_nursery() as nursery:
        pipeline._start(nursery)
        try:
            yield pipeline
        except BaseException as exc:
            # Re-raised below, outside the nursery, so the caller sees its own exception
            # rather than an ExceptionGroup wrapping it.
            body_error = exc
            await pipeline._shutdown(nursery, graceful=False)
        else:
            await pipeline._shutdown(nursery, graceful=True)
    if body_error is not None:
        raise body_error


class RequestStream:
    """The events of one streamed request; use it as an async context manager.

    Attributes:
        request_id: the request's id.
        completion: the answer, once the final ``Done`` has been yielded.
    """

    def __init__(self, pipeline: Pipeline, request: PromptRequest) -> None:
        self._pipeline = pipeline
        self._request = request
        self._job: Job | None = None
        self._pending: list[StreamEvent] = []
        self._ended = False
        self.request_id = request.request_id
        self.completion: Completion | None = None

    async def __aenter__(self) -> RequestStream:
        pipeline = self._pipeline
        job = pipeline._new_job(self._request)
        job.stream = EventPipe(
            pipeline._config.pipeline.stream_buffer,
            lambda: pipeline._cancel(job, "the caller stopped waiting"),
        )
        self._job = job
        try:
            await pipeline._enter(job)
        except BaseException:
            pipeline._cancel(job, "the caller stopped waiting")
            raise
        if job.outcome is not None and job.outcome is not Outcome.COMPLETED:
            job.result()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._job is not None:
            self._pipeline._cancel(self._job, "the caller closed the stream")

    def __aiter__(self) -> RequestStream:
        return self

    async def __anext__(self) -> StreamEvent:
        if self._pending:
            return self._pending.pop(0)
        job = self._job
        if job is None or job.stream is None:
            raise RuntimeError("use the stream as `async with pipeline.stream(request) as s:`")
        if self._ended:
            raise StopAsyncIteration
        # Any ending (the reaper's expiry included) closes the job's pipe.
        event = await job.stream.get()
        return self._end(job) if event is None else event

    def _end(self, job: Job) -> StreamEvent:
        self._ended = True
        if job.outcome is None and job.completion is not None:
            self._pipeline._finish(job, Outcome.COMPLETED, completion=job.completion)
        completion = job.result()
        self.completion = completion
        if job.tail:
            self._pending.append(TextDelta(job.tail))
        self._pending.append(
            Done(
                completion.finish_reason,
                completion.text,
                completion.usage,
                completion.tool_calls,
                completion.model,
            )
        )
        return self._pending.pop(0)


class PendingRequest:
    """A request started with :meth:`Pipeline.try_start`, until and after it ends.

    Attributes:
        request_id: the request's id.
    """

    __slots__ = ("_job", "_pipeline", "request_id")

    def __init__(self, pipeline: Pipeline, job: Job) -> None:
        self._pipeline = pipeline
        self._job = job
        self.request_id = job.request.request_id

    @property
    def done(self) -> bool:
        """True once the request has ended, in whichever outcome."""
        return self._job.outcome is not None

    def result(self) -> Completion:
        """Return the completion, or raise the error the request ended with.

        Raises:
            OrchestratorError: how the request ended, as :meth:`Pipeline.try_submit` raises it.
            RuntimeError: the request has not ended yet.
        """
        if self._job.outcome is None:
            raise RuntimeError(f"request {self.request_id} has not ended yet")
        return self._job.result()

    @property
    def tail(self) -> str:
        """Text the post-processing filters held back and released at the end (a streamed
        request's last text, not pushed as an event)."""
        return self._job.tail

    def cancel(self, reason: str = "the caller stopped waiting") -> bool:
        """End the request as cancelled, and its worker call with it, unless it has ended.

        Returns:
            True if this call ended it; False if it had ended already (see :meth:`result`).
        """
        job = self._job
        if job.outcome is not None:
            return False
        return self._pipeline._finish(job, Outcome.CANCELLED, error=RequestCancelled(reason))
