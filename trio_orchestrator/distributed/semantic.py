"""The semantic cache's entries shared across processes through Redis.

Debian's Redis has no vector search (RediSearch is a module it does not ship), so the scheme
is our own, and simple: Redis *stores* the entries, each process *searches* its own
in-memory index (:class:`~trio_orchestrator.resilience.semantic_cache.SemanticIndex`) and
fills it from Redis.

Per scope (the digest of key, model, parameters and earlier turns the layer computes, with
the embedding model: vectors of two models are not comparable), two keys:

- ``semantic:<model digest>:<scope>`` — a hash: entry id → ``[vector, events, expires ms]``;
- ``semantic-order:<model digest>:<scope>`` — a sorted set: entry id by the Unix ms it was
  stored.

A process that stores an answer adds it to both (one Lua script, which also drops entries
past their TTL and the oldest beyond ``max_entries`` for the scope, and sets both keys to
expire with the TTL: an idle scope vanishes). A process whose own index has no entry close
enough asks Redis for the scope's entries stored since it last asked (one round trip, only
the new ones), puts them in its index with the lifetime they have left, and searches again.
So two processes see each other's answers from the first miss after they were stored.

Losing Redis never fails a request: a failed pull is a local miss, a failed push keeps the
answer local (both counted).
"""

from __future__ import annotations

import hashlib
import json
import math
import secrets
import time
from collections import OrderedDict
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

import attrs
from cattrs.preconf.json import make_converter

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
from .connection import RedisConnection, RedisUnavailable

if TYPE_CHECKING:
    from coredis.commands.script import Script

__all__ = ["LocalIndex", "SharedSemanticIndex", "SharedSemanticStatistics"]

_EVENTS: dict[str, type[Any]] = {
    cls.__name__: cls
    for cls in (TextDelta, ToolCallStart, ToolCallDelta, Usage, Passthrough, Embeddings, Done)
}
_converter = make_converter()

# KEYS: entries (hash), order (zset). ARGV: id, entry json, now ms, ttl ms (0: none), max.
PUSH = """
local now, ttl, limit = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('ZADD', KEYS[2], now, ARGV[1])
if ttl > 0 then
  local old = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', '(' .. (now - ttl))
  if #old > 0 then
    redis.call('HDEL', KEYS[1], unpack(old))
    redis.call('ZREM', KEYS[2], unpack(old))
  end
end
local excess = redis.call('ZCARD', KEYS[2]) - limit
if excess > 0 then
  local gone = redis.call('ZRANGE', KEYS[2], 0, excess - 1)
  redis.call('HDEL', KEYS[1], unpack(gone))
  redis.call('ZREM', KEYS[2], unpack(gone))
end
if ttl > 0 then
  redis.call('PEXPIRE', KEYS[1], ttl)
  redis.call('PEXPIRE', KEYS[2], ttl)
end
return 1
"""

# KEYS: entries (hash), order (zset). ARGV: since ms. Returns id, score, entry, … for the
# entries stored at or after ``since`` (an entry whose hash field is gone is left out).
PULL = """
local ids = redis.call('ZRANGEBYSCORE', KEYS[2], ARGV[1], '+inf', 'WITHSCORES')
local out = {}
for i = 1, #ids, 2 do
  local entry = redis.call('HGET', KEYS[1], ids[i])
  if entry then
    out[#out + 1] = ids[i]
    out[#out + 1] = ids[i + 1]
    out[#out + 1] = entry
  end
end
return out
"""


@attrs.frozen
class SharedSemanticStatistics:
    """A snapshot of a :class:`SharedSemanticIndex`."""

    pushed: int
    """Answers this process stored in Redis."""
    pulls: int
    """Round trips asking Redis for a scope's new entries (one per local miss)."""
    pulled: int
    """Entries other processes stored, taken into this process's index."""
    errors: int
    """Pushes and pulls that failed because Redis was unreachable (the cache went on
    locally)."""


class LocalIndex(Protocol):
    """What a pull fills: a process's own index
    (:class:`~trio_orchestrator.resilience.semantic_cache.SemanticIndex`)."""

    def put(
        self,
        scope: str,
        vector: tuple[float, ...],
        events: tuple[StreamEvent, ...],
        now: float,
        *,
        expires: float | None = None,
    ) -> None:
        """Store an entry until ``expires`` on Trio's clock."""


#: How far back (ms) a pull reaches before the newest store time it has seen: entries
#: stored by a process whose clock is behind still arrive (the ids already seen are skipped).
SKEW_MS = 5_000


@attrs.define
class _Seen:
    """How far a process has read one scope: the newest store time seen, and the ids seen
    within :data:`SKEW_MS` of it (a later pull reaches back that far and skips them)."""

    since: int = 0
    ids: dict[str, int] = attrs.field(factory=dict)

    def new(self, ident: str, score: int) -> bool:
        """Note entry ``ident`` stored at ``score``; False when it was seen already."""
        if ident in self.ids:
            return False
        self.ids[ident] = score
        if score > self.since:
            self.since = score
            horizon = score - SKEW_MS
            self.ids = {i: s for i, s in self.ids.items() if s >= horizon}
        return True


