"""A worker for OpenAI's ``/v1/chat/completions`` and the servers that speak it.

OpenAI itself, vLLM, llama.cpp's server, Ollama, LM Studio and many more: point ``base_url``
at the server's ``/v1`` (``https://api.openai.com/v1``, ``http://localhost:8000/v1``,
``http://localhost:11434/v1``…).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import attrs
import httpx
import orjson

from ..config.secret import Secret
from ..errors import MalformedResponse, ProviderConnectionError
from ..events import Done, TextDelta, ToolCallDelta, ToolCallStart, Usage
from ..types import GenerationParams, Message, PromptRequest, ToolCall
from ._sse import ServerSentEvent
from .base import EventSink, collect
from .embeddings import embeddings_body, emit_embeddings
from .http import HTTPProvider, Timeouts, error_from_body, wire_format_guard
from .keys import KeyPool

if TYPE_CHECKING:
    from ..config.model import Config

__all__ = ["OpenAIWorker", "chat_body"]


def _bearer(key: Secret) -> dict[str, str]:
    return {"authorization": f"Bearer {key.reveal()}"}


def _message(message: Message) -> dict[str, Any]:
    out: dict[str, Any] = {"role": message.role, "content": message.content}
    if message.name is not None:
        out["name"] = message.name
    if message.tool_calls:
        out["content"] = message.content or None
        out["tool_calls"] = [
            {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
            for c in message.tool_calls
        ]
    if message.tool_call_id is not None:
        out["tool_call_id"] = message.tool_call_id
    return out


def chat_body(request: PromptRequest, *, stream: bool) -> dict[str, Any]:
    """The ``/chat/completions`` JSON body for ``request``."""
    p = request.params
    body: dict[str, Any] = {"model": p.model, "messages": [_message(m) for m in request.chat()]}
    optional = {
        "max_tokens": p.max_tokens,
        "temperature": p.temperature,
        "top_p": p.top_p,
        "seed": p.seed,
        "tool_choice": p.tool_choice,
        "stop": list(p.stop) or None,
    }
    body.update({k: v for k, v in optional.items() if v is not None})
    if p.tools:
        body["tools"] = [
            {
                "type": "function",
                "function": {
                    "name": t.name,
                    "description": t.description,
                    "parameters": dict(t.parameters) or {"type": "object", "properties": {}},
                },
            }
            for t in p.tools
        ]
    if stream:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    body.update(p.extra)
    return body


def _usage(data: Any) -> Usage | None:
    if not isinstance(data, Mapping):
        return None
    return Usage(int(data.get("prompt_tokens") or 0), int(data.get("completion_tokens") or 0))


@attrs.define(eq=False)
class _ChatStream:
    """Folds ``chat.completion.chunk`` events into stream events."""

    provider: str
    emit: EventSink
    started: bool = False
    finished: bool = False
    _text: list[str] = attrs.field(factory=list)
    _calls: dict[int, list[str]] = attrs.field(factory=dict)
    _call_ids: dict[int, tuple[str, str]] = attrs.field(factory=dict)
    _finish: str | None = None
    _usage: Usage | None = None
    _model: str | None = None

    async def event(self, event: ServerSentEvent) -> None:
        data = event.data
        if data[:1] != "{" and data.strip() == "[DONE]":
            self.finished = True
            return
        chunk = _parse(data, self.provider)
        if "error" in chunk:
            raise error_from_body(chunk, provider=self.provider)
        self._model = chunk.get("model") or self._model
        if (usage := chunk.get("usage")) is not None and (usage := _usage(usage)) is not None:
            self._usage = usage
            await self.emit(usage)
        for choice in chunk.get("choices") or ():
            if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                continue
            # Inline rather than a method: this runs once per streamed token.
            delta = choice.get("delta") or {}
            if content := delta.get("content"):
                self.started = True
                self._text.append(content)
                await self.emit(TextDelta(content))
            if calls := delta.get("tool_calls"):
                for call in calls:
                    await self._tool_call(call)
            if finish := choice.get("finish_reason"):
                self._finish = finish

    async def _tool_call(self, call: Mapping[str, Any]) -> None:
        self.started = True
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
        await self.emit(Done(self._finish, "".join(self._text), self._usage, calls, self._model))


def _parse(data: str | bytes, provider: str) -> dict[str, Any]:
    try:
        parsed = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise MalformedResponse(
            f"{provider or 'the provider'} sent an event that is not JSON; retrying may help",
            provider=provider,
        ) from exc
    if not isinstance(parsed, dict):
        raise MalformedResponse(
            f"{provider or 'the provider'} sent JSON that is not an object; retrying may help",
            provider=provider,
        )
    return parsed


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
    """

    client: httpx.AsyncClient
    base_url: str = "https://api.openai.com/v1"
    keys: KeyPool | None = None
    name: str = "openai"
    timeouts: Timeouts = attrs.field(factory=Timeouts)
    stream: bool = True
    headers: Mapping[str, str] = attrs.field(factory=dict)
    _http: HTTPProvider = attrs.field(init=False)

    def reconfigure(self, config: Config) -> list[str]:
        """Apply this provider's reloaded ``api_keys``; other changes need a restart."""
        return self._http.reconfigure(config)

    def __attrs_post_init__(self) -> None:
        self._http = HTTPProvider(
            self.client, self.base_url, self.name, self.keys, self.timeouts, _bearer, self.headers
        )

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
        body = chat_body(request, stream=self.stream)
        if self.stream:
            await self._http.post_stream("/chat/completions", body, _ChatStream(self.name, emit))
            return
        answer = await self._http.post_json("/chat/completions", body)
        with wire_format_guard(self.name):
            await _emit_completion(answer, self.name, emit)

    async def list_models(self) -> list[str]:
        """The ids of the models the server offers (``GET /models``).

        Raises:
            ProviderError: a typed failure.
        """
        answer = await self._http.get_json("/models")
        data = answer.get("data") if isinstance(answer, Mapping) else None
        if not isinstance(data, list):
            raise MalformedResponse(
                f"{self.name}: /models answered without a data list", provider=self.name
            )
        return [str(m["id"]) for m in data if isinstance(m, Mapping) and "id" in m]

    async def _embed(self, request: PromptRequest, emit: EventSink) -> None:
        answer = await self._http.post_json("/embeddings", embeddings_body(request))
        with wire_format_guard(self.name):
            await emit_embeddings(answer, request, self.name, emit)

    async def embed(self, inputs: Sequence[str], *, model: str) -> list[list[float]]:
        """Embed ``inputs`` with ``model`` (``POST /embeddings``), in input order: a shortcut
        for an embedding request (``PromptRequest(embed=...)``) outside any pipeline.

        Raises:
            ProviderError: a typed failure.
        """
        request = PromptRequest(embed=inputs, params=GenerationParams(model=model))
        completion = await collect(self, request)
        return [list(vector) for vector in completion.embeddings]
