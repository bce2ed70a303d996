"""``POST /v1/chat/completions`` as plain ASGI, in front of Starlette's router.

The endpoint every client calls is served by :func:`chat_completions`, which reads the body,
answers and reports errors with the ASGI ``receive`` and ``send`` it is given: no routing, no
``Request`` or ``Response`` objects, no exception-handler wrapping. Measured with
``benchmarks/bench_service.py``, Starlette's share of such a request was about 50 µs of CPU,
a third of what the service added to hypercorn's own cost. Every other path and method,
streaming or not, still goes through Starlette; the layers in front (the last-resort 500, CORS
when configured, API keys and the body size limit) are the same for both.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

import attrs

from ..errors import OrchestratorError
from ..pipeline import Pipeline
from .chat import ChatRequest, ChunkWriter, completion_body, parse_chat_request
from .errors import ApiError, map_exception
from .guard import caller_of
from .state import ServiceState
from .streaming import ClientGone, Emit, EventStream, complete_unless_gone, error_json
from .validate import parse_json_object

__all__ = ["CHAT_PATH", "ChatFastPath", "ChatRoute", "chat_completions"]

CHAT_PATH = "/v1/chat/completions"

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

_TRACE_HEADERS = (b"traceparent", b"tracestate")


@attrs.define(eq=False)
class ChatFastPath:
    """Serves ``POST /v1/chat/completions`` itself; passes everything else to ``app``.

    Args:
        app: the rest of the application (Starlette's exception handling and router).
        state: the service's state.
    """

    app: Any
    state: ServiceState

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] == CHAT_PATH and scope["method"] == "POST":
            await chat_completions(self.state, scope, receive, send)
        else:
            await self.app(scope, receive, send)


class ChatRoute:
    """The same endpoint as a Starlette route's ASGI application (reached when the fast path
    is not: under a ``root_path``, for example)."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await chat_completions(scope["app"].state.service, scope, receive, send)


async def chat_completions(state: ServiceState, scope: Scope, receive: Receive, send: Send) -> None:
    """``POST /v1/chat/completions``: streaming (server-sent events) or not.

    A client that disconnects before the answer is ready cancels its request and is sent
    nothing. Errors are answered in OpenAI's error shape; anything else propagates to the
    layer that turns it into a 500.
    """
    try:
        pipeline = state.open_pipeline()
        chat = _parse(state, scope, await _read_body(receive))
        if not chat.stream:
            completion = await complete_unless_gone(receive, pipeline, chat.prompt)
            await _send_json(send, 200, completion_body(completion, chat.prompt.params.model))
            return
    except (ApiError, OrchestratorError) as exc:
        error = map_exception(exc)
        await _send_json(send, error.status, error.body(), _encode(error.headers()))
        return
    except ClientGone:
        return  # nobody is listening
    stream = EventStream(partial(_stream_chat, pipeline, chat), _chat_error, b"[DONE]")
    await stream(scope, receive, send)


def _parse(state: ServiceState, scope: Scope, body: bytes) -> ChatRequest:
    caller = caller_of(scope)
    extra = {} if caller.priority_cap is None else {"priority": caller.priority_cap}
    meta = caller.meta(_trace_headers(scope))
    return parse_chat_request(parse_json_object(body), state.models, meta, **extra)


def _trace_headers(scope: Scope) -> dict[str, str]:
    """The request's trace context headers (all that ``Caller.meta`` reads)."""
    return {
        name.decode("latin-1"): value.decode("latin-1")
        for name, value in scope["headers"]
        if name in _TRACE_HEADERS
    }


async def _read_body(receive: Receive) -> bytes:
    """The whole request body.

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
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


async def _send_json(
    send: Send, status: int, data: Any, headers: list[tuple[bytes, bytes]] | None = None
) -> None:
    # As JSONResponse renders it: compact, non-ASCII escaped (a lone surrogate in a prompt
    # must not become a 500 when echoed back).
    body = json.dumps(data, separators=(",", ":")).encode()
    start = [(b"content-length", b"%d" % len(body)), (b"content-type", b"application/json")]
    if headers:
        start += headers
    await send({"type": "http.response.start", "status": status, "headers": start})
    await send({"type": "http.response.body", "body": body})


def _encode(headers: dict[str, str]) -> list[tuple[bytes, bytes]]:
    return [
        (name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in headers.items()
    ]


async def _stream_chat(pipeline: Pipeline, chat: ChatRequest, emit: Emit) -> None:
    prompt = chat.prompt
    writer = ChunkWriter(prompt.request_id, prompt.params.model, chat.include_usage)
    async with pipeline.stream(prompt) as events:
        await emit(writer.first())
        async for event in events:
            chunk = writer.event(event)
            if chunk is not None:
                await emit(chunk)
        assert events.completion is not None
        for chunk in writer.last(events.completion):
            await emit(chunk)


def _chat_error(error: ApiError, _exc: BaseException) -> bytes:
    return error_json(error)
