"""What any HTTP server under ``serve`` must do, on the wire, whichever ``service.server`` says.

Every test runs once per server (the ``server`` fixture of conftest.py) against the real
service in this test's Trio run, over a real loopback socket: raw bytes where the wire is the
point, httpx, trio-websocket or the official ``openai`` SDK where a real client is. Hypercorn
is the reference; a test of a behaviour hypercorn gets wrong is marked with
:func:`hypercorn_flaw`. Timeouts here are hang guards only: no test asserts a duration.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import attrs
import httpx
import openai
import pytest
import trio
import trio.testing
from service_helpers import make_config, open_raw_post, running_service, wait_for_statistic
from trio_websocket import open_websocket_url

from trio_orchestrator.config.secret import Secret
from trio_orchestrator.config.service import SERVERS, ApiKeyConfig, EchoConfig, ServerKind

PATIENCE = 30  # seconds (virtual under autojump_clock): a hang guard, never asserted on
CHAT = {"model": "echo", "messages": [{"role": "user", "content": "hello there"}]}
KEY = "sk-h1tests"


def hypercorn_flaw(reason: str) -> pytest.MarkDecorator:
    """Run the test per server, expected to fail (strictly) wherever hypercorn serves: it
    states the right behaviour, which hypercorn does not have."""
    params = [
        pytest.param(
            kind,
            marks=pytest.mark.xfail(condition=kind == "hypercorn", strict=True, reason=reason),
        )
        for kind in SERVERS
    ]
    return pytest.mark.parametrize("server", params)


# ---------------------------------------------------------------- a raw HTTP/1.1 client


def request(
    method: str,
    path: str,
    *,
    headers: Sequence[tuple[str, str]] = (),
    body: bytes = b"",
    version: str = "HTTP/1.1",
) -> bytes:
    """One request's bytes: a Host header, ``headers``, and a Content-Length for a body."""
    lines = [f"{method} {path} {version}", "Host: t", *(f"{k}: {v}" for k, v in headers)]
    if body:
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


@attrs.frozen
class Response:
    """A response as read off the wire."""

    status: int
    headers: dict[str, str]  # names lowercased
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@attrs.define(eq=False)
class Peer:
    """A client connection driven by hand: bytes out, responses parsed from what comes back.

    A reset from the server counts as the end of the stream, and is remembered in ``reset``.
    """

    stream: trio.SocketStream
    buffer: bytes = b""
    reset: bool = False

    async def send(self, data: bytes) -> None:
        await self.stream.send_all(data)

    async def _fill(self) -> bool:
        try:
            chunk = await self.stream.receive_some()
        except trio.BrokenResourceError:
            self.reset, chunk = True, b""
        self.buffer += chunk
        return bool(chunk)

    async def _line(self) -> bytes:
        while b"\r\n" not in self.buffer:
            if not await self._fill():
                raise EOFError(f"closed mid-line: {self.buffer[:200]!r}")
        line, _, self.buffer = self.buffer.partition(b"\r\n")
        return line

    async def _exactly(self, size: int) -> bytes:
        while len(self.buffer) < size:
            if not await self._fill():
                raise EOFError(f"closed {size - len(self.buffer)} bytes short")
        data, self.buffer = self.buffer[:size], self.buffer[size:]
        return data

    async def response(self, *, head: bool = False) -> Response:
        """The next response (an interim 1xx too); ``head``: it answers a HEAD request."""
        status = int((await self._line()).split(b" ")[1])
        headers: dict[str, str] = {}
        while line := await self._line():
            name, _, value = line.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
        if head or status < 200 or status in (204, 304):
            body = b""
        elif "chunked" in headers.get("transfer-encoding", ""):
            body = await self._chunked()
        elif "content-length" in headers:
            body = await self._exactly(int(headers["content-length"]))
        else:
            body = await self.rest()
        return Response(status, headers, body)

    async def _chunked(self) -> bytes:
        body = b""
        while size := int((await self._line()).split(b";")[0], 16):
            body += await self._exactly(size)
            assert await self._exactly(2) == b"\r\n"
        while await self._line():  # trailers
            pass
        return body

    async def rest(self) -> bytes:
        """Everything still to come, until the server closes the connection."""
        while await self._fill():
            pass
        data, self.buffer = self.buffer, b""
        return data


