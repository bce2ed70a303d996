"""``POST /v1/responses``: the ``response`` object and its ``response.*`` server-sent
events, built from the request's events (the request side is :mod:`.responses_request`).

A streamed answer goes, each event with its ``sequence_number``::

    response.created, response.in_progress,
    (per output item, in output order, opened as it first appears:)
        response.output_item.added
        message:        response.content_part.added, response.output_text.delta…
        function_call:  response.function_call_arguments.delta…
    (at the end, per item:)
        message:        response.output_text.done, response.content_part.done
        function_call:  response.function_call_arguments.done
        response.output_item.done
    response.completed | response.incomplete

An error after the first event ends the stream with ``response.failed`` (the response, with
its ``error``). Nothing goes out before the first upstream event, so an error before it is
an HTTP error with its own status.

An upstream that speaks the Responses API itself (a provider with ``responses_api = true``,
see :mod:`trio_orchestrator.workers.openai_responses`) answers for itself: its ``response``
object is the answer, verbatim, and its events are relayed one for one, with their names and
sequence numbers (the typed events that come with them are only counted). Which of the two an
answer is shows in its first event, so a fallback between a native and a translating provider
serves either.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from functools import partial
from typing import Any

import attrs
from starlette.requests import Request
from starlette.responses import Response

from ..config.model import Config
from ..errors import OrchestratorError
from ..events import (
    Completion,
    Passthrough,
    StreamEvent,
    TextDelta,
    ToolCallDelta,
    ToolCallStart,
    Usage,
)
from ..pipeline import Pipeline
from ..workers.openai_responses import RESPONSES_EVENT, RESPONSES_OBJECT
from .errors import ApiError, map_exception
from .guard import caller_of
from .jsonenc import json_bytes
from .overhead import late_overhead_header, overhead_headers, timed_fields
from .responses_request import ResponsesRequest, parse_responses_request
from .state import service_of
from .streaming import Emit, EventStream, complete_unless_gone, error_json
from .validate import parse_json_object

__all__ = [
    "NativeRelay",
    "ResponseWriter",
    "all_native",
    "named_event",
    "native_response",
    "responses",
    "stream_response",
    "usage_json",
]

RESPONSES_PATH = "/v1/responses"

# The events after which a response has ended (nothing more is sent after one).
_ENDED = frozenset(["response.completed", "response.incomplete", "response.failed", "error"])
# Finish reasons that leave a response incomplete, and the reason the reference gives.
_INCOMPLETE = {"length": "max_output_tokens", "content_filter": "content_filter"}


def _new_id(prefix: str) -> str:
    return prefix + os.urandom(12).hex()


def usage_json(usage: Usage | None) -> dict[str, Any] | None:
    """The Responses API's ``usage`` object."""
    if usage is None:
        return None
    return {
        "input_tokens": usage.input_tokens,
        "input_tokens_details": {
            "cached_tokens": usage.cached_input_tokens,
            "cache_write_tokens": usage.cache_write_tokens,
        },
        "output_tokens": usage.output_tokens,
        "output_tokens_details": {"reasoning_tokens": usage.reasoning_tokens},
        "total_tokens": usage.total_tokens,
    }


def _or(value: Any, default: Any) -> Any:
    return default if value is None else value


def _echo(echo: Mapping[str, Any]) -> dict[str, Any]:
    """The request's members as the response object repeats them, with their defaults."""
    reasoning = echo.get("reasoning") or {}
    return {
        "instructions": echo.get("instructions"),
        "max_output_tokens": echo.get("max_output_tokens"),
        "metadata": echo.get("metadata") or {},
        "model": echo.get("model"),
        "parallel_tool_calls": echo.get("parallel_tool_calls") is not False,
        "previous_response_id": None,
        "reasoning": {"effort": reasoning.get("effort"), "summary": None},
        "service_tier": echo.get("service_tier"),
        "temperature": _or(echo.get("temperature"), 1.0),
        "text": echo.get("text") or {"format": {"type": "text"}},
        "tool_choice": echo.get("tool_choice") or "auto",
        "tools": list(echo.get("tools") or []),
        "top_p": _or(echo.get("top_p"), 1.0),
        "truncation": echo.get("truncation") or "disabled",
        "user": echo.get("user"),
        "safety_identifier": echo.get("safety_identifier"),
        "prompt_cache_key": echo.get("prompt_cache_key"),
    }


