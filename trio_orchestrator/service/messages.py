"""``POST /v1/messages`` and ``POST /v1/messages/count_tokens``: the Anthropic-compatible
ingress, for the ``anthropic`` SDK and the tools built on it pointed at the gateway.

A Messages request is translated into the gateway's own request
(:mod:`.messages_request`), run through the pipeline like any other — limits, budgets,
metrics, coalescing, routing and fallbacks apply, and any configured provider serves it —
and its answer rendered as an Anthropic ``message`` or event stream
(:mod:`.messages_answer`). Every error on these paths is in Anthropic's shape,
``{"type": "error", "error": {"type", "message"}}``, with the status the service's error
mapping gives it (an overloaded upstream is 529, as Anthropic says it).

A stream's status and headers go out with its first event, which is sent when the first of
the upstream's events arrives: an error before it keeps its real HTTP status; after it, it
is an ``error`` event in the stream, as Anthropic sends one.

``count_tokens`` answers an estimate
(:func:`~trio_orchestrator.routing.tokens.estimate_prompt_tokens`: tiktoken's
``cl100k_base`` when installed, else four characters per token), not the count of any
provider's tokenizer, and calls no upstream.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import attrs
import trio

from ..errors import OrchestratorError
from ..events import Done
from ..pipeline import Pipeline
from ..routing.tokens import estimate_prompt_tokens
from ..types import PromptRequest
from .errors import ApiError, map_exception
from .guard import caller_of
from .jsonenc import json_bytes
from .messages_answer import (
    MessageStreamWriter,
    anthropic_error_body,
    anthropic_status,
    frame_bytes,
    message_body,
)
from .messages_request import MessagesRequest, parse_count_tokens_request, parse_messages_request
from .overhead import Header, late_overhead_header, overhead_header, timed_fields, timing_of
from .state import ServiceState
from .streaming import ClientGone, complete_unless_gone
from .validate import parse_json_object

__all__ = ["COUNT_TOKENS_PATH", "MESSAGES_PATH", "CountTokensRoute", "MessagesRoute"]

logger = logging.getLogger("trio_orchestrator.service")

MESSAGES_PATH = "/v1/messages"
COUNT_TOKENS_PATH = "/v1/messages/count_tokens"

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
Headers = list[tuple[bytes, bytes]]
Answer = tuple[int, bytes, Headers]

_TRACE_HEADERS = (b"traceparent", b"tracestate")
_STREAM_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
]


class MessagesRoute:
    """``POST /v1/messages`` as a Starlette route's ASGI application (behind the service's
    layers: API key, body size limit, last-resort 500)."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        state: ServiceState = scope["app"].state.service
        try:
            answer = await _answer(state, scope, receive)
        except ClientGone:
            return  # nobody is listening
        if isinstance(answer, MessageEventStream):
            await answer(receive, send)
            return
        timing = timing_of(scope)
        if timing is not None:
            answer[2].append(overhead_header(state, timing, MESSAGES_PATH, False))
        await _send(send, answer)


