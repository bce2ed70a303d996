"""The response side of the contract: stream events, their grammar, and the completion.

A worker turns a request into events::

    (TextDelta | ToolCallStart | ToolCallDelta | Usage | Passthrough)* Done

(an embedding request, one with ``embed``: ``Embeddings (Usage | Passthrough)* Done``)
or raises a :class:`~trio_orchestrator.errors.WorkerError` and emits nothing after it. A
non-streaming answer is the accumulation of that stream (:class:`Accumulator`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeAlias

import attrs

from .types import ToolCall

__all__ = [
    "Accumulator",
    "Completion",
    "Done",
    "Embeddings",
    "EventGrammarError",
    "Passthrough",
    "StreamEvent",
    "TextDelta",
    "TextPieces",
    "ToolCallDelta",
    "ToolCallStart",
    "Usage",
    "merge_passthrough",
]


@attrs.frozen
class TextDelta:
    """A piece of generated text."""

    text: str


class TextPieces:
    r"""A stream's text as it arrives in pieces (its ``TextDelta``\ s), joined every
    :attr:`JOIN_EVERY` pieces: a list of one small string per token costs ~60 bytes a token
    over the text itself, for as long as the stream is open, and an answer's text is kept by
    its worker and by the pipeline both (the pieces are freed once both have joined them).
    """

    __slots__ = ("_chunks", "_pieces")

    JOIN_EVERY = 64

    def __init__(self) -> None:
        self._chunks: list[str] = []
        self._pieces: list[str] = []

    def append(self, piece: str) -> None:
        """Add the next piece."""
        pieces = self._pieces
        pieces.append(piece)
        if len(pieces) >= self.JOIN_EVERY:
            self._chunks.append("".join(pieces))
            pieces.clear()

    def text(self) -> str:
        """The whole text so far."""
        return "".join(self._chunks) + "".join(self._pieces)


@attrs.frozen
class ToolCallStart:
    """The model began tool call number ``index`` (several may be open at once)."""

    index: int
    id: str
    name: str


@attrs.frozen
class ToolCallDelta:
    """More JSON text of the arguments of tool call number ``index``."""

    index: int
    arguments: str


@attrs.frozen
class Usage:
    """Token counts; a later ``Usage`` event replaces an earlier one.

    Attributes:
        input_tokens: prompt tokens, all of them (cached ones included).
        output_tokens: generated tokens, reasoning included.
        cached_input_tokens: of ``input_tokens``, those read from the provider's prompt
            cache (OpenAI ``prompt_tokens_details.cached_tokens``, Anthropic
            ``cache_read_input_tokens``).
        cache_write_tokens: of ``input_tokens``, those written to the provider's prompt
            cache (Anthropic ``cache_creation_input_tokens``).
        reasoning_tokens: of ``output_tokens``, those spent on reasoning (OpenAI
            ``completion_tokens_details.reasoning_tokens``).
        details: the upstream's usage members beyond the counts above, in OpenAI's
            Chat Completions shape (``prompt_tokens_details``, ``completion_tokens_details``
            …), sent on to a client of that format as they came.
    """

    input_tokens: int = 0
    output_tokens: int = 0
    cached_input_tokens: int = 0
    cache_write_tokens: int = 0
    reasoning_tokens: int = 0
    details: Mapping[str, Any] = attrs.field(factory=dict, eq=False, hash=False, repr=False)

    @property
    def total_tokens(self) -> int:
        """Input plus output tokens."""
        return self.input_tokens + self.output_tokens


@attrs.frozen(eq=False)
class Passthrough:
    """Members of the upstream's answer that the gateway carries without interpreting them,
    for a client of the same format: in OpenAI's Chat Completions shape, by where they sit.

    Streamed, one event per chunk that has any (``refusal`` or ``reasoning_content`` pieces,
    a token's ``logprobs``, a ``system_fingerprint``); a non-streaming worker emits one
    before ``Done``. :class:`Accumulator` folds them with :func:`merge_passthrough`.

    Attributes:
        response: top-level members (``system_fingerprint``, ``service_tier``, a local
            server's ``timings``…).
        choice: members of the choice (``logprobs``).
        message: members of the message, or of the streamed delta (``refusal``,
            ``annotations``, ``audio``, ``reasoning_content``…).
    """

    response: Mapping[str, Any] = attrs.field(factory=dict)
    choice: Mapping[str, Any] = attrs.field(factory=dict)
    message: Mapping[str, Any] = attrs.field(factory=dict)


def _merge(old: Any, new: Any) -> Any:
    if isinstance(old, str) and isinstance(new, str):
        return old + new
    if isinstance(old, list) and isinstance(new, list):
        return old + new
    if isinstance(old, Mapping) and isinstance(new, Mapping):
        return {**old, **{k: _merge(old[k], v) if k in old else v for k, v in new.items()}}
    return new


def merge_passthrough(old: Passthrough | None, new: Passthrough) -> Passthrough:
    """Fold a later :class:`Passthrough` into an earlier one, as a client folds chunks:
    ``response`` members are replaced; ``choice`` and ``message`` members concatenate
    (strings and arrays, such as ``refusal`` pieces and ``logprobs.content``) or merge
    (objects)."""
    if old is None:
        return new
    return Passthrough(
        {**old.response, **new.response},
        _merge(old.choice, new.choice),
        _merge(old.message, new.message),
    )


@attrs.frozen
class Embeddings:
    """The answer to an embedding request: one vector per input, in input order.

    Attributes:
        vectors: the vectors, as the upstream gave them (a base64 answer decoded from its
            little-endian float32).
    """

    vectors: tuple[tuple[float, ...], ...]


@attrs.frozen
class Done:
    """The last event of every successful stream.

    Attributes:
        finish_reason: ``stop``, ``length``, ``tool_calls``, ``content_filter`` or a
            provider's own reason.
        text: the whole generated text (the concatenation of the ``TextDelta`` events).
        usage: the final token counts, when known.
        tool_calls: the complete tool calls.
        model: the model that answered, when known.
    """

    finish_reason: str = "stop"
    text: str = ""
    usage: Usage | None = None
    tool_calls: tuple[ToolCall, ...] = ()
    model: str | None = None


StreamEvent: TypeAlias = (
    TextDelta | ToolCallStart | ToolCallDelta | Usage | Passthrough | Embeddings | Done
)


@attrs.frozen
class Completion:
    """The result of a completed request.

    Attributes:
        request_id: the request's id.
        text: the generated text, after post-processing.
        finish_reason: why generation ended.
        usage: token counts, when the worker reported them.
        tool_calls: complete tool calls.
        model: the model that answered, when known.
        passthrough: the upstream's uninterpreted members, folded (see :class:`Passthrough`).
        embeddings: for an embedding request, the vectors (see :class:`Embeddings`).
    """

    request_id: str
    text: str
    finish_reason: str = "stop"
    usage: Usage | None = None
    tool_calls: tuple[ToolCall, ...] = ()
    model: str | None = None
    passthrough: Passthrough | None = attrs.field(default=None, eq=False)
    embeddings: tuple[tuple[float, ...], ...] = ()


class EventGrammarError(Exception):
    """A stream broke the event grammar (an event after ``Done``, a delta for an unknown
    tool call, ``Done`` text differing from the deltas…)."""


@attrs.define
class _OpenCall:
    id: str
    name: str
    arguments: list[str] = attrs.field(factory=list)


@attrs.define
class Accumulator:
    """Folds a stream of events into the parts of a :class:`Completion`, checking the grammar.

    Feed every event to :meth:`add`; after ``Done`` the accumulator is finished.
    """

    _text: list[str] = attrs.field(factory=list, init=False)
    _calls: dict[int, _OpenCall] = attrs.field(factory=dict, init=False)
    usage: Usage | None = attrs.field(default=None, init=False)
    passthrough: Passthrough | None = attrs.field(default=None, init=False)
    embeddings: tuple[tuple[float, ...], ...] = attrs.field(default=(), init=False)
    done: Done | None = attrs.field(default=None, init=False)

    @property
    def text(self) -> str:
        """The text accumulated so far."""
        return "".join(self._text)

    def tool_calls(self) -> tuple[ToolCall, ...]:
        """The tool calls accumulated so far, by index."""
        if not self._calls:
            return ()
        return tuple(
            ToolCall(call.id, call.name, "".join(call.arguments))
            for _, call in sorted(self._calls.items())
        )

    def add(self, event: StreamEvent) -> None:
        """Take one event.

        Raises:
            EventGrammarError: the event breaks the grammar.
        """
        if self.done is not None:
            raise EventGrammarError(f"{type(event).__name__} after Done")
        if isinstance(event, TextDelta):
            self._text.append(event.text)
        elif isinstance(event, ToolCallStart):
            if event.index in self._calls:
                raise EventGrammarError(f"tool call {event.index} started twice")
            self._calls[event.index] = _OpenCall(event.id, event.name)
        elif isinstance(event, ToolCallDelta):
            call = self._calls.get(event.index)
            if call is None:
                raise EventGrammarError(f"delta for tool call {event.index} before its start")
            call.arguments.append(event.arguments)
        elif isinstance(event, Usage):
            self.usage = event
        elif isinstance(event, Passthrough):
            self.passthrough = merge_passthrough(self.passthrough, event)
        elif isinstance(event, Embeddings):
            if self.embeddings:
                raise EventGrammarError("a second Embeddings event")
            self.embeddings = event.vectors
        else:
            if event.text and event.text != self.text:
                raise EventGrammarError("Done.text differs from the accumulated deltas")
            self.done = event

    def completion(self, request_id: str) -> Completion:
        """Return the completion; tool calls and usage from ``Done`` win when it has them."""
        done = self.done if self.done is not None else Done()
        return Completion(
            request_id=request_id,
            text=self.text,
            finish_reason=done.finish_reason,
            usage=done.usage or self.usage,
            tool_calls=done.tool_calls or self.tool_calls(),
            model=done.model,
            passthrough=self.passthrough,
            embeddings=self.embeddings,
        )
