"""Shared state across processes and hosts, through Redis.

With ``[distributed] redis_url`` set, :func:`~trio_orchestrator.open_gateway` connects to
Redis once (:func:`open_redis`) and shares state through it: identical requests on different
processes make one upstream call and the answer cache is shared (:class:`SharedAnswerLayer`),
rate limits are global (:class:`SharedRateLimiter`), circuit breakers are shared
(:class:`SharedBreakers`), and dead letters are durable on a stream
(:mod:`.dead_letters`: ``RedisDeadLetterQueue``, ``replay_shared``). Without it everything
stays in memory, per process.

This package re-exports the parts the resilience layers use. The parts built on the pipeline
(durable dead letters, the work queue, shared batches) sit above it in the layers and are
imported from their modules: :mod:`.dead_letters`, :mod:`.queue` (``WorkQueue`` and
``work_through`` are also in :mod:`trio_orchestrator`), :mod:`.batch`.
"""

from .answers import SharedAnswerLayer, SharedAnswerStatistics
from .breaker import SharedBreakers, SharedBreakerStatistics, Verdict
from .config import DistributedConfig
from .connection import RedisConnection, RedisStatistics, RedisUnavailable, open_redis
from .ratelimit import SharedRateLimiter, SharedRateLimitStatistics

__all__ = [
    "DistributedConfig",
    "RedisConnection",
    "RedisStatistics",
    "RedisUnavailable",
    "SharedAnswerLayer",
    "SharedAnswerStatistics",
    "SharedBreakerStatistics",
    "SharedBreakers",
    "SharedRateLimitStatistics",
    "SharedRateLimiter",
    "Verdict",
    "open_redis",
]
