"""The service's own HTTP/1.1 server: Trio sockets, httptools' parser, the ASGI app called inline.

``[service] server = "httptools"`` (the default) serves plain HTTP/1.1 with this module;
hypercorn still runs the application's lifespan, and takes over a connection whose first
request asks for a WebSocket (or any ``Upgrade``) or that opens with HTTP/2's preface.

Why: a proxied request is two HTTP exchanges, and hypercorn's side of one cost more than the
whole rest of the gateway. ``python benchmarks/bench_service.py --repeats 3`` answers a bare
ASGI app at 28,876 requests a second under this server against 2,231 under hypercorn's Trio
worker (docs/service.md, "The HTTP server"). The difference is structure, not parsing
alone: hypercorn runs each request in a task of its own, fed by the connection's reader
through a memory channel, takes a lock for every write and starts a new idle-timeout task
twice a request; here one task per connection reads a request, calls the application in
that same task (its ``receive`` reads the socket itself), and writes each answer's head with
its first body in one ``send_all``.

What a client sees is hypercorn's behaviour (tests/test_http_server.py runs every case on
both; two cases hypercorn gets wrong are marked there, a request framed by both
``Content-Length`` and ``Transfer-Encoding`` and a WebSocket handshake that cannot succeed,
each refused and closed here): keep-alive with ``service.keep_alive_timeout`` as the idle
time and the time to send a request's headers, pipelined requests answered in order,
``Expect: 100-continue``, ``Connection: close`` and HTTP/1.0, a 400 for what the parser
rejects and a 431 for headers over :data:`MAX_HEADER_BYTES`, both followed by a close; a
response header with a line break in it is never written (a 500 instead, as h11 does). An
answer begun before its request's body was read whole (a 401, a 413) closes the connection
after it, lingering a moment so that the client reads the answer rather than a reset. A
shutdown closes idle connections at once and the others after their answer, within
hypercorn's ``graceful_timeout``.
"""

from __future__ import annotations

import logging
import re
import time
import urllib.parse
from collections.abc import Awaitable, Callable, Coroutine, MutableMapping
from functools import partial
from http import HTTPStatus
from typing import Any

import httptools
import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.config import Sockets
from hypercorn.trio.lifespan import Lifespan
from hypercorn.trio.tcp_server import TCPServer
from hypercorn.trio.worker_context import WorkerContext
from hypercorn.typing import AppWrapper
from hypercorn.utils import repr_socket_addr

from .errors import ApiError
from .jsonenc import json_bytes

__all__ = ["MAX_HEADER_BYTES", "serve_http1"]

logger = logging.getLogger("trio_orchestrator.service")

Message = MutableMapping[str, Any]
App = Callable[
    [dict[str, Any], Callable[[], Awaitable[Message]], Callable[[Message], Awaitable[None]]],
    Awaitable[None],
]

MAX_RECV = 65536
MAX_HEADER_BYTES = 65536
"""The most a request's line and headers may take; past it the answer is 431."""
MAX_PIPELINED = 1_048_576
"""Bytes of later requests read while one is being answered before reading pauses."""
LINGER = 2.0
"""Seconds a connection closed with its request's body unread goes on reading (and dropping)
what the client still sends, so that the client reads the answer rather than a reset."""

_H2_PREFACE = b"PRI * HTTP/2.0"
_DISCONNECT = {"type": "http.disconnect"}
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_NO_BODY_STATUSES = frozenset({204, 304})
_ASGI = {"version": "3.0", "spec_version": "2.3"}
_VERSIONS = frozenset({"1.1", "1.0"})
_UNSAFE_VALUE = re.compile(rb"[\r\n\0]")
_UNSAFE_NAME = re.compile(rb"[\r\n\0: ]")


def _status_line(status: int) -> bytes:
    try:
        phrase = HTTPStatus(status).phrase.encode()
    except ValueError:
        phrase = b""
    return b"HTTP/1.1 %d %s\r\n" % (status, phrase)


_STATUS_LINES = {status.value: _status_line(status.value) for status in HTTPStatus}


class _Clock:
    """The ``date`` header, made once a second."""

    __slots__ = ("header", "second")

    def __init__(self) -> None:
        self.second = 0
        self.header = b""

    def date(self) -> bytes:
        now = int(time.time())
        if now != self.second:
            self.second = now
            stamp = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(now))
            self.header = b"date: " + stamp.encode() + b"\r\n"
        return self.header


