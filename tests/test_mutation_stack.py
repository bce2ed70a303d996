"""wrap(): which layers each setting builds, in what order, around what, and under which
reload key each is registered -- what the mutation session (scripts/mutation.py) found the
pipeline-level tests leaving unpinned in ``resilience/stack.py``."""

from __future__ import annotations

from typing import Any, cast

import attrs
import trio

from trio_orchestrator import EchoWorker, PromptRequest
from trio_orchestrator.distributed.answers import SharedAnswerLayer
from trio_orchestrator.distributed.breaker import SharedBreakers
from trio_orchestrator.distributed.ratelimit import SharedRateLimiter
from trio_orchestrator.resilience import (
    BreakerConfig,
    CacheConfig,
    CacheLayer,
    CircuitBreakerLayer,
    CoalescingConfig,
    CoalescingLayer,
    LimitConfig,
    RateLimitLayer,
    RateLimitsConfig,
    ResilienceConfig,
    RetryConfig,
    RetryLayer,
)
from trio_orchestrator.resilience.stack import LayerContext, iter_layers, wrap
from trio_orchestrator.types import GenerationParams
from trio_orchestrator.workers.base import collect

LIMITS = RateLimitsConfig(enabled=True, limits=(LimitConfig("model", requests_per_second=100.0),))
ALL_ON = ResilienceConfig(
    cache=CacheConfig(enabled=True),
    coalescing=CoalescingConfig(enabled=True, coalesce_sampled=True),
    rate_limits=LIMITS,
    breaker=BreakerConfig(enabled=True),
    retry=RetryConfig(enabled=True),
)


@attrs.define
class FakeRedis:
    """Just enough of a RedisConnection for the shared layers to be built (never called)."""

    share_answers: bool = True

    @property
    def config(self) -> Any:
        return self

    def script(self, source: str) -> object:
        return source


def recording() -> tuple[list[tuple[object, str]], Any]:
    """A register callback and the list it fills."""
    calls: list[tuple[object, str]] = []

    def register(component: object, path: str) -> None:
        calls.append((component, path))

    return calls, register


async def test_every_local_layer_in_order_each_registered_under_its_section() -> None:
    """All layers on: cache, coalescing, rate limit, breaker, retry, worker; each registered."""
    calls, register = recording()
    echo = EchoWorker()
    async with trio.open_nursery() as nursery:
        top = wrap(echo, ALL_ON, LayerContext(nursery, "p", register=register))
        layers = list(iter_layers(top))
        kinds = [type(layer) for layer in layers]
        assert kinds == [
            CacheLayer,
            CoalescingLayer,
            RateLimitLayer,
            CircuitBreakerLayer,
            RetryLayer,
            EchoWorker,
        ]
        assert layers[-1] is echo
        assert calls == [
            (layers[4], "resilience.retry"),
            (layers[3], "resilience.breaker"),
            (layers[2], "resilience.rate_limits"),
            (layers[1], "resilience.coalescing"),
            (layers[0], "resilience.cache"),
        ]
        request = PromptRequest(input="hi there", params=GenerationParams(temperature=0))
        assert (await collect(top, request)).text == "hi there"
        assert (await collect(top, request)).text == "hi there"
        assert cast(CacheLayer, layers[0]).statistics().hits == 1
        nursery.cancel_scope.cancel()


async def test_only_and_skip_choose_the_layers() -> None:
    """`only` keeps the named layers, `skip` drops them; the rest is the worker itself."""
    echo = EchoWorker()
    async with trio.open_nursery() as nursery:
        context = LayerContext(nursery, "p")
        only = wrap(echo, ALL_ON, context, only=("retry", "cache"))
        assert [type(w) for w in iter_layers(only)] == [CacheLayer, RetryLayer, EchoWorker]
        skipped = wrap(echo, ALL_ON, context, skip=("cache", "coalescing", "rate_limit"))
        assert [type(w) for w in iter_layers(skipped)] == [
            CircuitBreakerLayer,
            RetryLayer,
            EchoWorker,
        ]
        assert wrap(echo, ResilienceConfig(), context) is echo


async def test_with_redis_the_layers_share_their_state() -> None:
    """With Redis: a shared answer layer under coalescing, shared limits and breakers."""
    calls, register = recording()
    redis = FakeRedis()
    echo = EchoWorker()
    async with trio.open_nursery() as nursery:
        context = LayerContext(nursery, "p", redis=cast(Any, redis), register=register)
        layers = list(iter_layers(wrap(echo, ALL_ON, context)))
    assert [type(layer) for layer in layers] == [
        CacheLayer,
        CoalescingLayer,
        SharedAnswerLayer,
        RateLimitLayer,
        CircuitBreakerLayer,
        RetryLayer,
        EchoWorker,
    ]
    answers = cast(SharedAnswerLayer, layers[2])
    assert answers.inner is layers[3]
    assert answers.connection is cast(Any, redis)
    assert answers.cache is ALL_ON.cache
    assert answers.share_sampled
    limits = cast(RateLimitLayer, layers[3])
    breakers = cast(CircuitBreakerLayer, layers[4])
    assert isinstance(limits.shared, SharedRateLimiter)
    assert (limits.shared.limits, limits.shared.provider) == (LIMITS.limits, "p")
    assert limits.provider == "p"
    assert isinstance(breakers.shared, SharedBreakers)
    assert breakers.shared.config is ALL_ON.breaker
    assert breakers.provider == "p"
    assert [path for _, path in calls] == [
        "resilience.retry",
        "resilience.breaker",
        "resilience.breaker",
        "resilience.rate_limits",
        "resilience.rate_limits",
        "resilience.cache",
        "resilience.coalescing",
        "resilience.cache",
    ]
    assert [c for c, _ in calls][1:7] == [
        breakers.shared,
        breakers,
        limits.shared,
        limits,
        answers,
        layers[1],
    ]


async def test_shared_answers_need_redis_sharing_and_a_layer_to_share_for() -> None:
    """No shared answer layer without share_answers, or with neither cache nor coalescing."""
    echo = EchoWorker()
    async with trio.open_nursery() as nursery:
        off = LayerContext(nursery, "p", redis=cast(Any, FakeRedis(share_answers=False)))
        on = LayerContext(nursery, "p", redis=cast(Any, FakeRedis()))
        only = ("shared_answers",)
        assert wrap(echo, ALL_ON, off, only=only) is echo
        assert wrap(echo, ResilienceConfig(), on, only=only) is echo
        cache_only = ResilienceConfig(cache=CacheConfig(enabled=True))
        assert isinstance(wrap(echo, cache_only, on, only=only), SharedAnswerLayer)
        coalesce_only = ResilienceConfig(coalescing=CoalescingConfig(enabled=True))
        assert isinstance(wrap(echo, coalesce_only, on, only=only), SharedAnswerLayer)


async def test_rate_limits_without_a_limit_build_no_layer() -> None:
    """An enabled rate-limit section with no limits adds nothing."""
    async with trio.open_nursery() as nursery:
        config = ResilienceConfig(rate_limits=RateLimitsConfig(enabled=True))
        echo = EchoWorker()
        assert wrap(echo, config, LayerContext(nursery, "p"), only=("rate_limit",)) is echo
