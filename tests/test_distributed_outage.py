"""Redis lost under load and brought back: no request hangs, every request ends once, the
policy holds while it is gone, and shared state is used again once it returns."""

from __future__ import annotations

from typing import Literal

import pytest
import trio
from redis_fixture import RedisServer, redis_server

from trio_orchestrator import Config, EchoWorker, PromptRequest, open_gateway
from trio_orchestrator.distributed import DistributedConfig, SharedRateLimiter
from trio_orchestrator.errors import OrchestratorError
from trio_orchestrator.resilience import (
    BreakerConfig,
    LimitConfig,
    RateLimitLayer,
    RateLimitsConfig,
    ResilienceConfig,
)

__all__ = ["redis_server"]


def config(server: RedisServer, policy: Literal["fail_open", "fail_closed"]) -> Config:
    """Shared limits that never refuse while Redis answers, and shared breakers."""
    limits = RateLimitsConfig(
        enabled=True, limits=[LimitConfig("model", requests_per_second=1e6, mode="reject")]
    )
    resilience = ResilienceConfig(rate_limits=limits, breaker=BreakerConfig(enabled=True))
    distributed = DistributedConfig(
        redis_url=server.url, health_interval=0.05, rate_limit_policy=policy
    )
    return Config(resilience=resilience, distributed=distributed)


@pytest.mark.parametrize("outage", ["stop", "pause"])
@pytest.mark.parametrize("policy", ["fail_open", "fail_closed"])
async def test_requests_never_hang_while_redis_is_lost(
    redis_server: RedisServer, outage: str, policy: Literal["fail_open", "fail_closed"]
) -> None:
    """Under load, Redis stopped (or frozen) then back: every request ends within a bound,
    fail_open keeps serving and fail_closed refuses, and the shared limits resume."""
    outcomes: list[str] = []
    phase = "before"
    async with open_gateway(config(redis_server, policy), worker=EchoWorker()) as gateway:
        pipeline = gateway.pipeline
        layer = pipeline.worker
        assert isinstance(layer, RateLimitLayer)
        assert isinstance(layer.shared, SharedRateLimiter)

        async def load() -> None:
            while True:
                with trio.fail_after(2):  # a guard: a request waiting on Redis would hang here
                    try:
                        await pipeline.submit(PromptRequest(input="hi"))
                        outcomes.append(f"{phase}:ok")
                    except OrchestratorError as exc:
                        outcomes.append(f"{phase}:{type(exc).__name__}")

        async with trio.open_nursery() as nursery:
            for _ in range(4):
                nursery.start_soon(load)
            await trio.sleep(0.2)
            phase = "lost"
            redis_server.pause() if outage == "pause" else redis_server.stop()
            await trio.sleep(0.6)
            redis_server.resume() if outage == "pause" else redis_server.start()
            redis = gateway.redis
            assert redis is not None
            with trio.fail_after(5):
                while not redis.up:  # noqa: ASYNC110 (the health check decides)
                    await trio.sleep(0.01)
            phase = "back"
            checks = layer.shared.statistics().checks
            await trio.sleep(0.2)
            nursery.cancel_scope.cancel()
        stats = pipeline.statistics()
    assert stats.in_flight == 0
    ended = stats.completed + stats.failed + stats.shed + stats.expired + stats.cancelled
    assert ended == stats.submitted
    lost = [o.split(":")[1] for o in outcomes if o.startswith("lost:")]
    if policy == "fail_open":
        assert set(lost) <= {"ok"}
    else:
        assert "RateLimitExceeded" in lost
    assert "back:ok" in outcomes
    assert layer.shared.statistics().checks > checks  # Redis decides again
