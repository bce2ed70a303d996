"""Shared state across processes and hosts, through Redis.

With ``[distributed] redis_url`` set, :func:`~trio_orchestrator.resilience.open_layers`
connects to Redis (:func:`open_redis`) and the layers share their state through it: rate
limits are global (:class:`SharedRateLimiter`), circuit breakers are shared
(:class:`SharedBreakers`). Without it everything stays in memory, per
process.
"""

from .breaker import SharedBreakers, SharedBreakerStatistics, Verdict
from .config import DistributedConfig
from .connection import RedisConnection, RedisStatistics, RedisUnavailable, open_redis
from .ratelimit import SharedRateLimiter, SharedRateLimitStatistics

__all__ = [
    "DistributedConfig",
    "RedisConnection",
    "RedisStatistics",
    "RedisUnavailable",
    "SharedBreakerStatistics",
    "SharedBreakers",
    "SharedRateLimitStatistics",
    "SharedRateLimiter",
    "Verdict",
    "open_redis",
]
