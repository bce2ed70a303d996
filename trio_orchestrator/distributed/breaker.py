"""Shared circuit breakers: a circuit opened by one process is open for all of them.

Each process keeps its local :class:`~trio_orchestrator.resilience.CircuitBreaker` per target
(``provider/model``), which counts failures and decides when to open. When one opens, the
process publishes it: a Redis hash per target holds ``open_until`` (by Redis's clock, so
hosts agree), the number of probe slots given out, and the failed probe rounds. Before each
call, every process asks that hash (one script, one round trip; a *closed* answer is trusted
for ``breaker_cache`` seconds and an *open* one until its cool-down ends, so most calls make
no round trip):

- open → the call is refused with ``CircuitOpen`` and the time left;
- cool-down over → *half-open*: the script hands out at most ``half_open_probes`` probe slots
  across all processes; the others are refused until a probe reports;
- a probe that succeeds closes the circuit for everyone (the hash is deleted); one that fails
  reopens it with a longer cool-down (``cooldown · multiplier^rounds``, capped).

Probe slots of a process that dies mid-probe are forgotten after ``probe_timeout`` (the hash
expires). While Redis is unreachable each process falls back to its local breaker alone.
"""

from __future__ import annotations

import random
from typing import TYPE_CHECKING

import attrs
import trio

from ..resilience.config import BreakerConfig
from .connection import RedisConnection, RedisUnavailable

if TYPE_CHECKING:
    from coredis.commands.script import Script

__all__ = ["SharedBreakerStatistics", "SharedBreakers", "Verdict"]

_NOW_MS = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""

# KEYS[1]: the target's hash. ARGV: probe slots per round, seconds to suggest when all are
# taken. Returns {state, seconds to wait}: closed, open, probe (a slot is yours) or busy.
CHECK = (
    _NOW_MS
    + """
local open_until = tonumber(redis.call('HGET', KEYS[1], 'open_until'))
if not open_until then return {'closed', '0'} end
if now < open_until then return {'open', tostring((open_until - now) / 1000)} end
if redis.call('HINCRBY', KEYS[1], 'probes', 1) <= tonumber(ARGV[1]) then
  return {'probe', '0'}
end
redis.call('HINCRBY', KEYS[1], 'probes', -1)
return {'busy', ARGV[2]}
"""
)

# KEYS[1]: the target's hash. ARGV: base cool-down (ms), multiplier, max cool-down (ms),
# jitter factor in (0, 1], probe timeout (ms), why: "trip" (a local breaker opened) or
# "probe" (a probe failed). Returns the cool-down in ms (what is in force if already open).
OPEN = (
    _NOW_MS
    + """
local open_until = tonumber(redis.call('HGET', KEYS[1], 'open_until'))
if open_until and now < open_until then return open_until - now end
local rounds = 0
if open_until then rounds = tonumber(redis.call('HGET', KEYS[1], 'rounds') or '0') + 1 end
local cooldown = math.min(tonumber(ARGV[3]), tonumber(ARGV[1]) * tonumber(ARGV[2]) ^ rounds)
cooldown = math.floor(cooldown * tonumber(ARGV[4]))
redis.call('HSET', KEYS[1], 'open_until', now + cooldown, 'probes', 0, 'rounds', rounds)
redis.call('PEXPIRE', KEYS[1], cooldown + tonumber(ARGV[5]))
return cooldown
"""
)

# KEYS[1]: the target's hash. Gives back a probe slot that was not used.
RELEASE = """
if tonumber(redis.call('HGET', KEYS[1], 'probes') or '0') > 0 then
  redis.call('HINCRBY', KEYS[1], 'probes', -1)
end
return 1
"""


@attrs.frozen
class Verdict:
    """What the shared state says about one call.

    Attributes:
        state: ``closed`` (call), ``probe`` (call; the result decides for everyone),
            ``open`` or ``busy`` (refuse: open, or half-open with every probe slot taken).
        retry_after: seconds until a call may pass (for a refusal).
    """

    state: str
    retry_after: float = 0.0

    @property
    def admitted(self) -> bool:
        """True when the call may go ahead."""
        return self.state in ("closed", "probe")


_CLOSED = Verdict("closed")


@attrs.frozen
class SharedBreakerStatistics:
    """A snapshot of a :class:`SharedBreakers`."""

    checks: int
    """Verdicts read from Redis."""
    cached: int
    """Verdicts answered from the local cache, without a round trip."""
    refused: int
    """Calls refused because the shared circuit was open or had no probe slot."""
    probes: int
    """Probe slots this process was given."""
    opened: int
    """Times this process published an opening (a local trip or a failed probe)."""
    closed: int
    """Times a probe of this process closed the shared circuit."""
    fallbacks: int
    """Checks answered by the local breaker alone because Redis was unreachable."""


