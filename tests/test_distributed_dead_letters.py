"""Durable dead letters on a Redis stream: listable and replayable from any process."""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import attrs
import pytest
import trio
from redis_fixture import RedisServer, redis_server

from trio_orchestrator import Config, PromptRequest, open_gateway, open_pipeline
from trio_orchestrator.config import PipelineConfig
from trio_orchestrator.distributed import DistributedConfig, open_redis
from trio_orchestrator.distributed.dead_letters import RedisDeadLetterQueue, replay_shared
from trio_orchestrator.errors import RequestShed
from trio_orchestrator.events import Done, TextDelta
from trio_orchestrator.pipeline import DeadLetter, Pipeline
from trio_orchestrator.resilience.config import PriorityConfig
from trio_orchestrator.types import GenerationParams
from trio_orchestrator.workers.base import EventSink

__all__ = ["redis_server"]


def settings(server: RedisServer) -> DistributedConfig:
    """Quick health checks against ``server``, and room for a loaded machine's slow answer
    (with the default 0.25 s, one slow PING under CI's load put the queue on local state for
    a moment and the letters it wrote there never reached the stream the test counts)."""
    return DistributedConfig(redis_url=server.url, health_interval=0.05, operation_timeout=2)


def letter(i: int) -> DeadLetter:
    """A dead letter whose request carries everything a replay needs."""
    request = PromptRequest(
        input=f"r{i}",
        request_id=f"r{i}",
        params=GenerationParams(model="m", max_tokens=5, stop=("x",)),
        meta={"user": "u"},
        timeout=30,
    )
    return DeadLetter(request, "inference", "the inference channel was full", 0.0)


@asynccontextmanager
async def queue(server: RedisServer, capacity: int = 100) -> AsyncIterator[RedisDeadLetterQueue]:
    """A shared dead-letter queue with its writer running."""
    async with open_redis(settings(server)) as redis, trio.open_nursery() as nursery:
        dead_letters = RedisDeadLetterQueue(capacity, connection=redis)
        nursery.start_soon(dead_letters.run)
        yield dead_letters
        dead_letters.close()


async def eventually(check: Callable[[], Awaitable[bool]]) -> None:
    """Poll ``check`` until it is true (the writer works in the background); 5 s at most."""
    with trio.fail_after(5):
        # Polling: what is checked lives in Redis, with no event to wait on.
        while not await check():  # noqa: ASYNC110
            await trio.sleep(0.01)


async def test_any_process_lists_the_letters(redis_server: RedisServer) -> None:
    """Letters added on one process are listed, whole, on another."""
    async with queue(redis_server) as a, queue(redis_server) as b:
        for i in range(3):
            a.add(letter(i))

        async def three() -> bool:
            return len(await b.list_shared()) == 3

        await eventually(three)
        letters = await b.list_shared()
    assert [d.id for d in letters] == ["r0", "r1", "r2"]
    first = letters[0]
    assert (first.stage, first.reason) == ("inference", "the inference channel was full")
    assert first.request.params.stop == ("x",)
    assert first.request.meta == {"user": "u"}
    assert first.request.timeout == 30


async def test_a_letter_is_taken_once_across_processes(redis_server: RedisServer) -> None:
    """Two processes taking the same letter at once: one gets it, the other a KeyError."""
    async with queue(redis_server) as a, queue(redis_server) as b:
        a.add(letter(1))

        async def written() -> bool:
            return a.shared_statistics().written == 1

        await eventually(written)
        results: list[str] = []

        async def take(q: RedisDeadLetterQueue) -> None:
            try:
                results.append((await q.take_shared("r1")).id)
            except KeyError:
                results.append("missing")

        async with trio.open_nursery() as nursery:
            nursery.start_soon(take, a)
            nursery.start_soon(take, b)
        assert sorted(results) == ["missing", "r1"]
        assert await a.list_shared() == []


async def test_a_local_take_also_leaves_the_stream(redis_server: RedisServer) -> None:
    """Replaying a letter through the synchronous take removes it from the stream too."""
    async with queue(redis_server) as a:
        a.add(letter(1))
        a.add(letter(2))
        a.take("r1")

        async def gone() -> bool:
            return [d.id for d in await a.list_shared()] == ["r2"]

        await eventually(gone)


