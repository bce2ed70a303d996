"""Helpers for the service tests: a real server on a free port, and small test workers."""

from __future__ import annotations

import json
import os
import subprocess
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from functools import partial
from pathlib import Path
from typing import Any

import attrs
import httpx
import trio
from terminal import COMMAND, LISTENING, PROMPTLY, child_env

from trio_orchestrator.config import Config, PipelineConfig
from trio_orchestrator.config.service import ServiceConfig
from trio_orchestrator.errors import WorkerError
from trio_orchestrator.events import Done, Embeddings
from trio_orchestrator.gateway import open_gateway
from trio_orchestrator.pipeline import Pipeline
from trio_orchestrator.service import create_app, serve
from trio_orchestrator.types import PromptRequest
from trio_orchestrator.workers import EchoWorker, EventSink, ModelWorker


def make_config(pipeline: dict[str, Any] | None = None, **service: Any) -> Config:
    """A configuration listening on a free port of 127.0.0.1."""
    return Config(
        pipeline=PipelineConfig(**(pipeline or {})),
        service=ServiceConfig(**({"port": 0} | service)),
    )


@asynccontextmanager
async def running_service(
    config: Config | None = None, worker: ModelWorker | None = None
) -> AsyncIterator[str]:
    """Serve on 127.0.0.1 (a free port) for the block; yield the base URL."""
    async with trio.open_nursery() as nursery:
        stop = trio.Event()
        server = partial(serve, config or make_config(), worker=worker, shutdown_trigger=stop.wait)
        url: str = await nursery.start(server)
        try:
            yield url
        finally:
            stop.set()


@asynccontextmanager
async def running_app(
    config: Config | None = None, worker: ModelWorker | None = None
) -> AsyncIterator[tuple[str, Any]]:
    """Serve on 127.0.0.1 (a free port), as :func:`running_service` does, and yield the base
    URL with the application, whose ``state.service`` holds the running gateway."""
    from hypercorn.trio import serve as hypercorn_serve

    from trio_orchestrator.service.server import hypercorn_config

    config = config or make_config()
    app = create_app(config, worker)
    async with trio.open_nursery() as nursery:
        stop = trio.Event()
        server = partial(hypercorn_serve, app, hypercorn_config(config), shutdown_trigger=stop.wait)
        binds: list[str] = await nursery.start(server)
        try:
            yield binds[0], app
        finally:
            stop.set()


@contextmanager
def serving_subprocess(config: Path) -> Iterator[str]:
    """Run ``trio-orchestrator serve --config FILE --port 0`` for the block, for a test that
    is not async (a browser driven by Playwright's synchronous API); yield its URL.

    The async twin is ``terminal.serve_process``. Its output is drained by a thread, so a
    chatty service never blocks on a full pipe.
    """
    command = [*COMMAND, "serve", "--config", str(config), "--port", "0"]
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=child_env()
    )
    assert process.stdout is not None
    output = bytearray()
    found = threading.Event()

    def drain() -> None:
        assert process.stdout is not None
        while chunk := os.read(process.stdout.fileno(), 65536):
            output.extend(chunk)
            if LISTENING.search(output):
                found.set()
        found.set()  # it exited: the wait below ends and says so

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    try:
        found.wait(PROMPTLY)
        match = LISTENING.search(output)
        assert match is not None, f"serve did not listen: {output.decode(errors='replace')}"
        yield match.group(1).decode()
        process.terminate()
        process.wait(PROMPTLY)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        reader.join(PROMPTLY)
        process.stdout.close()


async def statistics(client: httpx.AsyncClient) -> dict[str, Any]:
    """The pipeline statistics from ``GET /v1/stats``."""
    response = await client.get("/v1/stats")
    response.raise_for_status()
    stats: dict[str, Any] = response.json()["pipeline"]
    return stats


async def wait_for_statistic(client: httpx.AsyncClient, name: str, value: int) -> dict[str, Any]:
    """Poll ``/v1/stats`` until ``name`` reaches ``value``; the caller bounds the wait."""
    while True:
        stats = await statistics(client)
        if stats[name] >= value:
            return stats
        await trio.sleep(0.01)


async def open_raw_post(url: str, path: str, body: dict[str, Any]) -> trio.SocketStream:
    """Send a POST by hand on a fresh connection and return the connection, unread.

    Tests that disconnect mid-response use this rather than an HTTP client, so that closing
    the socket is the whole story.
    """
    host, port = httpx.URL(url).host, httpx.URL(url).port
    assert port is not None
    stream = await trio.open_tcp_stream(host, port)
    data = json.dumps(body).encode()
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(data)}\r\n\r\n"
    )
    await stream.send_all(head.encode() + data)
    return stream


