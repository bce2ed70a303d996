"""Noticing a client that went away, and server-sent event responses.

A client that disconnects cancels its request at once. A pipeline request is started with
:meth:`~trio_orchestrator.pipeline.Pipeline.try_start` and the handler itself then reads
``receive()`` until the request's end cancels that read (:func:`complete_unless_gone`): one
task per request, no nursery. Other work runs in a nursery next to a task that waits for
``http.disconnect`` and then cancels the nursery (:func:`cancel_on_disconnect`). Either way
the request ends *cancelled* and its worker is cancelled at its next checkpoint.

A streamed chat is sent by :class:`PushedEventStream`: the worker's task renders each event
into a small bounded buffer (it never waits for the client), and the handler's task sends it,
waiting for ``http.disconnect`` in between (three tasks per open stream with hypercorn's two;
:class:`EventStream` adds a watcher task).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Protocol, TypeVar

import outcome
import trio
from starlette.responses import Response

from ..errors import OrchestratorError
from ..events import Completion, StreamEvent
from ..pipeline import PendingRequest, Pipeline
from ..types import PromptRequest
from .errors import ApiError, map_exception
from .guard import answer_crash, send_error
from .jsonenc import json_bytes

__all__ = [
    "ClientGone",
    "Emit",
    "EventStream",
    "PushRender",
    "PushedEventStream",
    "cancel_on_disconnect",
    "complete_unless_gone",
]

logger = logging.getLogger("trio_orchestrator.service")

T = TypeVar("T")
Emit = Callable[[bytes], Awaitable[None]]
ErrorEvent = Callable[[ApiError, BaseException], bytes]


class ClientGone(Exception):
    """The client disconnected before the answer was ready."""


async def _watch(receive: Callable[[], Awaitable[dict[str, Any]]], scope: trio.CancelScope) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            scope.cancel()
            return


async def _watch_output(
    receive: Callable[[], Awaitable[dict[str, Any]]], scope: trio.CancelScope, out: _Output
) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            out.gone = True
            scope.cancel()
            return


async def cancel_on_disconnect(receive: Any, work: Callable[[], Awaitable[T]]) -> T:
    """Run ``work``, cancelling it if the client disconnects meanwhile.

    ``work``'s own exceptions propagate unchanged (not wrapped in an exception group).

    Raises:
        ClientGone: the client disconnected (``work`` was cancelled).
    """
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_watch, receive, nursery.cancel_scope)
        result = await outcome.acapture(work)
        gone = nursery.cancel_scope.cancel_called
        nursery.cancel_scope.cancel()
    if gone:
        raise ClientGone
    return result.unwrap()


async def complete_unless_gone(
    receive: Callable[[], Awaitable[Mapping[str, Any]]], pipeline: Pipeline, request: PromptRequest
) -> Completion:
    """Run ``request`` through ``pipeline`` (admitted as by ``try_submit``) and return its
    completion, cancelling it if the client disconnects meanwhile.

    Call it once the request body has been read: the only message ``receive`` has left to
    give is ``http.disconnect``. The request's end cancels the wait for it.

    Raises:
        ClientGone: the client disconnected (the request is counted cancelled, unless it
            ended in that same instant).
        OrchestratorError: what the request ended with, as ``try_submit`` raises it.
    """
    gone = False
    with trio.CancelScope() as ended:
        # Answered whole: a fault mid-answer may be retried.
        pending = pipeline.try_start(request.streamed(False), ended.cancel)
        try:
            while not pending.done:
                if (await receive())["type"] == "http.disconnect":
                    gone = True
                    pending.cancel("the client disconnected")
        finally:
            # Left by ended's cancellation (it has ended), or cancelled from outside.
            pending.cancel("the caller stopped waiting")
    if gone:
        raise ClientGone
    return pending.result()


class PushRender(Protocol):
    """Turns a streamed request's events into event payloads (see :class:`PushedEventStream`)."""

    def event(self, event: StreamEvent) -> Sequence[bytes]:
        """The payloads for one event as the worker makes it (none, one or more)."""

    def end(self, tail: str, completion: Completion) -> Sequence[bytes]:
        """The payloads that close a completed stream: ``tail`` is text the filters held
        back to the end."""