@attrs.define(eq=False)
class _Item:
    """One output item: the message (text), or a function call."""

    id: str
    index: int
    call_id: str | None = None
    name: str = ""
    parts: list[str] = attrs.field(factory=list)

    @property
    def text(self) -> str:
        return "".join(self.parts)

    def json(self, status: str) -> dict[str, Any]:
        if self.call_id is None:
            part = {"type": "output_text", "text": self.text, "annotations": [], "logprobs": []}
            content = [part] if status != "in_progress" else []
            return {
                "id": self.id,
                "type": "message",
                "status": status,
                "role": "assistant",
                "content": content,
            }
        return {
            "id": self.id,
            "type": "function_call",
            "status": status,
            "call_id": self.call_id,
            "name": self.name,
            "arguments": self.text if status != "in_progress" else "",
        }


def _output(completion: Completion) -> list[dict[str, Any]]:
    """The output items of a finished request: its text as a message, then its calls."""
    items = []
    refusal = (completion.passthrough.message if completion.passthrough else {}).get("refusal")
    if completion.text or refusal or not completion.tool_calls:
        message = _Item(_new_id("msg_"), 0, parts=[completion.text]).json("completed")
        if refusal:
            message["content"] = [{"type": "refusal", "refusal": refusal}]
        items.append(message)
    for call in completion.tool_calls:
        item = _Item(_new_id("fc_"), len(items), call.id, call.name, [call.arguments])
        items.append(item.json("completed"))
    return items


