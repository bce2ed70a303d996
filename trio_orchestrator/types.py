"""The request side of the contract: chat messages, generation parameters, requests."""

from __future__ import annotations

import contextvars
import enum
import math
import os
import time
from collections.abc import Iterable, Mapping
from typing import Any, Literal, TypeAlias

import attrs

__all__ = [
    "TYPED_MEMBERS",
    "Document",
    "EmbeddingInput",
    "GenerationParams",
    "Message",
    "Priority",
    "PromptRequest",
    "RequestNotes",
    "RequestTiming",
    "Role",
    "Tool",
    "ToolCall",
    "mark_cache",
    "new_request_id",
    "request_notes",
    "reset_request_notes",
    "set_request_notes",
]

Role = Literal["system", "user", "assistant", "tool"]
_ROLES = frozenset(("system", "user", "assistant", "tool"))


def new_request_id() -> str:
    """Return a fresh, unique request id: ``req_`` and 24 hex digits, the first 12 the
    milliseconds since the epoch and the last 12 random (48 bits), as UUIDv7 and ULID do.

    Ids sort by the time they were made, so the request log's index on them grows at its end:
    with random ids each insert dirtied an index page of its own, and a log of 200,000 rows
    cost 55-65 µs of CPU per insert instead of 20 (``benchmarks/bench_reqlog_parts.py``).
    """
    return f"req_{time.time_ns() // 1_000_000:012x}{os.urandom(6).hex()}"


class Priority(enum.IntEnum):
    """Admission priority at the inference stage: lower values go first."""

    CRITICAL = 0
    HIGH = 1
    NORMAL = 2
    LOW = 3


@attrs.frozen
class ToolCall:
    """A complete tool call made by the model.

    Attributes:
        id: the provider's id for the call.
        name: the function name.
        arguments: the arguments as JSON text, exactly as the model produced them.
    """

    id: str
    name: str
    arguments: str = ""


@attrs.frozen(eq=False)
class Tool:
    """A function the model may call.

    Attributes:
        name: the function name.
        description: what the function does, for the model.
        parameters: a JSON Schema of the arguments.
        cache_control: a prompt-cache breakpoint after this tool's definition (Anthropic's
            ``cache_control``, e.g. ``{"type": "ephemeral"}``); Anthropic and Bedrock
            upstreams honour it, the others cache prompt prefixes by themselves.
    """

    name: str
    description: str = ""
    parameters: Mapping[str, Any] = attrs.field(factory=dict)
    cache_control: Mapping[str, Any] | None = None


def _check_role(_instance: object, _attribute: object, value: str) -> None:
    if value not in _ROLES:
        raise ValueError(f"message role must be one of {sorted(_ROLES)}, got {value!r}")


@attrs.frozen
class Message:
    """One chat message.

    The typed members are what the gateway reads (token estimates, cache keys, translation
    to other wire formats). A message that came in OpenAI's Chat Completions format also
    keeps the client's object in ``wire``, which an upstream speaking that same format
    receives unchanged (``developer`` role, ``refusal``, ``audio`` and unknown members
    included); the typed members are then a read-only view of it.

    Attributes:
        role: ``system``, ``user``, ``assistant`` or ``tool`` (a ``developer`` message is
            read as ``system``).
        content: the text (of an array of content parts, the text parts joined).
        name: an optional participant name.
        tool_calls: calls made by an assistant message.
        tool_call_id: for a ``tool`` message, the call it answers.
        parts: the content parts, in OpenAI's Chat Completions shape (``{"type": "text"}``,
            ``"image_url"``, ``"input_audio"``, ``"file"``…), when the content is an array;
            empty for plain text. Workers for other wire formats translate them.
        wire: the message exactly as the client sent it in OpenAI's Chat Completions
            format, or ``None`` (built in code, or translated from another format). Whoever
            changes a message builds a new one without it.
    """

    role: str = attrs.field(validator=_check_role)
    content: str = ""
    name: str | None = None
    tool_calls: tuple[ToolCall, ...] = ()
    tool_call_id: str | None = None
    parts: tuple[Mapping[str, Any], ...] = attrs.field(default=(), eq=False)
    wire: Mapping[str, Any] | None = attrs.field(default=None, eq=False, repr=False)


