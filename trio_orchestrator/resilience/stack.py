"""The composition of the resilience layers around a provider worker.

Outermost first, each layer a worker wrapping the next::

    cache → semantic cache → coalescing → rate limit → circuit breaker → retry → provider

Why this order: a cache hit or a coalesced request costs the provider nothing, so neither
should spend rate-limit budget; a request refused by a rate limit never reaches the breaker,
so local throttling does not look like an unhealthy upstream; the breaker sits outside the
retries so that one request counts once (a request that recovered by retrying is a success,
one that used every attempt is one failure), and an open circuit stops the retries of every
new request at once instead of letting each one back off against a dead upstream.

Each layer is switched on by its ``enabled`` key under ``[resilience]``; a disabled layer is
not in the chain at all (no cost). The composition root (:func:`trio_orchestrator.open_gateway`)
calls :func:`wrap` and gives the layers a nursery for background work.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, TypeAlias

import attrs
import trio

from ..errors import ConfigError
from ..seams import iter_layers, provider_name
from ..workers.base import ModelWorker
from ..workers.embeddings import WorkerEmbedder
from .breaker import CircuitBreakerLayer
from .cache import CacheLayer
from .coalesce import CoalescingLayer
from .config import ResilienceConfig
from .ratelimit import RateLimitLayer
from .retry import RetryLayer
from .semantic_cache import SemanticCacheLayer

if TYPE_CHECKING:
    from ..distributed.connection import RedisConnection

__all__ = [
    "LAYERS",
    "LayerContext",
    "Register",
    "iter_layers",
    "provider_name",
    "wrap",
]

Register: TypeAlias = Callable[[object, str], None]
"""Records a component built for a layer and the configuration key path it reloads from."""


def _ignore(_component: object, _path: str) -> None:
    pass


@attrs.frozen(eq=False)
class LayerContext:
    """What a layer factory may use besides the worker it wraps and the configuration.

    Attributes:
        nursery: lives as long as the layers; for background tasks (it is cancelled after
            the pipeline has drained).
        provider: the provider's label, for per-provider keys and metric labels.
        redis: the connection to Redis when ``[distributed] redis_url`` is set (layers then
            share their state with other processes), else None.
        register: called with each component a factory builds and the key path of the
            section it takes on a reload (``"resilience.breaker"``): the composition root
            reloads, exports and checks readiness of what it was told about.
        providers: the provider workers by label (the semantic cache's
            ``embedding_provider`` names one).
    """

    nursery: trio.Nursery
    provider: str
    redis: RedisConnection | None = None
    register: Register = _ignore
    providers: Mapping[str, ModelWorker] = attrs.field(factory=dict)


LayerFactory: TypeAlias = Callable[[ModelWorker, ResilienceConfig, LayerContext], ModelWorker]


def _cache(worker: ModelWorker, config: ResilienceConfig, context: LayerContext) -> ModelWorker:
    if not config.cache.enabled:
        return worker
    layer = CacheLayer(worker, config.cache)
    context.register(layer, "resilience.cache")
    return layer


def _semantic_cache(
    worker: ModelWorker, config: ResilienceConfig, context: LayerContext
) -> ModelWorker:
    semantic = config.cache.semantic
    if not semantic.enabled:
        return worker
    embeds = worker  # by default the layers below, so the router resolves the model
    if semantic.embedding_provider:
        try:
            embeds = context.providers[semantic.embedding_provider]
        except KeyError:
            raise ConfigError(
                "resilience.cache.semantic.embedding_provider: no provider is labelled "
                f"{semantic.embedding_provider!r} (known: {sorted(context.providers)})"
            ) from None
    layer = SemanticCacheLayer(worker, semantic, WorkerEmbedder(embeds, batch=1))
    context.register(layer, "resilience.cache.semantic")
    return layer


def _coalescing(
    worker: ModelWorker, config: ResilienceConfig, context: LayerContext
) -> ModelWorker:
    if not config.coalescing.enabled:
        return worker
    # Upstream calls run in the layers' nursery, so no one subscriber owns them.
    layer = CoalescingLayer(worker, config.coalescing, context.nursery)
    context.register(layer, "resilience.coalescing")
    return layer


def _shared_answers(
    worker: ModelWorker, config: ResilienceConfig, context: LayerContext
) -> ModelWorker:
    redis = context.redis
    if redis is None or not redis.config.share_answers:
        return worker
    if not (config.coalescing.enabled or config.cache.enabled):
        return worker
    from ..distributed.answers import SharedAnswerLayer

    layer = SharedAnswerLayer(
        worker, redis, config.cache, share_sampled=config.coalescing.coalesce_sampled
    )
    context.register(layer, "resilience.cache")
    return layer


def _rate_limit(
    worker: ModelWorker, config: ResilienceConfig, context: LayerContext
) -> ModelWorker:
    if not config.rate_limits.enabled or not config.rate_limits.limits:
        return worker
    shared = None
    if context.redis is not None:
        from ..distributed.ratelimit import SharedRateLimiter

        shared = SharedRateLimiter(context.redis, config.rate_limits.limits, context.provider)
        context.register(shared, "resilience.rate_limits")
    layer = RateLimitLayer(worker, config.rate_limits, provider=context.provider, shared=shared)
    context.register(layer, "resilience.rate_limits")
    return layer


def _circuit_breaker(
    worker: ModelWorker, config: ResilienceConfig, context: LayerContext
) -> ModelWorker:
    if not config.breaker.enabled:
        return worker
    shared = None
    if context.redis is not None:
        from ..distributed.breaker import SharedBreakers

        shared = SharedBreakers(context.redis, config.breaker)
        context.register(shared, "resilience.breaker")
    layer = CircuitBreakerLayer(worker, config.breaker, provider=context.provider, shared=shared)
    context.register(layer, "resilience.breaker")
    return layer


def _retry(worker: ModelWorker, config: ResilienceConfig, context: LayerContext) -> ModelWorker:
    if not config.retry.enabled:
        return worker
    layer = RetryLayer(worker, config.retry)
    context.register(layer, "resilience.retry")
    return layer


LAYERS: tuple[tuple[str, LayerFactory], ...] = (
    ("cache", _cache),
    ("semantic_cache", _semantic_cache),
    ("coalescing", _coalescing),
    ("shared_answers", _shared_answers),
    ("rate_limit", _rate_limit),
    ("circuit_breaker", _circuit_breaker),
    ("retry", _retry),
)
"""The layers, outermost first, each with the factory that wraps a worker in it (or returns
the worker unchanged when the layer is disabled)."""


def wrap(
    worker: ModelWorker,
    config: ResilienceConfig,
    context: LayerContext,
    *,
    only: tuple[str, ...] | None = None,
    skip: tuple[str, ...] = (),
) -> ModelWorker:
    """Wrap ``worker`` in every enabled layer, in the order of :data:`LAYERS`.

    Args:
        worker: the worker to wrap.
        config: ``[resilience]``.
        context: what the factories may use.
        only: when given, only the layers named.
        skip: layers not to apply (the composition root puts the breaker and retries below
            a router, one per provider, and skips them above it).

    Returns:
        The outermost layer (``worker`` itself when no layer applies).
    """
    for name, factory in reversed(LAYERS):
        if name not in skip and (only is None or name in only):
            worker = factory(worker, config, context)
    return worker
