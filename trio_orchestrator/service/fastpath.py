"""``POST /v1/chat/completions`` as plain ASGI, answered before Starlette's stack.

The endpoint every client calls is served by :func:`chat_completions`, which reads the body,
answers and reports errors with the ASGI ``receive`` and ``send`` it is given: no routing, no
``Request`` or ``Response`` objects, no exception-handler wrapping, and no middleware layers
wrapping ``send`` and ``receive``. :class:`ChatFastPath` makes the checks of the layers it
skips itself: the API key and the body size limit through the same :class:`~.guard.Guard`,
the last-resort 500 through the same :func:`~.guard.answer_crash`.

Why: ``benchmarks/bench_service.py --repeats 3`` measured, in process, 121 µs of CPU per
request through Starlette's stack and route against 99 µs here; its wrk figures are in
``docs/service.md``. Starlette stays for every other path and method, and
for this one when CORS is configured (its middleware adds response headers) or under a
``root_path``, by :class:`ChatRoute`: the same code behind the same layers.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

import attrs

from ..errors import OrchestratorError
from ..events import Completion, StreamEvent, TextDelta
from ..types import new_request_id
from .chat import (
    ChatRequest,
    ChunkWriter,
    completion_body,
    completions_body,
    parse_chat_request,
)
from .choices import complete_choices, stream_choices, take_choices
from .errors import ApiError, map_exception
from .experiments import stamp_experiment
from .guard import (
    CatchAll,
    Guard,
    answer_crash,
    caller_of,
    request_id_header,
    request_id_of,
    send_error,
)
from .jsonenc import json_bytes
from .overhead import late_overhead_header, overhead_header, timing_of
from .state import ServiceState
from .streaming import (
    ClientGone,
    EventStream,
    PushedEventStream,
    complete_unless_gone,
    error_json,
)
from .validate import parse_json_object

__all__ = ["CHAT_PATH", "ChatFastPath", "ChatRoute", "chat_answer", "chat_completions"]

CHAT_PATH = "/v1/chat/completions"

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
Headers = list[tuple[bytes, bytes]]

_TRACE_HEADERS = (b"traceparent", b"tracestate")


@attrs.define(eq=False)
class ChatFastPath:
    """Serves ``POST /v1/chat/completions`` with the checks of the layers it skips.

    Args:
        state: the service's state.
        guard: the API keys and body size limit (the same object the layers use).
    """

    state: ServiceState
    guard: Guard

    @staticmethod
    def handles(scope: Scope) -> bool:
        """True for the requests this serves: ``POST /v1/chat/completions``."""
        return bool(
            scope["type"] == "http" and scope["path"] == CHAT_PATH and scope["method"] == "POST"
        )

    def __call__(
        self, scope: Scope, receive: Receive, send: Send
    ) -> Awaitable[PushedEventStream | None]:
        """Answer the request, or return the stream that answers it, for the caller to run
        (a coroutine that does: no frame of this call is held while it runs, and none of
        it for the whole life of a stream)."""
        request_id = new_request_id()
        error = self.guard.refusal(scope)
        if error is not None:
            return _refuse(send, error, request_id)
        return chat_answer(self.state, scope, receive, send, self.guard, request_id)


class ChatRoute:
    """The same endpoint as a Starlette route's ASGI application, behind the layers (with
    CORS configured, or under a ``root_path``)."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        state: ServiceState = scope["app"].state.service
        await chat_completions(state, scope, receive, send)


async def chat_completions(
    state: ServiceState,
    scope: Scope,
    receive: Receive,
    send: Send,
    guard: Guard | None = None,
    request_id: str | None = None,
) -> None:
    """``POST /v1/chat/completions``: streaming (server-sent events) or not.

    A client that disconnects before the answer is ready cancels its request and is sent
    nothing. Errors are answered in OpenAI's error shape; any other exception is logged and
    answered with a generic 500.

    Args:
        state: the service's state.
        scope: the request's ASGI scope, receive and send.
        guard: counts the body against its limit as it arrives (when no layer does).
        request_id: the pipeline request's id, which every response here carries in
            ``x-request-id``; ``None`` behind the layers, where
            :class:`~.guard.RequestIds` chose the id and tags the response itself.
    """
    stream = await chat_answer(state, scope, receive, send, guard, request_id)
    if stream is not None:
        await stream(scope, receive, send)


async def chat_answer(
    state: ServiceState,
    scope: Scope,
    receive: Receive,
    send: Send,
    guard: Guard | None = None,
    request_id: str | None = None,
) -> PushedEventStream | None:
    """:func:`chat_completions`, but a streamed chat (``n`` = 1) is returned, not run: the
    caller runs it, so that this frame is not held for the stream's whole life (the stream
    answers its own crashes)."""
    tag: Headers = []
    if request_id is None:
        request_id = request_id_of(scope)
    else:
        tag.append(request_id_header(request_id))
    try:
        answer = await _answer(state, scope, receive, guard, request_id, tag)
    except ClientGone:
        return None  # nobody is listening
    except Exception:
        await answer_crash(scope, send, started=False, extra=tag)
        return None
    if isinstance(answer, PushedEventStream):
        return answer
    if isinstance(answer, EventStream):
        await CatchAll(answer)(scope, receive, send)
        return None
    status, body, headers = answer
    timing = timing_of(scope)
    if timing is not None:
        headers.append(overhead_header(state, timing, CHAT_PATH, False))
    try:
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})
    except Exception:
        await answer_crash(scope, send, started=True)
    return None


