"""Answers shared across processes: cross-process coalescing and the shared answer cache.

:class:`SharedAnswerLayer` sits inside the local coalescing layer (identical requests in one
process are merged there first) and outside the rate limits (an answer taken from another
process spends no budget). For an eligible request (deterministic, as for the local layers)
with key *K* (:func:`~trio_orchestrator.resilience.keys.request_key`, stable across
processes):

1. an answer stored under *K* (the shared cache, or the result of a call that just ended) is
   replayed, event by event;
2. otherwise one process claims *K* with an expiring lock (``SET NX PX``, kept alive while
   the call runs) and calls the provider; on a complete answer it stores the events under
   *K* (for ``[resilience.cache] ttl`` seconds when the cache is on — the shared cache, with
   the same TTL and the same ``max_entries`` bound, least recently used first — else for
   ``result_ttl`` seconds, long enough for the followers); an error is stored briefly so the
   followers raise it too;
3. the other processes follow its result stream: the leader pushes each event to a Redis
   list as it goes (tagged with its lock token), and followers, looking every
   ``poll_interval``, emit the new ones as they appear — a follower joining late starts
   from the first event — then finish from the stored answer, or raise the stored error.
   When the lock vanishes without either (the leader died), a follower that has emitted
   nothing leads instead; one that has emitted part of the answer raises
   ``ProviderConnectionError`` (it cannot splice another call's answer onto it).

Whenever Redis is unreachable before anything was emitted, the request is served locally
(its own call).
"""

from __future__ import annotations

import json
import math
import secrets
import time
from typing import TYPE_CHECKING, Any

import attrs
import trio
from cattrs.preconf.json import make_converter

from .. import errors
from ..events import (
    Done,
    Embeddings,
    Passthrough,
    StreamEvent,
    TextDelta,
    ToolCallDelta,
    ToolCallStart,
    Usage,
)
from ..resilience.config import CacheConfig, refuse_toggle
from ..resilience.keys import is_deterministic, request_key
from ..types import PromptRequest, mark_cache, request_notes
from ..workers.base import EventSink, ModelWorker
from .connection import RedisConnection, RedisUnavailable

if TYPE_CHECKING:
    from coredis.commands.script import Script

__all__ = ["SharedAnswerLayer", "SharedAnswerStatistics"]

_EVENTS: dict[str, type[Any]] = {
    cls.__name__: cls
    for cls in (TextDelta, ToolCallStart, ToolCallDelta, Usage, Passthrough, Embeddings, Done)
}
_converter = make_converter()

# KEYS: answer, error, lock, LRU index. ARGV: now (ms, for the index), lru (1/0).
# Returns {"answer", events} | {"error", json} | {"lead"} | {"wait"}; "lead" means the lock
# was free: the caller may try to take it.
LOOK = """
local answer = redis.call('GET', KEYS[1])
if answer then
  if ARGV[2] == '1' then redis.call('ZADD', KEYS[4], 'XX', ARGV[1], KEYS[1]) end
  return {'answer', answer}
end
local err = redis.call('GET', KEYS[2])
if err then return {'error', err} end
if redis.call('EXISTS', KEYS[3]) == 0 then return {'lead', ''} end
return {'wait', ''}
"""

# KEYS: answer, lock, LRU index. ARGV: events, ttl ms (0: none), token, max entries (0: no
# index), now ms. Stores the answer, releases the lock, evicts the least recently used.
STORE = """
if tonumber(ARGV[2]) > 0 then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
else
  redis.call('SET', KEYS[1], ARGV[1])
end
if redis.call('GET', KEYS[2]) == ARGV[3] then redis.call('DEL', KEYS[2]) end
local limit = tonumber(ARGV[4])
if limit > 0 then
  redis.call('ZADD', KEYS[3], ARGV[5], KEYS[1])
  local excess = redis.call('ZCARD', KEYS[3]) - limit
  if excess > 0 then
    for _, old in ipairs(redis.call('ZPOPMIN', KEYS[3], excess)) do
      if old ~= KEYS[1] then redis.call('DEL', old) end
    end
  end
end
return 1
"""

# KEYS: lock, events. ARGV: token, ttl ms. Takes the lock if it is free, and clears the
# events a dead leader may have left.
LOCK = """
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  redis.call('DEL', KEYS[2])
  return 1
end
return 0
"""

# KEYS: events. ARGV: ttl ms, then the encoded events to append.
PUSH = """
redis.call('RPUSH', KEYS[1], unpack(ARGV, 2))
redis.call('PEXPIRE', KEYS[1], ARGV[1])
return 1
"""

# KEYS: events. ARGV: the first index to read.
READ = """
return redis.call('LRANGE', KEYS[1], ARGV[1], -1)
"""