class PushedEventStream:
    """A server-sent event response whose events the worker's task renders as they come, and
    the handler's task sends.

    One task fewer per stream than :class:`EventStream` (no task waiting for the client to
    go away): the request is started with
    :meth:`~trio_orchestrator.pipeline.Pipeline.try_start_stream`, its events are rendered in
    the worker's task into a small buffer, and the handler's task sends what the buffer
    holds, in one write per batch, and otherwise reads ``receive()`` (so a client that
    disconnects cancels the request at once) until a new event or the request's end
    interrupts that read. It then writes the stream's end: ``render.end``'s payloads and the
    trailer; or the error, with its own status if nothing was sent yet, else as one more
    event (``error_event``) before the trailer.

    The worker's task never waits for the client: it holds a provider's inference slot, and
    a client that stops reading must not keep it (hypercorn's socket writes ignore
    cancellation, so not even the request's deadline would free it). When what the buffer
    holds, with the batch being sent, would pass ``buffer_bytes``, the client is not keeping
    up: the request is cancelled there and then (counted once, its slot freed) and the
    client gets what was held, then the error event and the trailer. A write that waits
    longer than ``service.send_timeout`` resets the connection (:mod:`.stalls`).

    Args:
        pipeline: runs the request.
        request: the request.
        render: turns its events into payloads.
        error_event: renders an error as an event payload.
        trailer: sent after the stream's last event (e.g. ``[DONE]``), after an error too.
        headers: further response headers.
        late_header: makes one more header when the headers go out (as for
            :class:`EventStream`).
        buffer_bytes: the most this stream holds for a client that is behind
            (``service.stream_buffer_bytes``); one event larger than it still goes out
            when nothing else is held.
    """

    __slots__ = (
        "_buffer",
        "_held",
        "_out",
        "_pending",
        "_waiting",
        "buffer_bytes",
        "error_event",
        "extra_headers",
        "late_header",
        "pipeline",
        "render",
        "request",
        "trailer",
    )

    def __init__(
        self,
        pipeline: Pipeline,
        request: PromptRequest,
        render: PushRender,
        error_event: ErrorEvent,
        trailer: bytes | None = None,
        *,
        headers: Sequence[tuple[bytes, bytes]] = (),
        late_header: Callable[[], tuple[bytes, bytes]] | None = None,
        buffer_bytes: int = 65_536,
    ) -> None:
        self.pipeline = pipeline
        self.request: PromptRequest | None = request
        self.render = render
        self.error_event = error_event
        self.trailer = trailer
        self.extra_headers = headers
        self.late_header = late_header
        self.buffer_bytes = buffer_bytes
        self._out: _Output | None = None
        self._pending: PendingRequest | None = None
        self._buffer: list[bytes] = []
        self._held = 0
        """Bytes rendered and not yet sent: the buffer's and the batch being sent's."""
        self._waiting: trio.CancelScope | None = None
        """The handler's read of ``receive()``, which a new event or the end interrupts."""

    @property
    def started(self) -> bool:
        """True once the response has begun (its status and headers were sent)."""
        return self._out is not None and self._out.started

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        """Answer the request. Any other exception than the request's own is logged and
        answered with a generic 500 if nothing was sent yet, here: a wrapper that caught it
        would hold its frame for the stream's whole life."""
        try:
            out = self._out = _Output(send, self.extra_headers, late_header=self.late_header)
            assert self.request is not None, "a pushed event stream is answered once"
            pending = self._pending = self.pipeline.try_start_stream(
                self.request, self._push, self._wake
            )
            # The request is the pipeline's now: this stream keeps no reference to it (nor
            # to its messages) while the answer streams.
            self.request = None
            gone = False
            try:
                # Sends the events as they come until the request has ended and all are
                # sent. One loop in this frame, not a coroutine of its own: every frame in
                # this chain is held for the whole life of the stream.
                while not out.gone:
                    if self._buffer:
                        await self._flush(pending, out)
                        continue
                    if pending.done:
                        break
                    message = None
                    with trio.CancelScope() as self._waiting:
                        message = await receive()
                    self._waiting = None
                    if message is not None and message["type"] == "http.disconnect":
                        pending.cancel("the client disconnected")
                        gone = True
                        break
            finally:
                # Left at the request's end, or cancelled from outside (then this ends it).
                pending.cancel("the caller stopped waiting")
            if gone or out.gone:
                return  # no one to finish for
            await self._end(pending, out)
        except Exception:
            await answer_crash(scope, send, started=self.started)

    async def _flush(self, pending: PendingRequest, out: _Output) -> None:
        """Send what the buffer holds, in one write."""
        batch, self._buffer = self._buffer, []
        try:
            await out.emit_all(batch)
        except Exception:
            # The connection is gone: nobody reads this stream any more (nor its error).
            out.gone = True
            pending.cancel("the client disconnected")
        finally:
            self._held -= sum(map(len, batch))

    def _wake(self) -> None:
        """Interrupt the handler's read of ``receive()``: an event came, or the end."""
        if self._waiting is not None:
            self._waiting.cancel()

    async def _push(self, event: StreamEvent) -> None:
        """The request's sink, in the worker's task: render into the buffer, never wait."""
        pending = self._pending
        assert pending is not None
        payloads = self.render.event(event)
        if not payloads:
            return
        size = sum(map(len, payloads))
        if self._held and self._held + size > self.buffer_bytes:
            # The client reads slower than the answer comes (or not at all): end the
            # request now rather than hold its slot, or its bytes, for the client.
            pending.cancel(
                "the client did not read the stream as fast as it came "
                "(service.stream_buffer_bytes)"
            )
            return
        self._buffer += payloads
        self._held += size
        self._wake()

    async def _end(self, pending: PendingRequest, out: _Output) -> None:
        try:
            completion = pending.result()
        except (OrchestratorError, ApiError) as exc:
            error = map_exception(exc)
            if not out.started:
                await send_error(out.send, error, out.headers())
                return
            payloads = [self.error_event(error, exc)]
        else:
            payloads = list(self.render.end(pending.tail, completion))
        if self.trailer is not None:
            payloads.append(self.trailer)
        await out.emit_all(payloads)
        await out.finish()


