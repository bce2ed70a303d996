"""Hypothesis strategies for requests and fault schedules, and a worker that follows a schedule.

Use them in your own property tests::

    from hypothesis import given
    from trio_orchestrator.testing import ScriptedWorker, fault_schedules, prompt_requests

    @given(request=prompt_requests(), schedule=fault_schedules())
    def test_my_layer(request, schedule): ...

A *fault schedule* is a list of :data:`Behaviour` values, one per call a
:class:`ScriptedWorker` receives: succeed with N tokens after some delays
(:class:`Succeed`), raise a :class:`~trio_orchestrator.errors.WorkerError` class
(:class:`Fail`), hang before the first token (:class:`Hang`), stall mid-stream
(:class:`Stall`), or break the event grammar on purpose (:class:`BreakGrammar`, for testing
what sits *around* a worker).
"""

from __future__ import annotations

import string
import typing
from collections.abc import Sequence
from typing import Literal, TypeAlias

import attrs
import trio
from hypothesis import strategies as st

from .. import errors
from ..errors import WorkerError
from ..events import Done, TextDelta, ToolCallDelta, ToolCallStart, Usage
from ..types import GenerationParams, Message, PromptRequest, Tool, ToolCall
from ..workers.base import EventSink
from ..workers.echo import split_tokens

__all__ = [
    "WORKER_ERRORS",
    "Behaviour",
    "BreakGrammar",
    "Fail",
    "Hang",
    "ScriptedWorker",
    "ScriptedWorkerStatistics",
    "Stall",
    "Succeed",
    "behaviours",
    "fault_schedules",
    "generation_params",
    "messages",
    "prompt_requests",
    "tools",
    "worker_errors",
]

#: Every concrete :class:`WorkerError` class a provider or layer may raise.
WORKER_ERRORS: tuple[type[WorkerError], ...] = (
    errors.WorkerCrashed,
    errors.CircuitOpen,
    errors.RateLimitExceeded,
    errors.RateLimited,
    errors.Overloaded,
    errors.ServerError,
    errors.ProviderTimeout,
    errors.ProviderConnectionError,
    errors.MalformedResponse,
    errors.AuthenticationError,
    errors.PermissionDenied,
    errors.ModelNotFound,
    errors.ContentFiltered,
    errors.BadRequest,
    errors.ContextLengthExceeded,
)

# ---------------------------------------------------------------------------- requests

_WORDS = st.text(string.ascii_letters + string.digits + "éü漢🙂'.,!?-", min_size=1, max_size=8)


@st.composite
def _texts(draw: st.DrawFn, max_words: int = 8) -> str:
    words = draw(st.lists(_WORDS, max_size=max_words))
    separators = draw(st.lists(st.sampled_from([" ", " ", "  ", "\n", "\t"]), min_size=len(words)))
    return "".join(w + s for w, s in zip(words, separators, strict=False)).rstrip()


def messages(roles: Sequence[str] = ("system", "user", "assistant")) -> st.SearchStrategy[Message]:
    """Chat messages with one of ``roles`` and short, varied text (non-ASCII included).

    Args:
        roles: the roles to draw from (``tool`` messages need a call id; they get one).
    """
    return st.builds(
        lambda role, content, call_id: Message(
            role, content, tool_call_id=call_id if role == "tool" else None
        ),
        st.sampled_from(tuple(roles)),
        _texts(),
        st.just("call_0"),
    )


def tools() -> st.SearchStrategy[Tool]:
    """Function tools with an identifier-like name and a one-parameter JSON Schema."""
    names = st.from_regex(r"[a-z][a-z_]{0,11}", fullmatch=True)
    schema = {"type": "object", "properties": {"input": {"type": "string"}}}
    return st.builds(Tool, name=names, description=_texts(max_words=5), parameters=st.just(schema))


def generation_params(*, with_tools: bool = True) -> st.SearchStrategy[GenerationParams]:
    """Generation parameters: ``max_tokens``, sampling, stop sequences and (optionally) tools.

    Args:
        with_tools: also draw tools and a ``tool_choice``.
    """
    tool_lists = st.lists(tools(), max_size=2, unique_by=lambda t: t.name) if with_tools else None
    return st.builds(
        GenerationParams,
        model=st.sampled_from(["echo", "test-model"]),
        max_tokens=st.none() | st.integers(1, 64),
        temperature=st.none() | st.floats(0, 2),
        top_p=st.none() | st.floats(0.01, 1),
        stop=st.lists(_WORDS, max_size=2).map(tuple),
        tools=tool_lists.map(tuple) if tool_lists is not None else st.just(()),
        tool_choice=st.sampled_from([None, "auto", "none", "required"]),
        seed=st.none() | st.integers(0, 2**31 - 1),
    )


