"""A work queue for batch jobs: a Redis stream read by a consumer group.

Several processes (or hosts) work through one batch: one process :meth:`~WorkQueue.put`\\ s
the items, every process runs :func:`work_through` on the same queue name. Each item is
delivered to one consumer; an item whose consumer died (or stalled) for ``claim_after``
seconds is claimed by another (``XAUTOCLAIM``). Results are recorded once per item id
(``HSETNX``): an item done twice — its first consumer finished but died before
acknowledging it — still has exactly one result, and an item already done is skipped.
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING

import attrs
import trio

from .codec import dump_request, load_request
from .connection import RedisConnection, RedisUnavailable

if TYPE_CHECKING:
    from coredis.commands.script import Script

    from ..pipeline import Pipeline
    from ..types import PromptRequest

__all__ = [
    "QueueItem",
    "QueueProgress",
    "WorkQueue",
    "encode_request",
    "pipeline_handler",
    "work_through",
]

_GROUP = "workers"

# KEYS: the stream. ARGV: group, consumer, count, claim-after (ms). Returns entries
# ({stream id, {field, value…}}): first items stalled elsewhere, else new ones.
TAKE = """
local claimed = redis.call('XAUTOCLAIM', KEYS[1], ARGV[1], ARGV[2], ARGV[4], '0-0',
                           'COUNT', ARGV[3])
if #claimed[2] > 0 then return claimed[2] end
local read = redis.call('XREADGROUP', 'GROUP', ARGV[1], ARGV[2], 'COUNT', ARGV[3],
                        'STREAMS', KEYS[1], '>')
if read then return read[1][2] end
return {}
"""

# KEYS: the stream, the results hash. ARGV: group, stream id, item id, result.
# Returns 1 if this recorded the item's result, 0 if it had one already.
COMPLETE = """
local first = redis.call('HSETNX', KEYS[2], ARGV[3], ARGV[4])
redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
return first
"""

# KEYS: the loader marker, the total counter. ARGV: the batch's size. Returns 1 for the one
# process that is to load the batch (it is given the whole total at once, so that no
# consumer sees a partly loaded batch as finished).
CLAIM_LOAD = """
if redis.call('SET', KEYS[1], '1', 'NX') then
  redis.call('SET', KEYS[2], ARGV[1])
  return 1
end
return 0
"""

# KEYS: the stream. ARGV: id, payload, id, payload…
ADD = """
redis.pcall('XGROUP', 'CREATE', KEYS[1], 'workers', '0', 'MKSTREAM')
for i = 1, #ARGV, 2 do
  redis.call('XADD', KEYS[1], '*', 'id', ARGV[i], 'payload', ARGV[i + 1])
end
return 1
"""

# KEYS: the stream, the total counter. ARGV: id, payload, id, payload…
PUT = """
redis.pcall('XGROUP', 'CREATE', KEYS[1], 'workers', '0', 'MKSTREAM')
for i = 1, #ARGV, 2 do
  redis.call('XADD', KEYS[1], '*', 'id', ARGV[i], 'payload', ARGV[i + 1])