#: The Chat Completions members that :class:`GenerationParams` reads into typed fields. When
#: one of them is also in ``extra`` (as the service puts it there), a translating worker uses
#: the typed field and skips the member.
TYPED_MEMBERS = frozenset(
    [
        "max_tokens",
        "max_completion_tokens",
        "temperature",
        "top_p",
        "stop",
        "tools",
        "tool_choice",
        "seed",
    ]
)


@attrs.frozen(eq=False)
class GenerationParams:
    """What to generate and how.

    Attributes:
        model: the model name or alias the caller asked for.
        max_tokens: the most tokens to generate, or ``None`` for the provider's default.
        temperature: sampling temperature; ``None`` for the provider's default.
        top_p: nucleus sampling; ``None`` for the provider's default.
        stop: stop sequences; generation ends before any of them.
        tools: functions the model may call.
        tool_choice: ``"auto"``, ``"none"``, ``"required"`` or a provider-specific mapping.
        seed: a sampling seed, where the provider supports one.
        extra: further request members, by their wire names. An upstream speaking OpenAI's
            Chat Completions format receives them unchanged, after the typed members (so a
            member here wins); other workers translate the ones they know and refuse the
            rest with :class:`~trio_orchestrator.errors.UnsupportedParameter`. The service
            puts here every member of a Chat Completions body but ``model``, ``messages``,
            ``stream`` and ``stream_options`` — the typed members too, exactly as sent,
            which the typed fields then merely read (``TYPED_MEMBERS``).
    """

    model: str = "echo"
    max_tokens: int | None = attrs.field(default=None)
    temperature: float | None = None
    top_p: float | None = None
    stop: tuple[str, ...] = ()
    tools: tuple[Tool, ...] = ()
    tool_choice: str | Mapping[str, Any] | None = None
    seed: int | None = None
    extra: Mapping[str, Any] = attrs.field(factory=dict)

    @max_tokens.validator
    def _check_max_tokens(self, _attribute: object, value: int | None) -> None:
        if value is not None and value < 1:
            raise ValueError(f"max_tokens must be at least 1, got {value}")


@attrs.frozen
class Document:
    """A retrieved passage.

    Attributes:
        id: the document's id in its corpus.
        text: the passage.
        score: the retriever's relevance score (higher is better).
    """

    id: str
    text: str
    score: float = 0.0


@attrs.define(eq=False, slots=True)
class RequestNotes:
    """What the layers a request passed through noted about it, for its request log record.

    The request log's outermost layer makes one per request and sets it in
    :func:`request_notes`'s context variable for the worker call, so the layers below (in the
    same task or the tasks it starts) add to the same object: a retry layer counts its
    retries, the router its fallbacks and the provider it sent to, the caches their hits,
    coalescing a request that joined another's call. With no request log, there is none
    and each layer's note costs one context-variable read.

    Attributes:
        retries: calls repeated by a retry layer (every deployment's).
        fallbacks: further deployments the router tried after the first.
        provider: the label of the provider last called, when the router knows it.
        cache_hit: answered from a cache (exact, semantic or shared).
        coalesced: answered by joining an identical request's upstream call.
    """

    retries: int = 0
    fallbacks: int = 0
    provider: str | None = None
    cache_hit: bool = False
    coalesced: bool = False


_NOTES: contextvars.ContextVar[RequestNotes | None] = contextvars.ContextVar(
    "trio_orchestrator_request_notes", default=None
)


def request_notes() -> RequestNotes | None:
    """The notes of the request the current task serves, or None when nobody keeps them."""
    return _NOTES.get()


def set_request_notes(notes: RequestNotes | None) -> contextvars.Token[RequestNotes | None]:
    """Make ``notes`` those of the request the current task serves (until reset)."""
    return _NOTES.set(notes)