class CountTokensRoute:
    """``POST /v1/messages/count_tokens``: ``{"input_tokens": N}``, an estimate."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        state: ServiceState = scope["app"].state.service
        try:
            body = parse_json_object(await _read_body(receive))
            prompt = parse_count_tokens_request(body, state.models)
            answer = _json(200, {"input_tokens": estimate_prompt_tokens(prompt)})
        except ClientGone:
            return
        except ApiError as exc:
            answer = _error(exc)
        await _send(send, answer)


async def _answer(
    state: ServiceState, scope: Scope, receive: Receive
) -> Answer | MessageEventStream:
    """The message or the error as status, body and headers, or the event stream.

    Raises:
        ClientGone: the client disconnected first.
    """
    request_id = None
    try:
        pipeline = state.open_pipeline()
        parsed = _parse(state, scope, await _read_body(receive))
        prompt = parsed.prompt
        request_id = prompt.request_id
        if parsed.stream:
            late = late_overhead_header(state, prompt.timing, MESSAGES_PATH)
            return MessageEventStream(pipeline, prompt, late)
        completion = await complete_unless_gone(receive, pipeline, prompt)
        body = message_body(completion, prompt.params.model)
        return _json(200, body, request_id)
    except (ApiError, OrchestratorError) as exc:
        return _error(exc, request_id)


def _parse(state: ServiceState, scope: Scope, body: bytes) -> MessagesRequest:
    caller = caller_of(scope)
    extra = timed_fields(scope, caller.request_fields())
    meta = caller.meta(_trace_headers(scope))
    return parse_messages_request(parse_json_object(body), state.models, meta, **extra)


def _trace_headers(scope: Scope) -> dict[str, str] | None:
    found = {
        name.decode("latin-1"): value.decode("latin-1")
        for name, value in scope["headers"]
        if name in _TRACE_HEADERS
    }
    return found or None


async def _read_body(receive: Receive) -> bytes:
    """The whole request body (the guard layer counts it against the size limit).

    Raises:
        ClientGone: the client disconnected first.
    """
    chunks = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


def _json(status: int, data: Any, request_id: str | None = None) -> Answer:
    body = json_bytes(data)
    headers = [(b"content-length", b"%d" % len(body)), (b"content-type", b"application/json")]
    if request_id is not None:
        headers.append((b"request-id", request_id.encode()))  # the SDK's `_request_id`
    return status, body, headers


def _error(exc: BaseException, request_id: str | None = None) -> Answer:
    """``exc`` as an Anthropic error response."""
    error = map_exception(exc)
    status, body, headers = _json(
        anthropic_status(error), anthropic_error_body(error, request_id), request_id
    )
    headers += [(k.lower().encode(), v.encode()) for k, v in _headers(error).items()]
    return status, body, headers


def _headers(error: ApiError) -> Mapping[str, str]:
    headers = dict(error.headers())
    if error.status == 401:
        headers["www-authenticate"] = "Bearer"
    return headers


async def _send(send: Send, answer: Answer) -> None:
    status, body, headers = answer
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


@attrs.define(eq=False)
class MessageEventStream:
    """A streamed answer: Anthropic's named events, the status with the first of them.

    Args:
        pipeline: runs the request.
        prompt: the request.
        late_header: makes one more header when the headers go out (with the first
            event, or with the error): ``x-gateway-overhead-ms``.
    """

    pipeline: Pipeline
    prompt: PromptRequest
    late_header: Callable[[], Header] | None = None
    _send: Send | None = attrs.field(default=None, init=False)
    _started: bool = attrs.field(default=False, init=False)
    _finished: bool = attrs.field(default=False, init=False)

    async def __call__(self, receive: Receive, send: Send) -> None:
        """Stream the answer; a client that disconnects cancels the request."""
        self._send = send
        with trio.CancelScope() as client:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_watch, receive, client)
                await self._run()
                nursery.cancel_scope.cancel()
        if not (client.cancelled_caught or self._finished):  # else nothing more to send
            await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def _run(self) -> None:
        prompt = self.prompt
        writer = MessageStreamWriter(prompt.request_id, prompt.params.model)
        try:
            async with self.pipeline.stream(prompt) as events:
                async for event in events:
                    if not isinstance(event, Done):
                        await self._emit(writer.event(event))
                assert events.completion is not None
                await self._emit(writer.last(events.completion))
        except (OrchestratorError, ApiError) as exc:
            if self._started:
                error = anthropic_error_body(map_exception(exc), prompt.request_id)
                await self._emit([("error", error)])
            else:
                self._started = self._finished = True  # the error is the whole response
                answer = _error(exc, prompt.request_id)
                if self.late_header is not None:
                    answer[2].append(self.late_header())
                await _send(self._out, answer)

    @property
    def _out(self) -> Send:
        assert self._send is not None
        return self._send

    async def _emit(self, frames: list[tuple[str, dict[str, Any]]]) -> None:
        if not frames:
            return
        if not self._started:
            self._started = True
            headers = [*_STREAM_HEADERS, (b"request-id", self.prompt.request_id.encode())]
            if self.late_header is not None:
                headers.append(self.late_header())
            await self._out({"type": "http.response.start", "status": 200, "headers": headers})
        body = b"".join(frame_bytes(name, data) for name, data in frames)
        await self._out({"type": "http.response.body", "body": body, "more_body": True})


async def _watch(receive: Receive, scope: trio.CancelScope) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
    scope.cancel()