@asynccontextmanager
async def connected(url: str) -> AsyncIterator[Peer]:
    """A raw connection to the service at ``url``."""
    parsed = httpx.URL(url)
    assert parsed.port is not None
    async with await trio.open_tcp_stream(parsed.host, parsed.port) as stream:
        yield Peer(stream)


@asynccontextmanager
async def peer_of(server: ServerKind, **service: Any) -> AsyncIterator[Peer]:
    """The service served by ``server`` (with ``service`` settings), and a raw connection."""
    async with running_service(make_config(server=server, **service)) as url, connected(url) as p:
        yield p


async def send_ignoring_close(peer: Peer, data: bytes) -> None:
    """Send ``data``; a server that closed before reading it all is not an error here."""
    try:
        await peer.send(data)
    except trio.BrokenResourceError:
        pass


HEALTH = request("GET", "/healthz")


# ---------------------------------------------------------------- connection management


async def test_three_requests_in_turn_share_one_connection(server: ServerKind) -> None:
    """Keep-alive: a connection serves request after request."""
    async with peer_of(server) as peer:
        statuses = []
        for _ in range(3):
            await peer.send(HEALTH)
            with trio.fail_after(PATIENCE):
                statuses.append((await peer.response()).status)
    assert statuses == [200, 200, 200]


async def test_pipelined_requests_are_answered_in_order(server: ServerKind) -> None:
    """Two requests sent in one write are both answered, in the order they came."""
    async with peer_of(server) as peer:
        await peer.send(HEALTH + request("GET", "/no-such-path"))
        with trio.fail_after(PATIENCE):
            first, second = await peer.response(), await peer.response()
    assert (first.status, second.status) == (200, 404)


async def test_connection_close_from_the_client_is_answered_then_closed(
    server: ServerKind,
) -> None:
    """A request with ``Connection: close`` gets its answer, then the server closes."""
    async with peer_of(server) as peer:
        await peer.send(request("GET", "/healthz", headers=[("Connection", "close")]))
        with trio.fail_after(PATIENCE):
            answer = await peer.response()
            left = await peer.rest()
    assert answer.status == 200
    assert (left, peer.reset) == (b"", False)


async def test_an_http_1_0_request_is_answered_then_closed(server: ServerKind) -> None:
    """HTTP/1.0 without ``Connection: keep-alive`` means one request per connection."""
    async with peer_of(server) as peer:
        await peer.send(request("GET", "/healthz", version="HTTP/1.0"))
        with trio.fail_after(PATIENCE):
            answer = await peer.response()
            left = await peer.rest()
    assert answer.status == 200
    assert (left, peer.reset) == (b"", False)


async def test_partial_headers_then_silence_are_closed_after_the_keep_alive_timeout(
    server: ServerKind, autojump_clock: trio.testing.MockClock
) -> None:
    """A client that sends half its headers and goes quiet does not hold a connection forever:
    it is closed once `service.keep_alive_timeout` passes (with a 4xx at most)."""
    async with peer_of(server, keep_alive_timeout=20) as peer:
        await peer.send(b"GET /healthz HTTP/1.1\r\nHost: t\r\nX-Half")
        with trio.fail_after(PATIENCE * 10):
            left = await peer.rest()
    assert left == b"" or 400 <= int(left.split(b" ")[1]) < 500


async def test_two_hundred_connections_at_once_are_all_answered(server: ServerKind) -> None:
    """Connections that all arrive together each get their answer."""
    statuses: list[int] = []

    async def one(url: str) -> None:
        async with connected(url) as peer:
            await peer.send(request("GET", "/healthz", headers=[("Connection", "close")]))
            statuses.append((await peer.response()).status)

    async with running_service(make_config(server=server)) as url:
        with trio.fail_after(PATIENCE * 2):
            async with trio.open_nursery() as nursery:
                for _ in range(200):
                    nursery.start_soon(one, url)
    assert statuses == [200] * 200


# ---------------------------------------------------------------- request bodies