@st.composite
def prompt_requests(
    draw: st.DrawFn,
    *,
    params: st.SearchStrategy[GenerationParams] | None = None,
    with_tools: bool = True,
) -> PromptRequest:
    """Requests: a chat ending with a user message, or a plain ``input``, or both.

    They carry no deadline or timeout (tests set those themselves) and a unique
    ``request_id``.

    Args:
        params: the generation parameters (default: :func:`generation_params`).
        with_tools: when ``params`` is not given, whether to offer tools.
    """
    history = draw(st.lists(messages(), max_size=2))
    form = draw(st.sampled_from(["messages", "input", "both"]))
    last = draw(_texts())
    chat = (*history, Message("user", last)) if form != "input" else tuple(history)
    prompt = draw(_texts()) if form != "messages" else None
    return PromptRequest(
        messages=chat,
        input=prompt,
        params=draw(params if params is not None else generation_params(with_tools=with_tools)),
        session=draw(st.none() | st.sampled_from(["s1", "s2"])),
    )


# ---------------------------------------------------------------------------- fault schedules

_DELAYS = st.sampled_from([0.0, 0.0, 0.001, 0.01, 0.1, 1.0])


@attrs.frozen
class Succeed:
    """Answer with ``tokens`` text tokens (taken from the prompt), then ``Usage`` and ``Done``.

    Attributes:
        tokens: how many ``TextDelta`` events.
        first_token_delay: seconds before the first token.
        token_delay: seconds between tokens.
        tool_call: also make one tool call (``finish_reason`` becomes ``tool_calls``).
    """

    tokens: int = 3
    first_token_delay: float = 0.0
    token_delay: float = 0.0
    tool_call: bool = False


@attrs.frozen
class Fail:
    """Raise ``error`` after ``after_tokens`` text tokens and ``delay`` seconds.

    Attributes:
        error: the :class:`WorkerError` class to raise.
        retry_after: passed to the error.
        after_tokens: tokens emitted before failing (a failure mid-stream).
        delay: seconds before failing.
    """

    error: type[WorkerError] = errors.ServerError
    retry_after: float | None = None
    after_tokens: int = 0
    delay: float = 0.0


@attrs.frozen
class Hang:
    """Never answer: wait (cancellably) until cancelled."""


@attrs.frozen
class Stall:
    """Emit ``after_tokens`` tokens, then wait (cancellably) until cancelled."""

    after_tokens: int = 1


GrammarBreak: TypeAlias = Literal[
    "delta_after_done", "no_done", "two_dones", "done_text_mismatch", "untyped_error"
]


@attrs.frozen
class BreakGrammar:
    """Misbehave on purpose: ``how`` names the broken rule.

    ``delta_after_done`` emits a ``TextDelta`` after ``Done``; ``no_done`` returns without
    ``Done``; ``two_dones`` emits ``Done`` twice; ``done_text_mismatch`` puts other text in
    ``Done``; ``untyped_error`` raises a plain ``RuntimeError``.
    """

    how: GrammarBreak = "delta_after_done"


Behaviour: TypeAlias = Succeed | Fail | Hang | Stall | BreakGrammar


def worker_errors() -> st.SearchStrategy[type[WorkerError]]:
    """The concrete :class:`WorkerError` classes (see :data:`WORKER_ERRORS`)."""
    return st.sampled_from(WORKER_ERRORS)


def behaviours(
    *, hangs: bool = True, broken: bool = False, max_tokens: int = 8
) -> st.SearchStrategy[Behaviour]:
    """One call's behaviour: mostly successes, then failures, hangs and stalls.

    Args:
        hangs: include :class:`Hang` and :class:`Stall` (a test then needs a deadline).
        broken: include :class:`BreakGrammar` (for testing what wraps a worker).
        max_tokens: the most tokens a success or a partial stream emits.
    """
    retry_after = st.none() | st.floats(0, 30, allow_nan=False)
    options: list[st.SearchStrategy[Behaviour]] = [
        st.builds(Succeed, st.integers(0, max_tokens), _DELAYS, _DELAYS, st.booleans()),
        st.builds(Fail, worker_errors(), retry_after, st.integers(0, max_tokens), _DELAYS),
    ]
    if hangs:
        options += [st.just(Hang()), st.builds(Stall, st.integers(0, max_tokens))]
    if broken:
        options.append(st.builds(BreakGrammar, st.sampled_from(typing.get_args(GrammarBreak))))
    return st.one_of(*options)


def fault_schedules(
    *,
    min_size: int = 0,
    max_size: int = 8,
    hangs: bool = True,
    broken: bool = False,
) -> st.SearchStrategy[list[Behaviour]]:
    """Lists of per-call behaviours for a :class:`ScriptedWorker`.

    Args:
        min_size: the fewest behaviours.
        max_size: the most behaviours.
        hangs: include hangs and stalls.
        broken: include grammar-breaking behaviours.
    """
    return st.lists(behaviours(hangs=hangs, broken=broken), min_size=min_size, max_size=max_size)


# ---------------------------------------------------------------------------- the worker