async def test_the_stream_is_capped_near_the_capacity(redis_server: RedisServer) -> None:
    """XADD trims the stream to about the capacity (Redis trims in whole blocks)."""
    async with queue(redis_server, capacity=5) as a:
        for burst in range(60):
            for i in range(5):
                a.add(letter(burst * 5 + i))
            await eventually(functools.partial(flushed, a, 5 * (burst + 1)))
        stream = a.stream
        length = await a.connection.call(lambda redis: redis.xlen(stream))
    assert 5 <= length < 300


async def flushed(queue: RedisDeadLetterQueue, expected: int) -> bool:
    """True once ``expected`` letters have been written."""
    await trio.lowlevel.checkpoint()
    return queue.shared_statistics().written == expected


async def test_a_full_writer_channel_is_counted_not_waited_for(
    redis_server: RedisServer,
) -> None:
    """add never waits: past the channel's room, letters stay local and are counted."""
    async with queue(redis_server, capacity=2) as a:
        for i in range(5):
            a.add(letter(i))  # no checkpoint: the writer cannot run in between
        assert a.shared_statistics().overflowed == 3
        assert len(a) == 2


async def test_lost_redis_keeps_letters_local_and_counts_them(
    redis_server: RedisServer,
) -> None:
    """With Redis gone, letters are still kept here; the failed writes are counted."""
    async with queue(redis_server) as a:
        redis_server.stop()
        a.add(letter(1))

        async def failed() -> bool:
            return a.shared_statistics().write_failures == 1

        await eventually(failed)
        assert [d.id for d in a.list()] == ["r1"]


@attrs.define
class Gate:
    """A worker whose calls wait until ``open`` is set."""

    open: trio.Event = attrs.field(factory=trio.Event)

    async def generate(self, request: PromptRequest, emit: EventSink) -> None:
        await self.open.wait()
        await emit(TextDelta("ok"))
        await emit(Done("stop", "ok"))


async def test_a_letter_shed_on_one_process_is_replayed_on_another(
    redis_server: RedisServer,
) -> None:
    """End to end: A sheds a request; B finds it on the stream and replays it to completion."""
    small = PipelineConfig(
        inference_concurrency=1, inference_capacity=1, priority=PriorityConfig(max_waiting=1)
    )
    config = Config(pipeline=small, distributed=settings(redis_server))
    gate = Gate()
    shed: list[str] = []

    async def submit(pipeline: Pipeline, text: str) -> None:
        try:
            await pipeline.submit(PromptRequest(input=text, request_id=text))
        except RequestShed:
            shed.append(text)

    async with (
        open_gateway(config, worker=gate) as gateway_a,
        open_gateway(config, worker=Gate(trio.Event())) as gateway_b,
    ):
        a, b = gateway_a.pipeline, gateway_b.pipeline
        b_gate = b.worker
        assert isinstance(b_gate, Gate)
        b_gate.open.set()
        async with trio.open_nursery() as nursery:
            for i in range(4):
                nursery.start_soon(submit, a, f"q{i}")
                await trio.testing.wait_all_tasks_blocked()
            assert isinstance(a.dead_letters, RedisDeadLetterQueue)
            assert isinstance(b.dead_letters, RedisDeadLetterQueue)
            remote = b.dead_letters

            async def listed() -> bool:
                return [d.id for d in await remote.list_shared()] == shed

            await eventually(listed)
            completion = await replay_shared(b, shed[0])
            gate.open.set()
        with pytest.raises(KeyError):  # replayed once: A cannot replay it again
            await a.replay(shed[0])
    assert completion.text == "ok"
    assert shed[0] not in [d.id for d in a.dead_letters.list()]


async def test_replay_shared_needs_shared_dead_letters() -> None:
    """A pipeline without Redis says that its dead letters are not shared."""
    async with open_pipeline(Gate(), Config()) as pipeline:
        with pytest.raises(TypeError, match="redis_url"):
            await replay_shared(pipeline, "nope")
