"""What only the service's own HTTP/1.1 server does (``service.server = "httptools"``).

The behaviour both servers share is in test_http_server.py; these are this server's own
decisions: what it refuses and how, what it hands to hypercorn, and that a fault of one
connection stays that connection's.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from typing import Any, cast

import pytest
import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.utils import wrap_app
from service_helpers import make_config, running_service
from test_http_server import HEALTH, PATIENCE, connected, peer_of, request

from trio_orchestrator.service import h1server

# An HTTP/2 client's first bytes: the preface, then an empty SETTINGS frame.
H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"
SETTINGS = 0x04
WEBSOCKET = [
    ("Connection", "Upgrade"),
    ("Upgrade", "websocket"),
    ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
    ("Sec-WebSocket-Version", "13"),
]


async def test_headers_over_64_kib_in_one_piece_are_a_431() -> None:
    """The limit is on the request's line and headers, however the reads split them: a
    request that arrives whole (in one read or two) is refused all the same."""
    big = request("GET", "/healthz", headers=[("X-Big", "a" * 70_000)])
    async with peer_of("httptools") as peer:
        await peer.send(big)
        with trio.fail_after(PATIENCE):
            answer = await peer.response()
            rest = await peer.rest()
    assert answer.status == 431
    assert answer.json()["error"]["type"] == "invalid_request_error"
    assert rest == b""  # closed after it


async def test_headers_just_under_64_kib_are_served() -> None:
    """The limit is 64 KiB, not the first read's size."""
    near = request("GET", "/healthz", headers=[("X-Big", "a" * 60_000)])
    async with peer_of("httptools") as peer:
        await peer.send(near)
        with trio.fail_after(PATIENCE):
            answer = await peer.response()
    assert answer.status == 200


@pytest.mark.parametrize(
    "target", ["http://t:99999/healthz", "http://[::1/healthz"], ids=["port", "bracket"]
)
async def test_a_target_that_is_not_a_url_is_a_400_and_a_close(target: str) -> None:
    """llhttp's request line takes targets its own URL parser then rejects: the client gets
    a 400 and the connection closes, rather than a connection closed with no answer."""
    async with peer_of("httptools") as peer:
        await peer.send(f"GET {target} HTTP/1.1\r\nHost: t\r\n\r\n".encode())
        with trio.fail_after(PATIENCE):
            answer = await peer.response()
            rest = await peer.rest()
    assert (answer.status, rest) == (400, b"")


async def test_an_absolute_target_without_a_path_is_the_root() -> None:
    """``GET http://host HTTP/1.1`` names the root: answered as ``/`` (a 404 from the
    service, not a failed connection)."""
    async with peer_of("httptools") as peer:
        await peer.send(b"GET http://t HTTP/1.1\r\nHost: t\r\n\r\n" + HEALTH)
        with trio.fail_after(PATIENCE):
            root = await peer.response()
            health = await peer.response()
    assert (root.status, health.status) == (404, 200)


async def test_an_http2_preface_is_answered_by_hypercorn_in_http2() -> None:
    """A connection that opens with HTTP/2's preface is handed to hypercorn, which answers
    with its own SETTINGS frame (a 400 from this server's parser otherwise)."""
    async with peer_of("httptools") as peer:
        await peer.send(H2_PREFACE)
        with trio.fail_after(PATIENCE):
            while len(peer.buffer) < 9 and await peer._fill():
                pass
    assert peer.buffer[3] == SETTINGS


async def test_a_websocket_handshake_is_handed_to_hypercorn() -> None:
    """A valid handshake on a connection's first request is answered 101 by hypercorn."""
    handshake = request("GET", "/v1/ws", headers=WEBSOCKET)
    async with peer_of("httptools") as peer:
        await peer.send(handshake)
        with trio.fail_after(PATIENCE):
            answer = await peer.response()
    assert answer.status == 101


