"""Durable dead letters: every shed request is also written to a Redis stream.

:class:`RedisDeadLetterQueue` is the pipeline's :class:`~trio_orchestrator.pipeline.
DeadLetterQueue` (the same synchronous ``add``/``list``/``get``/``take``/``statistics`` for
this process's letters) that also writes each letter to one stream shared by every process
(``XADD … MAXLEN ~ capacity``). Any process can list the stream and take a letter out of it
for replay (:meth:`~RedisDeadLetterQueue.list_shared`, :meth:`~RedisDeadLetterQueue.
take_shared`, :func:`replay_shared`); taking is atomic, so a letter is replayed once.

``add`` is called on the pipeline's hot path and cannot wait, so writes go through a bounded
channel to a background writer; a letter that finds the channel full, or Redis unreachable,
stays local and is counted (:class:`SharedDeadLetterStatistics`).
"""

from __future__ import annotations

import os
import socket
import time
from typing import TYPE_CHECKING, Any

import attrs
import trio

from ..pipeline.dead_letters import DeadLetter, DeadLetterQueue
from .codec import dump_request, load_request
from .connection import RedisConnection, RedisUnavailable

if TYPE_CHECKING:
    from coredis.commands.script import Script

    from ..events import Completion
    from ..pipeline import Pipeline

__all__ = ["RedisDeadLetterQueue", "SharedDeadLetterStatistics", "replay_shared"]

# KEYS[1]: the stream. ARGV: capacity, then field, value pairs.
ADD = """
local entry = {}
for i = 2, #ARGV do entry[#entry + 1] = ARGV[i] end
return redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', unpack(entry))
"""

# KEYS[1]: the stream. ARGV: the letter's id, "1" to delete it. Returns its fields (the
# newest entry with that id; every entry with it is deleted) or false.
FIND = """
local found = false
for _, entry in ipairs(redis.call('XRANGE', KEYS[1], '-', '+')) do
  local fields = entry[2]
  for i = 1, #fields, 2 do
    if fields[i] == 'id' and fields[i + 1] == ARGV[1] then
      found = fields
      if ARGV[2] == '1' then redis.call('XDEL', KEYS[1], entry[1]) end
    end
  end
end
return found
"""


@attrs.frozen
class SharedDeadLetterStatistics:
    """What reached the shared stream."""

    written: int
    """Letters written to the stream."""
    write_failures: int
    """Letters (or removals) not written because Redis was unreachable."""
    overflowed: int
    """Letters not written because the writer's channel was full."""