async def test_a_chunked_request_body_is_read_whole(server: ServerKind) -> None:
    """A chat whose body comes with ``Transfer-Encoding: chunked`` is answered from all of it."""
    body = json.dumps(CHAT).encode()
    pieces = [body[i : i + 7] for i in range(0, len(body), 7)]
    chunked = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces) + b"0\r\n\r\n"
    head = request(
        "POST",
        "/v1/chat/completions",
        headers=[("Content-Type", "application/json"), ("Transfer-Encoding", "chunked")],
    )
    async with peer_of(server) as peer:
        await peer.send(head + chunked)
        with trio.fail_after(PATIENCE):
            answer = await peer.response()
    assert answer.status == 200
    assert answer.json()["choices"][0]["message"]["content"] == "hello there"


async def test_expect_100_continue_is_answered_before_the_body(server: ServerKind) -> None:
    """A client that asks before sending its body hears ``100 Continue``, sends it, and gets
    the answer."""
    body = json.dumps(CHAT).encode()
    head = request(
        "POST",
        "/v1/chat/completions",
        headers=[
            ("Content-Type", "application/json"),
            ("Content-Length", str(len(body))),
            ("Expect", "100-continue"),
        ],
    )
    async with peer_of(server) as peer:
        await peer.send(head)
        with trio.fail_after(PATIENCE):
            interim = await peer.response()
        await peer.send(body)
        with trio.fail_after(PATIENCE):
            answer = await peer.response()
    assert interim.status == 100
    assert answer.status == 200
    assert answer.json()["choices"][0]["message"]["content"] == "hello there"


EARLY_ANSWERS: dict[str, tuple[dict[str, Any], int]] = {
    "401 without a key": ({"api_keys": (ApiKeyConfig(key=Secret(KEY)),)}, 401),
    "413 over max_body_bytes": ({"max_body_bytes": 1000}, 413),
}


@pytest.mark.parametrize("case", EARLY_ANSWERS, ids=list(EARLY_ANSWERS))
async def test_an_answer_given_before_the_body_is_read_arrives_whole(
    server: ServerKind, case: str
) -> None:
    """A request refused before its 100 KB body is read: the client reads the whole refusal;
    the connection then either serves the next request or ends cleanly -- never a reset that
    could destroy the refusal before the client read it."""
    settings, status = EARLY_ANSWERS[case]
    body = json.dumps(CHAT | {"padding": "x" * 100_000}).encode()
    head = [("Content-Type", "application/json")]
    async with peer_of(server, **settings) as peer:
        with trio.fail_after(PATIENCE):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(
                    send_ignoring_close,
                    peer,
                    request("POST", "/v1/chat/completions", headers=head, body=body),
                )
                answer = await peer.response()
            await send_ignoring_close(peer, request("GET", "/healthz"))
            try:
                after = (await peer.response()).status
            except EOFError:
                after = None
    assert answer.status == status
    assert "error" in answer.json()
    assert after == 200 or (after is None and not peer.reset)


# ---------------------------------------------------------------- malformed requests

MALFORMED = {
    "garbage": b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03garbage\r\n\r\n",
    "no version": b"GET /healthz\r\nHost: t\r\n\r\n",
    "header without a colon": b"GET /healthz HTTP/1.1\r\nHost: t\r\nno colon here\r\n\r\n",
    "space before the colon": b"GET /healthz HTTP/1.1\r\nHost : t\r\n\r\n",
    "content-length not a number": (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: t\r\nContent-Length: abc\r\n\r\n"
    ),
    "two content-lengths": (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\n"
        b"Content-Length: 3\r\n\r\n{}"
    ),
    "bad chunk size": (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"zz\r\n{}\r\n0\r\n\r\n"
    ),
}


@pytest.mark.parametrize("case", MALFORMED, ids=list(MALFORMED))
async def test_a_malformed_request_gets_a_4xx_and_the_connection_closes(
    server: ServerKind, case: str
) -> None:
    """A request the server cannot parse is the client's error (4xx, never 5xx), and the
    connection is closed: what follows on it cannot be trusted."""
    async with peer_of(server) as peer:
        await peer.send(MALFORMED[case])
        with trio.fail_after(PATIENCE):
            answer = await peer.response()
            left = await peer.rest()
    assert 400 <= answer.status < 500
    assert left == b""