end
return redis.call('INCRBY', KEYS[2], #ARGV / 2)
"""


@attrs.frozen
class QueueItem:
    """One item handed to this consumer.

    Attributes:
        id: the item's id (unique in its batch; results are recorded per id).
        payload: what to do, as text (e.g. a request as JSON).
        entry: the stream entry's id (to acknowledge it).
    """

    id: str
    payload: str
    entry: str


@attrs.frozen
class QueueProgress:
    """How far a batch is."""

    total: int
    """Items put on the queue."""
    done: int
    """Items with a recorded result."""

    @property
    def finished(self) -> bool:
        """True when items were put and every one has its result."""
        return self.total > 0 and self.done >= self.total


def _default_consumer() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


@attrs.define(eq=False)
class WorkQueue:
    """One batch's items on a Redis stream; see the module docstring.

    Args:
        connection: the Redis connection.
        name: the batch's name (every process working on it uses the same).
        consumer: this consumer's name (default: host and process id).
        claim_after: seconds an item may stay unacknowledged with its consumer before
            another consumer takes it over.
    """

    connection: RedisConnection
    name: str
    consumer: str = attrs.field(factory=_default_consumer)
    claim_after: float = 30.0
    _take: Script[str] = attrs.field(init=False)
    _complete: Script[str] = attrs.field(init=False)
    _put: Script[str] = attrs.field(init=False)
    _claim_load: Script[str] = attrs.field(init=False)
    _add: Script[str] = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        self._take = self.connection.script(TAKE)
        self._complete = self.connection.script(COMPLETE)
        self._put = self.connection.script(PUT)
        self._claim_load = self.connection.script(CLAIM_LOAD)
        self._add = self.connection.script(ADD)

    def _keys(self) -> tuple[str, str, str]:
        key = self.connection.key
        return (
            key("queue", self.name),
            key("queue", self.name, "results"),
            key("queue", self.name, "total"),
        )

    async def put(self, items: Sequence[tuple[str, str]]) -> int:
        """Add ``(id, payload)`` items (from one process); return the batch's total.

        Raises:
            RedisUnavailable: Redis is unreachable.
        """
        stream, _, total = self._keys()
        args = [part for item in items for part in item]
        script = self._put
        count: int = await self.connection.call(lambda _: script(keys=[stream, total], args=args))
        return count

    async def load(self, items: Sequence[tuple[str, str]], chunk: int = 1000) -> bool:
        """Put the whole batch unless a process already did (every process may call this with
        the same items; one loads them). Return True if this process loaded them.

        Raises:
            RedisUnavailable: Redis is unreachable.
        """
        stream, _, total = self._keys()
        marker = self.connection.key("queue", self.name, "loaded")
        claim, add = self._claim_load, self._add
        size = str(len(items))
        claimed: int = await self.connection.call(
            lambda _: claim(keys=[marker, total], args=[size])
        )
        if not claimed:
            return False
        for start in range(0, len(items), chunk):
            args = [part for item in items[start : start + chunk] for part in item]
            await self.connection.call(_adder(add, stream, args))
        return True

    async def take(self, count: int = 10) -> list[QueueItem]:
        """Up to ``count`` items for this consumer: stalled ones first, then new ones.

        Raises:
            RedisUnavailable: Redis is unreachable.
        """
        stream = self._keys()[0]
        args = [_GROUP, self.consumer, str(count), str(round(self.claim_after * 1000))]
        script = self._take
        entries: list[list[object]] = await self.connection.call(
            lambda _: script(keys=[stream], args=args)
        )
        items = []
        for entry_id, fields in entries:
            values = dict(zip(fields[::2], fields[1::2], strict=True))  # type: ignore[index]
            items.append(QueueItem(values["id"], values["payload"], str(entry_id)))
        return items

    async def complete(self, item: QueueItem, result: str) -> bool:
        """Record ``item``'s result (unless it has one) and acknowledge it.

        Returns:
            True if this recorded the result, False if the item was already done.

        Raises:
            RedisUnavailable: Redis is unreachable.
        """
        stream, results, _ = self._keys()
        args = [_GROUP, item.entry, item.id, result]
        script = self._complete
        first: int = await self.connection.call(lambda _: script(keys=[stream, results], args=args))
        return bool(first)

    async def is_done(self, item_id: str) -> bool:
        """Whether ``item_id`` has a recorded result."""
        results = self._keys()[1]
        found: bool = await self.connection.call(lambda redis: redis.hexists(results, item_id))
        return found

    async def results(self) -> dict[str, str]:
        """Every recorded result, by item id."""
        results = self._keys()[1]
        found: dict[str, str] = await self.connection.call(lambda redis: redis.hgetall(results))
        return found

    async def progress(self) -> QueueProgress:
        """Items in the batch and items done."""
        _, results, total = self._keys()
        count: str | None = await self.connection.call(lambda redis: redis.get(total))
        done: int = await self.connection.call(lambda redis: redis.hlen(results))
        return QueueProgress(int(count or 0), done)


def _adder(add: Script[str], stream: str, args: list[str]) -> Callable[[object], Awaitable[object]]:
    return lambda _: add(keys=[stream], args=args)


async def work_through(
    queue: WorkQueue,
    handle: Callable[[QueueItem], Awaitable[str]],
    *,
    concurrency: int = 8,
    poll_interval: float = 0.2,
    on_recorded: Callable[[QueueItem, str], None] | None = None,
) -> int:
    """Take items from ``queue`` and ``handle`` them until the whole batch is done (by this
    process and the others); return how many results this process recorded. Items not yet
    put are waited for.

    ``handle`` returns the item's result as text; an exception from it leaves the item
    unacknowledged, to be claimed again after ``claim_after``. While Redis is unreachable
    this waits (polling) rather than failing. ``on_recorded(item, result)`` is called for
    each result this process recorded (not for one another process had recorded first).
    """
    recorded = 0
    limiter = trio.CapacityLimiter(concurrency)

    async def run(item: QueueItem) -> None:
        nonlocal recorded
        async with limiter:
            if await queue.is_done(item.id):
                await queue.complete(item, "")  # done by a consumer that died before acking
                return
            result = await handle(item)
            first = await queue.complete(item, result)
            recorded += first
            if first and on_recorded is not None:
                on_recorded(item, result)

    while True:
        try:
            if (await queue.progress()).finished:
                return recorded
            items = await queue.take(concurrency)
        except RedisUnavailable:
            items = []
        if not items:
            await trio.sleep(poll_interval)
            continue
        async with trio.open_nursery() as nursery:
            for item in items:
                nursery.start_soon(_guarded, run, item)


async def _guarded(run: Callable[[QueueItem], Awaitable[None]], item: QueueItem) -> None:
    # One failed item must not stop the others: it stays pending and is claimed again.
    try:
        await run(item)
    except Exception:
        return


def encode_request(request: PromptRequest) -> tuple[str, str]:
    """A request as a queue item ``(request id, JSON)`` for :meth:`WorkQueue.put`."""
    return request.request_id, dump_request(request)


def pipeline_handler(pipeline: Pipeline) -> Callable[[QueueItem], Awaitable[str]]:
    """A :func:`work_through` handler that submits each item's request to ``pipeline``.

    The items are requests put with :func:`encode_request`; each result is JSON:
    ``{"text": …, "finish_reason": …}`` for an answer, ``{"error": …, "message": …}`` for a
    request that ended otherwise (it is done: an error is a result, not a retry).
    """
    from ..errors import OrchestratorError

    async def handle(item: QueueItem) -> str:
        request = load_request(item.payload)
        try:
            completion = await pipeline.submit(request)
        except OrchestratorError as exc:
            return json.dumps({"error": type(exc).__name__, "message": str(exc)})
        return json.dumps({"text": completion.text, "finish_reason": completion.finish_reason})

    return handle
