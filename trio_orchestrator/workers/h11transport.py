"""An HTTP/1.1 transport for httpx built on ``h11`` over Trio sockets.

httpx's default transport goes through httpcore: a connection pool that walks all of its
connections (and polls each idle one) at every request's start and end, a connection object,
an HTTP/1.1 object and a network-stream object per connection, a request and response model of
its own, tracing context managers and exception mapping on every read. All of that sits on the
same ``h11`` parser this module uses directly. :class:`H11Transport` keeps only what a gateway
talking HTTP/1.1 to a few upstreams needs:

- one pool per transport, idle connections kept per origin (most recently used first), a limit
  on connections in all (``max_connections``) and on idle ones (``max_keepalive_connections``),
  idle ones closed after ``keepalive_expiry`` seconds;
- a connection is reused only when its last exchange ended cleanly (both sides done, nothing
  left unread, no error, no cancellation), and only while the server has not closed it (one
  ``poll`` of that one socket when it is taken); anything else closes it;
- request bodies sent whole (one write for head and body when the body is bytes) or streamed;
  response bodies streamed, as ``aiter_raw`` / ``aiter_bytes`` read them;
- TLS through :mod:`ssl` and :class:`trio.SSLStream`;
- the timeouts httpx passes in ``request.extensions["timeout"]`` (connect, read, write, pool),
  raised as httpx's own exceptions (``ConnectTimeout``, ``ReadTimeout``, ``WriteTimeout``,
  ``PoolTimeout``, ``ConnectError``, ``ReadError``, ``WriteError``, ``RemoteProtocolError``),
  so code that maps httpx's errors needs no change.

Not supported: HTTP/2, proxies, Unix sockets (use httpx's default transport for those).
"""

from __future__ import annotations

import collections
import functools
import math
import select
import ssl
from collections.abc import AsyncIterable, AsyncIterator
from types import ModuleType
from typing import Any, cast

import attrs
import h11
import httpx
import trio

__all__ = ["H11Transport"]

Origin = tuple[bytes, bytes, int]

_READ_SIZE = 65536


@attrs.define(eq=False)
class _Connection:
    """One open connection: its stream, its socket and its h11 state machine."""

    stream: trio.abc.Stream
    socket: Any  # the trio socket under ``stream`` (for the idle check and a sync close)
    origin: Origin
    tls: bool
    h11: h11.Connection = attrs.field(factory=lambda: h11.Connection(h11.CLIENT))
    idle_since: float = 0.0

    def close(self) -> None:
        """Close at once, without a TLS close_notify: used for dirty or stale connections."""
        self.socket.close()

    def server_closed(self) -> bool:
        """Whether the idle socket is readable: the server closed it (or sent bytes nobody
        asked for, which makes it unusable just the same)."""
        poller = select.poll()
        poller.register(self.socket.fileno(), select.POLLIN)
        return bool(poller.poll(0))


def _timeouts(request: httpx.Request) -> dict[str, float | None]:
    timeout: dict[str, float | None] = request.extensions.get("timeout") or {}
    return timeout


def _deadline(seconds: float | None) -> float:
    return math.inf if seconds is None else trio.current_time() + seconds


