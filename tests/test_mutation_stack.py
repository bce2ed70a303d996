"""wrap(): which layers each setting builds, in what order, around what, and under which
reload key each is registered -- what the mutation session (scripts/mutation.py) found the
pipeline-level tests leaving unpinned in ``resilience/stack.py``."""

from __future__ import annotations

from typing import Any, cast

import attrs
import pytest
import trio

from trio_orchestrator import EchoWorker, PromptRequest
from trio_orchestrator.distributed.answers import SharedAnswerLayer
from trio_orchestrator.distributed.breaker import SharedBreakers
from trio_orchestrator.distributed.connection import RedisUnavailable
from trio_orchestrator.distributed.ratelimit import SharedRateLimiter
from trio_orchestrator.distributed.semantic import SharedSemanticIndex
from trio_orchestrator.errors import ConfigError
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
from trio_orchestrator.resilience.config import SemanticCacheConfig
from trio_orchestrator.resilience.semantic_cache import SemanticCacheLayer
from trio_orchestrator.resilience.stack import LayerContext, iter_layers, wrap
from trio_orchestrator.types import GenerationParams
from trio_orchestrator.workers.base import EventSink, ModelWorker, collect

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


SEMANTIC = ResilienceConfig(
    cache=CacheConfig(semantic=SemanticCacheConfig(enabled=True, embedding_model="emb"))
)
QUESTION = PromptRequest(input="what is trio", params=GenerationParams(temperature=0))


@attrs.define(eq=False)
class Counting:
    """An echo worker (chats and fake embeddings) counting each kind of call."""

    chats: int = 0
    embeds: int = 0

    async def generate(self, request: PromptRequest, emit: EventSink) -> None:
        if request.embed is None:
            self.chats += 1
        else:
            self.embeds += 1
        await EchoWorker().generate(request, emit)


class DownRedis:
    """A RedisConnection whose every call fails: the shared index counts the errors."""

    def script(self, source: str) -> object:
        return source

    def key(self, *parts: str) -> str:
        return ":".join(parts)

    async def call(self, operation: object) -> object:
        raise RedisUnavailable("redis is down")


def charging() -> tuple[list[ModelWorker], Any]:
    """A LayerContext.charged that records the worker it is given."""
    seen: list[ModelWorker] = []

    def charged(worker: ModelWorker) -> ModelWorker:
        seen.append(worker)
        return worker

    return seen, charged


async def test_the_semantic_cache_embeds_through_the_worker_below_as_the_caller() -> None:
    """By default the semantic cache embeds through the (charged) worker it wraps and answers
    a repeated question from its entry; it is registered under its section."""
    calls, register = recording()
    seen, charged = charging()
    below = Counting()
    async with trio.open_nursery() as nursery:
        context = LayerContext(nursery, "p", register=register, charged=charged)
        top = wrap(below, SEMANTIC, context, only=("semantic_cache",))
        assert isinstance(top, SemanticCacheLayer)
        assert top.inner is below
        assert calls == [(top, "resilience.cache.semantic")]
        assert seen == [below]
        first, second = await collect(top, QUESTION), await collect(top, QUESTION)
    assert first.text == second.text == "what is trio"
    assert (below.chats, below.embeds) == (1, 2)
    assert top.statistics().hits == 1


async def test_the_semantic_cache_embeds_through_the_provider_named() -> None:
    """embedding_provider names the provider worker that embeds; the worker below only chats."""
    seen, charged = charging()
    below, embedder = Counting(), Counting()
    config = attrs.evolve(
        SEMANTIC,
        cache=CacheConfig(
            semantic=attrs.evolve(SEMANTIC.cache.semantic, embedding_provider="emb-provider")
        ),
    )
    async with trio.open_nursery() as nursery:
        providers = {"emb-provider": cast(ModelWorker, embedder)}
        context = LayerContext(nursery, "p", providers=providers, charged=charged)
        top = wrap(below, config, context, only=("semantic_cache",))
        await collect(top, QUESTION)
    assert seen == [embedder]
    assert (below.chats, below.embeds, embedder.embeds) == (1, 0, 1)


async def test_an_unknown_embedding_provider_is_a_config_error_naming_the_known() -> None:
    """A semantic cache naming no known provider is refused, listing the labels there are."""
    config = ResilienceConfig(
        cache=CacheConfig(
            semantic=SemanticCacheConfig(
                enabled=True, embedding_model="emb", embedding_provider="nope"
            )
        )
    )
    async with trio.open_nursery() as nursery:
        providers = {"b": cast(ModelWorker, EchoWorker()), "a": EchoWorker()}
        context = LayerContext(nursery, "p", providers=providers)
        with pytest.raises(ConfigError) as caught:
            wrap(EchoWorker(), config, context, only=("semantic_cache",))
    assert str(caught.value) == (
        "invalid configuration:\n  resilience.cache.semantic.embedding_provider: no provider "
        "is labelled 'nope' (known: ['a', 'b'])"
    )


async def test_with_redis_the_semantic_cache_shares_its_entries() -> None:
    """With Redis the semantic cache gets a shared index of its embedding model, registered
    before the layer under the same section, and consults it on a miss."""
    calls, register = recording()
    redis = DownRedis()
    async with trio.open_nursery() as nursery:
        context = LayerContext(nursery, "p", redis=cast(Any, redis), register=register)
        top = wrap(EchoWorker(), SEMANTIC, context, only=("semantic_cache",))
        assert [path for _, path in calls] == ["resilience.cache.semantic"] * 2
        shared, layer = (component for component, _ in calls)
        assert layer is top
        assert isinstance(shared, SharedSemanticIndex)
        assert shared.connection is cast(Any, redis)
        assert shared.embedding_model == "emb"
        assert (await collect(top, QUESTION)).text == "what is trio"
    assert shared.statistics().errors >= 1