@attrs.frozen
class ScriptedWorkerStatistics:
    """A snapshot of a :class:`ScriptedWorker`."""

    calls: int
    """Calls to ``generate`` so far."""
    active: int
    """Calls running now."""
    completed: int
    """Calls that emitted ``Done``."""
    failed: int
    """Calls that raised a :class:`WorkerError` (or, when broken on purpose, another error)."""
    cancelled: int
    """Calls that ended by cancellation."""


@attrs.define(eq=False)
class ScriptedWorker:
    """A worker whose ``n``-th call follows ``schedule[n]``; later calls follow ``then``.

    The text of a success is taken from the request's last user message (repeated as needed),
    so the same behaviour on the same request always gives the same answer.

    Args:
        schedule: one behaviour per call, in order.
        then: the behaviour of every call past the end of ``schedule``.
        model: the model name reported in ``Done``.
    """

    schedule: Sequence[Behaviour] = ()
    then: Behaviour = attrs.field(factory=Succeed)
    model: str = "scripted"
    _calls: int = attrs.field(init=False, default=0)
    _active: int = attrs.field(init=False, default=0)
    _completed: int = attrs.field(init=False, default=0)
    _failed: int = attrs.field(init=False, default=0)
    _cancelled: int = attrs.field(init=False, default=0)

    @classmethod
    def always(cls, behaviour: Behaviour) -> ScriptedWorker:
        """Return a worker that follows ``behaviour`` on every call."""
        return cls((), behaviour)

    def statistics(self) -> ScriptedWorkerStatistics:
        """Return a snapshot of the call counters."""
        return ScriptedWorkerStatistics(
            self._calls, self._active, self._completed, self._failed, self._cancelled
        )

    async def generate(self, request: PromptRequest, emit: EventSink) -> None:
        """Follow the next behaviour of the schedule.

        Raises:
            WorkerError: when the behaviour is :class:`Fail`.
        """
        index = self._calls
        self._calls += 1
        behaviour = self.schedule[index] if index < len(self.schedule) else self.then
        self._active += 1
        try:
            await self._follow(behaviour, request, emit)
        except trio.Cancelled:
            self._cancelled += 1
            raise
        except Exception:
            self._failed += 1
            raise
        else:
            self._completed += 1
        finally:
            self._active -= 1

    async def _follow(self, behaviour: Behaviour, request: PromptRequest, emit: EventSink) -> None:
        await trio.lowlevel.checkpoint()
        words = _words(request)
        if isinstance(behaviour, Succeed):
            await self._succeed(behaviour, request, words, emit)
        elif isinstance(behaviour, Fail):
            await trio.sleep(behaviour.delay)
            await _stream(words, behaviour.after_tokens, 0.0, emit)
            raise behaviour.error(
                f"scripted {behaviour.error.__name__} (call {self._calls})",
                retry_after=behaviour.retry_after,
            )
        elif isinstance(behaviour, Hang):
            await trio.sleep_forever()
        elif isinstance(behaviour, Stall):
            await _stream(words, behaviour.after_tokens, 0.0, emit)
            await trio.sleep_forever()
        else:
            await _break(behaviour.how, words, emit)

    async def _succeed(
        self, behaviour: Succeed, request: PromptRequest, words: list[str], emit: EventSink
    ) -> None:
        await trio.sleep(behaviour.first_token_delay)
        text = await _stream(words, behaviour.tokens, behaviour.token_delay, emit)
        calls: tuple[ToolCall, ...] = ()
        if behaviour.tool_call:
            call = ToolCall(f"call_{request.request_id[-8:]}", "scripted_tool", '{"input": 1}')
            await emit(ToolCallStart(0, call.id, call.name))
            await emit(ToolCallDelta(0, call.arguments))
            calls = (call,)
        usage = Usage(sum(len(split_tokens(m.content)) for m in request.chat()), behaviour.tokens)
        await emit(usage)
        reason = "tool_calls" if calls else "stop"
        await emit(Done(reason, text, usage, calls, self.model))


def _words(request: PromptRequest) -> list[str]:
    prompt = next((m.content for m in reversed(request.chat()) if m.role == "user"), "")
    return split_tokens(prompt) or ["token "]


async def _stream(words: list[str], tokens: int, delay: float, emit: EventSink) -> str:
    parts = [words[i % len(words)] for i in range(tokens)]
    for i, part in enumerate(parts):
        if i and delay:
            await trio.sleep(delay)
        await emit(TextDelta(part))
    return "".join(parts)


async def _break(how: GrammarBreak, words: list[str], emit: EventSink) -> None:
    text = await _stream(words, 2, 0.0, emit)
    if how == "untyped_error":
        raise RuntimeError("scripted untyped error")
    if how == "no_done":
        return
    await emit(Done("stop", text + "!" if how == "done_text_mismatch" else text))
    if how == "two_dones":
        await emit(Done("stop", text))
    elif how == "delta_after_done":
        await emit(TextDelta("late"))
