"""The dead-letter queue a pipeline shares through Redis, with its writer task."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio

from .connection import RedisConnection
from .dead_letters import RedisDeadLetterQueue

__all__ = ["open_dead_letters"]

# Seconds the dead-letter writer may take, at shutdown, to write what is still queued.
_DRAIN_TIMEOUT = 2.0


@asynccontextmanager
async def open_dead_letters(
    redis: RedisConnection, capacity: int
) -> AsyncIterator[RedisDeadLetterQueue]:
    """Run a dead-letter queue written through to Redis for the ``async with``.

    Leaving the block writes the letters still queued (for up to 2 s).

    Args:
        redis: the open connection.
        capacity: entries the local ring buffer keeps (``pipeline.dead_letter_capacity``).
    """
    body_error: BaseException | None = None
    async with trio.open_nursery() as nursery:
        queue = RedisDeadLetterQueue(capacity, connection=redis)
        nursery.start_soon(queue.run)
        try:
            yield queue
        except BaseException as exc:
            body_error = exc  # re-raised outside the nursery, unwrapped
        queue.close()
        nursery.cancel_scope.deadline = trio.current_time() + _DRAIN_TIMEOUT
    if body_error is not None:
        raise body_error
