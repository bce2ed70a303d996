"""The server under faults: keep-alive, listen backlog, slow bodies, and the end of a drain.

Each test runs the real service (``serve`` on a real socket) inside the test's own Trio run,
so the server's timers run on the mock clock: an idle of 6 s or a grace period of 10 s passes
at once, and no test sleeps or asserts a duration. Each runs once per ``service.server`` (the
``server`` fixture) but the one about hypercorn's own settings.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

import httpx
import trio
import trio.testing
from service_helpers import make_config, wait_for_statistic

from trio_orchestrator.config import Config
from trio_orchestrator.config.service import ServerKind
from trio_orchestrator.service import serve
from trio_orchestrator.service.server import hypercorn_config
from trio_orchestrator.workers import EchoWorker

LONG = " ".join(["word"] * 400)  # 400 tokens at 0.1 s: 40 s unless something ends it
GRACE = 10.0
PATIENCE = 100  # virtual seconds: a hang guard, never asserted on


@asynccontextmanager
async def draining_service(
    config: Config, worker: Any = None
) -> AsyncIterator[tuple[str, trio.Event, trio.Event]]:
    """Serve for the block; yield the URL, the event that begins the drain, and the event
    set once ``serve`` has returned."""
    stop, stopped = trio.Event(), trio.Event()

    async def run(*, task_status: trio.TaskStatus[str]) -> None:
        await serve(config, worker=worker, shutdown_trigger=stop.wait, task_status=task_status)
        stopped.set()

    async with trio.open_nursery() as nursery:
        url: str = await nursery.start(run)
        try:
            yield url, stop, stopped
        finally:
            stop.set()


async def connect(url: str) -> trio.SocketStream:
    """A raw TCP connection to the service."""
    parsed = httpx.URL(url)
    assert parsed.port is not None
    return await trio.open_tcp_stream(parsed.host, parsed.port)


async def read_response(stream: trio.SocketStream) -> bytes:
    """Read one small response whose body has a Content-Length (b"" if the server closed)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = await stream.receive_some()
        if not chunk:
            return data
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(
        int(line.split(b":")[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    while len(body) < length:
        body += await stream.receive_some()
    return data


async def read_until_closed(stream: trio.SocketStream) -> bytes:
    """Everything the server sends until it closes the connection."""
    data = b""
    while chunk := await stream.receive_some():
        data += chunk
    return data


HEALTH = b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n"


async def test_a_connection_idle_past_clients_own_timeout_is_still_open(
    server: ServerKind, autojump_clock: trio.testing.MockClock
) -> None:
    """A client that reuses its connection after 6 s idle (httpx drops its own at 5 s, the
    server's old default) gets its answer: the server keeps idle connections 75 s."""
    config = make_config(server=server)
    async with draining_service(config) as (url, _stop, _stopped), await connect(url) as stream:
        await stream.send_all(HEALTH)
        with trio.fail_after(PATIENCE):
            first = await read_response(stream)
        await trio.sleep(6)
        await stream.send_all(HEALTH)
        with trio.fail_after(PATIENCE):
            second = await read_response(stream)
    assert first.startswith(b"HTTP/1.1 200")
    assert second.startswith(b"HTTP/1.1 200")


async def test_an_idle_connection_is_closed_after_the_keep_alive_timeout(
    server: ServerKind, autojump_clock: trio.testing.MockClock
) -> None:
    """`service.keep_alive_timeout` is what the server applies: 30 s idle past 20 s, closed."""
    config = make_config(server=server, keep_alive_timeout=20)
    async with draining_service(config) as (url, _stop, _stopped), await connect(url) as stream:
        await stream.send_all(HEALTH)
        with trio.fail_after(PATIENCE):
            await read_response(stream)
        await trio.sleep(30)  # past the configured 20 s: the server has closed it
        with trio.fail_after(PATIENCE):
            left = await read_until_closed(stream)
    assert left == b""


def test_hypercorn_gets_the_keep_alive_timeout_and_backlog() -> None:
    """The defaults outlast clients' 5 s idle timeout and queue 4096 connections."""
    hconfig = hypercorn_config(Config())
    assert (hconfig.keep_alive_timeout, hconfig.backlog) == (75.0, 4096)
    tuned = hypercorn_config(make_config(keep_alive_timeout=120, backlog=512))
    assert (tuned.keep_alive_timeout, tuned.backlog) == (120, 512)


async def _listen_queue_size(port: int) -> int:
    """The listening socket's backlog as the kernel reports it (`ss`' Send-Q)."""
    result = await trio.run_process(
        ["ss", "-ltnH", f"sport = :{port}"], capture_stdout=True, stderr=subprocess.DEVNULL
    )
    (line,) = result.stdout.decode().splitlines()
    return int(line.split()[2])


async def test_the_listening_socket_has_the_configured_backlog(server: ServerKind) -> None:
    """The socket `serve` listens on queues `service.backlog` connections (not hypercorn's
    100), as far as net.core.somaxconn allows."""
    somaxconn = int(await trio.Path("/proc/sys/net/core/somaxconn").read_text())
    async with draining_service(make_config(server=server, backlog=1000)) as (url, _stop, _stopped):
        port = httpx.URL(url).port
        assert port is not None
        size = await _listen_queue_size(port)
    assert size == min(1000, somaxconn)


STALLED_UPLOAD = (
    b"POST /v1/chat/completions HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
    b'Transfer-Encoding: chunked\r\n\r\n5\r\n{"mod\r\n'
)


async def test_a_body_that_never_finishes_gets_408_and_the_connection_closes(
    server: ServerKind, autojump_clock: trio.testing.MockClock
) -> None:
    """A chunked upload that stalls half way is answered 408 once
    `service.request_read_timeout` passes, and its connection is closed."""
    config = make_config(server=server)  # request_read_timeout: 30 s by default
    async with draining_service(config) as (url, _stop, _stopped), await connect(url) as stream:
        await stream.send_all(STALLED_UPLOAD)
        with trio.fail_after(PATIENCE):
            answer = await read_until_closed(stream)
        async with httpx.AsyncClient(base_url=url) as client:
            health = await client.get("/healthz")
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408")
    assert b"connection: close" in head.lower()
    assert json.loads(body)["error"]["code"] == "request_timeout"
    assert health.status_code == 200


async def test_a_body_that_arrives_in_time_is_served(
    server: ServerKind, autojump_clock: trio.testing.MockClock
) -> None:
    """A body sent in pieces, each a while apart but whole within the timeout, is answered."""
    config = make_config(server=server)  # request_read_timeout: 30 s by default
    body = json.dumps({"model": "echo", "messages": [{"role": "user", "content": "hi"}]})
    async with draining_service(config) as (url, _stop, _stopped), await connect(url) as stream:
        await stream.send_all(STALLED_UPLOAD.split(b"5\r\n")[0])
        for piece in (body[:10], body[10:]):
            await trio.sleep(10)
            await stream.send_all(b"%x\r\n%s\r\n" % (len(piece), piece.encode()))
        await stream.send_all(b"0\r\n\r\n")
        with trio.fail_after(PATIENCE):
            answer = await read_response(stream)
    assert answer.startswith(b"HTTP/1.1 200")


# ---------------------------------------------------------------- past the grace period


def _chat(stream: bool) -> dict[str, Any]:
    return {"model": "echo", "stream": stream, "messages": [{"role": "user", "content": LONG}]}


async def _stream_text(client: httpx.AsyncClient, path: str, body: dict[str, Any]) -> str:
    """The whole streamed body; raises if the stream is cut rather than ended."""
    async with client.stream("POST", path, json=body) as response:
        assert response.status_code == 200
        return (await response.aread()).decode()


async def test_past_the_grace_period_every_client_gets_a_clean_end(
    server: ServerKind, autojump_clock: trio.testing.MockClock
) -> None:
    """Requests still running when the grace period ends: an OpenAI stream gets an error
    event then [DONE], an Anthropic stream an error event, a Responses stream
    response.failed, each ending properly; a non-streaming request gets a 503 in JSON."""
    config = make_config(server=server, pipeline={"grace_period": GRACE})
    worker = EchoWorker(token_delay=0.1)
    results: dict[str, Any] = {}
    anthropic = {"model": "echo", "max_tokens": 1000, "stream": True}
    anthropic["messages"] = [{"role": "user", "content": LONG}]
    responses = {"model": "echo", "stream": True, "input": LONG}
    async with draining_service(config, worker) as (url, stop, stopped):
        client = httpx.AsyncClient(base_url=url, timeout=None)

        async def run(name: str, call: Any) -> None:
            results[name] = await call()

        async with client, trio.open_nursery() as nursery:
            nursery.start_soon(
                run, "chat", partial(_stream_text, client, "/v1/chat/completions", _chat(True))
            )
            nursery.start_soon(
                run, "messages", partial(_stream_text, client, "/v1/messages", anthropic)
            )
            nursery.start_soon(
                run, "responses", partial(_stream_text, client, "/v1/responses", responses)
            )
            nursery.start_soon(
                run, "plain", partial(client.post, "/v1/chat/completions", json=_chat(False))
            )
            with trio.fail_after(PATIENCE):
                await wait_for_statistic(client, "inference_active", 4)
            stop.set()
        with trio.fail_after(PATIENCE):
            await stopped.wait()
    chat = [line for line in results["chat"].split("\n\n") if line]
    assert json.loads(chat[-2].removeprefix("data: "))["error"]["code"] == "cancelled"
    assert chat[-1] == "data: [DONE]"
    assert "event: error" in results["messages"].split("\n\n")[-2]
    assert "response.failed" in results["responses"]
    plain = results["plain"]
    assert plain.status_code == 503
    assert plain.json()["error"]["type"] == "service_unavailable"


async def test_a_request_arriving_while_draining_gets_503_and_connection_close(
    server: ServerKind, autojump_clock: trio.testing.MockClock
) -> None:
    """While the service drains it still answers: 503, and the connection closes after it."""
    config = make_config(server=server, pipeline={"grace_period": GRACE})
    worker = EchoWorker(token_delay=0.1)
    async with draining_service(config, worker) as (url, stop, stopped):
        client = httpx.AsyncClient(base_url=url, timeout=None)
        async with client, trio.open_nursery() as nursery:
            nursery.start_soon(partial(client.post, "/v1/chat/completions", json=_chat(False)))
            with trio.fail_after(PATIENCE):
                await wait_for_statistic(client, "inference_active", 1)
            stop.set()
            await trio.sleep(1)
            async with httpx.AsyncClient(base_url=url) as late:
                refused = await late.post("/v1/chat/completions", json=_chat(False))
        with trio.fail_after(PATIENCE):
            await stopped.wait()
    assert refused.status_code == 503
    assert refused.headers["connection"] == "close"
