"""Clients that stop reading, against the real server: they cannot hold a provider slot, and
their connections are reset after ``service.send_timeout``.

Hypercorn shields its socket writes from cancellation, so a client that never reads its
answer would, without the service's own bounds, hold the task writing to it for as long as
the connection lives. Each test runs the real server (hypercorn's Trio worker on a loopback
socket) inside the test's Trio run, on the mock clock: the kernel fills the socket buffers
at once on loopback, and the timeouts then pass in virtual time. No test asserts a duration.
"""

from __future__ import annotations

import json
import socket
from typing import Any

import attrs
import httpx
import trio
import trio.testing
from service_helpers import make_config, running_app, statistics

from trio_orchestrator.config import Config, PipelineConfig
from trio_orchestrator.events import Done, TextDelta
from trio_orchestrator.service.stalls import SendWatch
from trio_orchestrator.types import PromptRequest
from trio_orchestrator.workers import EventSink

PATIENCE = 200  # virtual seconds: a hang guard, never asserted on
SEND_TIMEOUT = 5.0
CHUNK = 16_384
# Far more than the kernel's buffers for one loopback connection (a few MB): an answer a
# client that never reads cannot take in.
FLOOD_CHUNKS = 4_096
LARGE_CHUNKS = 1_024  # 16 MB, whole in one non-streamed answer


@attrs.define(eq=False)
class FloodWorker:
    """Answers ``max_tokens`` chunks of 16 KB as fast as it can (``ok`` without it)."""

    model: str = "echo"

    async def generate(self, request: PromptRequest, emit: EventSink) -> None:
        """Emit the chunks, each with a checkpoint, then Done."""
        chunks = request.params.max_tokens
        if chunks is None:
            await emit(TextDelta("ok"))
            await emit(Done("stop", "ok", None, (), self.model))
            return
        piece = "x" * CHUNK
        for _ in range(chunks):
            await emit(TextDelta(piece))
            await trio.lowlevel.checkpoint()
        await emit(Done("stop", piece * chunks, None, (), self.model))


def _config(**service: Any) -> Config:
    """One request in inference at a time: a slot held by one client is held from all."""
    base = make_config(**({"send_timeout": SEND_TIMEOUT} | service))
    # Every request's deadline (120 s) is well inside the hang guard: a request kept from
    # the slot past it ends 408, not in the guard.
    pipeline = PipelineConfig(inference_concurrency=1, request_timeout=120.0)
    return attrs.evolve(base, pipeline=pipeline)


def _chat(chunks: int | None, stream: bool) -> bytes:
    body: dict[str, Any] = {"model": "echo", "stream": stream}
    body["messages"] = [{"role": "user", "content": "flood"}]
    if chunks is not None:
        body["max_tokens"] = chunks
    return json.dumps(body).encode()