def _frame(data: bytes) -> bytes:
    return b"data: " + data + b"\n\n"


_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
]


class EventStream(Response):
    """A server-sent event response: ``data: <payload>`` per event, each ended by a blank line.

    ``produce(emit)`` sends events with ``await emit(payload)``. An error it raises before its
    first event is answered with that error's status, like any other request; after it, the
    error goes out as one more event (``error_event`` renders it), then the trailer. A
    client that disconnects cancels ``produce``.

    Args:
        produce: writes the stream.
        error_event: renders an error as an event payload.
        trailer: sent after a stream that ended without error (e.g. ``[DONE]``).
        headers: further response headers, sent with the stream or with its error.
        frame: turns a payload into the bytes of its event (default ``data: <payload>``
            and a blank line); ``bytes`` sends payloads that are whole events already
            (named ones, for example).
        late_header: makes one more header when the headers go out (with the first event,
            or with the error): ``x-gateway-overhead-ms``, whose value is known only then.
    """

    def __init__(
        self,
        produce: Callable[[Emit], Awaitable[None]],
        error_event: ErrorEvent,
        trailer: bytes | None = None,
        *,
        headers: Sequence[tuple[bytes, bytes]] = (),
        frame: Callable[[bytes], bytes] | None = None,
        late_header: Callable[[], tuple[bytes, bytes]] | None = None,
    ) -> None:
        self.produce = produce
        self.error_event = error_event
        self.trailer = trailer
        self.extra_headers = headers
        self.frame = frame or _frame
        self.late_header = late_header
        self.status_code = 200
        self.background = None

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        out = _Output(send, self.extra_headers, self.frame, self.late_header)
        # The nursery's own scope is the one a disconnect cancels: no second scope per
        # stream (each costs a scope, its status and their sets, held all stream long).
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_watch_output, receive, nursery.cancel_scope, out)
            await self._run(out)
            nursery.cancel_scope.cancel()
        if not out.gone:  # else the client went away: no one to finish for
            await out.finish()

    async def _run(self, out: _Output) -> None:
        try:
            await self.produce(out.emit)
        except (OrchestratorError, ApiError) as exc:
            error = map_exception(exc)
            if not out.started:
                await send_error(out.send, error, out.headers())
                out.finished = True
                return
            await out.emit(self.error_event(error, exc))
        # After an error event too: a client reading to `[DONE]` sees the stream's end.
        if self.trailer is not None:
            await out.emit(self.trailer)


class _Output:
    """The response side of an event stream: headers go out with the first event."""

    __slots__ = ("extra", "finished", "frame", "gone", "late_header", "send", "started")

    def __init__(
        self,
        send: Any,
        extra: Sequence[tuple[bytes, bytes]] = (),
        frame: Callable[[bytes], bytes] = _frame,
        late_header: Callable[[], tuple[bytes, bytes]] | None = None,
    ) -> None:
        self.send = send
        self.extra = extra
        self.frame = frame
        self.late_header = late_header
        self.started = False
        self.finished = False
        self.gone = False
        """The client disconnected."""

    async def emit(self, data: bytes) -> None:
        await self._start()
        await self.send({"type": "http.response.body", "body": self.frame(data), "more_body": True})

    async def emit_all(self, payloads: Sequence[bytes]) -> None:
        """Send the events of ``payloads`` in one write."""
        await self._start()
        body = b"".join(map(self.frame, payloads))
        await self.send({"type": "http.response.body", "body": body, "more_body": True})

    def headers(self) -> Sequence[tuple[bytes, bytes]]:
        """The further headers, the late one made now."""
        if self.late_header is None:
            return self.extra
        return [*self.extra, self.late_header()]

    async def _start(self) -> None:
        if not self.started:
            self.started = True
            extra = self.headers()
            headers = [*_HEADERS, *extra] if extra else _HEADERS
            await self.send({"type": "http.response.start", "status": 200, "headers": headers})

    async def finish(self) -> None:
        if not self.finished:
            await self._start()
            await self.send({"type": "http.response.body", "body": b"", "more_body": False})


def error_json(error: ApiError) -> bytes:
    """An error event in OpenAI's shape."""
    return json_bytes(error.body())
