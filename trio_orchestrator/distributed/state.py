"""Everything a pipeline shares through Redis, opened together for the pipeline's lifetime."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

import attrs
import trio

from .connection import RedisConnection, open_redis
from .dead_letters import RedisDeadLetterQueue

if TYPE_CHECKING:
    from ..config import Config

__all__ = ["SharedState", "open_state"]

# Seconds the dead-letter writer may take, at shutdown, to write what is still queued.
_DRAIN_TIMEOUT = 2.0


@attrs.frozen(eq=False)
class SharedState:
    """The Redis connection and the shared dead-letter queue.

    Attributes:
        redis: the connection (its health, its statistics).
        dead_letters: the pipeline's dead-letter queue, written through to Redis.
    """

    redis: RedisConnection
    dead_letters: RedisDeadLetterQueue


@asynccontextmanager
async def open_state(config: Config) -> AsyncIterator[SharedState]:
    """Connect to Redis and run the dead-letter writer for the ``async with``.

    Leaving the block writes the letters still queued (for up to 2 s) before disconnecting.

    Raises:
        RedisUnavailable: Redis is unreachable at start and ``on_start_failure`` is ``fail``.
    """
    body_error: BaseException | None = None
    async with open_redis(config.distributed) as redis, trio.open_nursery() as nursery:
        queue = RedisDeadLetterQueue(config.pipeline.dead_letter_capacity, connection=redis)
        nursery.start_soon(queue.run)
        try:
            yield SharedState(redis, queue)
        except BaseException as exc:
            body_error = exc  # re-raised outside the nurseries, unwrapped
        queue.close()
        nursery.cancel_scope.deadline = trio.current_time() + _DRAIN_TIMEOUT
    if body_error is not None:
        raise body_error
