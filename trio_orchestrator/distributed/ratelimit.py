"""Global rate limits: the token buckets live in Redis and one Lua script charges them.

Every process charges the same buckets, so a limit of 100 requests per minute admits 100
across all of them, not 100 per process. One check is one round trip: the script refills and
checks every bucket that applies to the request and, only if all have room, charges all of
them (the same all-or-nothing rule as the local :class:`~trio_orchestrator.resilience.
RateLimiter`). Buckets refill by Redis's own clock (``TIME`` inside the script), so processes
on different hosts agree on time. A bucket's key expires once it would have refilled, so
Redis holds only the buckets in use.

While Redis is unreachable, :class:`SharedRateLimiter` follows the configured
``rate_limit_policy``: ``fail_open`` falls back to the process's local buckets,
``fail_closed`` refuses.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING

import attrs

from ..errors import RateLimitExceeded
from ..resilience.config import LimitConfig, RateLimitsConfig
from .connection import RedisConnection, RedisUnavailable

if TYPE_CHECKING:
    from coredis.commands.script import Script

__all__ = ["SharedRateLimitStatistics", "SharedRateLimiter"]

# KEYS: the buckets. ARGV, four per bucket: rate (units/s), capacity, cost, reject (1/0).
# Returns {seconds until all would have room (a string: Lua numbers become integers), reject}.
ACQUIRE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local wait, reject = 0, 0
local levels = {}
for i, key in ipairs(KEYS) do
  local rate, capacity = tonumber(ARGV[4*i-3]), tonumber(ARGV[4*i-2])
  local cost = math.min(tonumber(ARGV[4*i-1]), capacity)
  local state = redis.call('HMGET', key, 'level', 'time')
  local level = tonumber(state[1])
  if level == nil then
    level = capacity
  elseif now > tonumber(state[2]) then
    level = math.min(capacity, level + (now - tonumber(state[2])) * rate)
  end
  levels[i] = level
  local shortfall = cost - level
  if shortfall > 1e-9 then
    wait = math.max(wait, shortfall / rate)
    if ARGV[4*i] == '1' then reject = 1 end
  end
end
if wait == 0 then
  for i, key in ipairs(KEYS) do
    local rate, capacity = tonumber(ARGV[4*i-3]), tonumber(ARGV[4*i-2])
    local level = levels[i] - math.min(tonumber(ARGV[4*i-1]), capacity)
    redis.call('HSET', key, 'level', string.format('%.17g', level),
               'time', string.format('%.6f', now))
    redis.call('PEXPIRE', key, math.ceil((capacity - level) / rate * 1000) + 1000)
  end
end
return {string.format('%.6f', wait), reject}
"""

# KEYS[1]: a bucket. ARGV: rate, capacity, units to give back (negative: to take).
ADJUST = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local rate, capacity = tonumber(ARGV[1]), tonumber(ARGV[2])
local state = redis.call('HMGET', KEYS[1], 'level', 'time')
local level = tonumber(state[1])
if level == nil then
  level = capacity
elseif now > tonumber(state[2]) then
  level = math.min(capacity, level + (now - tonumber(state[2])) * rate)
end
level = math.min(capacity, level + tonumber(ARGV[3]))
redis.call('HSET', KEYS[1], 'level', string.format('%.17g', level),
           'time', string.format('%.6f', now))
