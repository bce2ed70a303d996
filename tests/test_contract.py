"""The worker contract: the built-in workers pass it, and broken workers are caught by it.

To put another worker or layer under the contract, add one line::

    TestRetryOverEcho = contract(lambda: Retry(EchoWorker()), deterministic=True)
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
from hypothesis import Phase, given, settings
from hypothesis import strategies as st

from trio_orchestrator import EchoWorker, PromptRequest
from trio_orchestrator.errors import Overloaded, RateLimited
from trio_orchestrator.events import Done, TextDelta
from trio_orchestrator.testing import (
    ContractViolation,
    Fail,
    Hang,
    ScriptedWorker,
    Stall,
    Succeed,
    WorkerContract,
    check_call,
    check_worker,
    fault_schedules,
    prompt_requests,
    worker_contract,
)
from trio_orchestrator.testing.contract import CancelPoint
from trio_orchestrator.workers import EventSink, ModelWorker

# Each example of each of the four rules is one or more whole calls; this many per rule and
# configuration keeps the file fast while the thorough profile's runs go deeper on demand.
EXAMPLES = 10


def contract(factory: Callable[[], ModelWorker], **options: Any) -> type[WorkerContract]:
    """The project's one-liner: a contract test class for ``factory``."""
    return worker_contract(factory, max_examples=EXAMPLES, **options)


# ---------------------------------------------------------------------------- built-in workers

TestEchoWorker = contract(EchoWorker, deterministic=True)
TestEchoWorkerSlow = contract(
    lambda: EchoWorker(token_delay=0.05, first_token_delay=1.0), deterministic=True
)
TestEchoWorkerRealClock = contract(EchoWorker, deterministic=True, virtual_time=False)
TestEchoWorkerPrefixed = contract(lambda: EchoWorker(prefix="» ", model="m"), deterministic=True)
TestScriptedSuccess = contract(
    lambda: ScriptedWorker.always(Succeed(5, 0.5, 0.1, tool_call=True)), deterministic=True
)
TestScriptedMidStreamFailure = contract(
    lambda: ScriptedWorker.always(Fail(RateLimited, retry_after=2.0, after_tokens=2)),
    deterministic=True,
)
TestScriptedStall = contract(lambda: ScriptedWorker.always(Stall(2)), call_timeout=5.0)
TestScriptedHang = contract(lambda: ScriptedWorker.always(Hang()), call_timeout=5.0)
TestScriptedSchedule = contract(
    lambda: ScriptedWorker([Fail(Overloaded), Succeed(3, 0.1), Stall(1), Hang()], Succeed(2)),
    call_timeout=5.0,
)


class ChannelServerWorker:
    """A worker that asks a server task for each answer (the shape of an HTTP worker)."""

    def __init__(self, server: trio.MemorySendChannel[Any]) -> None:
        self.server = server

    async def generate(self, request: PromptRequest, emit: EventSink) -> None:
        reply_send, reply_receive = trio.open_memory_channel[list[Any]](1)
        await self.server.send((request, reply_send))
        for event in await reply_receive.receive():
            await emit(event)


def _appender(events: list[Any]) -> EventSink:
    async def append(event: Any) -> None:
        events.append(event)

    return append


@pytest.fixture
async def echo_server(nursery: trio.Nursery) -> trio.MemorySendChannel[Any]:
    """A server task, started in the test's nursery, answering with EchoWorker's events."""
    send, receive = trio.open_memory_channel[Any](0)

    async def serve() -> None:
        async for request, reply in receive:
            events: list[Any] = []
            await EchoWorker().generate(request, _appender(events))
            await reply.send(events)

    nursery.start_soon(serve)
    return send


class TestWorkerNeedingAnAsyncFixture(WorkerContract):
    """A worker built from an async fixture: override the contract_worker_factory fixture."""

    deterministic = True
    max_examples = EXAMPLES

    @pytest.fixture
    async def contract_worker_factory(
        self, echo_server: trio.MemorySendChannel[Any]
    ) -> Callable[[], ModelWorker]:
        return lambda: ChannelServerWorker(echo_server)


