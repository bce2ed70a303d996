"""A batch consumer in its own process, for the work-queue tests: it says which items it took
and takes ``delay`` seconds over each (so that a test can kill it mid-job).

Usage: python _queue_consumer.py REDIS_URL QUEUE CONSUMER DELAY
"""

from __future__ import annotations

import sys

import trio

from trio_orchestrator.distributed import DistributedConfig, open_redis
from trio_orchestrator.distributed.queue import QueueItem, WorkQueue, work_through


async def main(url: str, name: str, consumer: str, delay: float) -> None:
    """Work through the queue ``name`` as ``consumer``."""
    async with open_redis(DistributedConfig(redis_url=url)) as redis:
        queue = WorkQueue(redis, name, consumer, claim_after=0.5)

        async def handle(item: QueueItem) -> str:
            print(f"took {item.id}", flush=True)
            await trio.sleep(delay)
            return f"{item.payload} by {consumer}"

        await work_through(queue, handle, concurrency=4, poll_interval=0.05)


if __name__ == "__main__":
    trio.run(main, sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4]))
