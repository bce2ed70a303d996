"""The Redis connection: bounded operations, health state, loss and recovery (real server).

These tests talk to a real ``redis-server`` over real sockets, so they run on the real clock
(an autojump clock would jump past every socket wait); waits are short and bounded.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import trio
from redis_fixture import RedisServer, redis_server

from trio_orchestrator import Config, EchoWorker, PromptRequest, open_gateway
from trio_orchestrator.distributed import (
    DistributedConfig,
    RedisUnavailable,
    SharedRateLimiter,
    open_redis,
)
from trio_orchestrator.resilience import (
    LimitConfig,
    RateLimitLayer,
    RateLimitsConfig,
    ResilienceConfig,
)

__all__ = ["redis_server"]


def distributed(server: RedisServer, **overrides: object) -> DistributedConfig:
    """A ``[distributed]`` section for ``server`` with quick health checks."""
    settings: dict[str, object] = {"redis_url": server.url, "health_interval": 0.05}
    settings.update(overrides)
    return DistributedConfig(**settings)  # type: ignore[arg-type]


async def wait_until(condition: Callable[[], bool]) -> None:
    """Poll ``condition`` on the real clock until it holds (fails the test after 5 s)."""
    with trio.fail_after(5):
        # Polling: the condition depends on an outside server, with no event to wait on.
        while not condition():  # noqa: ASYNC110
            await trio.sleep(0.01)


def closed_server(tmp_path: Path) -> RedisServer:
    """A server object whose port nothing listens on (until it is started)."""
    executable = shutil.which("redis-server")
    if executable is None:
        pytest.skip("redis-server is not installed (Debian: apt-get install redis-server)")
    return RedisServer(executable, tmp_path)


def test_config_rejects_a_url_without_a_redis_scheme() -> None:
    """A redis_url that is not redis://, rediss:// or unix:// is refused, naming the key."""
    with pytest.raises(ValueError, match="redis_url"):
        DistributedConfig(redis_url="http://localhost:6379")


def test_the_toml_section_is_read_and_checked() -> None:
    """[distributed] in a TOML file sets the keys; a bad policy is reported with its path."""
    from trio_orchestrator.config.load import parse_config
    from trio_orchestrator.errors import ConfigError

    config = parse_config('[distributed]\nredis_url = "redis://h:1/0"\noperation_timeout = 0.1\n')
    assert (config.distributed.redis_url, config.distributed.operation_timeout) == (
        "redis://h:1/0",
        0.1,
    )
    with pytest.raises(ConfigError, match=r"distributed\.rate_limit_policy"):
        parse_config('[distributed]\nrate_limit_policy = "maybe"\n')


def test_config_rejects_a_non_positive_timeout() -> None:
    """operation_timeout must be a positive number of seconds."""
    with pytest.raises(ValueError, match="operation_timeout"):
        DistributedConfig(operation_timeout=0)


async def test_call_runs_the_operation(redis_server: RedisServer) -> None:
    """An operation through ``call`` reaches Redis and returns its answer."""
    async with open_redis(distributed(redis_server)) as redis:
        await redis.call(lambda r: r.set(redis.key("k"), "v"))
        assert await redis.call(lambda r: r.get(redis.key("k"))) == "v"
        assert redis.statistics().up


async def test_start_fails_clearly_when_redis_is_down(tmp_path: Path) -> None:
    """With on_start_failure = fail, an unreachable Redis refuses to start, saying what to do."""
    server = closed_server(tmp_path)
    with pytest.raises(RedisUnavailable, match="on_start_failure"):
        async with open_redis(distributed(server, start_timeout=0.5)):
            pass  # pragma: no cover


