"""Configuration of shared state across processes: ``[distributed]`` in the TOML file."""

from __future__ import annotations

from typing import Any, Literal

import attrs

from ..validators import one_of, positive_seconds

__all__ = ["ON_START_FAILURE", "RATE_LIMIT_POLICIES", "DistributedConfig"]

ON_START_FAILURE = ("fail", "local")
RATE_LIMIT_POLICIES = ("fail_open", "fail_closed")


def _redis_url(_instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if value is None:
        return
    schemes = ("redis://", "rediss://", "unix://")
    if not isinstance(value, str) or not value.startswith(schemes):
        raise ValueError(
            f"{attribute.name} must be a URL starting with one of {list(schemes)} "
            f"(e.g. redis://127.0.0.1:6379/0), got {value!r}"
        )


@attrs.frozen
class DistributedConfig:
    """Shared state through Redis, so that several processes (or hosts) act as one.

    Attributes:
        redis_url: the Redis server, e.g. ``redis://127.0.0.1:6379/0``. ``None`` (the
            default): nothing is shared; every process keeps its state in memory.
        operation_timeout: seconds any one Redis operation may take before it counts as a
            failure; no request ever waits on Redis longer than this.
        start_timeout: seconds to wait for Redis to answer at start (it is asked again every
            0.05 s until then).
        on_start_failure: ``fail`` (the default: refuse to start, saying why) or ``local``
            (start with local state, log a warning, and switch to Redis once it answers).
        rate_limit_policy: while Redis is unreachable, ``fail_open`` (the default: enforce
            the limits locally, per process) or ``fail_closed`` (refuse every request that a
            limit applies to with ``RateLimitExceeded``).
        key_prefix: prepended to every Redis key, so that several deployments can share one
            server.
        health_interval: seconds between health checks (a ``PING``); how soon a lost Redis
            is noticed when idle, and how soon a recovered one is used again.
        breaker_cache: seconds a process trusts what it last read of a shared circuit
            breaker's state before reading it again.
        probe_timeout: seconds a shared half-open breaker waits for its probes to report
            before it forgets them (a process that died mid-probe does not block the target).
        share_answers: with coalescing or the cache on, share them across processes too:
            identical requests on different processes make one upstream call, and the
            answer cache is shared.
        spend_sync_interval: with ``[storage]`` on too, seconds between two round trips that
            add this process's virtual-key spend to Redis and read every process's sum back:
            a key's budget holds across processes, overshot by at most this long of the
            others' spend; a key changed on one process is reloaded by all within it.
    """

    redis_url: str | None = attrs.field(default=None, validator=_redis_url)
    operation_timeout: float = attrs.field(default=0.25, validator=positive_seconds)
    start_timeout: float = attrs.field(default=2.0, validator=positive_seconds)
    on_start_failure: Literal["fail", "local"] = attrs.field(
        default="fail", validator=one_of(*ON_START_FAILURE)
    )
    rate_limit_policy: Literal["fail_open", "fail_closed"] = attrs.field(
        default="fail_open", validator=one_of(*RATE_LIMIT_POLICIES)
    )
    key_prefix: str = "trio-orchestrator:"
    health_interval: float = attrs.field(default=1.0, validator=positive_seconds)
    breaker_cache: float = attrs.field(default=0.1, validator=positive_seconds)
    probe_timeout: float = attrs.field(default=30.0, validator=positive_seconds)
    share_answers: bool = True
    spend_sync_interval: float = attrs.field(default=0.25, validator=positive_seconds)

    @property
    def enabled(self) -> bool:
        """True when a Redis server is configured."""
        return self.redis_url is not None
