"""A client that goes away cancels its request upstream at once (real server, real sockets)."""

from __future__ import annotations

import httpx
import trio
from service_helpers import RecordingWorker, open_raw_post, running_service, wait_for_statistic

from trio_orchestrator.workers import EchoWorker

# 400 tokens at 50 ms: 20 s if nobody cancels it.
LONG_PROMPT = " ".join(["word"] * 400)
# Far less than the request's 20 s: it was cancelled, not left to finish.
PROMPTLY = 5


def slow_worker() -> RecordingWorker:
    return RecordingWorker(EchoWorker(token_delay=0.05))


async def _disconnect_after_first_bytes(url: str, path: str, body: dict[str, object]) -> None:
    stream = await open_raw_post(url, path, body)
    with trio.fail_after(PROMPTLY):
        await stream.receive_some()  # the response began: the request is in the worker
    await stream.aclose()


async def test_closing_a_stream_mid_way_cancels_the_request() -> None:
    """A streaming client that disconnects leaves the request cancelled and the worker stopped."""
    worker = slow_worker()
    body = {"model": "echo", "stream": True, "messages": [{"role": "user", "content": LONG_PROMPT}]}
    async with running_service(worker=worker) as url, httpx.AsyncClient(base_url=url) as monitor:
        await _disconnect_after_first_bytes(url, "/v1/chat/completions", body)
        with trio.fail_after(PROMPTLY):
            stats = await wait_for_statistic(monitor, "cancelled", 1)
    assert (stats["cancelled"], stats["completed"], stats["in_flight"]) == (1, 0, 0)
    assert worker.cancelled == [worker.seen[0].request_id]


async def test_abandoning_a_waiting_request_cancels_it() -> None:
    """A non-streaming client that disconnects while waiting leaves the request cancelled."""
    worker = slow_worker()
    body = {"model": "echo", "messages": [{"role": "user", "content": LONG_PROMPT}]}
    async with running_service(worker=worker) as url, httpx.AsyncClient(base_url=url) as monitor:
        stream = await open_raw_post(url, "/v1/chat/completions", body)
        with trio.fail_after(PROMPTLY):
            await wait_for_statistic(monitor, "inference_active", 1)
        await stream.aclose()
        with trio.fail_after(PROMPTLY):
            stats = await wait_for_statistic(monitor, "cancelled", 1)
    assert (stats["cancelled"], stats["completed"], stats["in_flight"]) == (1, 0, 0)
    assert worker.cancelled == [worker.seen[0].request_id]


async def test_a_native_stream_disconnect_cancels_the_request() -> None:
    """Disconnecting from /v1/prompt/stream cancels the request too."""
    worker = slow_worker()
    async with running_service(worker=worker) as url, httpx.AsyncClient(base_url=url) as monitor:
        await _disconnect_after_first_bytes(url, "/v1/prompt/stream", {"input": LONG_PROMPT})
        with trio.fail_after(PROMPTLY):
            stats = await wait_for_statistic(monitor, "cancelled", 1)
    assert (stats["completed"], worker.cancelled) == (0, [worker.seen[0].request_id])