redis.call('PEXPIRE', KEYS[1], math.ceil((capacity - level) / rate * 1000) + 1000)
return 1
"""

# Distinct scope values whose bucket keys are remembered (one entry per user seen, say).
_MAX_PLANS = 10_000


@attrs.frozen
class _Bucket:
    key: str
    limit: LimitConfig


@attrs.frozen
class SharedRateLimitStatistics:
    """A snapshot of a :class:`SharedRateLimiter`."""

    checks: int
    """Checks answered by Redis."""
    refused: int
    """Of those, checks that found a bucket without room."""
    fallbacks: int
    """Checks made against local buckets because Redis was unreachable (``fail_open``)."""
    refused_unavailable: int
    """Requests refused because Redis was unreachable (``fail_closed``)."""


@attrs.define(eq=False)
class SharedRateLimiter:
    """Rate limits enforced in Redis for every process at once.

    Args:
        connection: the Redis connection.
        limits: the limits (the same list, in the same order, on every process).
        provider: the provider's name (part of every bucket's key).
    """

    connection: RedisConnection
    limits: Sequence[LimitConfig]
    provider: str
    _acquire: Script[str] = attrs.field(init=False)
    _adjust: Script[str] = attrs.field(init=False)
    _plans: dict[tuple[str | None, ...], list[_Bucket]] = attrs.field(factory=dict, init=False)
    _checks: int = attrs.field(default=0, init=False)
    _refused: int = attrs.field(default=0, init=False)
    _fallbacks: int = attrs.field(default=0, init=False)
    _refused_unavailable: int = attrs.field(default=0, init=False)

    def __attrs_post_init__(self) -> None:
        self._acquire = self.connection.script(ACQUIRE)
        self._adjust = self.connection.script(ADJUST)

    def reconfigure(self, section: RateLimitsConfig, /) -> list[str]:
        """Take reloaded ``[resilience.rate_limits]`` limits for what is charged next (every
        process must be given the same list; a reload on each does that)."""
        self.limits = section.limits
        self._plans.clear()
        return []

    async def try_acquire(self, keys: dict[str, str], tokens: int) -> tuple[float, bool] | None:
        """Charge every applicable bucket in Redis if all have room; otherwise none.

        Args:
            keys: scope → value, as for :meth:`RateLimiter.charges`.
            tokens: the request's token estimate (the cost for tokens-per-minute limits).

        Returns:
            ``(0.0, False)`` when charged; else the seconds until all would have room and
            whether a refusing limit is in ``reject`` mode. ``None`` when Redis is
            unreachable and the policy is ``fail_open``: the caller uses its local buckets.

        Raises:
            RateLimitExceeded: Redis is unreachable and the policy is ``fail_closed``.
        """
        buckets = self._buckets(keys)
        if not buckets:
            return 0.0, False
        args: list[str] = []
        for bucket in buckets:
            cost = tokens if bucket.limit.counts_tokens else 1
            mode = "1" if bucket.limit.mode == "reject" else "0"
            args += [repr(bucket.limit.rate), repr(bucket.limit.capacity), str(cost), mode]
        script = self._acquire
        try:
            answer: list[str | int] = await self.connection.call(
                lambda _: script(keys=[b.key for b in buckets], args=args)
            )
        except RedisUnavailable as exc:
            self._unavailable(exc)
            return None
        self._checks += 1
        seconds = float(answer[0])
        self._refused += seconds > 0.0
        return seconds, bool(answer[1])

    async def reconcile(self, keys: dict[str, str], estimate: int, actual: int) -> None:
        """Correct the tokens-per-minute buckets by a request's real usage (best effort: a
        failure leaves the estimate standing)."""
        for bucket in self._buckets(keys):
            limit = bucket.limit
            if not limit.counts_tokens:
                continue
            delta = min(estimate, limit.capacity) - actual
            if delta == 0:
                continue
            args = [repr(limit.rate), repr(limit.capacity), repr(delta)]
            try:
                await self.connection.call(self._adjuster(bucket.key, args))
            except RedisUnavailable:
                return

    def statistics(self) -> SharedRateLimitStatistics:
        """A snapshot of the counters."""
        return SharedRateLimitStatistics(
            checks=self._checks,
            refused=self._refused,
            fallbacks=self._fallbacks,
            refused_unavailable=self._refused_unavailable,
        )

    def _adjuster(self, key: str, args: list[str]) -> Callable[[object], Awaitable[object]]:
        script = self._adjust
        return lambda _: script(keys=[key], args=args)

    def _unavailable(self, exc: RedisUnavailable) -> None:
        if self.connection.config.rate_limit_policy == "fail_open":
            self._fallbacks += 1
            return
        self._refused_unavailable += 1
        retry_after = self.connection.config.health_interval
        raise RateLimitExceeded(
            "the shared rate-limit store (Redis) is unreachable and rate_limit_policy is "
            f"fail_closed, so no request is admitted; retry in {retry_after:.3g} s",
            retry_after=retry_after,
        ) from exc

    def _buckets(self, keys: dict[str, str]) -> list[_Bucket]:
        plan_key = tuple(keys.get(limit.scope) for limit in self.limits)
        plan = self._plans.get(plan_key)
        if plan is None:
            if len(self._plans) >= _MAX_PLANS:
                self._plans.clear()
            plan = self._plans[plan_key] = self._plan(plan_key)
        return plan

    def _plan(self, plan_key: tuple[str | None, ...]) -> list[_Bucket]:
        plan = []
        for index, (limit, value) in enumerate(zip(self.limits, plan_key, strict=True)):
            if value is None or (limit.match is not None and value != limit.match):
                continue
            unit = "tokens" if limit.counts_tokens else "requests"
            shape = f"{index}:{unit}:{limit.rate:g}/{limit.capacity:g}"
            key = self.connection.key("ratelimit", self.provider, shape, limit.scope, value)
            plan.append(_Bucket(key, limit))
        return plan
