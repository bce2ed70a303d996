"""OpenAI's Responses API, spoken natively: ``POST {base_url}/responses``.

A provider with ``responses_api = true`` gets a ``/v1/responses`` request
(:attr:`~trio_orchestrator.types.PromptRequest.responses_body`) as the client sent it, with two
rewrites only: ``model`` is the deployment's, and ``stream`` is ``true`` exactly when the client
streams (then the upstream's events are relayed one for one; else its one JSON answer is the
answer), ``stream_options`` kept only then.

The answer is folded twice over, into the event grammar the pipeline accounts with and into
what the client gets back verbatim, both as :class:`~trio_orchestrator.events.Passthrough`
members (so caching, coalescing, retries and shared answers carry them like any other):

- each upstream event, as ``Passthrough(response={RESPONSES_EVENT: {"event": name,
  "data": data}})``, followed by what it means for accounting: ``response.output_text.delta``
  → :class:`~..events.TextDelta`; a ``function_call`` item added → ``ToolCallStart``, its
  ``response.function_call_arguments.delta`` → ``ToolCallDelta``; the final response's
  ``usage`` → :class:`~..events.Usage` (cached and reasoning tokens), then ``Done``;
- the finished ``response`` object, as ``Passthrough(response={RESPONSES_OBJECT: ...})``:
  with the terminal event (``response.completed`` / ``response.incomplete``) of a stream, or
  first of all for a JSON answer.

``response.created``, ``response.queued`` and ``response.in_progress`` are held back until the
next event, so that the first event is the first token: an upstream failure before it
(``error``, ``response.failed``) raises a typed error, which retries, fallbacks and the HTTP
status of the client's answer can act on. A failure after it is relayed, then raised.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs

from ..errors import MalformedResponse, ProviderConnectionError, ProviderError
from ..events import Done, Passthrough, TextDelta, TextPieces, ToolCallDelta, ToolCallStart, Usage
from ..types import PromptRequest, ToolCall
from ._sse import ServerSentEvent, parse_event_data
from .base import EventSink
from .http import error_from_body

__all__ = [
    "RESPONSES_EVENT",
    "RESPONSES_OBJECT",
    "ResponsesStream",
    "emit_response",
    "responses_body",
    "responses_usage",
]

#: The ``Passthrough.response`` member carrying one upstream event, ``{"event", "data"}``.
RESPONSES_EVENT = "responses.event"
#: The ``Passthrough.response`` member carrying the upstream's finished ``response`` object.
RESPONSES_OBJECT = "responses.response"

# Events that only open the response: held until the first token (see the module docstring).
_ENVELOPE = frozenset(["response.created", "response.queued", "response.in_progress"])
_TERMINAL = frozenset(["response.completed", "response.incomplete"])
_INCOMPLETE = {"max_output_tokens": "length", "content_filter": "content_filter"}


def responses_body(request: PromptRequest) -> dict[str, Any]:
    """The ``/responses`` body for ``request``: the client's, ``model`` the deployment's.

    Args:
        request: a request with ``responses_body``.

    Returns:
        The JSON body (``stream`` kept only when true; ``stream_options`` only with it).
    """
    assert request.responses_body is not None
    body = dict(request.responses_body)
    body["model"] = request.params.model
    if body.get("stream") is True:
        return body
    body.pop("stream", None)
    body.pop("stream_options", None)
    return body


def _count(details: Any, name: str) -> int:
    return int(details.get(name) or 0) if isinstance(details, Mapping) else 0


def responses_usage(data: Any) -> Usage | None:
    """A Responses ``usage`` object as :class:`~..events.Usage` (its details in Chat's names,
    as ``Usage.details`` holds them)."""
    if not isinstance(data, Mapping):
        return None
    given = data.get("input_tokens_details")
    made = data.get("output_tokens_details")
    details = {
        k: v
        for k, v in data.items()
        if k not in ("input_tokens", "output_tokens", "total_tokens")
        and k not in ("input_tokens_details", "output_tokens_details")
    }
    if isinstance(given, Mapping):
        details["prompt_tokens_details"] = dict(given)
    if isinstance(made, Mapping):
        details["completion_tokens_details"] = dict(made)
    return Usage(
        int(data.get("input_tokens") or 0),
        int(data.get("output_tokens") or 0),
        cached_input_tokens=_count(given, "cached_tokens"),
        cache_write_tokens=_count(given, "cache_write_tokens"),
        reasoning_tokens=_count(made, "reasoning_tokens"),
        details=details,
    )


def _finish(response: Mapping[str, Any], calls: bool) -> str:
    if response.get("status") == "incomplete":
        reason = (response.get("incomplete_details") or {}).get("reason")
        return _INCOMPLETE.get(str(reason), str(reason or "length"))
    return "tool_calls" if calls else "stop"


def _failure(error: Any, provider: str) -> ProviderError:
    """The typed error of an ``error`` event or a failed response's ``error``."""
    return error_from_body(
        {"error": error if isinstance(error, Mapping) else {}}, provider=provider
    )


def _output_text(item: Mapping[str, Any]) -> str:
    return "".join(
        str(part.get("text") or "")
        for part in item.get("content") or ()
        if isinstance(part, Mapping) and part.get("type") == "output_text"
    )