@asynccontextmanager
async def serving_in_process(
    worker: ModelWorker, config: Config | None = None
) -> AsyncIterator[tuple[Any, Pipeline]]:
    """The service's application around an open pipeline, without a server or lifespan:
    for calling it directly, on Trio's mock clock."""
    config = config or make_config()
    app = create_app(config, worker)
    async with open_gateway(config, worker=worker) as gateway:
        state = app.state.service
        state.gateway, state.pipeline, state.models = gateway, gateway.pipeline, ("echo",)
        yield app, gateway.pipeline


async def call_app(
    app: Any,
    path: str,
    body: dict[str, Any] | bytes,
    *,
    gone: trio.Event | None = None,
    sent: list[dict[str, Any]] | None = None,
    chunk: int | None = None,
    cut_body: bool = False,
    root_path: str = "",
    headers: list[tuple[bytes, bytes]] = [],  # noqa: B006 - read only
    method: str = "POST",
    content_length: bool = True,
) -> list[dict[str, Any]]:
    """POST ``body`` to ``path`` by calling the ASGI ``app`` directly; return what it sent.

    Args:
        gone: the client disconnects once it is set (after the body); never without it.
        sent: where the application's messages go (to see them while it runs).
        chunk: send the body in pieces of this many bytes.
        cut_body: disconnect before the last piece of the body.
        root_path: the ASGI ``root_path`` (prefixed to ``path``).
        headers: more request headers.
        method: the request's method.
        content_length: send a Content-Length header.
    """
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    full_path = root_path + path
    scope: dict[str, Any] = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method,
        "scheme": "http", "path": full_path, "raw_path": full_path.encode(), "query_string": b"",
        "root_path": root_path, "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 2),
        "headers": [(b"content-type", b"application/json"), *headers],
    }  # fmt: skip
    if content_length:
        scope["headers"].append((b"content-length", b"%d" % len(data)))
    size = chunk or max(1, len(data))
    pieces = [data[i : i + size] for i in range(0, len(data), size)] or [b""]
    messages = [
        {"type": "http.request", "body": piece, "more_body": i < len(pieces) - 1}
        for i, piece in enumerate(pieces)
    ]
    if cut_body:
        messages.pop()
    messages.reverse()
    sent = [] if sent is None else sent
    never = trio.Event()

    async def receive() -> dict[str, Any]:
        if messages:
            return messages.pop()
        await (never if gone is None else gone).wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app(scope, receive, send)
    return sent


@attrs.define(eq=False)
class RaisingWorker:
    """Raises ``error`` for every request."""

    error: BaseException
    model: str = "echo"

    async def generate(self, request: PromptRequest, emit: EventSink) -> None:
        """Raise the configured error."""
        await trio.lowlevel.checkpoint()
        raise self.error


@attrs.define(eq=False)
class RecordingWorker:
    """Echoes, remembering each request it saw and whether its call was cancelled."""

    inner: EchoWorker = attrs.field(factory=EchoWorker)
    seen: list[PromptRequest] = attrs.field(factory=list)
    cancelled: list[str] = attrs.field(factory=list)
    model: str = "echo"

    async def generate(self, request: PromptRequest, emit: EventSink) -> None:
        """Echo; record the request, and its cancellation if it is cancelled."""
        self.seen.append(request)
        try:
            await self.inner.generate(request, emit)
        except trio.Cancelled:
            self.cancelled.append(request.request_id)
            raise


@attrs.define(eq=False)
class EmbeddingWorker:
    """An echo worker whose embeddings are toys: each text becomes [length, word count]."""

    model: str = "echo"

    async def generate(self, request: PromptRequest, emit: EventSink) -> None:
        """Embed an embedding request; echo any other."""
        if request.embed is None:
            await EchoWorker().generate(request, emit)
            return
        await trio.lowlevel.checkpoint()
        texts = [str(t) for t in request.embed]
        await emit(Embeddings(tuple((float(len(t)), float(len(t.split()))) for t in texts)))
        await emit(Done("stop", "", None, (), self.model))


__all__ = [
    "EmbeddingWorker",
    "RaisingWorker",
    "RecordingWorker",
    "WorkerError",
    "call_app",
    "make_config",
    "open_raw_post",
    "running_service",
    "serving_in_process",
    "serving_subprocess",
    "statistics",
    "wait_for_statistic",
]
