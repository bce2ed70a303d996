"""A worker for OpenAI's ``/v1/chat/completions`` and the servers that speak it.

OpenAI itself, vLLM, llama.cpp's server, Ollama, LM Studio and many more: point ``base_url``
at the server's ``/v1`` (``https://api.openai.com/v1``, ``http://localhost:8000/v1``,
``http://localhost:11434/v1``…).

Answers carry what the upstream sent. Usage: ``prompt_tokens_details.cached_tokens`` and
``completion_tokens_details.reasoning_tokens`` are read into :class:`~..events.Usage`, and every
usage member beyond the three counts travels verbatim in ``Usage.details``. Members the worker
does not interpret travel as :class:`~..events.Passthrough` events: in a stream, per chunk,
the delta's and the choice's members that are present and not null (``refusal``,
``reasoning_content``, ``audio``, ``annotations``, ``logprobs``…) and the top-level ones
(``system_fingerprint``, ``service_tier``, llama.cpp's ``timings``…) when they change, with
the next event (so that the first event is still the first token); in a
JSON answer, one event with every member beyond those read (``id``, ``object``, ``created``,
``model``, ``choices``, ``usage``; ``index``, ``message``, ``finish_reason``; ``role``,
``content``, ``tool_calls``), nulls included. OpenAI's per-chunk ``obfuscation`` padding is
not carried: it pads the chunks of the hop it came on, and the gateway's chunks differ.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import attrs
import httpx

from ..config.secret import Secret
from ..errors import MalformedResponse, ProviderConnectionError
from ..events import Done, Passthrough, TextDelta, TextPieces, ToolCallDelta, ToolCallStart, Usage
from ..types import Message, PromptRequest, Tool, ToolCall
from ._sse import ServerSentEvent, parse_event_data
from .base import EventSink
from .embeddings import WorkerEmbedder, embeddings_body, emit_embeddings
from .http import HTTPProvider, Timeouts, error_from_body, wire_format_guard
from .keys import KeyPool
from .openai_responses import ResponsesStream, emit_response, responses_body

if TYPE_CHECKING:
    from .config import ProviderConfig

__all__ = ["OpenAIWorker", "chat_body"]


def _bearer(key: Secret) -> dict[str, str]:
    return {"authorization": f"Bearer {key.reveal()}"}


def _message(message: Message) -> dict[str, Any]:
    """The message as the client sent it when it came in this format; else built from the
    typed members, content parts included."""
    if message.wire is not None:
        return dict(message.wire)
    out: dict[str, Any] = {"role": message.role, "content": message.content}
    if message.parts:
        out["content"] = [dict(part) for part in message.parts]
    if message.name is not None:
        out["name"] = message.name
    if message.tool_calls:
        out["content"] = out["content"] or None
        out["tool_calls"] = [
            {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
            for c in message.tool_calls
        ]
    if message.tool_call_id is not None:
        out["tool_call_id"] = message.tool_call_id
    return out


def _tool(tool: Tool) -> dict[str, Any]:
    parameters = dict(tool.parameters) or {"type": "object", "properties": {}}
    function = {"name": tool.name, "description": tool.description, "parameters": parameters}
    return {"type": "function", "function": function}


# The members a typed parameter may have been read from: when ``extra`` holds one of them,
# the typed parameter is only a view of it and is not sent again.
_READ_FROM = {
    "max_tokens": ("max_tokens", "max_completion_tokens"),
    "tools": ("tools", "functions"),
    "tool_choice": ("tool_choice", "function_call"),
}


def chat_body(request: PromptRequest, *, stream: bool) -> dict[str, Any]:
    """The ``/chat/completions`` JSON body for ``request``: what the client sent, exactly.

    Each message is its ``wire`` object when it has one (the client's message, unchanged),
    else it is built from the typed members. Then come the typed parameters, then every
    member of ``params.extra`` unchanged. A typed parameter is left out when ``extra`` holds
    the member it was read from (``max_tokens`` from ``max_completion_tokens``, ``tools``
    from the deprecated ``functions``, ``tool_choice`` from ``function_call``), so the
    client's choice of member stays its own. A body the
    service parsed thus reaches the upstream as the client sent it, with two rewrites only:

    - ``model`` is the upstream's model (the router resolves aliases and deployments);
    - ``stream`` and ``stream_options`` say how *this worker* reads the answer: when it
      streams, ``"stream": true, "stream_options": {"include_usage": true}``; when it does
      not, neither member. The client's own are about the gateway's answer to it.

    Args:
        request: the request.
        stream: ask the upstream for server-sent events.

    Returns:
        The JSON body.
    """
    p = request.params
    extra = p.extra
    body: dict[str, Any] = {"model": p.model, "messages": [_message(m) for m in request.chat()]}
    optional = {
        "max_tokens": p.max_tokens,
        "temperature": p.temperature,
        "top_p": p.top_p,
        "seed": p.seed,
        "tool_choice": p.tool_choice,
        "stop": list(p.stop) or None,
        "tools": [_tool(t) for t in p.tools] or None,
    }
    for name, value in optional.items():
        if value is not None and extra.keys().isdisjoint(_READ_FROM.get(name, (name,))):
            body[name] = value
    body.update(extra)
    body.pop("stream_options", None)
    if stream:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    else:
        body.pop("stream", None)
    return body


# The members the worker reads; any other member of an answer is carried as a Passthrough.
_USAGE_COUNTS = frozenset(["prompt_tokens", "completion_tokens", "total_tokens"])
_ANSWER_READ = frozenset(["id", "object", "created", "model", "choices", "usage", "obfuscation"])
_CHOICE_READ = frozenset(["index", "message", "delta", "finish_reason"])
_MESSAGE_READ = frozenset(["role", "content", "tool_calls"])


def _count(details: Any, name: str) -> int:
    return int(details.get(name) or 0) if isinstance(details, Mapping) else 0


def _usage(data: Any) -> Usage | None:
    if not isinstance(data, Mapping):
        return None
    details = {k: v for k, v in data.items() if k not in _USAGE_COUNTS}
    prompt = details.get("prompt_tokens_details")
    return Usage(
        int(data.get("prompt_tokens") or 0),
        int(data.get("completion_tokens") or 0),
        # DeepSeek's name for cache hits (it sends no prompt_tokens_details).
        cached_input_tokens=_count(prompt, "cached_tokens")
        or int(details.get("prompt_cache_hit_tokens") or 0),
        # OpenRouter's name for prompt tokens written to the provider's cache.
        cache_write_tokens=_count(prompt, "cache_write_tokens"),
        reasoning_tokens=_count(details.get("completion_tokens_details"), "reasoning_tokens"),
        details=details,
    )


# A choice and a delta with only these members (logprobs null) carry nothing more: the
# usual chunk. (Set comparisons: this runs once per streamed token.)
_CHOICE_PLAIN = frozenset(["index", "delta", "finish_reason", "logprobs"])


def _present(data: Mapping[str, Any], read: frozenset[str]) -> dict[str, Any]:
    """The members of a streamed object beyond those ``read`` that carry something."""
    found = {}
    for k, v in data.items():
        if v is not None and k not in read:
            found[k] = v
    return found


@attrs.define(eq=False)
class _ChatStream:
    """Folds ``chat.completion.chunk`` events into stream events."""

    provider: str
    emit: EventSink
    started: bool = False
    finished: bool = False
    _text: TextPieces = attrs.field(factory=TextPieces)
    _calls: dict[int, list[str]] = attrs.field(factory=dict)
    _call_ids: dict[int, tuple[str, str]] = attrs.field(factory=dict)
    _finish: str | None = None
    _usage: Usage | None = None
    _model: str | None = None
    _top: dict[str, Any] = attrs.field(factory=dict)  # watched member -> value passed on
    _names: frozenset[str] = _ANSWER_READ  # the top-level names read or watched
    _held: dict[str, Any] | None = None  # changed top-level members not emitted yet

    async def event(self, event: ServerSentEvent) -> None:
        data = event.data
        if data[:1] != "{" and data.strip() == "[DONE]":
            self.finished = True
            return
        chunk = parse_event_data(data, self.provider)
        if "error" in chunk:
            raise error_from_body(chunk, provider=self.provider)
        self._model = chunk.get("model") or self._model
        # Top-level members beyond those read are watched from the first chunk that has
        # them and passed on when they change: a constant system_fingerprint costs a lookup.
        if not self._names.issuperset(chunk):
            self._watch(chunk)
        if self._top and (top := self._changed(chunk)):
            self._held = top if self._held is None else {**self._held, **top}
        if (usage := chunk.get("usage")) is not None and (usage := _usage(usage)) is not None:
            self._usage = usage
            if self._held:
                await self._release()
            await self.emit(usage)
        for choice in chunk.get("choices") or ():
            if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                continue
            # Inline rather than a method: this runs once per streamed token.
            delta = choice.get("delta") or {}
            if (
                not _CHOICE_PLAIN.issuperset(choice)
                or choice.get("logprobs") is not None
                or not _MESSAGE_READ.issuperset(delta)
            ):
                # Before the text it came with, so that the answer carries them together.
                extra, message = _present(choice, _CHOICE_READ), _present(delta, _MESSAGE_READ)
                if extra or message:
                    # A token all the same (reasoning, refusal): the first-token wait is over.
                    self.started = True
                    await self.emit(Passthrough(self._held or {}, extra, message))
                    self._held = None
            if content := delta.get("content"):
                self.started = True
                self._text.append(content)
                if self._held:
                    await self._release()
                await self.emit(TextDelta(content))
            if calls := delta.get("tool_calls"):
                for call in calls:
                    await self._tool_call(call)
            if finish := choice.get("finish_reason"):
                self._finish = finish

    async def _release(self) -> None:
        """Emit the top-level members held back: they go out with the next event, so that
        the first event is the first token (for time to first token, retries, fallbacks)."""
        held, self._held = self._held, None
        if held:
            await self.emit(Passthrough(held))

    def _watch(self, chunk: Mapping[str, Any]) -> None:
        """Watch the chunk's top-level members not seen before."""
        self._names = self._names.union(chunk)
        for name in chunk:
            if name not in _ANSWER_READ:
                self._top.setdefault(name, None)

    def _changed(self, chunk: Mapping[str, Any]) -> dict[str, Any] | None:
        """The watched members that the chunk has, not null, and new or changed."""
        changed = None
        for name, seen in self._top.items():
            value = chunk.get(name)
            if value is not None and value != seen:
                changed = changed or {}
                changed[name] = value
        if changed:
            self._top.update(changed)
        return changed

    async def _tool_call(self, call: Mapping[str, Any]) -> None:
        self.started = True
        if self._held:
            await self._release()
        index = int(call.get("index", len(self._calls)))
        function = call.get("function") or {}
        if index not in self._calls:
            call_id, name = str(call.get("id") or f"call_{index}"), str(function.get("name", ""))
            self._calls[index], self._call_ids[index] = [], (call_id, name)
            await self.emit(ToolCallStart(index, call_id, name))
        if arguments := function.get("arguments"):
            self._calls[index].append(arguments)
            await self.emit(ToolCallDelta(index, arguments))

    async def end(self) -> None:
        if self._finish is None:
            raise ProviderConnectionError(
                f"{self.provider or 'the provider'} ended the stream before the answer was "
                "complete (no finish_reason, no [DONE]); retry",
                provider=self.provider,
            )
        calls = tuple(
            ToolCall(*self._call_ids[i], "".join(self._calls[i])) for i in sorted(self._calls)
        )
        await self._release()
        await self.emit(Done(self._finish, self._text.text(), self._usage, calls, self._model))


async def _emit_completion(answer: Mapping[str, Any], provider: str, emit: EventSink) -> None:
    choices = answer.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], Mapping):
        if "error" in answer:
            raise error_from_body(answer, provider=provider)
        raise MalformedResponse(
            f"{provider or 'the provider'} answered without choices; retrying may help",
            provider=provider,
        )
    message = choices[0].get("message") or {}
    passthrough = Passthrough(
        {k: v for k, v in answer.items() if k not in _ANSWER_READ},
        {k: v for k, v in choices[0].items() if k not in _CHOICE_READ},
        {k: v for k, v in message.items() if k not in _MESSAGE_READ},
    )
    if passthrough.response or passthrough.choice or passthrough.message:
        await emit(passthrough)
    text = message.get("content") or ""
    if text:
        await emit(TextDelta(text))
    calls = []
    for i, call in enumerate(message.get("tool_calls") or ()):
        function = call.get("function") or {}
        tool_call = ToolCall(str(call.get("id", f"call_{i}")), str(function.get("name", "")))
        tool_call = attrs.evolve(tool_call, arguments=str(function.get("arguments") or ""))
        calls.append(tool_call)
        await emit(ToolCallStart(i, tool_call.id, tool_call.name))
        if tool_call.arguments:
            await emit(ToolCallDelta(i, tool_call.arguments))
    usage = _usage(answer.get("usage"))
    if usage is not None:
        await emit(usage)
    finish = choices[0].get("finish_reason") or "stop"
    await emit(Done(finish, text, usage, tuple(calls), answer.get("model")))