class _Request:
    """One request as the parser reads it."""

    __slots__ = (
        "body",
        "complete",
        "continue_sent",
        "delivered",
        "expect_continue",
        "headers",
        "headers_done",
        "keep_alive",
        "method",
        "size",
        "url",
        "version",
    )

    def __init__(self) -> None:
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.headers_done = False
        self.size = 0  # of the request line's target and the headers
        self.body: list[bytes] = []
        self.complete = False
        self.delivered = False  # the body's last message has been received
        self.method = b""
        self.version = "1.1"
        self.keep_alive = True
        self.expect_continue = False
        self.continue_sent = False


class _Server:
    """What every connection shares: the app, the settings, and the shutdown."""

    def __init__(
        self,
        app: App,
        wrapped: AppWrapper,
        config: HypercornConfig,
        context: WorkerContext,
        state: dict[str, Any],
    ) -> None:
        self.app = app
        self.wrapped = wrapped
        self.config = config
        self.context = context
        self.state = state
        self.keep_alive_timeout: float = config.keep_alive_timeout
        self.root_path: str = config.root_path
        self.clock = _Clock()
        self.terminating = False
        self.idle: set[trio.CancelScope] = set()

    def terminate(self) -> None:
        """Close idle connections now, the others after their current answer."""
        self.terminating = True
        for scope in self.idle:
            scope.cancel()

    def handle(self, stream: trio.SocketStream) -> Coroutine[Any, Any, None]:
        """Serve one connection (a coroutine returned, not awaited: no frame of its own)."""
        return _Connection(self, stream).run()