async def _refuse(send: Send, error: ApiError, request_id: str) -> None:
    await send_error(send, error, (request_id_header(request_id),))


async def _answer(
    state: ServiceState,
    scope: Scope,
    receive: Receive,
    guard: Guard | None,
    request_id: str,
    tag: Headers,
) -> tuple[int, bytes, Headers] | EventStream | PushedEventStream:
    """The response: the completion or the error as status, body and headers (``tag``
    among them), or the stream.

    Raises:
        ClientGone: the client disconnected first.
    """
    try:
        pipeline = state.open_pipeline()
        chat, n = _parse(state, scope, await _read_body(receive, guard), request_id)
        chat, experiment = stamp_experiment(state, scope, chat)
        if experiment is not None:
            tag = [*tag, experiment]  # named before inference: a stream's headers go first
        if chat.stream:
            late = late_overhead_header(state, chat.prompt.timing, CHAT_PATH)
            if n > 1:
                produce = partial(stream_choices, pipeline, chat, n)
                return EventStream(produce, _chat_error, b"[DONE]", headers=tag, late_header=late)
            writer = ChunkWriter(request_id, chat.prompt.params.model, chat.include_usage)
            render = _ChatRender(writer)
            return PushedEventStream(
                pipeline,
                chat.prompt,
                render,
                _chat_error,
                b"[DONE]",
                headers=tag,
                late_header=late,
                buffer_bytes=state.sends.stream_buffer_bytes,
            )
        if n > 1:
            completions = await complete_choices(receive, pipeline, chat.prompt, n)
            return _json(200, completions_body(completions, chat.prompt.params.model), tag)
        completion = await complete_unless_gone(receive, pipeline, chat.prompt)
        return _json(200, completion_body(completion, chat.prompt.params.model), tag)
    except (ApiError, OrchestratorError) as exc:
        error = map_exception(exc)
        return _json(error.status, error.body(), tag, error.headers())


def _parse(
    state: ServiceState, scope: Scope, body: bytes, request_id: str
) -> tuple[ChatRequest, int]:
    """The request, and how many choices it asks for (``n``, see :mod:`.choices`)."""
    caller = caller_of(scope)
    extra: dict[str, Any] = {"request_id": request_id}
    timing = timing_of(scope)
    if timing is not None:
        extra["timing"] = timing
    if caller.priority_cap is not None:
        extra["priority"] = caller.priority_cap
    meta = caller.meta(_trace_headers(scope))
    fields, n = take_choices(parse_json_object(body))
    return parse_chat_request(fields, state.models, meta, **extra), n


def _trace_headers(scope: Scope) -> dict[str, str] | None:
    """The request's trace context headers (all that ``Caller.meta`` reads), if any."""
    found = None
    for name, value in scope["headers"]:
        if name in _TRACE_HEADERS:
            found = found or {}
            found[name.decode("latin-1")] = value.decode("latin-1")
    return found


async def _read_body(receive: Receive, guard: Guard | None) -> bytes:
    """The whole request body.

    Raises:
        ApiError: 413, the body grew past ``guard``'s limit.
        ClientGone: the client disconnected first.
    """
    chunks = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone
        chunk = message.get("body", b"")
        size += len(chunk)
        if guard is not None and size > guard.max_body_bytes:
            raise guard.too_large()
        chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def _json(
    status: int, data: Any, tag: Headers, headers: dict[str, str] | None = None
) -> tuple[int, bytes, Headers]:
    body = json_bytes(data)  # as the JSONResponse of the other endpoints renders it
    start = [(b"content-length", b"%d" % len(body)), (b"content-type", b"application/json")]
    start += tag
    if headers:
        start += [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]
    return status, body, start


class _ChatRender:
    """A chat stream's chunks (``n`` = 1), rendered in the worker's task as events come."""

    __slots__ = ("opened", "writer")

    def __init__(self, writer: ChunkWriter) -> None:
        self.writer = writer
        self.opened = False

    def event(self, event: StreamEvent) -> list[bytes]:
        """The opening chunk with the first event, then each event's chunk, if any."""
        chunk = self.writer.event(event)  # first: the opening chunk carries its members
        # The role chunk waits for the first upstream event: until something is sent, a
        # failure (an upstream 429, 400, 5xx…) is still answered with its own status.
        payloads = []
        if not self.opened:
            self.opened = True
            payloads.append(self.writer.first())
        if chunk is not None:
            payloads.append(chunk)
        return payloads

    def end(self, tail: str, completion: Completion) -> list[bytes]:
        """The held-back text, then the closing chunks."""
        payloads = self.event(TextDelta(tail)) if tail else []
        if not self.opened:  # an answer with no events at all still opens with the role
            self.opened = True
            payloads.append(self.writer.first())
        payloads += self.writer.last(completion)
        return payloads


def _chat_error(error: ApiError, _exc: BaseException) -> bytes:
    return error_json(error)