# KEYS: lock. ARGV: token, ttl ms. Extends the lock if it is still ours.
KEEP = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""

# KEYS: error, lock. ARGV: error json, ttl ms, token.
FAIL = """
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
if redis.call('GET', KEYS[2]) == ARGV[3] then redis.call('DEL', KEYS[2]) end
return 1
"""


@attrs.frozen
class SharedAnswerStatistics:
    """A snapshot of a :class:`SharedAnswerLayer`."""

    led: int
    """Calls this process made for every process (it held the key's lock)."""
    followed: int
    """Requests answered by a call another process made."""
    hits: int
    """Requests answered from the shared cache (an answer already stored)."""
    local: int
    """Eligible requests served by their own call because Redis was unreachable."""
    bypassed: int
    """Requests not eligible (sampled), passed straight through."""


@attrs.define(eq=False)
class SharedAnswerLayer:
    """A worker sharing answers with other processes through Redis; see the module docstring.

    Args:
        inner: the worker to call.
        connection: the Redis connection.
        cache: the cache settings (``enabled``, ``ttl``, ``max_entries``, ``cache_sampled``).
        share_sampled: also share requests that are not deterministic.
        lock_ttl: seconds the leader's lock lives without being extended (it is extended
            every third of that while the call runs; followers take over after it lapses).
        result_ttl: seconds a finished answer stays for followers when the cache is off.
        poll_interval: seconds between a follower's looks.
    """

    inner: ModelWorker
    connection: RedisConnection
    cache: CacheConfig
    share_sampled: bool = False
    lock_ttl: float = 5.0
    result_ttl: float = 10.0
    poll_interval: float = 0.02
    _look: Script[str] = attrs.field(init=False)
    _store: Script[str] = attrs.field(init=False)
    _keep: Script[str] = attrs.field(init=False)
    _fail: Script[str] = attrs.field(init=False)
    _take_lock: Script[str] = attrs.field(init=False)
    _push: Script[str] = attrs.field(init=False)
    _read: Script[str] = attrs.field(init=False)
    _counts: dict[str, int] = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        script = self.connection.script
        self._look, self._store = script(LOOK), script(STORE)
        self._keep, self._fail, self._take_lock = script(KEEP), script(FAIL), script(LOCK)
        self._push, self._read = script(PUSH), script(READ)
        self._counts = dict.fromkeys(("led", "followed", "hits", "local", "bypassed"), 0)

    def reconfigure(self, section: CacheConfig, /) -> list[str]:
        """Take a reloaded ``[resilience.cache]`` (TTL, eligibility) for what is shared next;
        switching the cache on or off needs a restart."""
        refused = refuse_toggle("cache", self.cache.enabled, section.enabled)
        if not refused:
            self.cache = section
        return refused

    def statistics(self) -> SharedAnswerStatistics:
        """A snapshot of the counters."""
        return SharedAnswerStatistics(**self._counts)

    async def generate(self, request: PromptRequest, emit: EventSink) -> None:
        """Replay, follow or lead the answer to ``request``; see the module docstring."""
        sampled_ok = self.share_sampled or (self.cache.enabled and self.cache.cache_sampled)
        if not (sampled_ok or is_deterministic(request)):
            self._counts["bypassed"] += 1
            await self.inner.generate(request, emit)
            return
        try:
            # Streamed whoever leads it: the followers in other processes may stream.
            await self._share(request_key(request), request.streamed(True), emit)
        except RedisUnavailable:
            self._counts["local"] += 1
            await self.inner.generate(request, emit)

    async def _share(self, key: str, request: PromptRequest, emit: EventSink) -> None:
        keys = self._keys(key)
        follow = _Following()
        while True:
            state, value = await self._call(self._look, keys, [_now_ms(), self._lru()])
            if state == "answer":
                self._counts["followed" if follow.waited else "hits"] += 1
                if not follow.waited:
                    mark_cache(request, "hit", replace=True)  # the shared exact cache
                if (notes := request_notes()) is not None:
                    notes.coalesced, notes.cache_hit = follow.waited, not follow.waited
                await _replay(value, emit, skip=follow.emitted)
                return
            if state == "error":
                self._counts["followed"] += 1
                raise _error(value)
            if state == "lead":
                if follow.emitted:
                    raise errors.ProviderConnectionError(
                        "the process answering this request went away mid-answer; retry it"
                    )
                token = secrets.token_hex(8)
                ttl = str(round(self.lock_ttl * 1000))
                if await self._call(self._take_lock, [keys[2], keys[4]], [token, ttl]):
                    await self._lead(keys, token, request, emit)
                    return
            follow.waited = True
            await self._follow(keys[4], follow, emit)
            if follow.finished:  # the whole answer came through the published events
                self._counts["followed"] += 1
                return
            await trio.sleep(self.poll_interval)

    async def _follow(self, events_key: str, follow: _Following, emit: EventSink) -> None:
        """Emit the leader's events published since the last look."""
        for item in await self._call(self._read, [events_key], [str(follow.emitted)]):
            token, name, data = json.loads(item)
            if follow.token is None:
                follow.token = token
            elif token != follow.token:
                raise errors.ProviderConnectionError(
                    "the process answering this request went away mid-answer; retry it"
                )
            event = _converter.structure(data, _EVENTS[name])
            await emit(event)
            follow.emitted += 1
            if isinstance(event, Done):
                follow.finished = True
                return

    async def _lead(
        self, keys: list[str], token: str, request: PromptRequest, emit: EventSink
    ) -> None:
        answer, error_key, lock, index, _events = keys
        recorded: list[StreamEvent] = []

        published, to_publish = trio.open_memory_channel[str](math.inf)

        async def record(event: StreamEvent) -> None:
            recorded.append(event)
            # Bounded by one answer's events; publishing never slows the leader's caller.
            published.send_nowait(_encode_event(token, event))
            await emit(event)

        self._counts["led"] += 1
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._keep_alive, lock, token)
            nursery.start_soon(self._publish, keys[4], to_publish)
            try:
                await self.inner.generate(request, record)
            except errors.WorkerError as exc:
                with trio.CancelScope(shield=True):
                    await self._quietly(
                        self._fail, [error_key, lock], [_encode_error(exc), "2000", token]
                    )
                raise
            finally:
                nursery.cancel_scope.cancel()
        if recorded and isinstance(recorded[-1], Done):
            ttl = self.cache.ttl if self.cache.enabled else self.result_ttl
            args = [
                _encode_events(recorded),
                "0" if math.isinf(ttl) else str(round(ttl * 1000)),
                token,
                str(self.cache.max_entries) if self.cache.enabled else "0",
                _now_ms(),
            ]
            await self._quietly(self._store, [answer, lock, index], args)

    async def _publish(self, events_key: str, events: trio.MemoryReceiveChannel[str]) -> None:
        """Append the leader's events to the list followers read, a batch per round trip.

        Best effort: the stored answer, written when the call ends, is what a follower
        finishes from.
        """
        ttl = str(round(max(self.lock_ttl, self.result_ttl) * 1000))
        async for first in events:
            batch = [first]
            while True:
                try:
                    batch.append(events.receive_nowait())
                except trio.WouldBlock:
                    break
            await self._quietly(self._push, [events_key], [ttl, *batch])

    async def _keep_alive(self, lock: str, token: str) -> None:
        ttl = str(round(self.lock_ttl * 1000))
        while True:
            await trio.sleep(self.lock_ttl / 3)
            await self._quietly(self._keep, [lock], [token, ttl])

    async def _quietly(self, script: Script[str], keys: list[str], args: list[str]) -> None:
        # The answer is already the caller's: sharing it is best effort.
        try:
            await self._call(script, keys, args)
        except RedisUnavailable:
            return

    async def _call(self, script: Script[str], keys: list[str], args: list[str]) -> Any:
        return await self.connection.call(lambda _: script(keys=keys, args=args))

    def _keys(self, key: str) -> list[str]:
        k = self.connection.key
        return [
            k("answer", key),
            k("answer-error", key),
            k("flight", key),
            k("answers"),
            k("answer-events", key),
        ]

    def _lru(self) -> str:
        return "1" if self.cache.enabled else "0"