@attrs.define(eq=False)
class RedisDeadLetterQueue(DeadLetterQueue):
    """A dead-letter queue whose letters are also kept on a Redis stream for every process.

    Run :meth:`run` in a nursery for as long as letters may be added.

    Args:
        capacity: letters kept, locally and (approximately) on the stream.
        connection: the Redis connection.
    """

    connection: RedisConnection = attrs.field(kw_only=True)
    _send: trio.MemorySendChannel[tuple[str, Any]] = attrs.field(init=False)
    _receive: trio.MemoryReceiveChannel[tuple[str, Any]] = attrs.field(init=False)
    _add: Script[str] = attrs.field(init=False)
    _find: Script[str] = attrs.field(init=False)
    _written: int = attrs.field(default=0, init=False)
    _write_failures: int = attrs.field(default=0, init=False)
    _overflowed: int = attrs.field(default=0, init=False)

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        self._send, self._receive = trio.open_memory_channel(self.capacity)
        self._add = self.connection.script(ADD)
        self._find = self.connection.script(FIND)

    @property
    def stream(self) -> str:
        """The stream's key."""
        return self.connection.key("dead-letters")

    def add(self, letter: DeadLetter) -> None:
        """Add a letter here, and queue it for the shared stream."""
        super().add(letter)
        self._queue("add", letter)

    def take(self, letter_id: str) -> DeadLetter:
        """Remove a letter of this process for replay (and, soon after, from the stream).

        Raises:
            KeyError: no such letter here (try :meth:`take_shared`).
        """
        letter = super().take(letter_id)
        self._queue("take", letter_id)
        return letter

    async def list_shared(self, limit: int | None = None) -> list[DeadLetter]:
        """The letters on the shared stream, from every process, oldest first.

        Raises:
            RedisUnavailable: Redis is unreachable.
        """
        stream, count = self.stream, limit or self.capacity
        entries: tuple[Any, ...] = await self.connection.call(
            lambda redis: redis.xrevrange(stream, "+", "-", count=count)
        )
        return [_decode(entry.field_values) for entry in reversed(entries)]

    async def get_shared(self, letter_id: str) -> DeadLetter:
        """The letter with this id on the shared stream.

        Raises:
            KeyError: no such letter. RedisUnavailable: Redis is unreachable.
        """
        return await self._lookup(letter_id, delete=False)

    async def take_shared(self, letter_id: str) -> DeadLetter:
        """Remove a letter from the shared stream (and from here) for replay; of several
        processes taking the same letter, one gets it.

        Raises:
            KeyError: no such letter. RedisUnavailable: Redis is unreachable.
        """
        letter = await self._lookup(letter_id, delete=True)
        self._replayed += 1
        self._letters.pop(letter_id, None)
        return letter

    async def take_for_replay(self, letter_id: str) -> DeadLetter:
        """Take a letter for :meth:`Pipeline.replay <trio_orchestrator.pipeline.Pipeline.
        replay>`: off the shared stream, so that it is replayed once across processes (a
        letter another process replayed is gone here too). While Redis is unreachable, the
        local copy is taken.

        Raises:
            KeyError: no such letter.
        """
        try:
            return await self.take_shared(letter_id)
        except RedisUnavailable:
            return self.take(letter_id)
        except KeyError:
            if letter_id in self._letters and self.connection.up:
                del self._letters[letter_id]  # replayed elsewhere, or pushed off the stream
            raise

    def shared_statistics(self) -> SharedDeadLetterStatistics:
        """What reached the shared stream."""
        return SharedDeadLetterStatistics(self._written, self._write_failures, self._overflowed)

    async def run(self) -> None:
        """Write queued letters to the stream, until :meth:`close` and the queue is empty."""
        async with self._receive:
            async for operation, value in self._receive:
                try:
                    await self._write(operation, value)
                except RedisUnavailable:
                    self._write_failures += 1

    def close(self) -> None:
        """Accept no more writes; :meth:`run` ends once the queue is written."""
        self._send.close()

    def _queue(self, operation: str, value: object) -> None:
        try:
            self._send.send_nowait((operation, value))
        except (trio.WouldBlock, trio.ClosedResourceError):
            self._overflowed += 1

    async def _write(self, operation: str, value: Any) -> None:
        if operation == "take":
            find, stream = self._find, self.stream
            await self.connection.call(lambda _: find(keys=[stream], args=[value, "1"]))
            return
        args = [str(self.capacity), *_encode(value)]
        add, stream = self._add, self.stream
        await self.connection.call(lambda _: add(keys=[stream], args=args))
        self._written += 1

    async def _lookup(self, letter_id: str, *, delete: bool) -> DeadLetter:
        find, stream = self._find, self.stream
        args = [letter_id, "1" if delete else "0"]
        fields: list[str] | None = await self.connection.call(
            lambda _: find(keys=[stream], args=args)
        )
        if not fields:
            raise KeyError(letter_id)
        return _decode(dict(zip(fields[::2], fields[1::2], strict=True)))


def _encode(letter: DeadLetter) -> list[str]:
    # The deadline is on the shedding process's clock, meaningless elsewhere (and passed).
    request = attrs.evolve(letter.request, deadline=None)
    return [
        *("id", letter.id, "stage", letter.stage, "reason", letter.reason),
        *("at", repr(time.time()), "origin", f"{socket.gethostname()}:{os.getpid()}"),
        *("request", dump_request(request)),
    ]


def _decode(fields: dict[str, str]) -> DeadLetter:
    request = load_request(fields["request"])
    age = max(0.0, time.time() - float(fields["at"]))
    return DeadLetter(request, fields["stage"], fields["reason"], trio.current_time() - age)


async def replay_shared(pipeline: Pipeline, letter_id: str) -> Completion:
    """Take a letter off the shared stream (it may have been shed by any process) and submit
    its request again to ``pipeline``.

    Raises:
        KeyError: no such letter. RedisUnavailable: Redis is unreachable.
        TypeError: the pipeline's dead letters are not shared.
    """
    queue = pipeline.dead_letters
    if not isinstance(queue, RedisDeadLetterQueue):
        raise TypeError("this pipeline's dead letters are not shared (set [distributed] redis_url)")
    letter = await queue.take_shared(letter_id)
    return await pipeline.submit(letter.request)