class H11Transport(httpx.AsyncBaseTransport):
    """An ``httpx`` transport speaking HTTP/1.1 with ``h11`` over Trio sockets.

    A drop-in for ``httpx.AsyncHTTPTransport(verify=..., limits=...)`` under Trio, for
    HTTP/1.1 origins (``http`` and ``https``).

    Args:
        verify: an :class:`ssl.SSLContext` for ``https`` origins, ``True`` for the default
            verifying context, ``False`` to skip certificate checks.
        limits: ``max_connections`` (in all, ``None`` for no limit),
            ``max_keepalive_connections`` (idle ones kept, ``None`` for no limit) and
            ``keepalive_expiry`` (seconds an idle connection is kept; ``None`` for ever).
        module: ``httpx`` or ``httpx2``: the library whose ``Response`` and exceptions the
            transport builds (their APIs are the same).
    """

    def __init__(
        self,
        *,
        verify: ssl.SSLContext | bool = True,
        limits: httpx.Limits | None = None,
        module: ModuleType = httpx,
    ) -> None:
        limits = limits or module.Limits(max_connections=100, max_keepalive_connections=20)
        self._max = math.inf if limits.max_connections is None else limits.max_connections
        keep = limits.max_keepalive_connections
        self._max_idle = math.inf if keep is None else keep
        expiry = limits.keepalive_expiry
        self._expiry = math.inf if expiry is None else expiry
        self._verify = verify
        self._ssl: ssl.SSLContext | None = verify if isinstance(verify, ssl.SSLContext) else None
        self._module = module
        self._body = _body_class(module)
        self._idle: dict[Origin, collections.deque[_Connection]] = {}
        self._idle_count = 0
        self._count = 0  # connections open or opening, idle or not
        self._lot = trio.lowlevel.ParkingLot()
        self._closed = False

    # ------------------------------------------------------------------ the pool

    @property
    def connections(self) -> tuple[int, int]:
        """``(open, idle)``: connections open (or opening) in all, and those idle."""
        return self._count, self._idle_count

    def _ssl_context(self) -> ssl.SSLContext:
        if self._ssl is None:
            context = ssl.create_default_context()
            if self._verify is False:
                context.check_hostname = False
                context.verify_mode = ssl.CERT_NONE
            self._ssl = context
        return self._ssl

    def _take_idle(self, origin: Origin) -> _Connection | None:
        idle = self._idle.get(origin)
        if not idle:
            return None
        now = trio.current_time()
        oldest_kept = now - self._expiry
        while idle and idle[0].idle_since < oldest_kept:  # oldest first: expired ones
            self._discard(idle.popleft())
        while idle:
            connection = idle.pop()  # the most recently used
            self._idle_count -= 1
            if not connection.server_closed():
                return connection
            self._forget(connection)
        return None

    def _discard(self, connection: _Connection) -> None:
        """Close an idle connection just removed from its deque."""
        self._idle_count -= 1
        self._forget(connection)

    def _forget(self, connection: _Connection) -> None:
        """Close a connection that is in no deque, and free its slot."""
        connection.close()
        self._count -= 1
        self._lot.unpark()

    def _evict_other(self, origin: Origin) -> bool:
        """Close the oldest idle connection of another origin to make room; say whether
        there was one."""
        for other, idle in self._idle.items():
            if other != origin and idle:
                self._discard(idle.popleft())
                return True
        return False

    async def _acquire(self, request: httpx.Request, origin: Origin) -> tuple[_Connection, bool]:
        """A connection to ``origin`` and whether it is new, waiting for a slot when the
        pool is full (at most the pool timeout).

        Raises:
            PoolTimeout: no slot within the pool timeout.
            ConnectError, ConnectTimeout: a new connection could not be opened.
        """
        timeouts = _timeouts(request)
        deadline = None
        while True:
            if self._closed:
                raise RuntimeError("the transport is closed")
            connection = self._take_idle(origin)
            if connection is not None:
                return connection, False
            if self._count < self._max:
                self._count += 1
                try:
                    return await self._open(request, origin, timeouts.get("connect")), True
                except BaseException:
                    self._count -= 1
                    self._lot.unpark()
                    raise
            if self._evict_other(origin):
                continue
            if deadline is None:
                deadline = _deadline(timeouts.get("pool"))
            with trio.move_on_at(deadline):
                await self._lot.park()
                continue
            raise self._module.PoolTimeout(
                "no connection was free within the pool timeout", request=request
            )

    def _release(self, connection: _Connection) -> None:
        """Take back a connection whose exchange ended cleanly: idle, or closed when the
        server asked for that, the pool keeps enough idle ones or the transport is closed."""
        state = connection.h11
        if (
            self._closed
            or self._idle_count >= self._max_idle
            or state.our_state is not h11.DONE
            or state.their_state is not h11.DONE
        ):
            self._forget(connection)
            return
        state.start_next_cycle()
        connection.idle_since = trio.current_time()
        idle = self._idle.get(connection.origin)
        if idle is None:
            idle = self._idle[connection.origin] = collections.deque()
        idle.append(connection)
        self._idle_count += 1
        self._lot.unpark()

    async def _open(self, request: httpx.Request, origin: Origin, limit: float | None) -> Any:
        scheme, host, port = origin
        module = self._module
        with trio.move_on_at(_deadline(limit)):
            try:
                tcp = await trio.open_tcp_stream(host.decode("ascii"), port)
            except OSError as exc:
                raise module.ConnectError(str(exc) or repr(exc), request=request) from exc
            stream: trio.abc.Stream = tcp
            if scheme == b"https":
                tls = trio.SSLStream(tcp, self._ssl_context(), server_hostname=host.decode("ascii"))
                try:
                    await tls.do_handshake()
                except BaseException as exc:
                    tcp.socket.close()
                    if isinstance(exc, (trio.BrokenResourceError, OSError)):
                        raise module.ConnectError(
                            str(exc.__cause__ or exc), request=request
                        ) from exc
                    raise
                stream = tls
            return _Connection(stream, tcp.socket, origin, stream is not tcp)
        raise module.ConnectTimeout("timed out connecting", request=request)

    # ------------------------------------------------------------------ an exchange

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        """Send ``request`` on a pooled connection and return its response, whose body is
        read from the connection as the caller iterates it.

        Raises:
            httpx.TransportError: the subclass for what failed (connect, pool, read or write
                timeout; connect, read or write error; a protocol error on either side).
        """
        url = request.url
        scheme = url.raw_scheme
        if scheme not in (b"http", b"https"):
            raise self._module.UnsupportedProtocol(
                f"the h11 transport speaks http and https, not {scheme.decode()!r}",
                request=request,
            )
        port = url.port or (443 if scheme == b"https" else 80)
        origin = (scheme, url.raw_host, port)
        connection, _ = await self._acquire(request, origin)
        try:
            await self._send(connection, request)
            event = await self._receive_head(connection, request)
        except BaseException:
            self._forget(connection)
            raise
        if event.status_code == 101:
            # Switched protocols: what follows is not HTTP, and this transport does not hand
            # the connection over (httpcore does), so the answer has no body and the
            # connection is closed.
            self._forget(connection)
            stream: Any = self._module.ByteStream(b"")
        else:
            stream = self._body(self, connection, request)
        return self._module.Response(  # type: ignore[no-any-return]
            event.status_code,
            headers=event.headers.raw_items(),
            stream=stream,
            extensions={"http_version": b"HTTP/1.1", "reason_phrase": event.reason},
        )

    async def _send(self, connection: _Connection, request: httpx.Request) -> None:
        state = connection.h11
        timeout = _timeouts(request).get("write")
        module = self._module
        try:
            head = state.send(
                h11.Request(
                    method=request.method,
                    target=request.url.raw_path,
                    headers=request.headers.raw,
                )
            )
            try:
                content: bytes | None = request.content
            except module.RequestNotRead:
                content = None
            if content is not None:
                data = head + state.send(h11.Data(data=content)) if content else head
                await self._write(
                    connection, request, data + state.send(h11.EndOfMessage()), timeout
                )
                return
            await self._write(connection, request, head, timeout)
            stream: AsyncIterable[bytes] = request.stream  # type: ignore[assignment]
            async for chunk in stream:
                if chunk:
                    await self._write(
                        connection, request, state.send(h11.Data(data=chunk)), timeout
                    )
            await self._write(connection, request, state.send(h11.EndOfMessage()), timeout)
        except h11.LocalProtocolError as exc:
            raise module.LocalProtocolError(str(exc), request=request) from exc

    async def _write(
        self,
        connection: _Connection,
        request: httpx.Request,
        data: bytes | None,
        limit: float | None,
    ) -> None:
        if not data:
            return
        if limit is None:  # no scope to enter: the common case for reads, cheap to skip
            await self._send_bytes(connection, request, data)
            return
        with trio.move_on_after(limit):
            await self._send_bytes(connection, request, data)
            return
        raise self._module.WriteTimeout("timed out writing the request", request=request)

    async def _send_bytes(
        self, connection: _Connection, request: httpx.Request, data: bytes
    ) -> None:
        try:
            if connection.tls:
                await connection.stream.send_all(data)
                return
            # Straight to the socket: SocketStream.send_all adds a conflict detector and a
            # memoryview loop that a single writer with one buffer does not need.
            sent = await connection.socket.send(data)
            if sent < len(data):
                view = memoryview(data)
                while sent < len(view):
                    sent += await connection.socket.send(view[sent:])
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            raise self._module.WriteError(str(exc) or repr(exc), request=request) from exc

    async def _receive_head(self, connection: _Connection, request: httpx.Request) -> Any:
        state = connection.h11
        timeout = _timeouts(request).get("read")
        while True:
            event = self._next_event(state, request)
            kind = type(event)
            if event is h11.NEED_DATA:
                await self._read(connection, request, timeout)
            elif kind is h11.Response:
                return event
            elif kind is h11.InformationalResponse:
                if event.status_code == 101:  # the request asked to upgrade, and it did
                    return event
                # Any other 1xx: the final answer follows.
            else:  # ConnectionClosed (or PAUSED, which asking again never changes)
                raise self._module.RemoteProtocolError(
                    "the server closed the connection without sending a response",
                    request=request,
                )

    def _next_event(self, state: h11.Connection, request: httpx.Request) -> Any:
        try:
            return state.next_event()
        except h11.RemoteProtocolError as exc:
            raise self._module.RemoteProtocolError(str(exc), request=request) from exc

    async def _read(
        self, connection: _Connection, request: httpx.Request, limit: float | None
    ) -> None:
        if limit is None:
            await self._receive_bytes(connection, request)
            return
        with trio.move_on_after(limit):
            await self._receive_bytes(connection, request)
            return
        raise self._module.ReadTimeout("timed out reading the response", request=request)

    async def _receive_bytes(self, connection: _Connection, request: httpx.Request) -> None:
        module = self._module
        try:
            if connection.tls:
                data = await connection.stream.receive_some(_READ_SIZE)
            else:
                data = await connection.socket.recv(_READ_SIZE)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            raise module.ReadError(str(exc) or repr(exc), request=request) from exc
        try:
            connection.h11.receive_data(cast(bytes, data))  # a bytearray parses the same
        except h11.RemoteProtocolError as exc:
            raise module.RemoteProtocolError(str(exc), request=request) from exc

    async def aclose(self) -> None:
        """Close the idle connections now, and each busy one when its exchange ends."""
        self._closed = True
        for idle in self._idle.values():
            while idle:
                self._discard(idle.popleft())
        self._lot.unpark_all()


