"""Memory per request: nothing of a request outlives it, idle capacity is bounded, and the
bytes a stream holds between tokens are the size of what they say."""

from __future__ import annotations

import gc
import tracemalloc
import types
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import TypeVar

import attrs
import httpx
import pytest
import trio
import trio.testing
from service_helpers import make_config, running_service
from test_accounting import live_tasks

import trio_orchestrator
from trio_orchestrator import PromptRequest, open_pipeline
from trio_orchestrator.config import Config, PipelineConfig, parse_config
from trio_orchestrator.events import Done, TextDelta, Usage
from trio_orchestrator.pipeline import Pipeline
from trio_orchestrator.pipeline.core import IDLE_RUNNERS
from trio_orchestrator.pipeline.job import EventPipe, Job
from trio_orchestrator.service import h1server
from trio_orchestrator.service.jsonenc import json_bytes
from trio_orchestrator.workers import EventSink


@attrs.define(eq=False)
class GatedWorker:
    """Sends one token, then holds every request until ``size`` of them are in it at once:
    requests that are truly concurrent, with no clock involved."""

    size: int
    _inside: int = 0
    _all_in: trio.Event = attrs.field(factory=trio.Event)

    async def generate(self, request: PromptRequest, emit: EventSink) -> None:
        """One token, the wait for the others, one more token and ``Done``."""
        await emit(TextDelta("held "))
        self._inside += 1
        if self._inside >= self.size:
            self._all_in.set()
        await self._all_in.wait()
        await emit(TextDelta("released"))
        usage = Usage(1, 2)
        await emit(usage)
        await emit(Done("stop", "held released", usage, (), "echo"))

    def model_names(self) -> tuple[str, ...]:
        """It answers as the echo model."""
        return ("echo",)


def _live(kind: type) -> int:
    gc.collect()
    return sum(1 for thing in gc.get_objects() if isinstance(thing, kind))


def _tasks(name: str) -> int:
    return sum(task.name == name for task in live_tasks())


T = TypeVar("T")

CHAT = {"model": "echo", "messages": [{"role": "user", "content": "hi"}]}


async def test_no_request_outlives_its_answer_through_the_service() -> None:
    """After concurrent streamed and plain chats end, no pipeline job nor stream buffer of
    theirs is alive (the deadline reaper, stage loops and parked runners keep none)."""
    streams = 12
    worker = GatedWorker(size=2 * streams)
    before = _live(Job)

    async def chat(client: httpx.AsyncClient, stream: bool) -> None:
        body = {**CHAT, "stream": stream}
        async with client.stream("POST", "/v1/chat/completions", json=body) as response:
            assert response.status_code == 200
            text = (await response.aread()).decode()
        assert "released" in text

    async with running_service(make_config(), worker) as url:
        limits = httpx.Limits(max_connections=2 * streams)
        async with httpx.AsyncClient(base_url=url, limits=limits) as client:
            async with trio.open_nursery() as nursery:
                for i in range(2 * streams):
                    nursery.start_soon(chat, client, i % 2 == 0)
            await trio.testing.wait_all_tasks_blocked()
            assert _live(Job) == before
            assert _live(EventPipe) == 0


@attrs.define(eq=False)
class HeldWorker:
    """Sends one token, then holds every request until ``release`` is set."""

    release: trio.Event = attrs.field(factory=trio.Event)

    async def generate(self, request: PromptRequest, emit: EventSink) -> None:
        """One token, the wait, ``Done``."""
        await emit(TextDelta("held "))
        await self.release.wait()
        await emit(Done("stop", "held ", None, (), "echo"))

    def model_names(self) -> tuple[str, ...]:
        """It answers as the echo model."""
        return ("echo",)


def _server_tasks() -> int:
    # The test's own client tasks are named after this module.
    return sum("test_memory" not in task.name for task in live_tasks())


