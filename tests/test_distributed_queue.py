"""The batch work queue on a Redis stream: shared by consumers, reclaimed from the dead,
each item's result recorded exactly once."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import trio
from redis_fixture import RedisServer, redis_server

from trio_orchestrator import Config, EchoWorker, PromptRequest, open_gateway
from trio_orchestrator.distributed import DistributedConfig, open_redis
from trio_orchestrator.distributed.queue import (
    QueueItem,
    WorkQueue,
    encode_request,
    pipeline_handler,
    work_through,
)

__all__ = ["redis_server"]

CONSUMER = Path(__file__).parent / "_queue_consumer.py"


def settings(server: RedisServer) -> DistributedConfig:
    """Quick health checks against ``server``, and generous Redis timeouts (as
    tests/_distributed_child.py has): a loaded CI run must not make an operation count as
    Redis lost."""
    return DistributedConfig(
        redis_url=server.url, health_interval=0.05, operation_timeout=2, start_timeout=10
    )


def items(n: int) -> list[tuple[str, str]]:
    """``n`` items ``i0…`` with payloads ``p0…``."""
    return [(f"i{k}", f"p{k}") for k in range(n)]


async def echo(item: QueueItem) -> str:
    """A handler whose result is the payload."""
    await trio.lowlevel.checkpoint()
    return item.payload


async def test_an_item_is_recorded_once(redis_server: RedisServer) -> None:
    """Completing an item twice records its first result only."""
    async with open_redis(settings(redis_server)) as redis:
        queue = WorkQueue(redis, "batch", "c1")
        await queue.put(items(1))
        (item,) = await queue.take()
        assert await queue.complete(item, "first")
        assert not await queue.complete(item, "second")
        assert await queue.results() == {"i0": "first"}


async def test_two_consumers_share_one_batch(redis_server: RedisServer) -> None:
    """Two consumers (two connections) split the batch; every item is done exactly once."""
    async with open_redis(settings(redis_server)) as a, open_redis(settings(redis_server)) as b:
        await WorkQueue(a, "batch", "a").put(items(40))
        recorded: list[int] = []

        async def consume(connection: object, name: str) -> None:
            queue = WorkQueue(connection, "batch", name)  # type: ignore[arg-type]

            async def slow(item: QueueItem) -> str:
                # Long enough (0.2 s for the batch) that the second consumer, started a
                # moment later on a loaded machine, still finds items left.
                await trio.sleep(0.02)
                return item.payload

            recorded.append(await work_through(queue, slow, concurrency=4, poll_interval=0.01))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(consume, a, "a")
            nursery.start_soon(consume, b, "b")
        results = await WorkQueue(a, "batch", "a").results()
    assert results == {f"i{k}": f"p{k}" for k in range(40)}
    assert sum(recorded) == 40
    assert all(count > 0 for count in recorded)


async def test_items_of_a_killed_consumer_are_reclaimed(redis_server: RedisServer) -> None:
    """Kill a consumer process mid-job: another claims its items; each is done exactly once."""
    async with open_redis(settings(redis_server)) as redis:
        queue = WorkQueue(redis, "batch", "survivor", claim_after=0.5)
        await queue.put(items(20))
        doomed = await trio.lowlevel.open_process(
            [sys.executable, str(CONSUMER), redis_server.url, "batch", "doomed", "60"],
            stdout=subprocess.PIPE,
        )
        assert doomed.stdout is not None
        try:
            taken = await doomed.stdout.receive_some(100)
            assert taken.startswith(b"took i")
        finally:
            doomed.kill()
            await doomed.wait()
            await doomed.stdout.aclose()
        with trio.fail_after(10):
            recorded = await work_through(queue, echo, concurrency=4, poll_interval=0.02)
        results = await queue.results()
        count_pending = redis.script("return redis.call('XPENDING', KEYS[1], 'workers')[1]")
        stream = redis.key("queue", "batch")
        pending: int = await redis.call(lambda _: count_pending(keys=[stream]))
    assert recorded == 20  # the doomed consumer took items but recorded none
    assert results == {f"i{k}": f"p{k}" for k in range(20)}
    assert pending == 0


async def test_consumers_wait_for_items(redis_server: RedisServer) -> None:
    """A consumer started before the batch is put waits, then works through it."""
    async with open_redis(settings(redis_server)) as redis:
        queue = WorkQueue(redis, "batch", "early")
        async with trio.open_nursery() as nursery:
            nursery.start_soon(work_through, queue, echo)
            await trio.sleep(0.05)
            await queue.put(items(3))
        progress = await queue.progress()
    assert (progress.total, progress.done, progress.finished) == (3, 3, True)


async def test_pipelines_answer_a_shared_batch_of_requests(redis_server: RedisServer) -> None:
    """End to end: two gateways work through one queue of requests; each is answered once."""
    requests = [PromptRequest(input=f"q{k}", request_id=f"r{k}") for k in range(12)]
    config = Config(distributed=settings(redis_server))
    async with (
        open_gateway(config, worker=EchoWorker()) as gateway_a,
        open_gateway(config, worker=EchoWorker()) as gateway_b,
    ):
        assert gateway_a.redis is not None
        assert gateway_b.redis is not None
        a, b = gateway_a.pipeline, gateway_b.pipeline
        queue_a = WorkQueue(gateway_a.redis, "requests", "a")
        await queue_a.put([encode_request(request) for request in requests])
        async with trio.open_nursery() as nursery:
            nursery.start_soon(work_through, queue_a, pipeline_handler(a))
            nursery.start_soon(
                work_through, WorkQueue(gateway_b.redis, "requests", "b"), pipeline_handler(b)
            )
        results = await queue_a.results()
    answers = {key: json.loads(value)["text"] for key, value in results.items()}
    assert answers == {f"r{k}": f"q{k}" for k in range(12)}
    assert a.statistics().completed + b.statistics().completed == 12