@hypercorn_flaw(
    "h11 frames the body by Transfer-Encoding and keeps the connection open (RFC 9112 6.3: "
    "the server MUST close it after answering)"
)
async def test_content_length_with_chunked_gets_a_4xx_and_the_connection_closes(
    server: ServerKind, autojump_clock: trio.testing.MockClock
) -> None:
    """A request framed both ways is how requests are smuggled past a proxy: it is refused
    (4xx) and its connection closed at once -- a request sent after it is never answered."""
    smuggling = (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
    )
    # An idle connection closes after 20 s anyway: a server that kept this one answers the
    # request sent next before that close.
    async with peer_of(server, keep_alive_timeout=20) as peer:
        await peer.send(smuggling)
        with trio.fail_after(PATIENCE):
            answer = await peer.response()
            await send_ignoring_close(peer, HEALTH)
            left = await peer.rest()
    assert 400 <= answer.status < 500
    assert left == b""


@hypercorn_flaw(
    "hypercorn answers 400 with Connection: close and then holds the connection open for "
    "good, past keep_alive_timeout too"
)
async def test_a_refused_websocket_handshake_is_answered_and_closed(
    server: ServerKind, autojump_clock: trio.testing.MockClock
) -> None:
    """An upgrade to WebSocket without its key is refused (4xx) and the connection closed:
    a server that kept it would hold a socket for a client that has nothing more to say."""
    handshake = request(
        "GET", "/v1/ws", headers=[("Connection", "Upgrade"), ("Upgrade", "websocket")]
    )
    async with peer_of(server, keep_alive_timeout=20) as peer:
        await peer.send(handshake)
        with trio.fail_after(PATIENCE):
            answer = await peer.response()
        closed, left = False, b""
        with trio.move_on_after(PATIENCE * 10):  # past keep_alive_timeout: a hang guard
            left = await peer.rest()
            closed = True
    assert 400 <= answer.status < 500
    assert (closed, left) == (True, b"")


async def test_headers_over_64_kb_get_a_4xx_or_a_close(server: ServerKind) -> None:
    """Headers too large to hold are refused (a 4xx) or the connection is closed; the
    server neither waits for more nor fails."""
    big = b"GET /healthz HTTP/1.1\r\nHost: t\r\nX-Big: " + b"a" * 70_000 + b"\r\n\r\n"
    async with peer_of(server) as peer:
        with trio.fail_after(PATIENCE):
            await send_ignoring_close(peer, big)
            left = await peer.rest()
    assert left == b"" or 400 <= int(left.split(b" ")[1]) < 500


# ---------------------------------------------------------------- what reaches the app


async def test_head_answers_headers_without_a_body(server: ServerKind) -> None:
    """HEAD on a GET endpoint gets the status and headers and no body bytes: the next
    response on the connection starts right after the headers."""
    async with peer_of(server) as peer:
        await peer.send(request("HEAD", "/healthz") + HEALTH)
        with trio.fail_after(PATIENCE):
            head = await peer.response(head=True)
            then = await peer.response()
    assert head.status == 200
    assert then.status == 200
    assert then.json() == {"status": "ok"}


async def test_the_query_string_reaches_the_app(server: ServerKind) -> None:
    """``?limit=`` is read by the endpoint: a valid one is served, an invalid one refused."""
    async with peer_of(server) as peer:
        await peer.send(request("GET", "/v1/dead-letters?limit=2"))
        await peer.send(request("GET", "/v1/dead-letters?limit=0"))
        with trio.fail_after(PATIENCE):
            valid, invalid = await peer.response(), await peer.response()
    assert valid.status == 200
    assert valid.json() == {"object": "list", "data": []}
    assert invalid.status == 400


async def test_percent_encoded_paths_are_decoded_for_the_app(server: ServerKind) -> None:
    """``/v1/%6Dodels`` is ``/v1/models``; an encoded unknown path (or a bad escape) is a
    404, never a server error."""
    async with peer_of(server) as peer:
        for path in ("/v1/%6Dodels", "/v1/no%20such%2Fpath", "/v1/%ZZ"):
            await peer.send(request("GET", path))
        with trio.fail_after(PATIENCE):
            answers = [await peer.response() for _ in range(3)]
    assert [a.status for a in answers] == [200, 404, 404]
    assert answers[0].json()["object"] == "list"