@pytest.mark.parametrize(("server", "tasks"), [("httptools", 2), ("hypercorn", 3)])
async def test_an_open_stream_costs_two_tasks_through_the_service(server: str, tasks: int) -> None:
    """While streamed chats are open, the service runs two tasks for each (the connection's,
    in which the application runs, and one inference runner; hypercorn runs the application
    in a task of its own): none waits for a disconnect."""
    streams = 6
    config = make_config(server=server)
    idle, busy, done = await _while_streams_open(config, streams, _server_tasks)
    assert (busy - idle) / streams == tasks
    assert done == streams


async def test_the_idle_inference_runners_are_capped() -> None:
    """A burst wider than the idle pool leaves at most IDLE_RUNNERS runner tasks parked."""
    burst = IDLE_RUNNERS + 40
    # They all end at once: room for all of them in the last stages.
    cfg = PipelineConfig(inference_concurrency=burst, post_capacity=burst, stream_capacity=burst)
    config = Config(pipeline=cfg)
    worker = GatedWorker(size=burst)

    async def one(pipeline: Pipeline) -> None:
        async with pipeline.stream(PromptRequest(input="hi")) as events:
            async for _ in events:
                pass

    async with open_pipeline(worker, config) as pipeline:
        async with trio.open_nursery() as nursery:
            for _ in range(burst):
                nursery.start_soon(one, pipeline)
        await trio.testing.wait_all_tasks_blocked()
        assert _tasks("trio_orchestrator.inference_runner") == IDLE_RUNNERS


def test_json_bytes_hold_no_more_than_their_size() -> None:
    """A small JSON chunk held between tokens costs about its length, not orjson's 4 KB
    working buffer."""
    chunk = {"id": "chatcmpl-1", "choices": [{"index": 0, "delta": {"content": "hi"}}]}
    tracemalloc.start()
    try:
        held = [json_bytes(chunk) for _ in range(100)]
        traced, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(held) == 100
    assert traced < 100 * 256


# Frames that only passed a call on: each was held, with its locals, for a stream's whole life.
_PASS_THROUGH = frozenset(
    {
        "ChatFastPath.__call__",
        "PushedEventStream._pump",
        "BoundedBody.receive",
    }
)


def _held_frames() -> dict[str, int]:
    gc.collect()
    found: dict[str, int] = {}
    for thing in gc.get_objects():
        if isinstance(thing, types.CoroutineType):
            name = thing.cr_code.co_qualname
            found[name] = found.get(name, 0) + 1
    return found


async def _while_streams_open(
    config: Config, streams: int, look: Callable[[], T], admin: str = ""
) -> tuple[T, T, int]:
    """What ``look`` finds before and while ``streams`` streamed chats are open through the
    service, and how many streams were answered to their end. With ``admin``, a virtual key
    is made first and the chats use it."""
    worker = HeldWorker()
    first = [trio.Event() for _ in range(streams)]
    received: list[str] = []

    async def chat(client: httpx.AsyncClient, i: int) -> None:
        body = {**CHAT, "stream": True}
        async with client.stream("POST", "/v1/chat/completions", json=body) as response:
            assert response.status_code == 200
            async for text in response.aiter_text():
                first[i].set()
                received.append(text)

    async with running_service(config, worker) as url:
        limits = httpx.Limits(max_connections=streams)
        async with httpx.AsyncClient(base_url=url, limits=limits) as client:
            if admin:
                made = await client.post(
                    "/v1/admin/keys", json={}, headers={"authorization": f"Bearer {admin}"}
                )
                assert made.status_code == 201, made.text
                client.headers["authorization"] = f"Bearer {made.json()['key']}"
            await trio.testing.wait_all_tasks_blocked()
            idle = look()
            async with trio.open_nursery() as nursery:
                for i in range(streams):
                    nursery.start_soon(chat, client, i)
                for event in first:
                    await event.wait()
                await trio.testing.wait_all_tasks_blocked()
                busy = look()
                worker.release.set()
    return idle, busy, "".join(received).count("data: [DONE]")


