"""Shared state across processes and hosts, through Redis.

With ``[distributed] redis_url`` set, :func:`~trio_orchestrator.open_pipeline` connects to
Redis (:func:`open_redis`) and shares state through it: identical requests on different
processes make one upstream call and the answer cache is shared (:class:`SharedAnswerLayer`),
rate limits are global
(:class:`SharedRateLimiter`), circuit breakers are shared (:class:`SharedBreakers`), and dead
letters are durable on a stream (:class:`RedisDeadLetterQueue`, :func:`replay_shared`).
Without it everything stays in memory, per process.
"""

from typing import TYPE_CHECKING, Any

from .answers import SharedAnswerLayer, SharedAnswerStatistics
from .breaker import SharedBreakers, SharedBreakerStatistics, Verdict
from .config import DistributedConfig
from .connection import RedisConnection, RedisStatistics, RedisUnavailable, open_redis
from .queue import QueueItem, QueueProgress, WorkQueue, work_through
from .ratelimit import SharedRateLimiter, SharedRateLimitStatistics

if TYPE_CHECKING:
    from .dead_letters import RedisDeadLetterQueue, SharedDeadLetterStatistics, replay_shared
    from .state import SharedState, open_state

__all__ = [
    "DistributedConfig",
    "QueueItem",
    "QueueProgress",
    "RedisConnection",
    "RedisDeadLetterQueue",
    "RedisStatistics",
    "RedisUnavailable",
    "SharedAnswerLayer",
    "SharedAnswerStatistics",
    "SharedBreakerStatistics",
    "SharedBreakers",
    "SharedDeadLetterStatistics",
    "SharedRateLimitStatistics",
    "SharedRateLimiter",
    "SharedState",
    "Verdict",
    "WorkQueue",
    "open_redis",
    "open_state",
    "replay_shared",
    "work_through",
]

# These build on the pipeline, which imports the configuration, which imports this package
# (for DistributedConfig): they are loaded on first use to break that cycle.
_LAZY = {
    "RedisDeadLetterQueue": "dead_letters",
    "SharedDeadLetterStatistics": "dead_letters",
    "replay_shared": "dead_letters",
    "SharedState": "state",
    "open_state": "state",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(f"{__name__}.{module}"), name)