async def test_an_upgrade_after_a_first_request_is_refused_and_closed() -> None:
    """An upgrade on a kept-alive connection is a 400 and a close: the bytes the parser read
    before it are gone, so hypercorn could not be handed the connection whole."""
    async with peer_of("httptools") as peer:
        await peer.send(HEALTH)
        with trio.fail_after(PATIENCE):
            first = await peer.response()
            await peer.send(request("GET", "/v1/ws", headers=WEBSOCKET))
            refused = await peer.response()
            rest = await peer.rest()
    assert (first.status, refused.status, rest) == (200, 400, b"")


async def test_a_fault_of_one_connection_leaves_the_server_serving(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An error inside one connection's handling (not the application's: those are
    answered 500) ends that connection; the next one is served. Reaching the nursery all
    connections share, it would have stopped the server."""
    original = h1server._Connection._next_request
    faults = [RuntimeError("a bug in the server")]

    async def failing_once(self: Any) -> Any:
        if faults:
            raise faults.pop()
        return await original(self)

    monkeypatch.setattr(h1server._Connection, "_next_request", failing_once)
    async with running_service(make_config(server="httptools")) as url:
        async with connected(url) as broken:
            with trio.fail_after(PATIENCE):
                assert await broken.rest() == b""  # closed, nothing answered
        async with connected(url) as peer:
            await peer.send(HEALTH)
            with trio.fail_after(PATIENCE):
                answer = await peer.response()
    assert answer.status == 200


def test_a_socket_without_an_address_has_none() -> None:
    """A client gone before its connection is served has no peer name: the scope says
    ``None`` rather than the connection failing."""

    def gone() -> Any:
        raise OSError(107, "Transport endpoint is not connected")

    assert h1server._address(gone) is None
    assert h1server._address(lambda: ("127.0.0.1", 8000)) == ("127.0.0.1", 8000)


@asynccontextmanager
async def serving(app: Any) -> AsyncIterator[str]:
    """``app`` under this server on a free loopback port, for the block; yields its URL."""
    config = HypercornConfig()
    config.bind = ["127.0.0.1:0"]
    sockets = config.create_sockets()
    for sock in sockets.insecure_sockets:
        sock.listen(16)
    stop = trio.Event()
    wrapped = wrap_app(cast(Any, app), config.wsgi_max_body_size, "asgi")
    server = partial(
        h1server.serve_http1, app, wrapped, config, sockets=sockets, shutdown_trigger=stop.wait
    )
    async with trio.open_nursery() as nursery:
        (url,) = await nursery.start(server)
        try:
            yield url
        finally:
            stop.set()
    for sock in sockets.insecure_sockets:
        sock.close()


def answering_with(headers: list[tuple[bytes, bytes]]) -> Any:
    """An ASGI app answering every request 200 with ``headers`` and a short body."""

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b"ok"})

    return app


@pytest.mark.parametrize(
    "header",
    [(b"x-model", b"m\r\nx-injected: 1"), (b"x-model", b"m\nx-injected: 1"), (b"x a", b"v")],
    ids=["CRLF in a value", "LF in a value", "space in a name"],
)
async def test_a_header_that_would_break_the_response_becomes_a_500(
    header: tuple[bytes, bytes],
) -> None:
    """A header the application builds from input with a line break in it is never written
    (it could add headers, or a whole response, of its own): the answer is a 500."""
    async with serving(answering_with([header])) as url, connected(url) as peer:
        await peer.send(HEALTH)
        with trio.fail_after(PATIENCE):
            answer = await peer.response()
            rest = await peer.rest()
    assert answer.status == 500
    assert "x-injected" not in answer.headers
    assert rest == b""


async def test_the_applications_transfer_encoding_is_replaced_by_the_servers_framing() -> None:
    """An application that names ``Transfer-Encoding`` itself gets the body framed by the
    server (chunked, as its header said), not sent raw under a chunked header."""

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await answering_with([])(scope, receive, send)
            return
        headers = [(b"transfer-encoding", b"chunked")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b"one ", "more_body": True})
        await send({"type": "http.response.body", "body": b"two"})

    async with serving(app) as url, connected(url) as peer:
        await peer.send(HEALTH)
        with trio.fail_after(PATIENCE):
            answer = await peer.response()
    assert (answer.status, answer.body) == (200, b"one two")
    assert answer.headers["transfer-encoding"] == "chunked"