async def test_an_open_stream_holds_no_pass_through_frame_through_the_service() -> None:
    """While streamed chats are open, none holds a coroutine of ours that only passes the
    call on (the app's dispatch, the fast path's call, the body's receive, the pump): the
    handler's chain is as short as the work it does."""
    streams = 6
    # The lifespan's own dispatch is held all along: counted in both looks.
    idle, frames, done = await _while_streams_open(make_config(), streams, _held_frames)
    held = {name: frames.get(name, 0) - idle.get(name, 0) for name in _PASS_THROUGH}
    assert frames.get("PushedEventStream.__call__") == streams  # the streams are open
    assert held == dict.fromkeys(_PASS_THROUGH, 0)
    assert done == streams


_PACKAGE = str(Path(trio_orchestrator.__file__).parent)
_SERVER = str(Path(h1server.__file__))


def _package_frames(server: bool = False) -> dict[str, int]:
    """The coroutine frames of this package alive now, by qualified name: the HTTP server's
    (``server``) or the rest's."""
    gc.collect()
    found: dict[str, int] = {}
    for thing in gc.get_objects():
        if not isinstance(thing, types.CoroutineType):
            continue
        filename = thing.cr_code.co_filename
        if filename.startswith(_PACKAGE) and (filename == _SERVER) == server:
            name = thing.cr_code.co_qualname
            found[name] = found.get(name, 0) + 1
    return found


async def test_an_open_stream_holds_three_frames_of_the_package() -> None:
    """While streamed chats are open (default settings: stage timing's hooks on), each holds
    exactly three coroutine frames of this package, each doing work for its whole life: the
    app's (it counts the request), the stream's loop, the inference runner's. Neither the
    fast path's handler (it returns the stream to the app) nor a frame for the call of the
    worker (hooks with no context to enter add none) stays."""
    streams = 6
    idle, frames, done = await _while_streams_open(make_config(), streams, _package_frames)
    added = {name: frames[name] - idle.get(name, 0) for name in frames}
    held = {name: count / streams for name, count in added.items() if count}
    assert held == {
        "ServiceApp.__call__": 1,
        "PushedEventStream.__call__": 1,
        "Pipeline._runner": 1,
    }
    assert done == streams


async def test_an_open_stream_holds_three_frames_of_the_server() -> None:
    """The HTTP server holds three coroutine frames for an open stream: the connection's
    loop, the request's answer (which called the application), and the ``receive`` that
    waits for the client to leave."""
    streams = 6
    idle, frames, done = await _while_streams_open(
        make_config(), streams, partial(_package_frames, server=True)
    )
    added = {name: frames[name] - idle.get(name, 0) for name in frames}
    held = {name: count / streams for name, count in added.items() if count}
    assert held == {"_Connection.run": 1, "_Connection._answer": 1, "_Connection.receive": 1}
    assert done == streams


# The layers storage adds in front of the worker: each only checks or notes, then passes on.
_STORAGE_PASS_THROUGH = frozenset({"NotingWorker.generate", "KeyPolicyWorker.generate"})


async def test_storage_layers_hold_no_frame_per_open_stream() -> None:
    """With spend and the request log on and a virtual key calling, the key-policy and
    noting layers add no coroutine frame to an open stream (each was resumed at every
    event, on the path whose cost the request log must keep under 5 %)."""
    streams = 4
    admin = "sk-admin-memory"
    config = parse_config(
        f'[service]\nport = 0\n[[service.api_keys]]\nkey = "{admin}"\nadmin = true\n'
        '[storage]\nbackend = "sqlite"\n'
    )
    idle, frames, done = await _while_streams_open(config, streams, _held_frames, admin=admin)
    assert frames.get("PushedEventStream.__call__") == streams  # the streams are open
    held = {name: frames.get(name, 0) - idle.get(name, 0) for name in _STORAGE_PASS_THROUGH}
    assert held == dict.fromkeys(_STORAGE_PASS_THROUGH, 0)
    assert done == streams
