"""Global rate limits in Redis: one atomic script per check, shared by every process.

Real server, real clock (see test_distributed_connection); limits are chosen so that refill
during a test is negligible, or the bound itself accounts for elapsed Redis time.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

import pytest
import trio
from redis_fixture import RedisServer, redis_server

from trio_orchestrator import Config, EchoWorker, PromptRequest, open_gateway
from trio_orchestrator.distributed import (
    DistributedConfig,
    RedisConnection,
    SharedRateLimiter,
    open_redis,
)
from trio_orchestrator.errors import RateLimitExceeded
from trio_orchestrator.pipeline import Pipeline
from trio_orchestrator.resilience import (
    LimitConfig,
    RateLimitLayer,
    RateLimitsConfig,
    ResilienceConfig,
)

__all__ = ["redis_server"]

PER_HOUR = 1 / 3600  # refills nothing noticeable during a test


def limit(scope: str, burst: float, rate: float = PER_HOUR, **options: str) -> LimitConfig:
    """A requests limit of ``rate`` per second with a bucket of ``burst``."""
    return LimitConfig(scope, requests_per_second=rate, burst=burst, **options)  # type: ignore[arg-type]


def settings(server: RedisServer, **overrides: object) -> DistributedConfig:
    """Quick health checks against ``server`` (and a patient start: a loaded CI machine
    under coverage once took over 2 s to connect)."""
    values: dict[str, object] = {
        "redis_url": server.url,
        "health_interval": 0.05,
        "start_timeout": 10.0,
    }
    values.update(overrides)
    return DistributedConfig(**values)  # type: ignore[arg-type]


async def admitted(limiter: SharedRateLimiter, tries: int, **keys: str) -> int:
    """How many of ``tries`` checks the shared buckets admit."""
    count = 0
    for _ in range(tries):
        answer = await limiter.try_acquire({"provider": "p", "model": "m", **keys}, 0)
        count += answer == (0.0, False)
    return count


@asynccontextmanager
async def pipelines(
    server: RedisServer, limits: list[LimitConfig], count: int, **overrides: object
) -> AsyncIterator[list[Pipeline]]:
    """``count`` gateways' pipelines (each with its own Redis client), like ``count``
    processes."""
    config = Config(
        resilience=ResilienceConfig(rate_limits=RateLimitsConfig(enabled=True, limits=limits)),
        distributed=settings(server, **overrides),
    )
    async with AsyncExitStack() as stack:
        gateways = [
            await stack.enter_async_context(open_gateway(config, worker=EchoWorker()))
            for _ in range(count)
        ]
        yield [gateway.pipeline for gateway in gateways]


async def outcomes(pipeline: Pipeline, count: int) -> list[str]:
    """Submit ``count`` requests; "ok" or the error class name of each."""
    results = []
    for _ in range(count):
        try:
            await pipeline.submit(PromptRequest(input="hi"))
            results.append("ok")
        except RateLimitExceeded as exc:
            results.append(type(exc).__name__)
    return results


async def test_buckets_are_shared_between_clients(redis_server: RedisServer) -> None:
    """Two clients (two connections) draw on one bucket: together they get its burst."""
    limits = [limit("provider", burst=5, mode="reject")]
    async with open_redis(settings(redis_server)) as a, open_redis(settings(redis_server)) as b:
        first = SharedRateLimiter(a, limits, "p")
        second = SharedRateLimiter(b, limits, "p")
        assert await admitted(first, 3) + await admitted(second, 7) == 5


async def test_a_refused_request_charges_no_bucket(redis_server: RedisServer) -> None:
    """All or nothing: a request refused by its user's bucket leaves the model bucket alone."""
    limits = [limit("model", burst=3, mode="reject"), limit("user", burst=1, mode="reject")]
    async with open_redis(settings(redis_server)) as redis:
        limiter = SharedRateLimiter(redis, limits, "p")
        assert await admitted(limiter, 3, user="a") == 1  # the user bucket refuses twice
        assert await admitted(limiter, 3, user="b") == 1
        assert await admitted(limiter, 3, user="c") == 1  # the model bucket had 3 left for a-c
        assert await admitted(limiter, 1, user="d") == 0