@attrs.define(eq=False, repr=False)
class OpenAIWorker:
    """Generates through an OpenAI-compatible ``/chat/completions`` endpoint.

    Args:
        client: the provider's shared ``httpx.AsyncClient`` (or ``httpx2``).
        base_url: the API root including ``/v1``.
        keys: the key pool (``None`` for local servers that need no key).
        name: the provider's name, for errors and statistics.
        timeouts: connect, first-token, idle and total timeouts.
        stream: stream the answer with SSE (``False``: one JSON answer).
        headers: extra headers sent on every call (never put keys here; use ``keys``).
        responses_api: the server speaks OpenAI's Responses API too: a request with
            ``responses_body`` is posted to ``/responses`` as the client sent it (see
            :mod:`.openai_responses`); without it, to ``/chat/completions`` translated.
    """

    client: httpx.AsyncClient
    base_url: str = "https://api.openai.com/v1"
    keys: KeyPool | None = None
    name: str = "openai"
    timeouts: Timeouts = attrs.field(factory=Timeouts)
    stream: bool = True
    headers: Mapping[str, str] = attrs.field(factory=dict)
    responses_api: bool = attrs.field(default=False, kw_only=True)
    _http: HTTPProvider = attrs.field(init=False)

    def reconfigure(self, provider: ProviderConfig | None, /) -> list[str]:
        """Apply this provider's reloaded ``api_keys``; other changes need a restart."""
        return self._http.reconfigure(provider)

    def __attrs_post_init__(self) -> None:
        self._http = HTTPProvider(
            self.client,
            self.base_url,
            self.name,
            self.keys,
            self.timeouts,
            self._auth,
            self.headers,
        )

    # The seams a service that speaks this format with another URL, auth or quirks
    # overrides (Azure OpenAI, the presets): the rest of the worker is shared.

    def _auth(self, key: Secret) -> dict[str, str]:
        """The headers that carry ``key``."""
        return _bearer(key)

    def _path(self, endpoint: str, model: str | None) -> str:
        """The path under ``base_url`` of ``endpoint`` (``/chat/completions``…) for ``model``."""
        return endpoint

    def _chat_body(self, request: PromptRequest) -> dict[str, Any]:
        """The ``/chat/completions`` body for ``request``.

        Raises:
            UnsupportedParameter: a member the upstream refuses.
        """
        return chat_body(request, stream=self._streams(request))

    def _streams(self, request: PromptRequest) -> bool:
        """Whether the call for ``request`` streams: when the provider may (``stream``) and
        its caller sees the events as they come. A caller that takes the answer whole gets
        it from one JSON answer, which costs the upstream and the gateway less than the
        same answer as server-sent events."""
        return self.stream and request.streaming

    def _embeddings_body(self, request: PromptRequest) -> dict[str, Any]:
        """The ``/embeddings`` body for ``request``."""
        return embeddings_body(request)

    def __repr__(self) -> str:
        return f"OpenAIWorker(name={self.name!r}, base_url={self.base_url!r})"

    async def generate(self, request: PromptRequest, emit: EventSink) -> None:
        """Generate the answer to ``request``; see :class:`~trio_orchestrator.workers.ModelWorker`.

        Raises:
            ProviderError: a typed failure.
        """
        if request.embed is not None:
            await self._embed(request, emit)
            return
        if self.responses_api and request.responses_body is not None:
            await self._respond(request, emit)
            return
        body = self._chat_body(request)
        path = self._path("/chat/completions", request.params.model)
        if self._streams(request):
            await self._http.post_stream(path, body, _ChatStream(self.name, emit), request.timing)
            return
        # Unstreamed because its caller takes it whole, the answer may take as long as a
        # stream would in all (``total``), not ``first_token``: its first content is all of it.
        answer = await self._http.post_json(
            path, body, request.timing, first_token_bounds_answer=not self.stream
        )
        with wire_format_guard(self.name):
            await _emit_completion(answer, self.name, emit)

    async def _respond(self, request: PromptRequest, emit: EventSink) -> None:
        """Forward a ``/v1/responses`` request natively (streamed when the client streams)."""
        body = responses_body(request)
        if body.get("stream") is True:
            await self._http.post_stream(
                "/responses", body, ResponsesStream(self.name, emit), request.timing
            )
            return
        # Unstreamed because its client takes it whole: bounded by total, as a chat's is.
        answer = await self._http.post_json(
            "/responses", body, request.timing, first_token_bounds_answer=not self.stream
        )
        with wire_format_guard(self.name):
            await emit_response(answer, self.name, emit)

    async def list_models(self) -> list[str]:
        """The ids of the models the server offers (``GET /models``).

        Raises:
            ProviderError: a typed failure.
        """
        answer = await self._http.get_json(self._path("/models", None))
        data = answer.get("data") if isinstance(answer, Mapping) else None
        if not isinstance(data, list):
            raise MalformedResponse(
                f"{self.name}: /models answered without a data list", provider=self.name
            )
        return [str(m["id"]) for m in data if isinstance(m, Mapping) and "id" in m]

    async def _embed(self, request: PromptRequest, emit: EventSink) -> None:
        body = self._embeddings_body(request)
        path = self._path("/embeddings", request.params.model)
        answer = await self._http.post_json(path, body, request.timing)
        with wire_format_guard(self.name):
            await emit_embeddings(answer, request, self.name, emit)

    async def embed(self, inputs: Sequence[str], *, model: str) -> list[list[float]]:
        """Embed ``inputs`` with ``model`` (``POST /embeddings``), in input order: a shortcut
        for an embedding request (``PromptRequest(embed=...)``) outside any pipeline.

        Raises:
            ProviderError: a typed failure.
        """
        return await WorkerEmbedder(self, batch=len(inputs) or 1).embed(inputs, model=model)