def reset_request_notes(token: contextvars.Token[RequestNotes | None]) -> None:
    """Undo :func:`set_request_notes`."""
    _NOTES.reset(token)


@attrs.define(eq=False, slots=True)
class RequestTiming:
    """When a request arrived at the gateway, and how long it has waited on upstreams.

    The service makes one per request (``x-gateway-overhead-ms``) and hands it to the
    pipeline in :attr:`PromptRequest.timing`; every copy of the request (the router's, a
    retry's, a fallback's, ``n`` choices') shares it, so it sums the waits of every attempt.
    The HTTP workers mark each wait on their upstream (sending a request until its answer's
    headers, each read of its body) until the service has answered (:meth:`answer`; a
    stream's headers go with its first event: later reads overlap the client's stream).
    Waits that overlap (``n`` choices, embedding batches sent at once) count once: the time
    during which *any* upstream call was awaited.

    All times are on Trio's clock (:func:`trio.current_time`).

    Attributes:
        arrived: when the request reached the gateway's application.
        upstream: seconds spent waiting on upstreams, in waits that have ended.
        answered: the service has sent the response's headers; waits are no longer marked.
        cache: what a cache made of the request, for the ``x-cache`` response header:
            ``"hit"`` (the exact cache answered), ``"semantic-hit"`` (the semantic cache
            did), ``"miss"`` (a cache looked and the upstream answered), or ``""`` (no
            cache looked at it). Set by :func:`mark_cache`.
    """

    arrived: float
    upstream: float = 0.0
    answered: bool = False
    cache: str = ""
    _open: int = 0
    _since: float = 0.0

    def wait_began(self, now: float) -> None:
        """A wait on an upstream began (a request sent, or a read of its answer)."""
        if not self._open:
            self._since = now
        self._open += 1

    def wait_ended(self, now: float) -> None:
        """A wait :meth:`wait_began` opened has ended (answered, failed or cancelled)."""
        self._open -= 1
        if not self._open:
            self.upstream += now - self._since

    def waited(self, now: float) -> float:
        """Seconds spent waiting on upstreams until ``now`` (a wait still open included)."""
        return self.upstream + (now - self._since if self._open else 0.0)

    def overhead(self, now: float) -> float:
        """Seconds the gateway itself took from :attr:`arrived` to ``now``: the time not
        spent waiting on an upstream (never negative)."""
        return max(0.0, now - self.arrived - self.waited(now))

    def answer(self, now: float) -> float:
        """The response's headers go out ``now``: stop marking waits; return
        :meth:`overhead` as of now."""
        self.answered = True
        return self.overhead(now)


def mark_cache(request: PromptRequest, what: str, *, replace: bool = False) -> None:
    """Note on ``request``'s timing what a cache made of it (:attr:`RequestTiming.cache`):
    a lookup marks ``"miss"`` unless an outer cache marked it already, a hit replaces that.
    Nothing happens when the request is not timed."""
    timing = request.timing
    if timing is not None and (replace or not timing.cache):
        timing.cache = what


def _to_messages(messages: Iterable[Message]) -> tuple[Message, ...]:
    return tuple(messages)


#: One input of an embedding request: a text, or a text already split into token ids.
EmbeddingInput: TypeAlias = str | tuple[int, ...]


def _to_embed(
    inputs: Iterable[str | Iterable[int]] | None,
) -> tuple[EmbeddingInput, ...] | None:
    if inputs is None:
        return None
    return tuple(i if isinstance(i, str) else tuple(i) for i in inputs)


def _check_time(_instance: object, attribute: attrs.Attribute[Any], value: float | None) -> None:
    if value is None:
        return
    if math.isnan(value):
        raise ValueError(f"{attribute.name} must be a number, got NaN")
    if attribute.name == "timeout" and value <= 0:
        raise ValueError(f"timeout must be positive (use math.inf for no limit), got {value}")