async def emit_response(answer: Any, provider: str, emit: EventSink) -> None:
    """Fold a JSON ``response`` object into events: the object itself first (verbatim), then
    its text, function calls, usage and ``Done``.

    Raises:
        ProviderError: the response failed, or is not a response object.
    """
    if not isinstance(answer, Mapping) or not isinstance(answer.get("output"), list):
        if isinstance(answer, Mapping) and answer.get("error"):
            raise _failure(answer["error"], provider)
        raise MalformedResponse(
            f"{provider or 'the provider'} answered /responses without an output list; "
            "retrying may help",
            provider=provider,
        )
    if answer.get("status") == "failed":
        raise _failure(answer.get("error"), provider)
    await emit(Passthrough({RESPONSES_OBJECT: answer}))
    text: list[str] = []
    calls: list[ToolCall] = []
    for item in answer["output"]:
        if not isinstance(item, Mapping):
            continue
        if item.get("type") == "message" and (piece := _output_text(item)):
            text.append(piece)
            await emit(TextDelta(piece))
        elif item.get("type") == "function_call":
            call = ToolCall(str(item.get("call_id")), str(item.get("name")))
            call = attrs.evolve(call, arguments=str(item.get("arguments") or ""))
            await emit(ToolCallStart(len(calls), call.id, call.name))
            if call.arguments:
                await emit(ToolCallDelta(len(calls), call.arguments))
            calls.append(call)
    usage = responses_usage(answer.get("usage"))
    if usage is not None:
        await emit(usage)
    finish = _finish(answer, bool(calls))
    await emit(Done(finish, "".join(text), usage, tuple(calls), answer.get("model")))


@attrs.define(eq=False)
class ResponsesStream:
    """Folds the ``response.*`` events of a streamed response (a
    :class:`~.http.StreamParser`); see the module docstring."""

    provider: str
    emit: EventSink
    started: bool = False
    finished: bool = False
    _held: list[dict[str, Any]] = attrs.field(factory=list)
    _text: TextPieces = attrs.field(factory=TextPieces)
    _calls: dict[Any, int] = attrs.field(factory=dict)  # output_index -> tool call index
    _call_parts: list[tuple[str, str, list[str]]] = attrs.field(factory=list)
    _done: Done | None = None

    async def event(self, event: ServerSentEvent) -> None:
        """Take one SSE event: relay it, and emit what it means for accounting.

        Raises:
            ProviderError: the upstream reported a failure (``error``, ``response.failed``).
        """
        data = event.data
        if data[:1] != "{" and data.strip() == "[DONE]":  # not OpenAI's, but some servers'
            self.finished = True
            return
        parsed = parse_event_data(data, self.provider)
        kind = str(parsed.get("type") or event.event)
        relay = {"event": event.event if event.event != "message" else kind, "data": parsed}
        if kind in _ENVELOPE and not self.started:
            self._held.append(relay)
            return
        if kind == "error" or kind == "response.failed":
            error = parsed if kind == "error" else (parsed.get("response") or {}).get("error")
            failure = _failure(error, self.provider)
            if self.started:  # the client has the response so far: give it the failure too
                await self.emit(Passthrough({RESPONSES_EVENT: relay}))
            raise failure
        await self._start()
        if kind in _TERMINAL:
            await self._end(relay, parsed.get("response") or {})
            return
        await self.emit(Passthrough({RESPONSES_EVENT: relay}))
        await self._account(kind, parsed)

    async def _start(self) -> None:
        """The first token: release the held envelope events."""
        if self.started:
            return
        self.started = True
        held, self._held = self._held, []
        for relay in held:
            await self.emit(Passthrough({RESPONSES_EVENT: relay}))

    async def _account(self, kind: str, data: Mapping[str, Any]) -> None:
        if kind == "response.output_text.delta":
            if delta := str(data.get("delta") or ""):
                self._text.append(delta)
                await self.emit(TextDelta(delta))
        elif kind == "response.output_item.added":
            item = data.get("item") or {}
            if item.get("type") == "function_call":
                index = len(self._call_parts)
                self._calls[data.get("output_index")] = index
                call_id, name = str(item.get("call_id")), str(item.get("name"))
                self._call_parts.append((call_id, name, []))
                await self.emit(ToolCallStart(index, call_id, name))
                if arguments := str(item.get("arguments") or ""):
                    self._call_parts[index][2].append(arguments)
                    await self.emit(ToolCallDelta(index, arguments))
        elif kind == "response.function_call_arguments.delta":
            at = self._calls.get(data.get("output_index"))
            if at is not None and (delta := str(data.get("delta") or "")):
                self._call_parts[at][2].append(delta)
                await self.emit(ToolCallDelta(at, delta))

    async def _end(self, relay: dict[str, Any], response: Mapping[str, Any]) -> None:
        self.finished = True
        await self.emit(Passthrough({RESPONSES_EVENT: relay, RESPONSES_OBJECT: response}))
        usage = responses_usage(response.get("usage"))
        if usage is not None:
            await self.emit(usage)
        calls = tuple(ToolCall(i, n, "".join(a)) for i, n, a in self._call_parts)
        finish = _finish(response, bool(calls))
        self._done = Done(finish, self._text.text(), usage, calls, response.get("model"))

    async def end(self) -> None:
        """The stream ended: ``Done``, or an error if it ended before its terminal event.

        Raises:
            ProviderConnectionError: no ``response.completed`` / ``response.incomplete``.
        """
        if self._done is None:
            raise ProviderConnectionError(
                f"{self.provider or 'the provider'} ended the response stream before it was "
                "complete (no response.completed); retry",
                provider=self.provider,
            )
        await self.emit(self._done)