@attrs.define(eq=False)
class SharedSemanticIndex:
    """The semantic cache's entries in Redis, pulled into and pushed from a local index.

    Args:
        connection: the Redis connection.
        embedding_model: the embedding model (part of every key).
        scopes_kept: the most scopes whose read position is remembered (least recently
            used first out: a forgotten scope is read again from its start).
    """

    connection: RedisConnection
    embedding_model: str
    scopes_kept: int = 10_000
    _push: Script[str] = attrs.field(init=False)
    _pull: Script[str] = attrs.field(init=False)
    _model: str = attrs.field(init=False)
    _process: str = attrs.field(factory=lambda: secrets.token_hex(6), init=False)
    _next: int = attrs.field(default=0, init=False)
    _seen: OrderedDict[str, _Seen] = attrs.field(factory=OrderedDict, init=False)
    _counts: dict[str, int] = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        self._push = self.connection.script(PUSH)
        self._pull = self.connection.script(PULL)
        self._model = hashlib.sha256(self.embedding_model.encode()).hexdigest()[:16]
        self._counts = dict.fromkeys(("pushed", "pulls", "pulled", "errors"), 0)

    metric_kind: ClassVar[str] = "semantic_cache_shared"
    metric_counters: ClassVar[tuple[str, ...]] = ("pushed", "pulls", "pulled", "errors")

    def statistics(self) -> SharedSemanticStatistics:
        """A snapshot of the counters."""
        return SharedSemanticStatistics(**self._counts)

    async def push(
        self,
        scope: str,
        vector: tuple[float, ...],
        events: tuple[StreamEvent, ...],
        *,
        ttl: float,
        max_entries: int,
    ) -> None:
        """Store an answer for every process (best effort: Redis down is counted).

        Args:
            scope: the entry's scope.
            vector: its unit vector.
            events: the answer's events.
            ttl: seconds it lives (``math.inf``: until evicted).
            max_entries: the most entries the scope keeps in Redis (oldest out first).
        """
        ident = f"{self._process}-{self._next}"
        self._next += 1
        now = _now_ms()
        ttl_ms = 0 if math.isinf(ttl) else max(1, round(ttl * 1000))
        expires = 0 if ttl_ms == 0 else now + ttl_ms
        entry = json.dumps(
            [list(vector), [[type(e).__name__, _converter.unstructure(e)] for e in events], expires]
        )
        try:
            await self._call(
                self._push,
                self._keys(scope),
                [ident, entry, str(now), str(ttl_ms), str(max_entries)],
            )
        except RedisUnavailable:
            self._counts["errors"] += 1
            return
        self._counts["pushed"] += 1

    async def pull(self, scope: str, index: LocalIndex, now: float) -> int:
        """Put the entries other processes stored in ``scope`` since the last pull into
        ``index`` (with the lifetime each has left).

        Args:
            scope: the scope.
            index: this process's index.
            now: the time on Trio's clock (the index's clock).

        Returns:
            How many entries were added (0 when Redis is unreachable).
        """
        seen = self._scope(scope)
        self._counts["pulls"] += 1
        try:
            since = str(max(0, seen.since - SKEW_MS))
            found = await self._call(self._pull, self._keys(scope), [since])
        except RedisUnavailable:
            self._counts["errors"] += 1
            return 0
        wall, added, own = _now_ms(), 0, self._process + "-"
        for i in range(0, len(found), 3):
            ident, score, raw = found[i], int(float(found[i + 1])), found[i + 2]
            if not seen.new(ident, score) or ident.startswith(own):
                continue  # seen, or ours (the local index has it already)
            vector, events, expires = json.loads(raw)
            left = math.inf if expires == 0 else (expires - wall) / 1000
            if left <= 0:
                continue
            replay = tuple(_converter.structure(data, _EVENTS[name]) for name, data in events)
            index.put(scope, tuple(vector), replay, now, expires=now + left)
            added += 1
        self._counts["pulled"] += added
        return added

    def _scope(self, scope: str) -> _Seen:
        seen = self._seen.get(scope)
        if seen is None:
            seen = self._seen[scope] = _Seen()
            while len(self._seen) > self.scopes_kept:
                self._seen.popitem(last=False)
        else:
            self._seen.move_to_end(scope)
        return seen

    async def _call(self, script: Script[str], keys: list[str], args: list[str]) -> Any:
        return await self.connection.call(lambda _: script(keys=keys, args=args))

    def _keys(self, scope: str) -> list[str]:
        key = self.connection.key
        return [key("semantic", self._model, scope), key("semantic-order", self._model, scope)]


def _now_ms() -> int:
    return round(time.time() * 1000)