async def test_a_large_response_arrives_whole(server: ServerKind) -> None:
    """The OpenAPI document (far larger than one socket write) parses as JSON."""
    async with peer_of(server) as peer:
        await peer.send(request("GET", "/openapi.json"))
        with trio.fail_after(PATIENCE):
            answer = await peer.response()
    assert answer.status == 200
    assert len(answer.body) > 65_536
    assert answer.json()["openapi"].startswith("3.")


# ---------------------------------------------------------------- streams and real clients


async def test_a_streamed_chat_is_chunked_and_ends_with_done(server: ServerKind) -> None:
    """httpx reads a streamed chat sent chunked, ending with ``data: [DONE]``."""
    async with (
        running_service(make_config(server=server)) as url,
        httpx.AsyncClient(base_url=url) as client,
    ):
        with trio.fail_after(PATIENCE):
            async with client.stream(
                "POST", "/v1/chat/completions", json=CHAT | {"stream": True}
            ) as response:
                text = (await response.aread()).decode()
    assert response.status_code == 200
    assert response.headers["transfer-encoding"] == "chunked"
    events = [e for e in text.split("\n\n") if e]
    assert events[-1] == "data: [DONE]"


async def test_a_client_leaving_mid_stream_ends_its_request(
    server: ServerKind, autojump_clock: trio.testing.MockClock
) -> None:
    """A streaming client that disconnects part way leaves nothing behind: the request is
    counted cancelled, none is in flight."""
    echo = EchoConfig(token_delay=1.0)  # 2,000 tokens: 2,000 s unless something ends it
    chat = {"model": "echo", "stream": True}
    chat["messages"] = [{"role": "user", "content": " ".join(["word"] * 2000)}]
    async with (
        running_service(make_config(server=server, echo=echo)) as url,
        httpx.AsyncClient(base_url=url) as monitor,
    ):
        stream = await open_raw_post(url, "/v1/chat/completions", chat)
        with trio.fail_after(PATIENCE):
            await stream.receive_some()  # the answer began
        await stream.aclose()
        with trio.fail_after(PATIENCE):
            stats = await wait_for_statistic(monitor, "cancelled", 1)
    assert (stats["cancelled"], stats["completed"], stats["in_flight"]) == (1, 0, 0)


async def test_a_websocket_session_works(server: ServerKind) -> None:
    """The WebSocket endpoint serves a prompt to its end."""
    async with running_service(make_config(server=server)) as url:
        ws_url = url.replace("http://", "ws://") + "/v1/ws"
        with trio.fail_after(PATIENCE):
            async with open_websocket_url(ws_url) as ws:
                await ws.send_message(json.dumps({"type": "prompt", "id": "p", "input": "hi"}))
                while (event := json.loads(await ws.get_message()))["type"] != "done":
                    assert event["type"] not in ("error", "cancelled"), event
    assert (event["id"], event["text"]) == ("p", "hi")


def chat_with_the_sdk(url: str) -> tuple[str | None, str]:
    """A chat and a streamed chat with the official (synchronous) client: both texts.

    The synchronous client, in a thread: the async one's stream leaves httpcore's body
    iterator to the garbage collector, which Trio reports as a ResourceWarning (an error here).
    """
    messages: Any = CHAT["messages"]
    with openai.OpenAI(
        base_url=url + "/v1", api_key="none", max_retries=0, timeout=PATIENCE
    ) as sdk:
        answer = sdk.chat.completions.create(model="echo", messages=messages)
        stream = sdk.chat.completions.create(model="echo", messages=messages, stream=True)
        with stream:
            pieces = [c.choices[0].delta.content or "" for c in stream if c.choices]
    return answer.choices[0].message.content, "".join(pieces)


async def test_the_openai_sdk_chats_and_streams(server: ServerKind) -> None:
    """The official client's chat and streamed chat parse what the server sends."""
    async with running_service(make_config(server=server)) as url:
        with trio.fail_after(PATIENCE):
            texts = await trio.to_thread.run_sync(chat_with_the_sdk, url)
    assert texts == ("hello there", "hello there")