@attrs.frozen(eq=False)
class PromptRequest:
    """One request to the pipeline.

    Give ``messages`` (a chat), ``input`` (a plain prompt, sent as one user message), or both
    (``input`` then follows the messages); or, for embeddings instead of a generated answer,
    ``embed`` alone.

    Attributes:
        messages: the chat so far.
        input: a plain prompt.
        params: what to generate and how.
        request_id: unique id; generated when not given.
        session: the conversation this request belongs to (for affinity and logs).
        meta: free-form string labels (user, API key id, tenant…).
        deadline: absolute deadline on Trio's clock (:func:`trio.current_time`).
        timeout: seconds from submission; used when ``deadline`` is not given.
        priority: admission priority when inference is saturated.
        context: documents the retrieval stage attached.
        embed: the inputs to embed, when this request asks for embeddings (OpenAI's
            ``/v1/embeddings``): a worker that can embed answers with one
            :class:`~trio_orchestrator.events.Embeddings` event (then ``Usage`` and
            ``Done``); one that cannot raises
            :class:`~trio_orchestrator.errors.UnsupportedParameter` naming ``model``. The
            other members of an embeddings body (``encoding_format``, ``dimensions``,
            ``user``…) travel in ``params.extra``.
        responses_body: the client's ``/v1/responses`` body exactly as sent, when the
            request came in that format (else ``None``). A worker for an upstream that
            speaks OpenAI's Responses API posts it (``model`` and ``stream`` rewritten);
            every other worker translates the typed members, which are a view of it, as
            ``Message.wire`` is of a chat message.
        streaming: whether the caller sees events as the worker emits them (``True``, the
            safe default) or only the whole answer once it has ended (``False``). A retry
            may start a ``False`` request over after the worker emitted events, since none
            of them reached the caller. The service and batch jobs set it ``False`` for the
            answers they return whole; ``Pipeline.stream`` sets it ``True``. (It is the
            caller's to say, not the pipeline's, so that no request is copied per call.)
        timing: where the HTTP workers add up the time this request waited on its
            upstreams (see :class:`RequestTiming`), or ``None`` (nothing is measured). Every
            copy of the request shares it; it is not part of the request's identity and is
            not stored with it.
    """

    messages: tuple[Message, ...] = attrs.field(default=(), converter=_to_messages)
    input: str | None = None
    params: GenerationParams = attrs.field(factory=GenerationParams)
    request_id: str = attrs.field(factory=new_request_id)
    session: str | None = None
    meta: Mapping[str, str] = attrs.field(factory=dict)
    deadline: float | None = attrs.field(default=None, validator=_check_time)
    timeout: float | None = attrs.field(default=None, validator=_check_time)
    priority: Priority = attrs.field(default=Priority.NORMAL, converter=Priority)
    context: tuple[Document, ...] = ()
    embed: tuple[EmbeddingInput, ...] | None = attrs.field(default=None, converter=_to_embed)
    responses_body: Mapping[str, Any] | None = attrs.field(default=None, repr=False, kw_only=True)
    streaming: bool = attrs.field(default=True, kw_only=True)
    timing: RequestTiming | None = attrs.field(default=None, kw_only=True, repr=False)

    def __attrs_post_init__(self) -> None:
        if self.embed is not None:
            if not self.embed:
                raise ValueError("an embedding request needs at least one input")
            if self.messages or self.input is not None:
                raise ValueError("an embedding request has no messages and no input prompt")
        elif not self.messages and self.input is None:
            raise ValueError("a PromptRequest needs messages or an input prompt")

    def chat(self) -> tuple[Message, ...]:
        """Return the conversation to send: ``messages``, then ``input`` as a user message."""
        if self.input is None:
            return self.messages
        return (*self.messages, Message("user", self.input))

    def streamed(self, streaming: bool) -> PromptRequest:
        """This request with ``streaming`` as given: itself when it says so already (the
        common case costs no copy)."""
        return self if self.streaming is streaming else attrs.evolve(self, streaming=streaming)

    def resolve_deadline(self, now: float) -> float:
        """Return the absolute deadline: ``deadline``, else ``now + timeout``, else infinity."""
        if self.deadline is not None:
            return self.deadline
        if self.timeout is not None:
            return now + self.timeout
        return math.inf