class _Connection:
    """One client connection: reads requests, calls the application, writes its answers.

    ``send`` is a bound method of this object, whose ``stream`` is the socket stream
    (:func:`~.stalls.socket_stream_of` finds it there to reset a stalled connection).
    """

    __slots__ = (
        "_scope_base",
        "chunked",
        "current",
        "gone",
        "head",
        "head_written",
        "keep_alive",
        "linger",
        "parser",
        "poisoned",
        "queue",
        "raw_first",
        "read_ahead",
        "response_done",
        "server",
        "start",
        "stream",
    )

    def __init__(self, server: _Server, stream: trio.SocketStream) -> None:
        self.server = server
        self.stream = stream
        self.parser = httptools.HttpRequestParser(self)
        # Requests read, the first being answered; a list (rarely more than one: a deque's
        # first block is 760 bytes, held for the connection's life).
        self.queue: list[_Request] = []
        self.raw_first: bytearray | None = bytearray()  # until the first request's headers
        self.read_ahead = 0
        self.poisoned = False  # the parser failed on a later request: close after this one
        self.keep_alive = True
        self.linger = False
        self.gone = False
        self.current: _Request | None = None
        self.start: Message | None = None
        self.head = False
        self.head_written = False
        self.chunked = False
        self.response_done = False
        sock = stream.socket
        self._scope_base = {
            "type": "http",
            "asgi": _ASGI,
            "scheme": "http",
            "root_path": server.root_path,
            "client": _address(sock.getpeername),
            "server": _address(sock.getsockname),
            "state": dict(server.state),
        }

    # ------------------------------------------------------------ the parser's callbacks

    def on_message_begin(self) -> None:
        self.queue.append(_Request())

    def on_url(self, url: bytes) -> None:
        request = self.queue[-1]
        request.url += url
        request.size += len(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        name = name.lower()
        request = self.queue[-1]
        request.headers.append((name, value))
        request.size += len(name) + len(value) + 4
        if name == b"expect" and value.lower() == b"100-continue":
            request.expect_continue = True

    def on_headers_complete(self) -> None:
        request = self.queue[-1]
        parser = self.parser
        request.method = parser.get_method()
        request.version = parser.get_http_version()
        request.keep_alive = parser.should_keep_alive()
        request.headers_done = True

    def on_body(self, body: bytes) -> None:
        self.queue[-1].body.append(body)

    def on_message_complete(self) -> None:
        self.queue[-1].complete = True

    # ------------------------------------------------------------ reading

    async def run(self) -> None:
        """Answer requests until the client leaves, one asks to close, an error ends the
        connection, or the server shuts down."""
        server = self.server
        queue = self.queue
        try:
            while not server.terminating:
                request = await self._next_request()
                if request is None:
                    return
                await self._answer(request)
                del queue[0]
                if not request.complete:
                    self.linger = True
                if not self.keep_alive or self.gone or self.poisoned:
                    return
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        except Exception:
            # A fault of this connection's (the application's are caught in ``_answer``)
            # must not reach the nursery every connection shares: it would stop the server.
            logger.exception("an HTTP connection failed")
        finally:
            with trio.CancelScope(shield=True):
                await self._close()

    async def _next_request(self) -> _Request | None:
        """The next request once its headers are in; ``None`` when the connection should
        close (the client closed it, the keep-alive timeout passed, or it was answered an
        error here)."""
        queue = self.queue
        if queue and queue[0].headers_done:
            return queue[0]
        server = self.server
        header_bytes = 0
        upgrade = False
        scope = trio.CancelScope(deadline=trio.current_time() + server.keep_alive_timeout)
        server.idle.add(scope)
        try:
            with scope:
                while not (queue and queue[0].headers_done) and header_bytes <= MAX_HEADER_BYTES:
                    data = await self.stream.receive_some(MAX_RECV)
                    if not data:
                        return None
                    header_bytes += len(data)
                    raw = self.raw_first
                    if raw is not None:
                        raw += data
                        if raw[: len(_H2_PREFACE)] == _H2_PREFACE:
                            upgrade = True
                            break
                    try:
                        self.parser.feed_data(data)
                    except httptools.HttpParserUpgrade:
                        refusal: str | None = "an upgrade must be a connection's first request"
                        if raw is not None:
                            refusal = _upgrade_refusal(queue[-1])
                        if refusal is not None:
                            await self._refuse(400, refusal)
                            return None
                        upgrade = True
                        break
                    except httptools.HttpParserError:
                        await self._refuse(400, "the request is not valid HTTP/1.1")
                        return None
                else:
                    if not (queue and queue[0].headers_done) or queue[0].size > MAX_HEADER_BYTES:
                        await self._refuse(431, "the request's line and headers are over 64 KiB")
                        return None
                    if queue[0].version not in _VERSIONS:
                        await self._refuse(400, "only HTTP/1.1 and HTTP/1.0 are served")
                        return None
        finally:
            server.idle.discard(scope)
        if upgrade:
            await self._hand_over()  # no longer under the keep-alive deadline
            return None
        if scope.cancelled_caught:
            return None
        self.raw_first = None
        return queue[0]

    async def _hand_over(self) -> None:
        """Let hypercorn serve this connection (a WebSocket, h2c or HTTP/2), from the bytes
        read so far."""
        assert self.raw_first is not None
        replay = _Replay(self.stream, bytes(self.raw_first))
        self.raw_first = None
        self.gone = True  # hypercorn closes the stream
        server = self.server
        tcp = TCPServer(server.wrapped, server.config, server.context, dict(server.state), replay)  # type: ignore[arg-type]
        await tcp.run()

    async def _refuse(self, status: int, message: str) -> None:
        """Answer a request this server cannot read, then close (lingering: the client may
        still be sending it)."""
        self.keep_alive = False
        self.linger = True
        kind = "server_error" if status >= 500 else "invalid_request_error"
        body = json_bytes(ApiError(status, message, kind).body())
        head = (
            _STATUS_LINES[status]
            + b"content-type: application/json\r\ncontent-length: %d\r\nconnection: close\r\n"
            % len(body)
            + self.server.clock.date()
            + b"\r\n"
        )
        await self._write(head + body)

    # ------------------------------------------------------------ one request

    async def _answer(self, request: _Request) -> None:
        try:
            parsed = httptools.parse_url(request.url)
        except httptools.HttpParserInvalidURLError:
            # The request line's parser is laxer than the URL's (a port over 65535, an
            # unclosed IPv6 bracket): the client's error, answered and closed.
            await self._refuse(400, "the request's target is not a valid URL")
            return
        raw_path: bytes = parsed.path or b"/"  # an absolute target may have no path
        path = raw_path.decode("latin-1")
        if "%" in path:
            path = urllib.parse.unquote(path)
        method = request.method.decode("ascii")
        scope = {
            **self._scope_base,
            "http_version": request.version,
            "method": method,
            "path": path,
            "raw_path": raw_path,
            "query_string": parsed.query or b"",
            "headers": request.headers,
        }
        self.current = request
        self.read_ahead = 0
        self.start = None
        self.head = method == "HEAD"
        self.head_written = False
        self.chunked = False
        self.response_done = False
        self.keep_alive = request.keep_alive and not self.server.terminating
        try:
            await self.server.app(scope, self.receive, self.send)
        except Exception:
            logger.exception("the application raised while answering %s %s", method, path)
            self.keep_alive = False
            if not self.head_written and not self.gone:
                await self._refuse(500, "internal error")
                self.response_done = True
        if not self.response_done:
            self.keep_alive = False
            if not self.head_written and not self.gone:
                await self._refuse(500, "the application returned without answering")
        self.current = None
        if not request.complete:
            self.keep_alive = False

    async def receive(self) -> Message:
        """The ASGI ``receive``: the body as it arrives, then ``http.disconnect`` once the
        client has gone or the answer has ended."""
        request = self.current
        if request is None or self.gone or self.response_done:
            return dict(_DISCONNECT)
        while True:
            if request.body or (request.complete and not request.delivered):
                body = b"".join(request.body)
                request.body.clear()
                request.delivered = request.complete
                return {"type": "http.request", "body": body, "more_body": not request.complete}
            if request.complete:
                # The body has been read: wait for the client to leave, reading (and
                # parsing) what it pipelines meanwhile, up to MAX_PIPELINED.
                if self.poisoned or self.read_ahead > MAX_PIPELINED:
                    await trio.sleep_forever()
            elif request.expect_continue and not request.continue_sent and self.start is None:
                request.continue_sent = True
                await self._write(_CONTINUE)
            data = await self.stream.receive_some(MAX_RECV)
            if not data:
                self.gone = True
                return dict(_DISCONNECT)
            if request.complete:
                self.read_ahead += len(data)
            try:
                self.parser.feed_data(data)
            except httptools.HttpParserError:  # an upgrade too
                self.poisoned = True
                if not request.complete:
                    self.gone = True  # the body itself is not valid: treat as gone
                    return dict(_DISCONNECT)

    async def send(self, message: Message) -> None:
        """The ASGI ``send``: the head is written with the first body; messages after the
        answer's end or the client's leaving are dropped (as hypercorn does)."""
        kind = message["type"]
        if kind == "http.response.start":
            if self.start is None:
                self.start = message
            return
        if kind != "http.response.body" or self.start is None or self.response_done:
            return
        body: bytes = message.get("body", b"")
        more: bool = message.get("more_body", False)
        if not more:
            self.response_done = True
        if self.gone:
            return
        if not self.head_written:
            data = self._head(body, more)
            self.head_written = True
            if self.head:
                await self._write(data)
                return
        else:
            data = b""
        if self.head:
            return
        if self.chunked:
            if body:
                data += b"%x\r\n" % len(body) + body + b"\r\n"
            if not more:
                data += b"0\r\n\r\n"
        else:
            data += body
        if data:
            await self._write(data)

    def _head(self, body: bytes, more: bool) -> bytes:
        start = self.start
        assert start is not None
        status = int(start["status"])
        parts = [_STATUS_LINES.get(status) or _status_line(status)]
        framed = False
        for name, value in start.get("headers", ()):
            if _UNSAFE_VALUE.search(value) or _UNSAFE_NAME.search(name):
                # What h11 refuses too: a line break would let a value write headers (or a
                # whole response) of its own.
                raise ValueError(f"the application sent an invalid header: {name!r}: {value!r}")
            lowered = name.lower()
            if lowered == b"content-length":
                framed = True
            elif lowered == b"transfer-encoding":
                continue  # this server frames the body itself
            elif lowered == b"connection" and value.lower() == b"close":
                self.keep_alive = False
                continue
            parts.append(name + b": " + value + b"\r\n")
        request = self.current
        if not framed and status not in _NO_BODY_STATUSES and status >= 200:
            if not more:
                parts.append(b"content-length: %d\r\n" % len(body))
            elif request is not None and request.version == "1.1":
                self.chunked = True
                parts.append(b"transfer-encoding: chunked\r\n")
            else:
                self.keep_alive = False  # HTTP/1.0: the close ends the body
        if request is not None and not request.complete:
            self.keep_alive = False  # the body's rest is not read: close after the answer
        if not self.keep_alive or self.server.terminating:
            self.keep_alive = False
            parts.append(b"connection: close\r\n")
        parts.append(self.server.clock.date())
        parts.append(b"\r\n")
        return b"".join(parts)

    async def _write(self, data: bytes) -> None:
        try:
            await self.stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            self.gone = True
        except trio.Cancelled:
            self.gone = True  # cut mid-write: the connection cannot carry another answer
            raise

    async def _close(self) -> None:
        stream = self.stream
        if self.linger and not self.gone:
            # The client may still be sending the body: stop writing, read and drop what
            # comes for a moment, so its next read finds the answer, not a reset.
            try:
                await stream.send_eof()
                with trio.move_on_after(LINGER):
                    while await stream.receive_some(MAX_RECV):
                        pass
            except (trio.BrokenResourceError, trio.ClosedResourceError, trio.BusyResourceError):
                pass
        await stream.aclose()


def _upgrade_refusal(request: _Request) -> str | None:
    """Why a WebSocket handshake cannot succeed, if it cannot (answered here: hypercorn,
    refusing one, would keep the connection open for good); ``None`` for any other upgrade."""
    headers = dict(request.headers)
    if b"websocket" not in headers.get(b"upgrade", b"").lower():
        return None
    if (
        request.method != b"GET"
        or not headers.get(b"sec-websocket-key")
        or headers.get(b"sec-websocket-version") != b"13"
    ):
        return "a WebSocket handshake needs GET, Sec-WebSocket-Key and Sec-WebSocket-Version: 13"
    return None


def _address(name: Callable[[], Any]) -> tuple[str, int] | None:
    """``(host, port)`` from the socket's ``getpeername`` or ``getsockname``; ``None`` when it
    has none (a client that has already gone, a Unix socket)."""
    try:
        address = name()
    except OSError:
        return None
    if isinstance(address, tuple) and len(address) >= 2:
        return str(address[0]), int(address[1])
    return None


class _Replay(trio.abc.HalfCloseableStream):
    """A socket stream whose first reads return bytes already read from it (for hypercorn)."""

    def __init__(self, stream: trio.SocketStream, data: bytes) -> None:
        self.transport = stream
        self.socket = stream.socket
        self._data = data

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if self._data:
            data, self._data = self._data, b""
            return data
        return await self.transport.receive_some(max_bytes)

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self.transport.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.transport.wait_send_all_might_not_block()

    async def send_eof(self) -> None:
        await self.transport.send_eof()

    async def aclose(self) -> None:
        await self.transport.aclose()


async def serve_http1(
    app: App,
    wrapped: AppWrapper,
    config: HypercornConfig,
    *,
    sockets: Sockets,
    shutdown_trigger: Callable[[], Awaitable[None]],
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``app`` on ``sockets`` (listening already) until ``shutdown_trigger`` returns.

    The lifespan runs under hypercorn's ``Lifespan`` (``wrapped`` is ``app`` as hypercorn
    calls it, for that and for the connections handed to it). After the trigger: no more
    connections are accepted, idle ones close at once, the others after their current
    answer, and what is left after ``config.graceful_timeout`` is cancelled; then the
    lifespan's shutdown runs.

    Args:
        app: the ASGI application.
        wrapped: ``app`` wrapped for hypercorn (``hypercorn.utils.wrap_app``).
        config: hypercorn's settings (the keep-alive and graceful timeouts, root path).
        sockets: the listening sockets.
        shutdown_trigger: returns to begin the shutdown.
        task_status: receives the URLs served, such as ``["http://127.0.0.1:8000"]``.
    """
    state: dict[str, Any] = {}
    lifespan = Lifespan(wrapped, config, state)
    context = WorkerContext(None)
    async with trio.open_nursery() as lifespan_nursery:
        await lifespan_nursery.start(lifespan.handle_lifespan)
        await lifespan.wait_for_startup()
        server = _Server(app, wrapped, config, context, state)
        listeners = [
            trio.SocketListener(trio.socket.from_stdlib_socket(sock))
            for sock in sockets.insecure_sockets
        ]
        binds = [
            "http://" + repr_socket_addr(sock.family, sock.getsockname())
            for sock in sockets.insecure_sockets
        ]
        async with trio.open_nursery() as connections:
            async with trio.open_nursery() as accepting:
                accepting.start_soon(
                    partial(
                        trio.serve_listeners, server.handle, listeners, handler_nursery=connections
                    )
                )
                task_status.started(binds)
                await shutdown_trigger()
                accepting.cancel_scope.cancel()
            server.terminate()
            await context.terminated.set()
            connections.cancel_scope.deadline = trio.current_time() + config.graceful_timeout
        await lifespan.wait_for_shutdown()
        lifespan_nursery.cancel_scope.cancel()
