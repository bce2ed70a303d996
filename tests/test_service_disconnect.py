"""A client that goes away cancels its request upstream at once (real server, real sockets)."""

from __future__ import annotations

import json
from functools import partial
from typing import Any

import httpx
import trio
import trio.testing
from service_helpers import (
    RecordingWorker,
    call_app,
    open_raw_post,
    running_service,
    serving_in_process,
    wait_for_statistic,
)

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


async def test_leaving_a_stream_before_its_first_event_cancels_the_request() -> None:
    """A streaming client that disconnects while the worker has sent nothing yet cancels the
    request at once: the stream's handler notices the disconnect, not a failed send."""
    worker = RecordingWorker(EchoWorker(first_token_delay=3600.0))
    body = {"model": "echo", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    async with running_service(worker=worker) as url, httpx.AsyncClient(base_url=url) as monitor:
        stream = await open_raw_post(url, "/v1/chat/completions", body)
        with trio.fail_after(PROMPTLY):
            await wait_for_statistic(monitor, "inference_active", 1)
        await stream.aclose()
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
        await _disconnect_after_first_bytes(
            url, "/v1/prompt/stream", {"model": "echo", "input": LONG_PROMPT}
        )
        with trio.fail_after(PROMPTLY):
            stats = await wait_for_statistic(monitor, "cancelled", 1)
    assert (stats["completed"], worker.cancelled) == (0, [worker.seen[0].request_id])


# In process, on Trio's mock clock: the ASGI application called directly, with a client
# whose receive() gives the body and then, once ``gone`` is set, http.disconnect.


CHAT_BODY = {"model": "echo", "messages": [{"role": "user", "content": LONG_PROMPT}]}


async def test_a_disconnect_while_waiting_cancels_the_request_at_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A client that goes away before a non-streaming answer cancels its request and the
    worker in that instant; the request is counted cancelled, once, and nothing answers."""
    worker = slow_worker()
    gone = trio.Event()
    async with serving_in_process(worker) as (app, pipeline):
        sent: list[dict[str, Any]] = []
        async with trio.open_nursery() as nursery:
            nursery.start_soon(
                partial(call_app, app, "/v1/chat/completions", CHAT_BODY, gone=gone, sent=sent)
            )
            await trio.sleep(3.0)
            gone.set()
        stats = pipeline.statistics()
    assert (stats.submitted, stats.cancelled, stats.completed, stats.in_flight) == (1, 1, 0, 0)
    assert worker.cancelled == [worker.seen[0].request_id]
    assert sent == []


async def test_a_disconnect_cancels_a_native_prompt_too(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """POST /v1/prompt cancels its request when the client disconnects while it waits."""
    worker = slow_worker()
    gone = trio.Event()
    async with serving_in_process(worker) as (app, pipeline):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(
                partial(call_app, app, "/v1/prompt", {"input": LONG_PROMPT}, gone=gone)
            )
            await trio.sleep(3.0)
            gone.set()
        stats = pipeline.statistics()
    assert (stats.cancelled, stats.completed, stats.in_flight) == (1, 0, 0)
    assert worker.cancelled == [worker.seen[0].request_id]


async def test_a_handler_cancelled_from_outside_counts_its_request_cancelled(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A handler the server cancels (shutdown past its grace period) ends its request as
    cancelled: nothing is left in flight or counted twice."""
    worker = slow_worker()
    async with serving_in_process(worker) as (app, pipeline):
        with trio.move_on_after(3.0):
            await call_app(app, "/v1/chat/completions", CHAT_BODY)
        await trio.testing.wait_all_tasks_blocked()
        stats = pipeline.statistics()
    assert (stats.submitted, stats.cancelled, stats.completed, stats.in_flight) == (1, 1, 0, 0)
    assert worker.cancelled == [worker.seen[0].request_id]


async def test_a_disconnect_while_the_body_arrives_submits_nothing(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A client gone before its body is whole is not answered and starts no request."""
    async with serving_in_process(slow_worker()) as (app, pipeline):
        gone = trio.Event()
        gone.set()
        sent = await call_app(app, "/v1/chat/completions", CHAT_BODY, gone=gone, cut_body=True)
        stats = pipeline.statistics()
    assert (sent, stats.submitted) == ([], 0)


async def test_a_client_that_stays_gets_its_answer(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Without a disconnect, the answer comes back and the wait for one ends with it."""
    async with serving_in_process(slow_worker()) as (app, pipeline):
        body = {"model": "echo", "messages": [{"role": "user", "content": "a b c"}]}
        sent = await call_app(app, "/v1/chat/completions", body)
        stats = pipeline.statistics()
    assert sent[0]["status"] == 200
    answer = json.loads(sent[1]["body"])
    assert answer["choices"][0]["message"]["content"] == "a b c"
    assert (stats.completed, stats.in_flight) == (1, 0)