@functools.cache
def _body_class(module: ModuleType) -> type[Any]:
    """The response body class for ``module``, whose ``Response`` accepts only its own
    stream classes."""

    class Body(module.AsyncByteStream):  # type: ignore[misc,name-defined]
        """A response body read from its connection as it is iterated.

        The connection goes back to the pool when the body has been read to its end; a
        body closed early, or a read that fails or is cancelled, closes the connection.
        """

        def __init__(
            self, transport: H11Transport, connection: _Connection, request: httpx.Request
        ) -> None:
            self._transport = transport
            self._connection: _Connection | None = connection
            self._request = request
            self._timeout = _timeouts(request).get("read")

        def __aiter__(self) -> AsyncIterator[bytes]:
            return self

        async def __anext__(self) -> bytes:
            connection = self._connection
            if connection is None:
                raise StopAsyncIteration
            transport = self._transport
            try:
                while True:
                    event = transport._next_event(connection.h11, self._request)
                    kind = type(event)
                    if kind is h11.Data:
                        return bytes(event.data)
                    if kind is h11.EndOfMessage:
                        self._connection = None
                        transport._release(connection)
                        raise StopAsyncIteration
                    if event is h11.NEED_DATA:
                        await transport._read(connection, self._request, self._timeout)
                    else:  # ConnectionClosed or a stray event: the body was cut short
                        raise transport._module.RemoteProtocolError(
                            "the server closed the connection before the body's end",
                            request=self._request,
                        )
            except StopAsyncIteration:
                raise
            except BaseException:
                self._connection = None
                transport._forget(connection)
                raise

        async def aclose(self) -> None:
            connection, self._connection = self._connection, None
            if connection is not None:  # closed before its end: never reused
                self._transport._forget(connection)

    return Body
