"""Shared circuit breakers: open on one process means open on all; probes limited globally.

Two gateways, each with its own Redis client, stand for two processes. Real server, real
clock: the cool-downs here are fractions of a second, and Redis's clock decides them.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

import attrs
import pytest
import trio
from _scripted import OK, ScriptedWorker, Step, fail
from redis_fixture import RedisServer, redis_server

from trio_orchestrator import Config, PromptRequest, open_gateway
from trio_orchestrator.distributed import DistributedConfig, SharedBreakers
from trio_orchestrator.errors import CircuitOpen, ServerError, WorkerError
from trio_orchestrator.pipeline import Pipeline
from trio_orchestrator.resilience import BreakerConfig, CircuitBreakerLayer, ResilienceConfig

__all__ = ["redis_server"]

BOOM = fail(ServerError("upstream 500"))


def breaker_config(**overrides: object) -> BreakerConfig:
    """A breaker that opens after one failure, without jitter, probing with one call."""
    values: dict[str, object] = {
        "enabled": True,
        "failure_threshold": 1,
        "cooldown": 0.2,
        "jitter": 0.0,
        "half_open_probes": 1,
    }
    values.update(overrides)
    return BreakerConfig(**values)  # type: ignore[arg-type]


@asynccontextmanager
async def processes(
    server: RedisServer, workers: list[ScriptedWorker], **breaker: object
) -> AsyncIterator[list[Pipeline]]:
    """One gateway's pipeline per worker, sharing breaker state through ``server``."""
    config = Config(
        resilience=ResilienceConfig(breaker=breaker_config(**breaker)),
        distributed=DistributedConfig(redis_url=server.url, health_interval=0.05),
    )
    async with AsyncExitStack() as stack:
        gateways = [
            await stack.enter_async_context(open_gateway(config, worker=w)) for w in workers
        ]
        yield [gateway.pipeline for gateway in gateways]


async def outcome(pipeline: Pipeline) -> str:
    """Submit one request: "ok" or the error's class name."""
    try:
        await pipeline.submit(PromptRequest(input="hi"))
    except WorkerError as exc:
        return type(exc).__name__
    return "ok"


def shared(pipeline: Pipeline) -> SharedBreakers:
    """The pipeline's shared breaker state."""
    layer = pipeline.worker
    assert isinstance(layer, CircuitBreakerLayer)
    assert isinstance(layer.shared, SharedBreakers)
    return layer.shared


async def test_a_circuit_opened_on_one_process_refuses_on_another(
    redis_server: RedisServer,
) -> None:
    """A trips its breaker; B refuses the same target at once, without calling upstream."""
    failing, healthy = ScriptedWorker([BOOM]), ScriptedWorker([OK])
    async with processes(redis_server, [failing, healthy], cooldown=60) as (a, b):
        assert await outcome(a) == "ServerError"
        with pytest.raises(CircuitOpen, match="shared by every process") as refused:
            await b.submit(PromptRequest(input="hi"))
    assert healthy.calls == 0
    assert 50 < (refused.value.retry_after or 0) <= 60


async def test_probes_are_limited_across_processes(redis_server: RedisServer) -> None:
    """Half-open, one probe slot: of two processes asking at once, one calls upstream."""
    slow = Step(delay=0.1)
    first, second = ScriptedWorker([BOOM, slow]), ScriptedWorker([slow])
    async with processes(redis_server, [first, second]) as (a, b):
        assert await outcome(a) == "ServerError"
        await trio.sleep(0.25)  # the cool-down (0.2 s, by Redis's clock) passes
        results: list[str] = []

        async def ask(pipeline: Pipeline) -> None:
            results.append(await outcome(pipeline))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(ask, a)
            nursery.start_soon(ask, b)
    assert sorted(results) == ["CircuitOpen", "ok"]
    assert first.calls + second.calls == 2  # the trip, then one probe


async def test_a_successful_probe_closes_the_circuit_everywhere(
    redis_server: RedisServer,
) -> None:
    """After B's probe succeeds, A's process admits calls again (A's local breaker aside)."""
    async with processes(
        redis_server, [ScriptedWorker([BOOM, OK]), ScriptedWorker([OK])], cooldown=0.2
    ) as (a, b):
        assert await outcome(a) == "ServerError"
        await trio.sleep(0.25)
        assert await outcome(b) == "ok"  # the probe
        assert [await outcome(b) for _ in range(3)] == ["ok"] * 3
        assert await outcome(a) == "ok"
        assert shared(b).statistics().closed == 1


async def test_a_failed_probe_reopens_for_longer(redis_server: RedisServer) -> None:
    """A probe that fails on B reopens the circuit with the cool-down times the multiplier."""
    async with processes(
        redis_server, [ScriptedWorker([BOOM]), ScriptedWorker([BOOM])], cooldown_multiplier=4
    ) as (a, b):
        assert await outcome(a) == "ServerError"
        await trio.sleep(0.25)
        assert await outcome(b) == "ServerError"  # the probe fails
        with pytest.raises(CircuitOpen) as refused:
            await a.submit(PromptRequest(input="hi"))
    assert 0.6 < (refused.value.retry_after or 0) <= 0.8


async def test_a_closed_verdict_is_reused_for_a_moment(redis_server: RedisServer) -> None:
    """Calls in quick succession read the shared state once, then trust it for breaker_cache."""
    async with processes(redis_server, [ScriptedWorker([OK])]) as (a,):
        for _ in range(5):
            assert await outcome(a) == "ok"
        stats = shared(a).statistics()
    assert (stats.checks, stats.cached) == (1, 4)


async def test_without_redis_the_local_breaker_still_guards(redis_server: RedisServer) -> None:
    """Redis lost: the process's own breaker opens and refuses, and nothing hangs."""
    async with processes(redis_server, [ScriptedWorker([BOOM])], cooldown=60) as (a,):
        redis_server.stop()
        with trio.fail_after(5):
            assert [await outcome(a) for _ in range(2)] == ["ServerError", "CircuitOpen"]
        assert shared(a).statistics().fallbacks == 1


async def test_a_reload_of_the_thresholds_reaches_the_shared_breakers(
    redis_server: RedisServer,
) -> None:
    """A reloaded cool-down is the one the running SharedBreakers publishes on the next opening."""
    config = Config(
        resilience=ResilienceConfig(breaker=breaker_config(cooldown=60)),
        distributed=DistributedConfig(redis_url=redis_server.url),
    )
    faster = attrs.evolve(config, resilience=ResilienceConfig(breaker=breaker_config(cooldown=0.5)))
    failing, healthy = ScriptedWorker([BOOM]), ScriptedWorker([OK])
    async with (
        open_gateway(config, worker=failing) as a,
        open_gateway(config, worker=healthy) as b,
    ):
        report = a.reload(faster)
        assert report.ok, report
        running = [c.part for c in a.components if isinstance(c.part, SharedBreakers)]
        assert [part.config.cooldown for part in running] == [0.5]
        assert await outcome(a.pipeline) == "ServerError"
        # B was not reloaded: the time it is told to wait is what A published in Redis.
        with pytest.raises(CircuitOpen) as refused:
            await b.pipeline.submit(PromptRequest(input="hi"))
    assert healthy.calls == 0
    assert 0.3 < (refused.value.retry_after or 0) <= 0.5