async def test_a_refusal_says_how_long_to_wait(redis_server: RedisServer) -> None:
    """An empty bucket answers with the seconds until it refills one unit."""
    async with open_redis(settings(redis_server)) as redis:
        limiter = SharedRateLimiter(redis, [limit("provider", burst=1, rate=0.5)], "p")
        await limiter.try_acquire({"provider": "p"}, 0)
        answer = await limiter.try_acquire({"provider": "p"}, 0)
        assert answer is not None
        wait, reject = answer
        assert 1.5 < wait <= 2.0
        assert not reject


async def test_token_limits_charge_the_estimate(redis_server: RedisServer) -> None:
    """A tokens-per-minute bucket is charged the request's token estimate."""
    tokens = LimitConfig("provider", tokens_per_minute=100, burst=100, mode="reject")
    async with open_redis(settings(redis_server)) as redis:
        limiter = SharedRateLimiter(redis, [tokens], "p")
        assert await limiter.try_acquire({"provider": "p"}, 60) == (0.0, False)
        answer = await limiter.try_acquire({"provider": "p"}, 60)
        assert answer is not None
        assert answer[1]


async def test_usage_corrects_the_token_estimate(redis_server: RedisServer) -> None:
    """Tokens estimated but not used are given back to the shared bucket."""
    tokens = LimitConfig("provider", tokens_per_minute=100, burst=100, mode="reject")
    async with open_redis(settings(redis_server)) as redis:
        limiter = SharedRateLimiter(redis, [tokens], "p")
        await limiter.try_acquire({"provider": "p"}, 90)
        await limiter.reconcile({"provider": "p"}, 90, 10)  # 80 come back
        assert await limiter.try_acquire({"provider": "p"}, 85) == (0.0, False)


@pytest.mark.parametrize(
    ("clients", "rate", "burst"), [(2, 40.0, 5.0), (4, 25.0, 1.0), (8, 100.0, 10.0)]
)
async def test_concurrent_clients_never_exceed_the_rate(
    redis_server: RedisServer, clients: int, rate: float, burst: float
) -> None:
    """N clients hammering one limit concurrently are admitted at most rate·t + burst."""
    limits = [limit("provider", burst=burst, rate=rate, mode="reject")]
    total = 0
    async with AsyncExitStack() as stack:
        connections: list[RedisConnection] = [
            await stack.enter_async_context(open_redis(settings(redis_server, operation_timeout=2)))
            for _ in range(clients)
        ]

        async def hammer(connection: RedisConnection) -> None:
            nonlocal total
            limiter = SharedRateLimiter(connection, limits, "p")
            with trio.move_on_after(0.5):
                while True:
                    got = await admitted(limiter, 1)
                    total += got  # after the await: `total += await …` would lose updates

        start = await server_time(connections[0])
        async with trio.open_nursery() as nursery:
            for connection in connections:
                nursery.start_soon(hammer, connection)
        elapsed = await server_time(connections[0]) - start
    assert burst <= total <= rate * elapsed + burst + 1e-6


async def server_time(connection: RedisConnection) -> float:
    """Redis's clock, the one the buckets refill by."""
    script = connection.script("return redis.call('TIME')")
    answer: list[str] = await connection.call(lambda _: script())
    return int(answer[0]) + int(answer[1]) / 1e6


async def test_pipelines_share_a_global_limit(redis_server: RedisServer) -> None:
    """End to end: three pipelines (three "processes") admit the burst once, not three times."""
    async with pipelines(redis_server, [limit("model", burst=4, mode="reject")], 3) as ps:
        results = [await outcomes(pipeline, 3) for pipeline in ps]
    flat = [r for per_pipeline in results for r in per_pipeline]
    assert flat.count("ok") == 4
    assert flat.count("RateLimitExceeded") == 5


