"""A worker for Anthropic's Messages API (``/v1/messages``).

Answers are folded into the gateway's events in OpenAI's terms:

- usage: Anthropic's ``input_tokens`` counts only the prompt tokens after the last cache
  breakpoint; the whole prompt is ``input_tokens + cache_read_input_tokens +
  cache_creation_input_tokens`` (Anthropic's prompt-caching guide). :class:`~..events.Usage`
  holds that sum as ``input_tokens``, with ``cached_input_tokens`` (read) and
  ``cache_write_tokens`` (created) of it, so an OpenAI client sees ``prompt_tokens`` and
  ``prompt_tokens_details.cached_tokens`` as OpenAI reports them.
- ``thinking`` blocks: their text is passed on as the message's ``reasoning_content``
  (:class:`~..events.Passthrough`), the name DeepSeek's and vLLM's OpenAI-compatible
  servers use for a reasoning model's thoughts; signatures and ``redacted_thinking``
  blocks have no place in that format and are not carried.
- ``stop_reason``: mapped by :data:`STOP_REASONS` (``refusal`` is ``content_filter``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import attrs
import httpx

from ..config.secret import Secret
from ..errors import MalformedResponse, ProviderConnectionError
from ..events import Done, Passthrough, TextDelta, TextPieces, ToolCallDelta, ToolCallStart, Usage
from ..types import PromptRequest, ToolCall
from ._sse import ServerSentEvent, parse_event_data
from .anthropic_request import messages_body
from .base import EventSink
from .config import ANTHROPIC_VERSION
from .embeddings import cannot_embed
from .http import HTTPProvider, Timeouts, error_from_body, wire_format_guard
from .keys import KeyPool

if TYPE_CHECKING:
    from .config import ProviderConfig

__all__ = ["ANTHROPIC_VERSION", "AnthropicWorker", "messages_body"]


#: Anthropic's stop reasons, in OpenAI's words (others pass through unchanged).
STOP_REASONS: Mapping[str, str] = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "max_tokens": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}


def _x_api_key(key: Secret) -> dict[str, str]:
    return {"x-api-key": key.reveal()}


def _usage(raw: Mapping[str, Any]) -> Usage:
    """Anthropic's ``usage`` in the gateway's terms: every prompt token counted as input."""
    uncached = int(raw.get("input_tokens") or 0)
    read = int(raw.get("cache_read_input_tokens") or 0)
    written = int(raw.get("cache_creation_input_tokens") or 0)
    return Usage(
        uncached + read + written,
        int(raw.get("output_tokens") or 0),
        cached_input_tokens=read,
        cache_write_tokens=written,
    )


def _reasoning(text: str) -> Passthrough:
    return Passthrough(message={"reasoning_content": text})


@attrs.define(eq=False)
class _MessageStream:
    """Folds Messages API stream events into stream events."""

    provider: str
    emit: EventSink
    started: bool = False
    finished: bool = False
    _text: TextPieces = attrs.field(factory=TextPieces)
    _tools: dict[int, int] = attrs.field(factory=dict)  # content block index -> call index
    _calls: list[list[str]] = attrs.field(factory=list)
    _call_ids: list[tuple[str, str]] = attrs.field(factory=list)
    _prompt: Mapping[str, Any] = attrs.field(factory=dict)  # message_start's usage
    _usage: Usage | None = None
    _stop: str | None = None
    _model: str | None = None

    async def event(self, event: ServerSentEvent) -> None:
        data = parse_event_data(event.data, self.provider)
        kind = data.get("type", event.event)
        if kind == "error":
            raise error_from_body(data, provider=self.provider)
        if kind == "message_start":
            message = data.get("message") or {}
            self._model = message.get("model")
            self._prompt = message.get("usage") or {}
        elif kind == "content_block_start":
            await self._block_start(int(data.get("index", 0)), data.get("content_block") or {})
        elif kind == "content_block_delta":
            await self._delta(int(data.get("index", 0)), data.get("delta") or {})
        elif kind == "message_delta":
            await self._message_delta(data)
        elif kind == "message_stop":
            self.finished = True

    async def _block_start(self, index: int, block: Mapping[str, Any]) -> None:
        if block.get("type") == "thinking" and (thought := block.get("thinking")):
            self.started = True
            await self.emit(_reasoning(thought))
        if block.get("type") != "tool_use":
            return
        self.started = True
        call = len(self._calls)
        self._tools[index] = call
        self._calls.append([])
        self._call_ids.append((str(block.get("id", f"toolu_{call}")), str(block.get("name", ""))))
        await self.emit(ToolCallStart(call, *self._call_ids[call]))

    async def _delta(self, index: int, delta: Mapping[str, Any]) -> None:
        kind = delta.get("type")
        if kind == "text_delta" and (text := delta.get("text")):
            self.started = True
            self._text.append(text)
            await self.emit(TextDelta(text))
        elif kind == "thinking_delta" and (thought := delta.get("thinking")):
            # A token all the same: the first-token wait is over while the model thinks.
            self.started = True
            await self.emit(_reasoning(thought))
        elif kind == "input_json_delta" and (part := delta.get("partial_json")):
            call = self._tools.get(index)
            if call is None:
                raise MalformedResponse(
                    f"{self.provider}: input_json_delta for content block {index}, which is "
                    "not a tool_use block; retrying may help",
                    provider=self.provider,
                )
            self._calls[call].append(part)
            await self.emit(ToolCallDelta(call, part))

    async def _message_delta(self, data: Mapping[str, Any]) -> None:
        stop = (data.get("delta") or {}).get("stop_reason")
        if stop:
            self._stop = STOP_REASONS.get(stop, stop)
        usage = data.get("usage") or {}
        if "output_tokens" in usage:
            # message_delta's counts are cumulative; the prompt's may be there or only in
            # message_start.
            counts = {k: v for k, v in usage.items() if v is not None}
            self._usage = _usage({**self._prompt, **counts})
            await self.emit(self._usage)

    async def end(self) -> None:
        if self._stop is None:
            raise ProviderConnectionError(
                f"{self.provider or 'the provider'} ended the stream before the answer was "
                "complete (no stop_reason, no message_stop); retry",
                provider=self.provider,
            )
        calls = tuple(
            ToolCall(*self._call_ids[i], "".join(parts)) for i, parts in enumerate(self._calls)
        )
        await self.emit(Done(self._stop, self._text.text(), self._usage, calls, self._model))


async def _emit_message(answer: Mapping[str, Any], provider: str, emit: EventSink) -> None:
    if answer.get("type") == "error":
        raise error_from_body(answer, provider=provider)
    content = answer.get("content")
    if not isinstance(content, list):
        raise MalformedResponse(
            f"{provider or 'the provider'} answered without content; retrying may help",
            provider=provider,
        )
    text: list[str] = []
    thoughts: list[str] = []
    calls: list[ToolCall] = []
    for block in content:
        if block.get("type") == "thinking" and block.get("thinking"):
            thoughts.append(block["thinking"])
        elif block.get("type") == "text" and block.get("text"):
            text.append(block["text"])
            await emit(TextDelta(block["text"]))
        elif block.get("type") == "tool_use":
            call = ToolCall(str(block.get("id")), str(block.get("name")))
            call = attrs.evolve(call, arguments=json.dumps(block.get("input") or {}))
            await emit(ToolCallStart(len(calls), call.id, call.name))
            await emit(ToolCallDelta(len(calls), call.arguments))
            calls.append(call)
    if thoughts:
        await emit(_reasoning("".join(thoughts)))
    usage = _usage(answer.get("usage") or {})
    await emit(usage)
    stop = str(answer.get("stop_reason") or "end_turn")
    await emit(
        Done(STOP_REASONS.get(stop, stop), "".join(text), usage, tuple(calls), answer.get("model"))
    )


@attrs.define(eq=False, repr=False)
class AnthropicWorker:
    """Generates through Anthropic's Messages API.

    Args:
        client: the provider's shared ``httpx.AsyncClient`` (or ``httpx2``).
        base_url: the API root, without ``/v1`` (as the Anthropic SDK takes it).
        keys: the key pool.
        name: the provider's name, for errors and statistics.
        timeouts: connect, first-token, idle and total timeouts.
        stream: stream the answer with SSE (``False``: one JSON answer).
        max_tokens: sent when a request names none (the API requires a value).
        version: the ``anthropic-version`` header.
        headers: extra headers sent on every call (never put keys here; use ``keys``).
    """

    client: httpx.AsyncClient
    base_url: str = "https://api.anthropic.com"
    keys: KeyPool | None = None
    name: str = "anthropic"
    timeouts: Timeouts = attrs.field(factory=Timeouts)
    stream: bool = True
    max_tokens: int = 4096
    version: str = ANTHROPIC_VERSION
    headers: Mapping[str, str] = attrs.field(factory=dict)
    _http: HTTPProvider = attrs.field(init=False)

    def reconfigure(self, provider: ProviderConfig | None, /) -> list[str]:
        """Apply this provider's reloaded ``api_keys``; other changes need a restart."""
        return self._http.reconfigure(provider)

    def __attrs_post_init__(self) -> None:
        headers = {"anthropic-version": self.version, **self.headers}
        self._http = HTTPProvider(
            self.client, self.base_url, self.name, self.keys, self.timeouts, _x_api_key, headers
        )

    def __repr__(self) -> str:
        return f"AnthropicWorker(name={self.name!r}, base_url={self.base_url!r})"

    async def generate(self, request: PromptRequest, emit: EventSink) -> None:
        """Generate the answer to ``request``; see :class:`~trio_orchestrator.workers.ModelWorker`.

        Raises:
            UnsupportedParameter: a request member Anthropic cannot carry, or an embedding
                request (Anthropic has no embeddings); raised before any call.
            ProviderError: a typed failure.
        """
        if request.embed is not None:
            raise cannot_embed(request, self.name, "an Anthropic Messages provider")
        stream = self.stream and request.streaming  # a caller taking it whole: one answer
        body = messages_body(request, stream=stream, max_tokens=self.max_tokens, provider=self.name)
        if stream:
            await self._http.post_stream(
                "/v1/messages", body, _MessageStream(self.name, emit), request.timing
            )
            return
        answer = await self._http.post_json(
            "/v1/messages", body, request.timing, first_token_bounds_answer=not self.stream
        )
        with wire_format_guard(self.name):
            await _emit_message(answer, self.name, emit)