@attrs.define(eq=False)
class ResponseWriter:
    """Builds one response object, whole or as its streamed events.

    Args:
        request: the parsed request (its id and the members the object echoes).
    """

    request: ResponsesRequest
    id: str = attrs.field(factory=lambda: _new_id("resp_"))
    created_at: int = attrs.field(factory=lambda: int(time.time()))
    _sequence: int = attrs.field(default=0, init=False)
    _items: list[_Item] = attrs.field(factory=list, init=False)
    _message: _Item | None = attrs.field(default=None, init=False)
    _calls: dict[int, _Item] = attrs.field(factory=dict, init=False)

    @property
    def started(self) -> bool:
        """Whether any event has been written."""
        return self._sequence > 0

    def response(
        self,
        status: str,
        output: list[dict[str, Any]],
        completion: Completion | None = None,
        error: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """The ``response`` object in ``status``."""
        reason = _INCOMPLETE.get(completion.finish_reason) if completion else None
        model = (completion.model if completion else None) or self.request.prompt.params.model
        return {
            "id": self.id,
            "object": "response",
            "created_at": self.created_at,
            "status": status,
            "completed_at": int(time.time()) if status == "completed" else None,
            "error": error,
            "incomplete_details": {"reason": reason} if reason else None,
            **_echo(self.request.echo),
            "model": model,
            "output": output,
            "usage": usage_json(completion.usage) if completion else None,
        }

    def body(self, completion: Completion) -> dict[str, Any]:
        """The finished ``response`` object (a non-streaming answer)."""
        status = "incomplete" if completion.finish_reason in _INCOMPLETE else "completed"
        return self.response(status, _output(completion), completion)

    def _event(self, kind: str, **members: Any) -> bytes:
        event = {"type": kind, "sequence_number": self._sequence, **members}
        self._sequence += 1
        return named_event(kind, event)

    def start(self) -> list[bytes]:
        """``response.created`` and ``response.in_progress``."""
        return [
            self._event(kind, response=self.response("in_progress", []))
            for kind in ("response.created", "response.in_progress")
        ]

    def _open(self, item: _Item) -> list[bytes]:
        self._items.append(item)
        added = {"output_index": item.index, "item": item.json("in_progress")}
        out = [self._event("response.output_item.added", **added)]
        if item.call_id is None:
            part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
            out.append(self._event("response.content_part.added", **self._where(item), part=part))
        return out

    @staticmethod
    def _where(item: _Item) -> dict[str, Any]:
        where: dict[str, Any] = {"item_id": item.id, "output_index": item.index}
        return where if item.call_id is not None else where | {"content_index": 0}

    def event(self, event: StreamEvent) -> list[bytes]:
        """The events for one of the request's events."""
        out: list[bytes] = []
        if isinstance(event, TextDelta) and event.text:
            if self._message is None:
                self._message = _Item(_new_id("msg_"), len(self._items))
                out += self._open(self._message)
            self._message.parts.append(event.text)
            where = self._where(self._message)
            delta = {"delta": event.text, "logprobs": []}
            out.append(self._event("response.output_text.delta", **where, **delta))
        elif isinstance(event, ToolCallStart):
            call = _Item(_new_id("fc_"), len(self._items), event.id, event.name)
            self._calls[event.index] = call
            out += self._open(call)
        elif isinstance(event, ToolCallDelta) and event.arguments:
            call = self._calls[event.index]
            call.parts.append(event.arguments)
            where = self._where(call)
            kind = "response.function_call_arguments.delta"
            out.append(self._event(kind, **where, delta=event.arguments))
        return out

    def _close(self, item: _Item) -> list[bytes]:
        where = self._where(item)
        if item.call_id is None:
            part = {"type": "output_text", "text": item.text, "annotations": [], "logprobs": []}
            out = [
                self._event("response.output_text.done", **where, text=item.text, logprobs=[]),
                self._event("response.content_part.done", **where, part=part),
            ]
        else:
            kind = "response.function_call_arguments.done"
            out = [self._event(kind, **where, name=item.name, arguments=item.text)]
        finished = {"output_index": item.index, "item": item.json("completed")}
        out.append(self._event("response.output_item.done", **finished))
        return out

    def finish(self, completion: Completion) -> list[bytes]:
        """Close every output item, then ``response.completed`` (or ``.incomplete``)."""
        if not self._items:  # an empty answer still has its (empty) message
            self._message = _Item(_new_id("msg_"), 0)
            out = self._open(self._message)
        else:
            out = []
        for item in self._items:
            out += self._close(item)
        status = "incomplete" if completion.finish_reason in _INCOMPLETE else "completed"
        output = [item.json("completed") for item in self._items]
        response = self.response(status, output, completion)
        out.append(self._event(f"response.{status}", response=response))
        return out

    def failed(self, error: ApiError) -> bytes:
        """``response.failed``, carrying ``error``."""
        code = "rate_limit_exceeded" if error.status == 429 else "server_error"
        detail = {"code": code, "message": error.message, "type": error.type, "param": error.param}
        output = [item.json("incomplete") for item in self._items]
        response = self.response("failed", output, error=detail)
        return self._event("response.failed", response=response)


def named_event(kind: str, data: Mapping[str, Any]) -> bytes:
    """One server-sent event, named as OpenAI names the Responses API's."""
    return b"event: " + kind.encode() + b"\ndata: " + json_bytes(data) + b"\n\n"


@attrs.define(eq=False)
class NativeRelay:
    """Relays the events of an upstream that speaks the Responses API (carried in
    ``Passthrough`` events), and ends its stream with ``response.failed`` if it breaks."""

    started: bool = False
    _sequence: int = -1
    _response: Mapping[str, Any] = attrs.field(factory=dict)
    _ended: bool = False

    def relay(self, event: Passthrough) -> bytes | None:
        """The upstream's event, as it sent it; ``None`` when ``event`` carries none."""
        relayed = event.response.get(RESPONSES_EVENT)
        if relayed is None:
            return None
        self.started = True
        data = relayed["data"]
        self._sequence = data.get("sequence_number", self._sequence + 1)
        self._response = data.get("response") or self._response
        self._ended = self._ended or data.get("type") in _ENDED
        return named_event(relayed["event"], data)

    def failed(self, error: ApiError) -> bytes | None:
        """``response.failed`` after the upstream's last event, carrying ``error``; ``None``
        when the upstream's own stream already ended (its failure was relayed)."""
        if self._ended:
            return None
        code = "rate_limit_exceeded" if error.status == 429 else "server_error"
        detail = {"code": code, "message": error.message}
        response = {**self._response, "status": "failed", "error": detail}
        failed = {"type": "response.failed", "sequence_number": self._sequence + 1}
        return named_event("response.failed", failed | {"response": response})


def native_response(completion: Completion) -> Mapping[str, Any] | None:
    """The upstream's own ``response`` object, when a native upstream answered."""
    passthrough = completion.passthrough
    return None if passthrough is None else passthrough.response.get(RESPONSES_OBJECT)


def all_native(config: Config) -> bool:
    """Whether every provider speaks the Responses API (``responses_api = true``): then
    nothing needs translating, and what only a native upstream can serve is forwarded."""
    providers = config.providers.providers if config.providers is not None else ()
    return bool(providers) and all(p.kind == "openai" and p.responses_api for p in providers)


async def stream_response(pipeline: Pipeline, request: ResponsesRequest, emit: Emit) -> None:
    """Send the request's answer as ``response.*`` events: a native upstream's own, else
    built from the request's events.

    Raises:
        OrchestratorError: the request failed before its first event (the caller answers
            with the error's HTTP status).
    """
    writer = ResponseWriter(request)
    native = NativeRelay()
    try:
        async with pipeline.stream(request.prompt) as events:
            async for event in events:
                if isinstance(event, Passthrough) and (frame := native.relay(event)):
                    await emit(frame)
                elif not native.started:
                    # The first upstream event begins the response (and sends the headers).
                    out = [] if writer.started else writer.start()
                    for payload in out + writer.event(event):
                        await emit(payload)
            assert events.completion is not None
            if not native.started:
                for payload in writer.finish(events.completion):
                    await emit(payload)
    except (OrchestratorError, ApiError) as exc:
        if native.started:
            if (frame := native.failed(map_exception(exc))) is not None:
                await emit(frame)
            return
        if not writer.started:
            raise
        await emit(writer.failed(map_exception(exc)))


def _error_event(error: ApiError, _exc: BaseException) -> bytes:
    return b"data: " + error_json(error) + b"\n\n"


async def responses(request: Request) -> Response:
    """``POST /v1/responses``: a response object, or its ``response.*`` events."""
    state = service_of(request)
    pipeline = state.open_pipeline()
    caller = caller_of(request.scope)
    extra = timed_fields(request.scope, caller.request_fields())
    body = parse_json_object(await request.body())
    meta = caller.meta(request.headers)
    native = all_native(state.config)
    parsed = parse_responses_request(body, state.models, meta, native=native, **extra)
    if parsed.stream:
        produce = partial(stream_response, pipeline, parsed)
        late = late_overhead_header(state, parsed.prompt.timing, RESPONSES_PATH)
        return EventStream(produce, _error_event, frame=bytes, late_header=late)
    completion = await complete_unless_gone(request.receive, pipeline, parsed.prompt)
    answer = native_response(completion) or ResponseWriter(parsed).body(completion)
    content = json_bytes(answer)
    headers = overhead_headers(state, request.scope, RESPONSES_PATH)
    return Response(content, media_type="application/json", headers=headers)