async def test_start_waits_for_a_redis_that_answers_within_start_timeout(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A Redis that refuses the first PING (not listening yet) but answers before
    start_timeout is used: start asks again until then, not once."""
    server = closed_server(tmp_path)
    caplog.set_level(logging.WARNING, "trio_orchestrator.distributed")

    async def start_after_a_refusal() -> None:
        await wait_until(lambda: "is unreachable" in caplog.text)
        await trio.to_thread.run_sync(server.start)

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(start_after_a_refusal)
            async with open_redis(distributed(server, start_timeout=20)) as redis:
                assert redis.up
                assert await redis.call(lambda r: r.ping())
    finally:
        server.stop()


async def test_start_locally_then_use_redis_once_it_answers(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """With on_start_failure = local, it starts down with a warning and comes up with Redis."""
    server = closed_server(tmp_path)
    caplog.set_level(logging.WARNING, "trio_orchestrator.distributed")
    async with open_redis(distributed(server, on_start_failure="local")) as redis:
        assert not redis.up
        assert "STARTING WITHOUT REDIS" in caplog.text
        server.start()
        try:
            await wait_until(lambda: redis.up)
            assert await redis.call(lambda r: r.ping())
        finally:
            server.stop()


async def test_lost_redis_fails_fast_then_recovers(redis_server: RedisServer) -> None:
    """Once Redis is lost, calls fail at once without a round trip; it is used again on return."""
    async with open_redis(distributed(redis_server)) as redis:
        redis_server.stop()
        with pytest.raises(RedisUnavailable):
            await redis.call(lambda r: r.ping())
        with pytest.raises(RedisUnavailable):
            await redis.call(lambda r: r.ping())
        stats = redis.statistics()
        assert (stats.up, stats.times_lost, stats.refused_while_down) == (False, 1, 1)
        redis_server.start()
        await wait_until(lambda: redis.up)
        assert await redis.call(lambda r: r.ping())
        assert redis.statistics().times_recovered == 1


async def test_a_hung_redis_costs_at_most_the_operation_timeout(
    redis_server: RedisServer,
) -> None:
    """A frozen Redis turns a call into RedisUnavailable at the timeout, not a hang."""
    async with open_redis(distributed(redis_server, health_interval=60)) as redis:
        redis_server.pause()
        try:
            with trio.fail_after(2):  # a guard: the call must end by itself long before
                with pytest.raises(RedisUnavailable, match=r"no answer within 0\.25 s"):
                    await redis.call(lambda r: r.ping())
        finally:
            redis_server.resume()
        assert redis.statistics().timeouts == 1


async def test_password_is_not_shown(redis_server: RedisServer) -> None:
    """The URL in statistics and messages hides the password."""
    url = f"redis://:hunter2@127.0.0.1:{redis_server.port}/0"
    config = DistributedConfig(redis_url=url, on_start_failure="local", start_timeout=0.5)
    async with open_redis(config) as redis:
        assert "hunter2" not in redis.statistics().url
        assert "hunter2" not in redis.statistics().last_error


async def test_the_gateway_shares_rate_limits_only_with_redis(redis_server: RedisServer) -> None:
    """With redis_url set the rate-limit layer gets shared buckets; without, it stays local."""
    limits = RateLimitsConfig(enabled=True, limits=[LimitConfig("provider", requests_per_second=1)])
    resilience = ResilienceConfig(rate_limits=limits)
    shared_config = Config(resilience=resilience, distributed=distributed(redis_server))
    async with open_gateway(shared_config, worker=EchoWorker()) as gateway:
        worker = gateway.worker
        assert isinstance(worker, RateLimitLayer)
        assert isinstance(worker.shared, SharedRateLimiter)
        assert worker.shared.connection is gateway.redis
    async with open_gateway(Config(resilience=resilience), worker=EchoWorker()) as gateway:
        worker = gateway.worker
        assert isinstance(worker, RateLimitLayer)
        assert worker.shared is None
        assert gateway.redis is None


async def test_a_gateway_runs_with_redis_configured(redis_server: RedisServer) -> None:
    """A gateway with redis_url set serves requests and shuts down cleanly."""
    config = Config(distributed=distributed(redis_server))
    async with open_gateway(config, worker=EchoWorker()) as gateway:
        completion = await gateway.pipeline.submit(PromptRequest(input="hello"))
    assert completion.text == "hello"


async def test_metrics_expose_the_redis_state(redis_server: RedisServer) -> None:
    """/metrics says whether Redis is up, and counts its loss."""
    from trio_orchestrator.observability.config import MetricsConfig, ObservabilityConfig

    config = Config(
        distributed=distributed(redis_server),
        observability=ObservabilityConfig(metrics=MetricsConfig(enabled=True)),
    )
    async with open_gateway(config, worker=EchoWorker()) as gateway:
        redis, observed = gateway.redis, gateway.observed
        assert redis is not None
        assert observed is not None
        assert "trio_orchestrator_redis_up 1.0" in observed.render().decode()
        redis_server.stop()
        await wait_until(lambda: not redis.up)
        text = observed.render().decode()
    assert "trio_orchestrator_redis_up 0.0" in text
    assert "trio_orchestrator_redis_times_lost_total 1.0" in text


ROUTED = """
[distributed]
redis_url = "{url}"
health_interval = 0.05
rate_limit_policy = "fail_closed"
[resilience.breaker]
enabled = true
[resilience.rate_limits]
enabled = true
limits = [{{ scope = "provider", requests_per_second = 1000.0, burst = 1000.0 }}]
[observability.metrics]
enabled = true
[routing]
[[routing.deployments]]
name = "e"
model = "m"
provider = "echo"
"""


async def clients_of(server: RedisServer) -> int:
    """How many clients ``server`` has, besides the one asking."""
    async with open_redis(distributed(server)) as observer:
        listed = await observer.call(lambda client: client.client_list())
    return len(listed) - 1


async def test_routing_and_redis_share_one_connection(redis_server: RedisServer) -> None:
    """With routing and redis_url, the gateway opens ONE Redis connection: every shared part
    (the provider's breaker below the router, the rate limit above it, the dead letters) uses
    it, and readiness and metrics watch that one."""
    from trio_orchestrator import GenerationParams
    from trio_orchestrator.config.load import parse_config
    from trio_orchestrator.distributed import RedisConnection, SharedBreakers

    config = parse_config(ROUTED.format(url=redis_server.url))
    request = PromptRequest(input="hi", params=GenerationParams(model="m"))
    async with open_gateway(config) as gateway:
        for _ in range(3):
            assert (await gateway.pipeline.submit(request)).text == "hi"
        connections = [c.part for c in gateway.components if isinstance(c.part, RedisConnection)]
        shared = [
            c.part
            for c in gateway.components
            if isinstance(c.part, SharedBreakers | SharedRateLimiter)
        ]
        assert gateway.redis is not None
        assert connections == [gateway.redis]
        assert {type(part) for part in shared} == {SharedBreakers, SharedRateLimiter}
        assert all(part.connection is gateway.redis for part in shared)
        assert await clients_of(redis_server) == 1
        observed = gateway.observed
        assert observed is not None
        operations = gateway.redis.statistics().operations
        assert operations > 0
        metric = f"trio_orchestrator_redis_operations_total {operations:.1f}"
        assert metric in observed.render().decode()
        assert gateway.unready() == []
        redis_server.stop()
        await wait_until(lambda: bool(gateway.unready()))
        assert gateway.unready() == [
            'Redis is down and [distributed] rate_limit_policy is "fail_closed"'
        ]