@attrs.define(eq=False)
class SharedBreakers:
    """The shared state of every target's circuit breaker; see the module docstring.

    Args:
        connection: the Redis connection.
        config: the breaker settings (the same on every process).
        rng: the source of cool-down jitter.
    """

    connection: RedisConnection
    config: BreakerConfig
    _rng: random.Random = attrs.field(factory=random.Random, alias="rng")
    _check: Script[str] = attrs.field(init=False)
    _open: Script[str] = attrs.field(init=False)
    _release: Script[str] = attrs.field(init=False)
    _cache: dict[str, tuple[Verdict, float]] = attrs.field(factory=dict, init=False)
    _checks: int = attrs.field(default=0, init=False)
    _cached: int = attrs.field(default=0, init=False)
    _refused: int = attrs.field(default=0, init=False)
    _probes: int = attrs.field(default=0, init=False)
    _opened: int = attrs.field(default=0, init=False)
    _closed: int = attrs.field(default=0, init=False)
    _fallbacks: int = attrs.field(default=0, init=False)

    def __attrs_post_init__(self) -> None:
        self._check = self.connection.script(CHECK)
        self._open = self.connection.script(OPEN)
        self._release = self.connection.script(RELEASE)

    def reconfigure(self, section: BreakerConfig, /) -> list[str]:
        """Take reloaded ``[resilience.breaker]`` settings (cool-down, probes) for the next
        opening and check; what is in Redis already keeps its own expiry."""
        self.config = section
        self._cache.clear()
        return []

    async def check(self, target: str) -> Verdict:
        """The verdict on one call to ``target`` (a probe slot, if given, is now taken)."""
        now = trio.current_time()
        cached = self._cache.get(target)
        if cached is not None and now < cached[1]:
            self._cached += 1
            verdict = cached[0]
            if verdict.state == "open":
                verdict = Verdict("open", cached[1] - now)
            return self._count(verdict)
        script, key = self._check, self._key(target)
        args = [str(self.config.half_open_probes), repr(self.config.cooldown)]
        try:
            answer: list[str] = await self.connection.call(lambda _: script(keys=[key], args=args))
        except RedisUnavailable:
            self._fallbacks += 1
            return _CLOSED
        self._checks += 1
        verdict = Verdict(answer[0], float(answer[1]))
        if verdict.state == "closed":
            self._cache[target] = (verdict, now + self.connection.config.breaker_cache)
        elif verdict.state == "open":
            self._cache[target] = (verdict, now + verdict.retry_after)
        self._probes += verdict.state == "probe"
        return self._count(verdict)

    async def opened(self, target: str) -> None:
        """Publish that ``target``'s circuit opened here (a local trip or a failed probe)."""
        cfg = self.config
        jitter = 1.0 - cfg.jitter * self._rng.random()
        args = [
            repr(cfg.cooldown * 1000),
            repr(cfg.cooldown_multiplier),
            repr(cfg.max_cooldown * 1000),
            repr(jitter),
            repr(self.connection.config.probe_timeout * 1000),
        ]
        script, key = self._open, self._key(target)
        try:
            cooldown_ms: int = await self.connection.call(lambda _: script(keys=[key], args=args))
        except RedisUnavailable:
            return
        self._opened += 1
        remaining = cooldown_ms / 1000
        self._cache[target] = (Verdict("open", remaining), trio.current_time() + remaining)

    async def probe_succeeded(self, target: str) -> None:
        """Close ``target``'s circuit for every process."""
        key = self._key(target)
        try:
            await self.connection.call(lambda redis: redis.delete([key]))
        except RedisUnavailable:
            return
        self._closed += 1
        self._cache.pop(target, None)

    async def release(self, target: str) -> None:
        """Give back a probe slot that ended without evidence either way."""
        script, key = self._release, self._key(target)
        try:
            await self.connection.call(lambda _: script(keys=[key]))
        except RedisUnavailable:
            return

    def statistics(self) -> SharedBreakerStatistics:
        """A snapshot of the counters."""
        return SharedBreakerStatistics(
            checks=self._checks,
            cached=self._cached,
            refused=self._refused,
            probes=self._probes,
            opened=self._opened,
            closed=self._closed,
            fallbacks=self._fallbacks,
        )

    def _count(self, verdict: Verdict) -> Verdict:
        self._refused += not verdict.admitted
        return verdict

    def _key(self, target: str) -> str:
        return self.connection.key("breaker", target)