async def test_shared_limits_wait_for_room(redis_server: RedisServer) -> None:
    """In wait mode a request waits for the shared bucket to refill, then passes."""
    async with pipelines(redis_server, [limit("provider", burst=1, rate=20)], 2) as (a, b):
        await a.submit(PromptRequest(input="first"))
        await b.submit(PromptRequest(input="second"))  # waits about 1/20 s
        layer = b.worker
        assert isinstance(layer, RateLimitLayer)
        assert layer.statistics().waited == 1


async def test_fail_open_falls_back_to_local_limits(redis_server: RedisServer) -> None:
    """Redis lost, fail_open: requests still pass, within the process's local buckets."""
    limits = [limit("provider", burst=2, mode="reject")]
    async with pipelines(redis_server, limits, 1, health_interval=60) as (pipeline,):
        redis_server.stop()
        with trio.fail_after(5):  # no request hangs on the lost Redis
            assert await outcomes(pipeline, 3) == ["ok", "ok", "RateLimitExceeded"]


async def test_fail_closed_refuses_while_redis_is_lost(redis_server: RedisServer) -> None:
    """Redis lost, fail_closed: every limited request is refused, saying why."""
    limits = [limit("provider", burst=100, mode="reject")]
    policy = {"rate_limit_policy": "fail_closed", "health_interval": 60}
    async with pipelines(redis_server, limits, 1, **policy) as (pipeline,):
        redis_server.stop()
        with trio.fail_after(5), pytest.raises(RateLimitExceeded, match="fail_closed"):
            await pipeline.submit(PromptRequest(input="hi"))


async def test_shared_limits_resume_when_redis_returns(redis_server: RedisServer) -> None:
    """After Redis comes back, checks go to the shared buckets again."""
    limits = [limit("provider", burst=100, mode="reject")]
    policy = {"rate_limit_policy": "fail_closed"}
    async with pipelines(redis_server, limits, 1, **policy) as (pipeline,):
        redis_server.stop()
        with pytest.raises(RateLimitExceeded):
            await pipeline.submit(PromptRequest(input="hi"))
        redis_server.start()
        with trio.fail_after(5):
            while await outcomes(pipeline, 1) != ["ok"]:  # noqa: ASYNC110 (polls Redis)
                await trio.sleep(0.02)
        layer = pipeline.worker
        assert isinstance(layer, RateLimitLayer)
        assert isinstance(layer.shared, SharedRateLimiter)
        assert layer.shared.statistics().checks >= 1


async def test_a_reload_of_the_limits_reaches_the_shared_limiter(
    redis_server: RedisServer,
) -> None:
    """Reloaded limits are what the running SharedRateLimiter charges next, in Redis."""

    def limited(burst: float) -> Config:
        limits = RateLimitsConfig(enabled=True, limits=[limit("provider", burst, mode="reject")])
        return Config(
            resilience=ResilienceConfig(rate_limits=limits), distributed=settings(redis_server)
        )

    async with open_gateway(limited(2), worker=EchoWorker()) as gateway:
        assert await outcomes(gateway.pipeline, 3) == ["ok", "ok", "RateLimitExceeded"]
        report = gateway.reload(limited(5))
        assert report.ok, report
        running = [c.part for c in gateway.components if isinstance(c.part, SharedRateLimiter)]
        assert [[lim.capacity for lim in part.limits] for part in running] == [[5]]
        assert await outcomes(gateway.pipeline, 6) == ["ok"] * 5 + ["RateLimitExceeded"]
        assert gateway.redis is not None
        redis = gateway.redis
        keys = await redis.call(lambda client: client.keys("*ratelimit*"))
        # Each bucket is keyed by its shape (…:rate/burst:scope:value): the old one (burst
        # 2) and the one the reloaded limit charged, emptied by its five requests.
        levels = {key.split("/")[1].split(":")[0]: await level(redis, key) for key in keys}
    assert levels.keys() == {"2", "5"}
    assert all(left < 1 for left in levels.values())


async def level(redis: RedisConnection, key: str) -> float:
    """What is left in the shared bucket at ``key``."""
    answer = await redis.call(lambda client: client.hget(key, "level"))
    return float(answer or "nan")
