"""The h11 transport (``[providers] transport = "h11"``): its pool, bodies, errors and
timeouts against real sockets, and the service using it in front of the fake provider."""

from __future__ import annotations

import datetime
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any

import h11
import httpx
import openai
import pytest
import trio
import trio.lowlevel
import trio.testing
from service_helpers import running_app

from trio_orchestrator.config import parse_config
from trio_orchestrator.testing import FakeBehaviour, open_fake_provider
from trio_orchestrator.types import PromptRequest
from trio_orchestrator.workers import collect
from trio_orchestrator.workers.config import ProviderConfig, ProvidersConfig
from trio_orchestrator.workers.factory import make_client, open_worker
from trio_orchestrator.workers.h11transport import H11Transport

# The SDK's HTTP stack leaves async generators of a streamed response to the garbage
# collector (trio warns); the client's doing, as in test_overhead_header.py.
pytestmark = pytest.mark.filterwarnings(
    "ignore:Exception ignored in. <async_generator object:pytest.PytestUnraisableExceptionWarning"
)

Script = Callable[["Peer"], Awaitable[None]]


class Peer:
    """The server's side of one connection: h11 parses what the client sends."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.h11 = h11.Connection(h11.SERVER)

    async def request(self) -> tuple[h11.Request, bytes] | None:
        """The next request and its whole body, or None when the client closed."""
        head: h11.Request | None = None
        body = b""
        while True:
            event = self.h11.next_event()
            if event is h11.NEED_DATA:
                self.h11.receive_data(await self.stream.receive_some(65536))
            elif isinstance(event, h11.Request):
                head = event
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                assert head is not None
                return head, body
            else:  # ConnectionClosed
                return None

    async def answer(self, body: bytes, headers: list[tuple[str, str]] | None = None) -> None:
        """A 200 with ``body`` (content-length unless ``headers`` frame it otherwise)."""
        headers = headers or [("content-length", str(len(body)))]
        data = self.h11.send(h11.Response(status_code=200, headers=headers))
        if body:
            data += self.h11.send(h11.Data(data=body))
        await self.stream.send_all(data + self.h11.send(h11.EndOfMessage()))
        self.h11.start_next_cycle() if self.h11.our_state is h11.DONE else None


class Server:
    """A TCP server on 127.0.0.1 running ``script`` for each connection it accepts."""

    def __init__(self, script: Script) -> None:
        self.script = script
        self.connections = 0
        self.url = ""

    async def _handle(self, stream: trio.SocketStream) -> None:
        self.connections += 1
        async with stream:
            try:
                await self.script(Peer(stream))
            except trio.BrokenResourceError:
                pass  # the client hung up mid-answer: some tests do that on purpose


@asynccontextmanager
async def serving(script: Script) -> AsyncIterator[Server]:
    """``script`` served on a free port until the block ends."""
    server = Server(script)
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(
            partial(trio.serve_tcp, server._handle, 0, host="127.0.0.1")
        )
        server.url = f"http://127.0.0.1:{listeners[0].socket.getsockname()[1]}"
        yield server
        nursery.cancel_scope.cancel()


async def echo_forever(peer: Peer) -> None:
    """Answer every request on the connection with its own body (or ``ok``)."""
    while (got := await peer.request()) is not None:
        await peer.answer(got[1] or b"ok")


async def test_a_connection_is_reused_for_the_next_request() -> None:
    """Two requests in a row go over one kept-alive connection."""
    async with (
        serving(echo_forever) as server,
        H11Transport() as transport,
        httpx.AsyncClient(transport=transport) as client,
    ):
        assert (await client.get(server.url)).text == "ok"
        assert (await client.post(server.url, content=b"two")).text == "two"
        assert transport.connections == (1, 1)
    assert server.connections == 1


async def test_concurrent_requests_open_connections_and_keep_them() -> None:
    """Requests in flight together each get a connection; all are kept idle afterwards."""
    async with (
        serving(echo_forever) as server,
        H11Transport() as transport,
        httpx.AsyncClient(transport=transport) as client,
    ):
        async with trio.open_nursery() as nursery:
            for _ in range(5):
                nursery.start_soon(client.get, server.url)
        assert transport.connections == (server.connections, server.connections)
        await client.get(server.url)
    assert 1 <= server.connections <= 5


async def test_connection_close_from_the_server_is_not_reused() -> None:
    """A response with ``Connection: close`` ends its connection; the next one opens anew."""

    async def close_after_one(peer: Peer) -> None:
        await peer.request()
        await peer.answer(b"bye", [("content-length", "3"), ("connection", "close")])

    async with (
        serving(close_after_one) as server,
        H11Transport() as transport,
        httpx.AsyncClient(transport=transport) as client,
    ):
        assert (await client.get(server.url)).text == "bye"
        assert transport.connections == (0, 0)
        assert (await client.get(server.url)).text == "bye"
    assert server.connections == 2


async def test_an_idle_connection_the_server_closed_is_not_used() -> None:
    """A kept-alive connection the server has since closed is dropped when taken."""
    answered = trio.Event()

    async def one_then_hang_up(peer: Peer) -> None:
        await peer.request()
        await peer.answer(b"once")
        answered.set()  # and the connection closes when this returns

    async with (
        serving(one_then_hang_up) as server,
        H11Transport() as transport,
        httpx.AsyncClient(transport=transport) as client,
    ):
        await client.get(server.url)
        await answered.wait()
        await trio.testing.wait_all_tasks_blocked()
        # The FIN travels through the kernel; wait until the socket shows it.
        connection = next(iter(transport._idle.values()))[0]
        with trio.fail_after(30):  # a guard against a hang, not a measured time
            while not connection.server_closed():
                await trio.lowlevel.checkpoint()
        assert (await client.get(server.url)).text == "once"
    assert server.connections == 2


async def test_chunked_and_content_length_bodies_both_ways() -> None:
    """Chunked and sized bodies are read whole, and a streamed request body is sent chunked."""
    seen: list[tuple[bytes | None, bytes]] = []

    async def both(peer: Peer) -> None:
        while (got := await peer.request()) is not None:
            head, body = got
            seen.append((dict(head.headers).get(b"transfer-encoding"), body))
            if head.target == b"/chunked":
                await peer.answer(body, [("transfer-encoding", "chunked")])
            else:
                await peer.answer(body)

    async def parts() -> AsyncIterator[bytes]:
        for part in (b"a" * 70000, b"", b"b" * 3):
            yield part

    async with serving(both) as server, httpx.AsyncClient(transport=H11Transport()) as client:
        sized = await client.post(server.url + "/sized", content=b"x" * 100_000)
        chunked = await client.post(server.url + "/chunked", content=parts())
        assert sized.content == b"x" * 100_000
        assert sized.headers["content-length"] == "100000"
        assert chunked.content == b"a" * 70000 + b"bbb"
        assert chunked.headers["transfer-encoding"] == "chunked"
    assert seen == [(None, b"x" * 100_000), (b"chunked", b"a" * 70000 + b"bbb")]
    assert server.connections == 1


async def test_a_body_streamed_in_pieces_arrives_in_order() -> None:
    """``aiter_bytes`` yields a chunked body as it arrives, piece by piece."""

    async def drip(peer: Peer) -> None:
        await peer.request()
        data = peer.h11.send(
            h11.Response(status_code=200, headers=[("transfer-encoding", "chunked")])
        )
        await peer.stream.send_all(data)
        for piece in (b"one ", b"two ", b"three"):
            await peer.stream.send_all(peer.h11.send(h11.Data(data=piece)))
            await trio.testing.wait_all_tasks_blocked()
        await peer.stream.send_all(peer.h11.send(h11.EndOfMessage()))
        await echo_forever_after(peer)

    async with (
        serving(drip) as server,
        H11Transport() as transport,
        httpx.AsyncClient(transport=transport) as client,
    ):
        async with client.stream("GET", server.url) as response:
            pieces = [piece async for piece in response.aiter_bytes()]
        assert b"".join(pieces) == b"one two three"
        assert transport.connections == (1, 1)


async def echo_forever_after(peer: Peer) -> None:
    """After a finished exchange, keep answering on the same connection."""
    peer.h11.start_next_cycle()
    await echo_forever(peer)


async def test_a_response_cancelled_mid_body_closes_its_connection() -> None:
    """A read cancelled halfway through the body drops the connection; the next request
    opens another and the server sees the first one closed."""
    first_closed = trio.Event()

    async def half_then_wait(peer: Peer) -> None:
        if await peer.request() is None:
            return
        head = peer.h11.send(h11.Response(status_code=200, headers=[("content-length", "10")]))
        await peer.stream.send_all(head + peer.h11.send(h11.Data(data=b"12345")))
        if await peer.stream.receive_some(10) == b"":
            first_closed.set()

    async def answer_next(peer: Peer) -> None:
        if server.connections == 1:
            await half_then_wait(peer)
        else:
            await echo_forever(peer)

    async with (
        serving(answer_next) as server,
        H11Transport() as transport,
        httpx.AsyncClient(transport=transport) as client,
    ):
        with trio.CancelScope() as scope:
            async with client.stream("GET", server.url) as response:
                async for piece in response.aiter_raw():
                    assert piece == b"12345"
                    scope.cancel()
                    await trio.sleep_forever()
        assert scope.cancelled_caught
        assert transport.connections == (0, 0)
        await first_closed.wait()
        assert (await client.get(server.url)).text == "ok"
    assert server.connections == 2


async def test_a_body_closed_before_its_end_is_not_reused() -> None:
    """Closing a response whose body was not read to its end closes its connection."""

    async def big(peer: Peer) -> None:
        while await peer.request() is not None:
            await peer.answer(b"z" * 200_000)

    async with (
        serving(big) as server,
        H11Transport() as transport,
        httpx.AsyncClient(transport=transport) as client,
    ):
        async with client.stream("GET", server.url) as response:
            await response.aiter_raw().__anext__()
        assert transport.connections == (0, 0)
        assert len((await client.get(server.url)).content) == 200_000
    assert server.connections == 2


async def test_a_full_pool_makes_a_request_wait_for_a_connection() -> None:
    """With every connection busy a request waits, and goes when one is given back."""
    limits = httpx.Limits(max_connections=1)
    async with (
        serving(echo_forever) as server,
        H11Transport(limits=limits) as transport,
        httpx.AsyncClient(transport=transport) as client,
    ):
        done: list[str] = []

        async def second() -> None:
            done.append((await client.get(server.url)).text)

        async with client.stream("GET", server.url) as first, trio.open_nursery() as nursery:
            nursery.start_soon(second)
            await trio.testing.wait_all_tasks_blocked()
            assert done == []
            await first.aread()
        assert done == ["ok"]
    assert server.connections == 1


async def test_the_pool_timeout_raises_pool_timeout(autojump_clock: trio.testing.MockClock) -> None:
    """A request that finds no free connection within the pool timeout fails with
    ``httpx.PoolTimeout``."""
    limits = httpx.Limits(max_connections=1)
    timeout = httpx.Timeout(None, pool=1.0)
    async with (
        serving(echo_forever) as server,
        H11Transport(limits=limits) as transport,
        httpx.AsyncClient(transport=transport, timeout=timeout) as client,
        client.stream("GET", server.url),
    ):
        with pytest.raises(httpx.PoolTimeout):
            await client.get(server.url)


async def test_a_refused_connection_raises_connect_error() -> None:
    """Nothing listening: ``httpx.ConnectError``, which the workers map to a connection error."""
    with trio.socket.socket() as sock:
        await sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound, never listening: connecting is refused
        async with httpx.AsyncClient(transport=H11Transport()) as client:
            with pytest.raises(httpx.ConnectError):
                await client.get(f"http://127.0.0.1:{port}/")


async def test_a_silent_server_raises_read_timeout(autojump_clock: trio.testing.MockClock) -> None:
    """A server that never answers: ``httpx.ReadTimeout`` after the read timeout, and the
    connection is not kept."""

    async def silent(peer: Peer) -> None:
        await peer.request()
        await trio.sleep_forever()

    async with (
        serving(silent) as server,
        H11Transport() as transport,
        httpx.AsyncClient(transport=transport, timeout=httpx.Timeout(None, read=5.0)) as client,
    ):
        with pytest.raises(httpx.ReadTimeout):
            await client.get(server.url)
        assert transport.connections == (0, 0)


async def test_garbage_from_the_server_raises_remote_protocol_error() -> None:
    """A reply that is not HTTP: ``httpx.RemoteProtocolError``."""

    async def garbage(peer: Peer) -> None:
        await peer.request()
        await peer.stream.send_all(b"SPDY/9 what\r\n\r\n")

    async with (
        serving(garbage) as server,
        H11Transport() as transport,
        httpx.AsyncClient(transport=transport) as client,
    ):
        with pytest.raises(httpx.RemoteProtocolError):
            await client.get(server.url)
        assert transport.connections == (0, 0)


async def test_a_body_cut_short_raises_remote_protocol_error() -> None:
    """The server closing before the promised length: ``httpx.RemoteProtocolError``."""

    async def short(peer: Peer) -> None:
        await peer.request()
        await peer.stream.send_all(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nabc")

    async with serving(short) as server, httpx.AsyncClient(transport=H11Transport()) as client:
        with pytest.raises(httpx.RemoteProtocolError):
            await client.get(server.url)


async def test_informational_answers_are_skipped_for_the_final_one() -> None:
    """A ``100 Continue`` and a ``103 Early Hints`` before the answer: the answer is the
    final one, and the connection is kept."""

    async def hints_first(peer: Peer) -> None:
        while await peer.request() is not None:
            for status in (100, 103):
                informational = h11.InformationalResponse(status_code=status, headers=[])
                await peer.stream.send_all(peer.h11.send(informational))
            await peer.answer(b"final")

    async with (
        serving(hints_first) as server,
        H11Transport() as transport,
        httpx.AsyncClient(transport=transport) as client,
    ):
        for _ in range(2):
            assert (await client.get(server.url)).text == "final"
        assert transport.connections == (1, 1)
    assert server.connections == 1


async def test_a_switch_of_protocols_answers_101_and_closes_the_connection() -> None:
    """An upgrade the server accepts (a WebSocket handshake): the 101 comes back with no
    body and the connection is closed, not reused (it would spin on h11's ``PAUSED``)."""

    async def upgrade(peer: Peer) -> None:
        await peer.request()
        switched = h11.InformationalResponse(
            status_code=101, headers=[("upgrade", "websocket"), ("connection", "upgrade")]
        )
        await peer.stream.send_all(peer.h11.send(switched) + b"not http any more")
        await peer.stream.receive_some(65536)  # until the client closes

    handshake = {"connection": "upgrade", "upgrade": "websocket"}
    async with (
        serving(upgrade) as server,
        H11Transport() as transport,
        httpx.AsyncClient(transport=transport) as client,
    ):
        with trio.fail_after(5):
            response = await client.get(server.url, headers=handshake)
        assert (response.status_code, response.content) == (101, b"")
        assert transport.connections == (0, 0)


def _certificate(tmp_path: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and its key, as PEM files."""
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_file, key_file


async def test_https_goes_through_tls_and_keeps_the_connection(tmp_path: Path) -> None:
    """An https origin is reached over TLS (the certificate verified) and kept alive; a
    client that does not trust the certificate fails with ``httpx.ConnectError``."""
    cert_file, key_file = _certificate(tmp_path)
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(cert_file, key_file)
    connections = 0

    async def tls(stream: trio.SocketStream) -> None:
        nonlocal connections
        connections += 1
        wrapped = trio.SSLStream(stream, server_context, server_side=True)
        peer = Peer(stream)
        peer.stream = wrapped  # type: ignore[assignment]
        try:
            await echo_forever(peer)
        except trio.BrokenResourceError:
            pass  # the untrusting client hangs up mid-handshake

    trusted = ssl.create_default_context(cafile=str(cert_file))
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(partial(trio.serve_tcp, tls, 0, host="127.0.0.1"))
        url = f"https://127.0.0.1:{listeners[0].socket.getsockname()[1]}/"
        transport = H11Transport(verify=trusted)
        async with httpx.AsyncClient(transport=transport) as client:
            assert (await client.post(url, content=b"secret")).text == "secret"
            assert (await client.get(url)).text == "ok"
            assert transport.connections == (1, 1)
        async with httpx.AsyncClient(transport=H11Transport()) as untrusting:
            with pytest.raises(httpx.ConnectError):
                await untrusting.get(url)
        nursery.cancel_scope.cancel()
    assert connections == 2


async def test_closing_the_transport_closes_idle_connections() -> None:
    """``aclose`` closes the idle connections (the server sees them go)."""
    async with serving(echo_forever) as server:
        transport = H11Transport()
        async with httpx.AsyncClient(transport=transport) as client:
            await client.get(server.url)
        assert transport.connections == (0, 0)


@pytest.mark.parametrize("library", ["httpx", "httpx2"])
async def test_make_client_builds_an_h11_client_for_either_library(library: str) -> None:
    """``[providers] transport = "h11"`` gives the provider's worker a client on the h11
    transport, with httpx or httpx2, and the worker answers through it."""
    async with open_fake_provider(FakeBehaviour(text="via h11")) as fake:
        provider = ProviderConfig("openai", "up", fake.openai_base_url, api_keys=["sk"])
        client = make_client(provider, library, "h11")  # type: ignore[arg-type]
        assert isinstance(client._transport, H11Transport)
        await client.aclose()
        config = ProvidersConfig([provider], http_client=library, transport="h11")  # type: ignore[arg-type]
        async with open_worker(config) as worker:
            assert (await collect(worker, PromptRequest(input="q"))).text == "via h11"
            assert isinstance(worker.client._transport, H11Transport)  # type: ignore[attr-defined]


def served(url: str, transport: str) -> Any:
    """The service in front of the fake at ``url`` with ``[providers] transport``."""
    return parse_config(
        f'[service]\nport = 0\n[providers]\ntransport = "{transport}"\n'
        f'[[providers.providers]]\nkind = "openai"\nname = "up"\nbase_url = "{url}"\n'
        'api_keys = ["sk-up"]\n'
    )


async def test_the_service_proxies_through_the_h11_transport() -> None:
    """Through ``serve`` with the official SDK: chat answers whole and streamed, over one
    kept-alive upstream connection of the h11 transport."""
    async with open_fake_provider(FakeBehaviour(text="served by h11")) as fake:
        async with running_app(served(fake.openai_base_url, "h11")) as (url, app):
            sdk = openai.AsyncOpenAI(base_url=url + "/v1", api_key="sk-client", max_retries=0)
            chat: Any = [{"role": "user", "content": "hi"}]
            whole = await sdk.chat.completions.create(model="fake-model", messages=chat)
            assert whole.choices[0].message.content == "served by h11"
            stream = await sdk.chat.completions.create(
                model="fake-model", messages=chat, stream=True
            )
            text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
            assert text == "served by h11"
            await sdk.close()
            transport = app.state.service.gateway._workers["up"]._http.client._transport
            assert isinstance(transport, H11Transport)
            assert transport.connections == (1, 1)
        assert len(fake.requests) == 2