_CANCELS = (
    st.none()
    | st.tuples(st.just("event"), st.integers(0, 10))
    | st.tuples(st.just("rounds"), st.integers(0, 20))
)


@settings(max_examples=50)  # each example is a fresh Trio run of up to four calls
@given(
    schedule=fault_schedules(max_size=4),
    calls=st.lists(st.tuples(prompt_requests(), _CANCELS), min_size=1, max_size=4),
)
def test_scripted_worker_keeps_contract_under_any_schedule(
    schedule: list[Any], calls: list[tuple[PromptRequest, CancelPoint | None]]
) -> None:
    """Every call of a ScriptedWorker following any fault schedule keeps every rule."""
    worker = ScriptedWorker(schedule)

    async def main() -> None:
        for request, cancel in calls:
            await check_call(worker, request, cancel=cancel, call_timeout=30.0)

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    assert worker.statistics().calls == len(calls)
    assert worker.statistics().active == 0


# ---------------------------------------------------------------------------- broken workers


class LateDeltaWorker:
    """Emits a delta after Done."""

    async def generate(self, request: PromptRequest, emit: EventSink) -> None:
        await emit(TextDelta("hello"))
        await emit(Done("stop", "hello"))
        await emit(TextDelta(" again"))


class StubbornWorker:
    """Swallows cancellation: waits for its "provider", and returns quietly when cancelled."""

    async def generate(self, request: PromptRequest, emit: EventSink) -> None:
        try:
            await trio.sleep(1.0)
        except trio.Cancelled:
            return
        await emit(TextDelta("late answer"))
        await emit(Done("stop", "late answer"))


class UntypedErrorWorker:
    """Lets a plain exception escape."""

    async def generate(self, request: PromptRequest, emit: EventSink) -> None:
        raise KeyError("choices")


class ShieldedWorker:
    """Shields its provider call, so it overruns any deadline."""

    async def generate(self, request: PromptRequest, emit: EventSink) -> None:
        with trio.CancelScope(shield=True):
            await trio.sleep(10.0)
        await emit(Done("stop", ""))


class SharedBufferWorker:
    """Keeps the text of the call in progress on the instance: concurrent calls mix it up."""

    def __init__(self) -> None:
        self.buffer: list[str] = []

    async def generate(self, request: PromptRequest, emit: EventSink) -> None:
        self.buffer = []
        for word in (request.input or "x").split() or ["x"]:
            self.buffer.append(word)
            await trio.sleep(0.01)
        text = " ".join(self.buffer)
        await emit(TextDelta(text))
        await emit(Done("stop", text))


class OrphanTaskWorker:
    """Starts a background task that outlives the call."""

    async def generate(self, request: PromptRequest, emit: EventSink) -> None:
        trio.lowlevel.spawn_system_task(trio.sleep_forever)
        await trio.sleep(1.0)
        await emit(Done("stop", ""))


# The first failing example is enough to prove the contract catches the fault: skip shrinking.
_NO_SHRINK = settings(phases=[Phase.explicit, Phase.reuse, Phase.generate])


def _violation(factory: Callable[[], ModelWorker], **options: Any) -> ContractViolation:
    options.setdefault("max_examples", EXAMPLES)
    with pytest.raises(ContractViolation) as info:
        check_worker(factory, hypothesis_settings=_NO_SHRINK, **options)
    return info.value


def test_contract_catches_delta_after_done() -> None:
    """A delta after Done breaks the grammar rule, and the report shows the sequence."""
    violation = _violation(LateDeltaWorker, rules=["grammar"])
    assert violation.rule == "grammar"
    assert "TextDelta after Done" in str(violation)
    assert [type(e).__name__ for e in violation.events] == ["TextDelta", "Done", "TextDelta"]


def test_contract_catches_swallowed_cancellation() -> None:
    """Returning quietly when cancelled breaks the cancellation rule."""
    violation = _violation(StubbornWorker, rules=["cancellation"])
    assert violation.rule == "cancellation"
    assert "let trio.Cancelled propagate" in str(violation)


