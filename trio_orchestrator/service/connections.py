"""What the service does around every HTTP request, whatever its endpoint.

- :class:`Requests` counts the requests being answered, so that a shutdown knows when the
  last one has ended, and ends the rest cleanly when the grace period is nearly over
  (:func:`drain`): each in-flight request is cancelled in the pipeline, which its handler
  learns as a typed error and answers in its endpoint's own shape (a 503, or an error event
  and the stream's proper end), before the server has to cut the connection.
- :class:`BoundedBody` bounds the time a request's body has to arrive: past
  ``service.request_read_timeout`` the client gets 408 and the connection is closed, so that
  uploads that never finish cannot hold connections (and file descriptors) for ever. With a
  :class:`~.stalls.SendWatch`, it also bounds each write of the answer (``service.send_timeout``):
  a client that stops reading has its connection reset.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any, Protocol

import attrs
import trio

from ..pipeline import Pipeline
from ..types import RequestTiming
from .cache_header import CACHE_HEADER
from .errors import ApiError
from .guard import send_error
from .stalls import SendWatch, reset_connection, socket_stream_of

__all__ = ["BoundedBody", "Draining", "Requests", "drain", "drain_margin"]

logger = logging.getLogger("trio_orchestrator.service")

Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

_CLOSE = (b"connection", b"close")
_DISCONNECT: Message = {"type": "http.disconnect"}


@attrs.define(eq=False)
class Requests:
    """The HTTP requests the service is answering (not the idle connections).

    Attributes:
        active: requests whose handler is running.
        served: requests begun since the service started.
    """

    active: int = 0
    served: int = 0
    _idle: trio.Event = attrs.field(factory=trio.Event, init=False)

    def begin(self) -> None:
        """Count one more request (end it with :meth:`end`, in a ``finally``)."""
        self.active += 1
        self.served += 1

    def end(self) -> None:
        """Count one request fewer. (A pair of calls, not a context manager: this runs
        for every request, and a generator-based manager costs more than the count.)"""
        self.active -= 1
        if self.active == 0:
            self._idle.set()
            self._idle = trio.Event()

    async def wait_idle(self) -> None:
        """Return once no request is being answered."""
        if self.active:
            await self._idle.wait()


def drain_margin(grace: float) -> float:
    """Seconds before the end of the grace period at which the service ends the requests
    still running, so that each can still write its ending (a quarter of the grace period,
    at most one second)."""
    return min(1.0, grace / 4)


async def drain(requests: Requests, pipeline: Pipeline | None, grace: float) -> None:
    """Let the requests in flight finish, and end the rest cleanly near the grace period's end.

    Waits up to ``grace`` minus :func:`drain_margin` seconds for every request to end; then
    cancels those still in the pipeline (each counted cancelled; its client gets a 503, or
    an error event and the end of its stream) and waits up to the margin for their answers
    to go out.

    Args:
        requests: the requests being answered.
        pipeline: the pipeline, if it is open.
        grace: ``pipeline.grace_period``.
    """
    margin = drain_margin(grace)
    with trio.move_on_after(grace - margin):
        await requests.wait_idle()
    if not requests.active:
        return
    ended = 0
    if pipeline is not None:
        ended = pipeline.cancel_in_flight("the service shut down before the answer was ready")
    logger.warning("grace period over: ended %d request(s) still running", ended)
    with trio.move_on_after(margin):
        await requests.wait_idle()


class Draining(Protocol):
    """What says whether responses should close their connection (the service's state)."""

    @property
    def draining(self) -> bool:
        """True once a draining service asks clients to reconnect elsewhere."""


@attrs.define(eq=False)
class BoundedBody:
    """One request's ``receive`` and ``send``, with a deadline for its body.

    Until the body has arrived whole, ``receive`` waits no later than ``deadline``. Past it
    the client is answered 408 with ``Connection: close`` (if nothing was answered yet), the
    application is told the client has gone (``http.disconnect``), and what it sends after
    that is dropped. Responses sent while ``service.draining`` is true carry
    ``Connection: close`` (a draining service asks clients to reconnect elsewhere). With a
    ``timing``, the response's start carries :data:`~.cache_header.CACHE_HEADER` when a
    cache has marked the request by then.

    (One wrapper of ``send`` doing both, with no closure: each costs its bytes for the
    whole life of every stream.)

    Args:
        receive: the server's ``receive``.
        send: the server's ``send``.
        deadline: when the body must have arrived (:func:`trio.current_time` clock).
        service: whether responses should close their connection.
        watch: bounds each send's time (a client that stops reading loses its connection).
        timing: the request's timing, which caches mark (``x-cache``).
    """

    _receive: Receive
    _send: Send
    deadline: float
    service: Draining
    watch: SendWatch | None = None
    timing: RequestTiming | None = None
    _body_done: bool = attrs.field(default=False, init=False)
    _timed_out: bool = attrs.field(default=False, init=False)
    _started: bool = attrs.field(default=False, init=False)

    def receive(self) -> Awaitable[Message]:
        """The next request message; ``http.disconnect`` once the body is too late."""
        if self._body_done and not self._timed_out:
            # The server's own: no frame of ours held while a stream waits in it.
            return self._receive()
        return self._receive_body()

    async def _receive_body(self) -> Message:
        if self._timed_out:
            return dict(_DISCONNECT)
        with trio.CancelScope(deadline=self.deadline):
            message = await self._receive()
            if message["type"] != "http.request" or not message.get("more_body", False):
                self._body_done = True
            return message
        await self._too_late()
        return dict(_DISCONNECT)

    async def send(self, message: Message) -> None:
        """Send ``message`` unless the request has been answered 408 already."""
        if self._timed_out:
            return
        if message["type"] == "http.response.start":
            self._started = True
            message = self._marked(message)
        watch = self.watch
        if watch is None:
            await self._send(message)
            return
        watch.begin(self)
        try:
            await self._send(message)
        finally:
            watch.end(self)

    def _marked(self, start: Message) -> Message:
        """The response's start with the headers this adds (``x-cache``, closing)."""
        more = []
        timing = self.timing
        if timing is not None and timing.cache:
            more.append((CACHE_HEADER, timing.cache.encode()))
        if self.service.draining:
            more.append(_CLOSE)
        if not more:
            return start
        return {**start, "headers": [*start.get("headers", ()), *more]}

    def stalled(self) -> None:
        """A send has waited ``send_timeout`` for the client to read: reset the connection
        (the send then ends, and the application hears ``http.disconnect``)."""
        stream = socket_stream_of(self._send)
        if stream is not None:
            reset_connection(stream)

    async def _too_late(self) -> None:
        self._timed_out = True
        if self._started:
            return  # an answer has begun; leaving it unfinished closes the connection
        message = "the request body did not arrive in time; send it without pausing"
        error = ApiError(408, message, "invalid_request_error", "request_timeout")
        await send_error(self._send, error, [_CLOSE])