async def _non_reader(
    url: str, body: bytes, path: str = "/v1/chat/completions"
) -> trio.SocketStream:
    """A connection that sends ``body`` to the chat endpoint and will read nothing: its
    receive buffer is made small so the server's writes stall soon."""
    parsed = httpx.URL(url)
    assert parsed.port is not None
    sock = trio.socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    await sock.connect((parsed.host, parsed.port))
    stream = trio.SocketStream(sock)
    head = (
        f"POST {path} HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    await stream.send_all(head.encode() + body)
    return stream


async def _ending(stream: trio.SocketStream) -> str:
    """Read what the server sent until it ends the connection: ``reset`` or ``eof``; the
    caller bounds the wait."""
    try:
        while await stream.receive_some(1 << 20):
            pass
    except trio.BrokenResourceError:
        return "reset"
    return "eof"


async def _until(check: Any) -> None:
    """Wait (in virtual time) until ``check()`` holds; the caller bounds the wait."""
    while not check():  # noqa: ASYNC110 (the state is the server's; nothing signals it)
        await trio.sleep(0.1)


async def test_a_client_that_never_reads_its_stream_does_not_hold_the_only_slot(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """With one inference slot, a streamed chat whose client reads nothing is cancelled
    (counted once) and frees the slot while its connection is still open: another client's
    request is answered within its deadline; the stalled connection is reset later, at
    send_timeout."""
    # send_timeout far past the second request's deadline: only the stream's own bound can
    # free the slot in time for it.
    async with running_app(_config(send_timeout=600.0), FloodWorker()) as (url, app):
        state = app.state.service
        stalled = await _non_reader(url, _chat(FLOOD_CHUNKS, stream=True))
        async with stalled, httpx.AsyncClient(base_url=url, timeout=None) as client:
            with trio.fail_after(PATIENCE):
                await _until(lambda: state.pipeline.statistics().submitted == 1)
                body = json.loads(_chat(None, stream=False))
                answer = await client.post("/v1/chat/completions", json=body)
            still_open = state.sends.closed == 0
            stats = await statistics(client)
            with trio.fail_after(10 * PATIENCE):
                await _until(lambda: state.sends.closed == 1)
                ending = await _ending(stalled)
    assert answer.status_code == 200, answer.text
    assert answer.json()["choices"][0]["message"]["content"] == "ok"
    assert still_open
    assert (stats["submitted"], stats["completed"], stats["cancelled"]) == (2, 1, 1)
    assert stats["in_flight"] == 0
    assert ending == "reset"


async def test_a_client_that_never_reads_a_whole_answer_loses_its_connection(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A non-streamed answer larger than the socket buffers, to a client that reads
    nothing: past send_timeout its connection is reset (and counted in /metrics), and the
    service goes on serving."""
    async with running_app(_config(), FloodWorker()) as (url, app):
        sends = app.state.service.sends
        stalled = await _non_reader(url, _chat(LARGE_CHUNKS, stream=False))
        async with stalled, httpx.AsyncClient(base_url=url, timeout=None) as client:
            with trio.fail_after(PATIENCE):
                await _until(lambda: sends.closed == 1)
                ending = await _ending(stalled)
                health = await client.get("/healthz")
                answer = await client.post(
                    "/v1/chat/completions", json=json.loads(_chat(None, False))
                )
            stats = await statistics(client)
            metrics = (await client.get("/metrics")).text
    assert ending == "reset"
    assert "trio_orchestrator_slow_clients_reset_total 1.0" in metrics
    assert health.status_code == 200
    assert answer.status_code == 200
    assert stats["completed"] == 2  # the large answer was ready: only its delivery stalled
    assert stats["in_flight"] == 0


async def test_a_stalled_anthropic_stream_is_reset_and_its_request_cancelled_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """An Anthropic Messages stream (the handler's task writes it) whose client reads
    nothing: past send_timeout its connection is reset and its request cancelled, once."""
    body = {"model": "echo", "max_tokens": FLOOD_CHUNKS, "stream": True}
    body["messages"] = [{"role": "user", "content": "flood"}]
    async with running_app(_config(), FloodWorker()) as (url, app):
        state = app.state.service
        stalled = await _non_reader(url, json.dumps(body).encode(), "/v1/messages")
        async with stalled, httpx.AsyncClient(base_url=url, timeout=None) as client:
            with trio.fail_after(PATIENCE):
                await _until(lambda: state.sends.closed == 1)
                ending = await _ending(stalled)
                await _until(lambda: state.pipeline.statistics().in_flight == 0)
            stats = await statistics(client)
    assert ending == "reset"
    assert (stats["submitted"], stats["cancelled"], stats["in_flight"]) == (1, 1, 0)


async def test_send_timeout_is_reloaded_in_place() -> None:
    """A reload of `[service] send_timeout` and `stream_buffer_bytes` reaches the running
    service's watch, which the next stalled send and the next stream use."""
    config = _config()
    changed = attrs.evolve(
        config, service=attrs.evolve(config.service, send_timeout=1.5, stream_buffer_bytes=1024)
    )
    async with running_app(config, FloodWorker()) as (_url, app):
        state = app.state.service
        report = state.gateway.reload(changed)
        sends = state.sends
    assert not report.refused, report
    assert (sends.send_timeout, sends.stream_buffer_bytes) == (1.5, 1024)


@attrs.define(eq=False)
class _Sender:
    """Records the watch's verdict."""

    resets: int = 0

    def stalled(self) -> None:
        """Count the reset."""
        self.resets += 1


async def test_the_watch_resets_only_sends_still_waiting_past_the_timeout(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A send still under way after send_timeout is reset once; one that ended in time,
    or that is younger, is left alone."""
    watch = SendWatch(send_timeout=10.0, stream_buffer_bytes=1024)
    stuck, quick, late = _Sender(), _Sender(), _Sender()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(watch.run)
        watch.begin(stuck)
        watch.begin(quick)
        await trio.sleep(5)
        watch.end(quick)
        watch.begin(late)
        await trio.sleep(8)  # stuck: 13 s, late: 8 s
        first = (stuck.resets, quick.resets, late.resets)
        await trio.sleep(30)
        nursery.cancel_scope.cancel()
    assert first == (1, 0, 0)
    assert (stuck.resets, quick.resets, late.resets) == (1, 0, 1)
    assert watch.closed == 2