def _now_ms() -> str:
    return str(round(time.time() * 1000))


def _encode_events(events: list[StreamEvent]) -> str:
    return json.dumps([[type(e).__name__, _converter.unstructure(e)] for e in events])


async def _replay(text: str, emit: EventSink, *, skip: int = 0) -> None:
    await trio.lowlevel.checkpoint()
    for name, data in json.loads(text)[skip:]:
        await emit(_converter.structure(data, _EVENTS[name]))


def _encode_event(token: str, event: StreamEvent) -> str:
    return json.dumps([token, type(event).__name__, _converter.unstructure(event)])


@attrs.define
class _Following:
    """A follower's progress through the leader's published events."""

    emitted: int = 0
    token: str | None = None
    waited: bool = False
    finished: bool = False


def _encode_error(exc: errors.WorkerError) -> str:
    return json.dumps(
        {"type": type(exc).__name__, "message": str(exc), "retry_after": exc.retry_after}
    )


def _error(text: str) -> errors.WorkerError:
    data = json.loads(text)
    cls = getattr(errors, data["type"], None)
    if not (isinstance(cls, type) and issubclass(cls, errors.WorkerError)):
        cls = errors.ProviderError
    try:
        return cls(data["message"], retry_after=data["retry_after"])
    except TypeError:
        return errors.ProviderError(data["message"])
