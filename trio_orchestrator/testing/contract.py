"""The worker contract: what every worker (and every layer, which is a worker) must do.

Subclass :class:`WorkerContract` in your pytest suite::

    from trio_orchestrator.testing import WorkerContract

    class TestMyWorker(WorkerContract):
        def make_worker(self):
            return MyWorker()

or call :func:`check_worker` (``check_worker(MyWorker)``) from anywhere. Hypothesis draws the
requests (and the cancellation points, deadlines and concurrent batches); each rule below is
checked on every call, and a broken one raises :class:`ContractViolation` naming the rule,
the request and the whole event sequence.

The rules:

``grammar``
    Events are ``(TextDelta | ToolCallStart | ToolCallDelta | Usage | Passthrough)*`` then
    exactly one ``Done``, last; a ``ToolCallDelta`` follows its ``ToolCallStart``;
    ``Done.text`` equals the concatenated ``TextDelta`` text; nothing is emitted once
    ``generate`` has returned.
``errors``
    Only :class:`~trio_orchestrator.errors.WorkerError` subclasses escape (not inside an
    ``ExceptionGroup``), with ``retryable`` and ``trips_breaker`` booleans and
    ``retry_after`` ``None`` or a non-negative number; no ``Done`` before an error.
``cancellation``
    Cancelled (at an event, or after some scheduler rounds), the call propagates
    ``trio.Cancelled`` (it neither returns nor turns it into an error), emits nothing more,
    returns within ``max_cancel_steps`` scheduler steps of its tasks and, under a mock clock,
    without the clock moving; and no task it started outlives it.
``deadline``
    Run inside a cancel scope with a deadline (as the pipeline runs it), the call returns by
    the deadline.
``concurrency``
    Many requests at once on one worker instance each obey the rules; with
    ``deterministic = True`` each answer also equals the answer to the same request alone.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, ClassVar

import attrs
import pytest
import trio
import trio.testing
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ..errors import WorkerError
from ..events import Done, StreamEvent, TextDelta, ToolCallDelta, ToolCallStart, Usage
from ..types import PromptRequest
from ..workers.base import ModelWorker
from .strategies import prompt_requests

__all__ = [
    "ContractViolation",
    "WorkerContract",
    "WorkerFactory",
    "check_call",
    "check_worker",
    "check_worker_async",
    "worker_contract",
]

WorkerFactory = Callable[[], ModelWorker | Awaitable[ModelWorker]]

#: How the contract cancels a call: ``("event", k)`` cancels as the worker emits event ``k``;
#: ``("rounds", k)`` cancels after ``k`` scheduler rounds, wherever the worker is.
CancelPoint = tuple[str, int]


class ContractViolation(AssertionError):
    """A worker broke a rule of the contract.

    Attributes:
        rule: the rule's name (``grammar``, ``errors``, ``cancellation``, ``deadline``,
            ``concurrency``).
        detail: what happened, and what was expected.
        request: the request the worker was given.
        events: every event the worker emitted, in order.
    """

    def __init__(self, rule: str, detail: str, run: _Run) -> None:
        self.rule, self.detail = rule, detail
        self.request, self.events = run.request, list(run.events)
        super().__init__(f"worker contract broken [{rule}]: {detail}\n{run.describe()}")


@attrs.define(eq=False)
class _Run:
    """What happened during one call of ``generate``."""

    request: PromptRequest
    events: list[StreamEvent] = attrs.field(factory=list)
    late_events: list[StreamEvent] = attrs.field(factory=list)
    error: BaseException | None = None
    cancelled: bool = False
    returned: bool = False
    cancel_issued_at: float | None = None
    cancel_event_index: int | None = None
    returned_at: float | None = None
    deadline: float = math.inf
    steps_after_cancel: int = 0
    leftover: list[str] = attrs.field(factory=list)
    cancel_point: CancelPoint | None = None

    def outcome(self) -> str:
        if self.cancelled:
            return "cancelled (trio.Cancelled propagated)"
        if self.error is not None:
            return f"raised {type(self.error).__name__}: {self.error}"
        return "returned normally"

    def _how_cancelled(self) -> str:
        point = self.cancel_point
        if point is None:
            return f"by its deadline; {self.steps_after_cancel} scheduler steps to stop"
        what = (
            f"as it emitted event {point[1]}"
            if point[0] == "event"
            else (f"after {point[1]} scheduler rounds")
        )
        return f"{what}; {self.steps_after_cancel} scheduler steps to stop"

    def describe(self) -> str:
        r = self.request
        lines = [
            f"  request: id={r.request_id} input={r.input!r} messages={len(r.messages)} "
            f"max_tokens={r.params.max_tokens} tools={[t.name for t in r.params.tools]} "
            f"tool_choice={r.params.tool_choice!r}",
            f"  events ({len(self.events)}):",
        ]
        for i, event in enumerate(self.events):
            mark = "cancel→" if i == self.cancel_event_index else ""
            lines.append(f"  {mark:>9}{i:3d} {event!r}")
        lines.extend(f"  {'late→':>9}    {event!r}" for event in self.late_events)
        if self.cancel_issued_at is not None:
            lines.append(f"  cancelled: {self._how_cancelled()}")
        lines.append(f"  outcome: {self.outcome()}")
        return "\n".join(lines)


class _Watch(trio.abc.Instrument):
    """Follows the tasks a call starts: counts their steps after a cancel, sees them exit."""

    def __init__(self, root: trio.lowlevel.Task, run: _Run, scope: trio.CancelScope) -> None:
        self.family: set[trio.lowlevel.Task] = {root}
        self.alive: set[trio.lowlevel.Task] = set()
        self.run = run
        self.scope = scope

    def task_spawned(self, task: trio.lowlevel.Task) -> None:
        # Spawning runs in the spawner's step, so the current task is the one that spawned it.
        try:
            spawner = trio.lowlevel.current_task()
        except RuntimeError:  # spawned by the run loop itself, not by a task
            return
        if spawner in self.family:
            self.family.add(task)
            self.alive.add(task)

    def task_exited(self, task: trio.lowlevel.Task) -> None:
        self.alive.discard(task)

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        run = self.run
        if task not in self.family or run.returned:
            return
        if run.cancel_issued_at is None and self.scope.cancel_called:
            # The deadline passed and Trio cancelled the scope: the worker hears of it now.
            run.cancel_issued_at = min(run.deadline, trio.current_time())
        if run.cancel_issued_at is not None:
            run.steps_after_cancel += 1


async def _new_worker(factory: WorkerFactory) -> ModelWorker:
    worker = factory()
    if inspect.isawaitable(worker):
        worker = await worker
    return worker


async def _call(
    worker: ModelWorker,
    request: PromptRequest,
    *,
    deadline_after: float,
    cancel: CancelPoint | None = None,
) -> _Run:
    """Call ``worker.generate`` once under watch, cancelling it at ``cancel`` if given."""
    run = _Run(request, cancel_point=cancel)
    scope = trio.CancelScope()

    def issue_cancel() -> None:
        if run.cancel_issued_at is None and not run.returned:
            run.cancel_issued_at = trio.current_time()
            scope.cancel()

    async def emit(event: StreamEvent) -> None:
        if run.returned:
            run.late_events.append(event)
            raise RuntimeError("emit() called after generate() returned")
        run.events.append(event)
        if cancel is not None and cancel[0] == "event" and len(run.events) > cancel[1]:
            run.cancel_event_index = len(run.events) - 1
            issue_cancel()
        await trio.lowlevel.checkpoint()

    async def runner() -> None:
        watch = _Watch(trio.lowlevel.current_task(), run, scope)
        trio.lowlevel.add_instrument(watch)
        try:
            run.deadline = scope.deadline = trio.current_time() + deadline_after
            with scope:
                await worker.generate(request, emit)
        except Exception as exc:
            run.error = exc
        finally:
            run.returned, run.returned_at = True, trio.current_time()
            run.cancelled = scope.cancelled_caught
            await _settle(watch)
            trio.lowlevel.remove_instrument(watch)
            run.leftover = sorted(task.name for task in watch.alive)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(runner)
        if cancel is not None and cancel[0] == "rounds":
            for _ in range(cancel[1]):
                await trio.lowlevel.checkpoint()
            issue_cancel()
    return run


async def _settle(watch: _Watch) -> None:
    """Give tasks the call started a few scheduler rounds to exit."""
    with trio.CancelScope(shield=True):
        for _ in range(20):
            if not watch.alive:
                return
            await trio.lowlevel.checkpoint()


# ---------------------------------------------------------------------------- the rules


def _check_grammar(run: _Run) -> None:
    __tracebackhide__ = True  # pytest: show the violation, not the harness
    if run.late_events:
        raise ContractViolation("grammar", "emitted an event after generate() returned", run)
    done_at = next((i for i, e in enumerate(run.events) if isinstance(e, Done)), None)
    if done_at is not None and done_at != len(run.events) - 1:
        after = type(run.events[done_at + 1]).__name__
        raise ContractViolation("grammar", f"emitted {after} after Done (Done must be last)", run)
    _check_tool_calls(run)
    for event in run.events:
        if isinstance(event, Usage) and (event.input_tokens < 0 or event.output_tokens < 0):
            raise ContractViolation("grammar", f"negative token count in {event!r}", run)
    if run.cancelled:
        return
    if run.error is not None:
        if done_at is not None:
            raise ContractViolation("errors", "raised an error after emitting Done", run)
        return
    if done_at is None:
        raise ContractViolation("grammar", "returned without emitting Done", run)
    _check_done(run, run.events[done_at])


def _check_tool_calls(run: _Run) -> None:
    __tracebackhide__ = True  # pytest: show the violation, not the harness
    started: set[int] = set()
    for event in run.events:
        if isinstance(event, ToolCallStart):
            if event.index in started:
                raise ContractViolation("grammar", f"tool call {event.index} started twice", run)
            started.add(event.index)
        elif isinstance(event, ToolCallDelta) and event.index not in started:
            detail = f"ToolCallDelta for tool call {event.index} before its ToolCallStart"
            raise ContractViolation("grammar", detail, run)


def _check_done(run: _Run, done: StreamEvent) -> None:
    __tracebackhide__ = True  # pytest: show the violation, not the harness
    assert isinstance(done, Done)
    text = "".join(e.text for e in run.events if isinstance(e, TextDelta))
    if done.text != text:
        detail = f"Done.text {done.text!r} differs from the concatenated TextDelta text {text!r}"
        raise ContractViolation("grammar", detail, run)
    names = [e.name for e in run.events if isinstance(e, ToolCallStart)]
    if done.tool_calls and names and [c.name for c in done.tool_calls] != names:
        detail = f"Done.tool_calls {done.tool_calls!r} differ from the streamed calls {names}"
        raise ContractViolation("grammar", detail, run)


def _check_error(run: _Run) -> None:
    __tracebackhide__ = True  # pytest: show the violation, not the harness
    error = run.error
    if error is None:
        return
    if isinstance(error, BaseExceptionGroup):
        detail = (
            f"raised an {type(error).__name__} ({error!r}); raise the WorkerError itself, "
            "so that layers can catch it by class"
        )
        raise ContractViolation("errors", detail, run)
    if not isinstance(error, WorkerError):
        detail = (
            f"raised {type(error).__name__} ({error}); only WorkerError subclasses may escape "
            "(map it to the most specific class, `raise ... from exc`)"
        )
        raise ContractViolation("errors", detail, run)
    for name in ("retryable", "trips_breaker"):
        value = getattr(error, name)
        if type(value) is not bool:
            detail = f"{type(error).__name__}.{name} is {value!r}; it must be a bool"
            raise ContractViolation("errors", detail, run)
    after = error.retry_after
    if after is not None and not (isinstance(after, int | float) and 0 <= after < math.inf):
        detail = f"{type(error).__name__}.retry_after is {after!r}; want None or seconds ≥ 0"
        raise ContractViolation("errors", detail, run)


def _check_cancellation(run: _Run, max_steps: int, rule: str = "cancellation") -> None:
    __tracebackhide__ = True  # pytest: show the violation, not the harness
    issued = run.cancel_issued_at
    if issued is None:
        return
    if not run.cancelled:
        detail = (
            f"was cancelled but {run.outcome()}; let trio.Cancelled propagate (never swallow it "
            "or turn it into an error)"
        )
        raise ContractViolation(rule, detail, run)
    if run.steps_after_cancel > max_steps:
        detail = (
            f"took {run.steps_after_cancel} scheduler steps to stop after the cancel "
            f"(at most {max_steps} allowed)"
        )
        raise ContractViolation(rule, detail, run)
    assert run.returned_at is not None
    if isinstance(trio.lowlevel.current_clock(), trio.testing.MockClock):
        lag = run.returned_at - issued
        if lag > 1e-9:
            detail = f"returned {lag:g} s (mock clock) after the cancel; it must stop at once"
            raise ContractViolation(rule, detail, run)
    if run.leftover:
        detail = f"left tasks running after it returned: {run.leftover}"
        raise ContractViolation(rule, detail, run)


def _check_run(run: _Run, max_steps: int, rule: str = "cancellation") -> None:
    __tracebackhide__ = True  # pytest: show the violation, not the harness
    _check_error(run)
    # A swallowed cancel usually also breaks the grammar; name the root cause first.
    _check_cancellation(run, max_steps, rule)
    _check_grammar(run)


def _answer(run: _Run) -> tuple[object, ...]:
    if run.cancelled:
        return ("cancelled",)
    if run.error is not None:
        return ("error", type(run.error))
    done = run.events[-1]
    assert isinstance(done, Done)
    return ("done", done.text, done.finish_reason, done.tool_calls)


async def check_call(
    worker: ModelWorker,
    request: PromptRequest,
    *,
    cancel: CancelPoint | None = None,
    call_timeout: float = 60.0,
    max_cancel_steps: int = 50,
) -> None:
    """Call ``worker.generate(request, ...)`` once and check every rule on that call.

    For your own Hypothesis tests (a layer over a :class:`~.strategies.ScriptedWorker` with a
    drawn fault schedule, say), inside a Trio run.

    Args:
        worker: the worker to call.
        request: the request.
        cancel: ``("event", k)`` cancels as event ``k`` is emitted; ``("rounds", k)`` after
            ``k`` scheduler rounds; ``None`` does not cancel.
        call_timeout: seconds before the call is cancelled (its reaction is then checked).
        max_cancel_steps: scheduler steps the worker's tasks may take to stop once cancelled.

    Raises:
        ContractViolation: a rule was broken.
    """
    __tracebackhide__ = True  # pytest: show the violation, not the harness
    run = await _call(worker, request, deadline_after=call_timeout, cancel=cancel)
    _check_run(run, max_cancel_steps)


# ---------------------------------------------------------------------------- drivers


@attrs.frozen
class _Options:
    deterministic: bool = False
    call_timeout: float = 60.0
    max_cancel_steps: int = 50
    concurrency: int = 8
    max_examples: int | None = None
    hypothesis_settings: settings | None = None


async def _check_one_call(
    factory: WorkerFactory, options: _Options, request: PromptRequest
) -> None:
    __tracebackhide__ = True  # pytest: show the violation, not the harness
    run = await _call(await _new_worker(factory), request, deadline_after=options.call_timeout)
    _check_run(run, options.max_cancel_steps, "deadline")


async def _check_cancel(
    factory: WorkerFactory, options: _Options, example: tuple[PromptRequest, CancelPoint]
) -> None:
    __tracebackhide__ = True  # pytest: show the violation, not the harness
    request, point = example
    run = await _call(
        await _new_worker(factory), request, deadline_after=options.call_timeout, cancel=point
    )
    _check_run(run, options.max_cancel_steps)


async def _check_deadline(
    factory: WorkerFactory, options: _Options, example: tuple[PromptRequest, float]
) -> None:
    __tracebackhide__ = True  # pytest: show the violation, not the harness
    request, timeout = example
    run = await _call(await _new_worker(factory), request, deadline_after=timeout)
    _check_run(run, options.max_cancel_steps, "deadline")
    assert run.returned_at is not None
    # Under a real clock, allow for the time the scheduler takes to notice the deadline.
    slack = 1e-9 if isinstance(trio.lowlevel.current_clock(), trio.testing.MockClock) else 0.1
    if run.returned_at > run.deadline + slack:
        late = run.returned_at - run.deadline
        raise ContractViolation("deadline", f"returned {late:g} s after its deadline", run)


async def _check_concurrent(
    factory: WorkerFactory, options: _Options, requests: list[PromptRequest]
) -> None:
    __tracebackhide__ = True  # pytest: show the violation, not the harness
    worker = await _new_worker(factory)
    solo = []
    if options.deterministic:
        for request in requests:
            run = await _call(worker, request, deadline_after=options.call_timeout)
            _check_run(run, options.max_cancel_steps, "deadline")
            solo.append(run)
    runs: list[_Run] = [_Run(r) for r in requests]

    async def one(i: int) -> None:
        runs[i] = await _call(worker, requests[i], deadline_after=options.call_timeout)

    async with trio.open_nursery() as nursery:
        for i in range(len(requests)):
            nursery.start_soon(one, i)
    for i, run in enumerate(runs):
        _check_run(run, options.max_cancel_steps, "concurrency")
        if solo and _answer(run) != _answer(solo[i]):
            detail = (
                f"run with {len(requests) - 1} other requests on the same worker, request {i} "
                f"got {_answer(run)!r}; alone it got {_answer(solo[i])!r}"
            )
            raise ContractViolation("concurrency", detail, run)


_CANCEL_POINTS: st.SearchStrategy[CancelPoint] = st.tuples(
    st.just("event"), st.integers(0, 24)
) | st.tuples(st.just("rounds"), st.integers(0, 40))
_TIMEOUTS = st.floats(0.0001, 5.0)


async def _drive(
    check: Callable[[Any], Awaitable[None]], strategy: st.SearchStrategy[Any], options: _Options
) -> None:
    """Run ``check`` on examples of ``strategy``: Hypothesis in a thread, checks in this run.

    Hypothesis's engine is synchronous; it runs in a worker thread and sends each example back
    into this Trio run, so checks share the caller's run (its clock and async fixtures).
    """
    base = options.hypothesis_settings or settings()
    limit = options.max_examples
    chosen = settings(
        base,
        deadline=None,
        max_examples=limit if limit is not None else base.max_examples,
        suppress_health_check=[*base.suppress_health_check, HealthCheck.too_slow],
    )

    clock = trio.lowlevel.current_clock()
    jumpy = clock.autojump_threshold if isinstance(clock, trio.testing.MockClock) else None

    async def run_example(example: Any) -> None:
        __tracebackhide__ = True  # pytest: show the violation, not the harness
        # An autojumping clock spins the run loop while the thread draws examples (nothing
        # else is runnable), starving it of the GIL: jump only while an example runs.
        if isinstance(clock, trio.testing.MockClock) and jumpy is not None:
            clock.autojump_threshold = jumpy
        try:
            await check(example)
        finally:
            if isinstance(clock, trio.testing.MockClock):
                clock.autojump_threshold = math.inf

    @chosen
    @given(strategy)
    def property_(example: Any) -> None:
        __tracebackhide__ = True  # pytest: show the violation, not the harness
        trio.from_thread.run(run_example, example)

    if isinstance(clock, trio.testing.MockClock):
        clock.autojump_threshold = math.inf
    try:
        await trio.to_thread.run_sync(property_)
    finally:
        if isinstance(clock, trio.testing.MockClock) and jumpy is not None:
            clock.autojump_threshold = jumpy


def _strategies(
    requests: st.SearchStrategy[PromptRequest], options: _Options
) -> dict[str, st.SearchStrategy[Any]]:
    return {
        "grammar": requests,
        "cancellation": st.tuples(requests, _CANCEL_POINTS),
        "deadline": st.tuples(requests, _TIMEOUTS),
        "concurrency": st.lists(
            requests, min_size=2, max_size=options.concurrency, unique_by=lambda r: r.request_id
        ),
    }


_CHECKS: dict[str, Callable[..., Awaitable[None]]] = {
    "grammar": _check_one_call,
    "cancellation": _check_cancel,
    "deadline": _check_deadline,
    "concurrency": _check_concurrent,
}


async def _check_rule(
    rule: str,
    factory: WorkerFactory,
    requests: st.SearchStrategy[PromptRequest],
    options: _Options,
) -> None:
    __tracebackhide__ = True  # pytest: show the violation, not the harness

    async def check(example: Any) -> None:
        __tracebackhide__ = True  # pytest: show the violation, not the harness
        await _CHECKS[rule](factory, options, example)

    await _drive(check, _strategies(requests, options)[rule], options)


async def check_worker_async(
    factory: WorkerFactory,
    *,
    requests: st.SearchStrategy[PromptRequest] | None = None,
    deterministic: bool = False,
    rules: Sequence[str] = ("grammar", "cancellation", "deadline", "concurrency"),
    call_timeout: float = 60.0,
    max_cancel_steps: int = 50,
    concurrency: int = 8,
    max_examples: int | None = None,
    hypothesis_settings: settings | None = None,
) -> None:
    """Check the contract inside the current Trio run; see :func:`check_worker`."""
    options = _Options(
        deterministic,
        call_timeout,
        max_cancel_steps,
        concurrency,
        max_examples,
        hypothesis_settings,
    )
    for rule in rules:
        await _check_rule(rule, factory, requests or prompt_requests(), options)


def check_worker(
    factory: WorkerFactory,
    *,
    requests: st.SearchStrategy[PromptRequest] | None = None,
    deterministic: bool = False,
    rules: Sequence[str] = ("grammar", "cancellation", "deadline", "concurrency"),
    call_timeout: float = 60.0,
    max_cancel_steps: int = 50,
    concurrency: int = 8,
    max_examples: int | None = None,
    hypothesis_settings: settings | None = None,
    virtual_time: bool = True,
) -> None:
    """Check that the workers ``factory`` makes keep the contract (see the module docstring).

    Runs its own ``trio.run`` (under an autojumping ``MockClock`` unless ``virtual_time`` is
    false), so call it from synchronous code; inside a Trio run use
    :func:`check_worker_async`.

    Args:
        factory: makes a fresh worker (sync, or async); called once per example.
        requests: the requests to try (default: :func:`~.strategies.prompt_requests`).
        deterministic: also check that each answer under concurrency equals the answer alone.
        rules: the rules to check.
        call_timeout: seconds a call may take before the contract cancels it (a hang is not a
            violation, but its reaction to the cancel is checked).
        max_cancel_steps: scheduler steps a worker's tasks may take to stop once cancelled.
        concurrency: the most requests run at once on one worker.
        max_examples: examples per rule (default: the Hypothesis profile's).
        hypothesis_settings: the Hypothesis settings to start from (default: the current
            profile's); the contract turns off Hypothesis's per-example deadline.
        virtual_time: run under ``MockClock(autojump_threshold=0)``; turn off for workers
            that do real I/O.

    Raises:
        ContractViolation: a rule was broken; the message names it and shows the events.
    """
    clock = trio.testing.MockClock(autojump_threshold=0) if virtual_time else None
    trio.run(
        lambda: check_worker_async(
            factory,
            requests=requests,
            deterministic=deterministic,
            rules=rules,
            call_timeout=call_timeout,
            max_cancel_steps=max_cancel_steps,
            concurrency=concurrency,
            max_examples=max_examples,
            hypothesis_settings=hypothesis_settings,
        ),
        clock=clock,
    )


class WorkerContract:
    """Subclass in a pytest module, define :meth:`make_worker`, and pytest runs the contract.

    The test methods are async and marked ``@pytest.mark.trio``, so they run with or without
    pytest-trio's ``trio_mode``. Tune with class attributes.

    Attributes:
        deterministic: the worker gives the same answer to the same request every time; the
            concurrency test then also compares answers with answers alone.
        virtual_time: run under an autojumping mock clock (turn off for real I/O).
        call_timeout: seconds a call may take before the contract cancels it.
        max_cancel_steps: scheduler steps a worker's tasks may take to stop once cancelled.
        concurrency: the most requests run at once on one worker.
        max_examples: examples per rule (default: the Hypothesis profile's).
        hypothesis_settings: the Hypothesis settings to start from (default: the profile's).
    """

    deterministic: ClassVar[bool] = False
    virtual_time: ClassVar[bool] = True
    call_timeout: ClassVar[float] = 60.0
    max_cancel_steps: ClassVar[int] = 50
    concurrency: ClassVar[int] = 8
    max_examples: ClassVar[int | None] = None
    hypothesis_settings: ClassVar[settings | None] = None

    def make_worker(self) -> ModelWorker | Awaitable[ModelWorker]:
        """Return a fresh worker to check (may be ``async def``)."""
        raise NotImplementedError("define make_worker() in your WorkerContract subclass")

    def requests(self) -> st.SearchStrategy[PromptRequest]:
        """Return the strategy for requests (override to narrow it to what your worker takes)."""
        return prompt_requests()

    @pytest.fixture
    def contract_clock(self) -> trio.testing.MockClock | None:
        """pytest-trio runs the test under the clock a fixture returns: virtual time here."""
        return trio.testing.MockClock(autojump_threshold=0) if self.virtual_time else None

    @pytest.fixture
    def contract_worker_factory(self) -> WorkerFactory:
        """The factory the tests use: :meth:`make_worker`. Override this fixture (it may be
        async) when the worker needs other fixtures, such as a fake server started by an
        async fixture."""
        return self.make_worker

    async def _check(self, rule: str, factory: WorkerFactory) -> None:
        __tracebackhide__ = True  # pytest: show the violation, not the harness
        options = _Options(
            self.deterministic,
            self.call_timeout,
            self.max_cancel_steps,
            self.concurrency,
            self.max_examples,
            self.hypothesis_settings,
        )
        await _check_rule(rule, factory, self.requests(), options)

    @pytest.mark.trio
    async def test_event_grammar_and_typed_errors(
        self, contract_clock: object, contract_worker_factory: WorkerFactory
    ) -> None:
        """Each call emits deltas then exactly one Done, or raises a typed WorkerError."""
        await self._check("grammar", contract_worker_factory)

    @pytest.mark.trio
    async def test_prompt_cancellation(
        self, contract_clock: object, contract_worker_factory: WorkerFactory
    ) -> None:
        """A cancelled call stops at once, emits nothing more and leaves no task behind."""
        await self._check("cancellation", contract_worker_factory)

    @pytest.mark.trio
    async def test_deadline_respected(
        self, contract_clock: object, contract_worker_factory: WorkerFactory
    ) -> None:
        """A call inside a cancel scope with a deadline returns by that deadline."""
        await self._check("deadline", contract_worker_factory)

    @pytest.mark.trio
    async def test_concurrent_use(
        self, contract_clock: object, contract_worker_factory: WorkerFactory
    ) -> None:
        """Many requests at once on one worker each keep the rules (and their answers)."""
        await self._check("concurrency", contract_worker_factory)


def worker_contract(
    factory: Callable[[], ModelWorker | Awaitable[ModelWorker]],
    *,
    name: str = "TestWorkerContract",
    **options: Any,
) -> type[WorkerContract]:
    """Return a :class:`WorkerContract` subclass for ``factory``: one line per worker.

    ::

        TestEchoWorker = worker_contract(EchoWorker, deterministic=True)

    Args:
        factory: makes a fresh worker (sync, or async).
        name: the class name (pytest collects classes named ``Test*``).
        options: class attributes to set (``deterministic``, ``virtual_time``, ``call_timeout``,
            ``max_cancel_steps``, ``concurrency``, ``max_examples``).

    Raises:
        TypeError: an option is not one of those attributes.
    """
    unknown = sorted(set(options) - _OPTION_NAMES)
    if unknown:
        raise TypeError(f"unknown WorkerContract options {unknown}; known: {sorted(_OPTION_NAMES)}")
    namespace: dict[str, Any] = {"make_worker": staticmethod(factory), **options}
    return type(name, (WorkerContract,), namespace)


_OPTION_NAMES = frozenset(
    (
        "deterministic",
        "virtual_time",
        "call_timeout",
        "max_cancel_steps",
        "concurrency",
        "max_examples",
        "hypothesis_settings",
    )
)