def test_contract_catches_untyped_error() -> None:
    """A plain exception escaping breaks the errors rule."""
    violation = _violation(UntypedErrorWorker, rules=["grammar"])
    assert violation.rule == "errors"
    assert "only WorkerError subclasses may escape" in str(violation)


def test_contract_catches_overrun_deadline() -> None:
    """A shielded call that overruns its deadline breaks the deadline rule."""
    violation = _violation(ShieldedWorker, rules=["deadline"])
    assert violation.rule == "deadline"


def test_contract_catches_shared_state() -> None:
    """Per-call state kept on the instance breaks the concurrency rule for a deterministic
    worker."""
    violation = _violation(
        SharedBufferWorker, rules=["concurrency"], deterministic=True, max_examples=50
    )
    assert violation.rule == "concurrency"
    assert "alone it got" in str(violation)


def test_contract_catches_orphan_task() -> None:
    """A task left running after the call breaks the cancellation rule."""
    violation = _violation(OrphanTaskWorker, rules=["cancellation"])
    assert "left tasks running" in str(violation)


async def test_check_call_rejects_early_return() -> None:
    """Returning without Done is reported (check_call, inside a Trio run)."""

    class Silent:
        async def generate(self, request: PromptRequest, emit: EventSink) -> None:
            await emit(TextDelta("a"))

    with pytest.raises(ContractViolation, match="returned without emitting Done"):
        await check_call(Silent(), PromptRequest(input="x"))


def test_worker_contract_rejects_unknown_option() -> None:
    """A misspelt option to worker_contract is an error, not silently ignored."""
    with pytest.raises(TypeError, match="deterministc"):
        worker_contract(EchoWorker, deterministc=True)


_USER_SUITE = """
import trio
from hypothesis import Phase, settings
from trio_orchestrator import EchoWorker
from trio_orchestrator.events import Done, TextDelta
from trio_orchestrator.testing import WorkerContract


class Late:
    async def generate(self, request, emit):
        await emit(Done("stop", ""))
        await emit(TextDelta("late"))


class TestGood(WorkerContract):
    max_examples = 5

    def make_worker(self):
        return EchoWorker()


class TestBroken(WorkerContract):
    max_examples = 5
    hypothesis_settings = settings(phases=[Phase.generate])  # report the first failure as is

    async def make_worker(self):
        await trio.lowlevel.checkpoint()
        return Late()
"""


def test_contract_class_runs_without_trio_mode(tmp_path: Path) -> None:
    """Subclassing WorkerContract works in a project without trio_mode: the good worker passes
    its four tests and the broken one fails them, the report naming the broken rule."""
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    (tmp_path / "test_user.py").write_text(_USER_SUITE)
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_user.py"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
    )
    assert "4 failed, 4 passed" in result.stdout, result.stdout
    assert "worker contract broken [grammar]: emitted TextDelta after Done" in result.stdout


def test_custom_worker_example_passes_its_contract_test(tmp_path: Path) -> None:
    """examples/test_custom_worker.py (the two-line contract test) passes under pytest."""
    examples = Path(__file__).parent.parent / "examples"
    # A plugin that loads a quick Hypothesis profile, so the example itself stays two lines.
    (tmp_path / "quick_profile.py").write_text(
        "from hypothesis import settings\n"
        f"settings.register_profile('quick', max_examples={EXAMPLES})\n"
        "settings.load_profile('quick')\n"
    )
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"]
    result = subprocess.run(
        [*command, "-p", "quick_profile", "test_custom_worker.py"],
        cwd=examples,
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "PYTHONPATH": str(tmp_path)},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "4 passed" in result.stdout


def test_custom_worker_example_runs() -> None:
    """examples/custom_worker.py streams its answer through a pipeline."""
    example = Path(__file__).parent.parent / "examples" / "custom_worker.py"
    result = subprocess.run(
        [sys.executable, str(example), "quiet", "words"], capture_output=True, text=True, check=True
    )
    assert result.stdout == "QUIET WORDS\n"
