"""The composition of the resilience layers around a provider worker.

Outermost first, each layer a worker wrapping the next::

    cache → coalescing → rate limit → circuit breaker → retry → provider

Why this order: a cache hit or a coalesced request costs the provider nothing, so neither
should spend rate-limit budget; a request refused by a rate limit never reaches the breaker,
so local throttling does not look like an unhealthy upstream; the breaker sits outside the
retries so that one request counts once (a request that recovered by retrying is a success,
one that used every attempt is one failure), and an open circuit stops the retries of every
new request at once instead of letting each one back off against a dead upstream.

Each layer is switched on by its ``enabled`` key under ``[resilience]``; a disabled layer is
not in the chain at all (no cost). :func:`open_layers` runs for the pipeline's lifetime and
gives layers a nursery for background work.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, TypeAlias

import attrs
import trio

from ..workers.base import ModelWorker
from .breaker import CircuitBreakerLayer
from .cache import CacheLayer
from .coalesce import CoalescingLayer
from .config import ResilienceConfig
from .ratelimit import RateLimitLayer
from .retry import RetryLayer

if TYPE_CHECKING:
    from ..config import Config
    from ..distributed.connection import RedisConnection
    from ..distributed.state import SharedState

__all__ = [
    "LAYERS",
    "LayerContext",
    "iter_layers",
    "open_layers",
    "open_redis_for",
    "open_shared_state",
    "provider_name",
    "wrap",
]


@attrs.frozen(eq=False)
class LayerContext:
    """What a layer factory may use besides the worker it wraps and the configuration.

    Attributes:
        nursery: lives as long as the layers; for background tasks (it is cancelled after
            the pipeline has drained).
        provider: the provider's name (see :func:`provider_name`), for per-provider keys.
        redis: the connection to Redis when ``[distributed] redis_url`` is set (layers then
            share their state with other processes), else None.
    """

    nursery: trio.Nursery
    provider: str
    redis: RedisConnection | None = None


LayerFactory: TypeAlias = Callable[[ModelWorker, ResilienceConfig, LayerContext], ModelWorker]


def provider_name(worker: ModelWorker) -> str:
    """The provider's name: the worker's ``name`` attribute when it is a string, else its
    class name."""
    name = getattr(worker, "name", None)
    return name if isinstance(name, str) and name else type(worker).__name__


def _cache(worker: ModelWorker, config: ResilienceConfig, context: LayerContext) -> ModelWorker:
    if not config.cache.enabled:
        return worker
    return CacheLayer(worker, config.cache)


def _coalescing(
    worker: ModelWorker, config: ResilienceConfig, context: LayerContext
) -> ModelWorker:
    if not config.coalescing.enabled:
        return worker
    # Upstream calls run in the layers' nursery, so no one subscriber owns them.
    return CoalescingLayer(worker, config.coalescing, context.nursery)


def _shared_answers(
    worker: ModelWorker, config: ResilienceConfig, context: LayerContext
) -> ModelWorker:
    redis = context.redis
    if redis is None or not redis.config.share_answers:
        return worker
    if not (config.coalescing.enabled or config.cache.enabled):
        return worker
    from ..distributed.answers import SharedAnswerLayer

    return SharedAnswerLayer(
        worker, redis, config.cache, share_sampled=config.coalescing.coalesce_sampled
    )


def _rate_limit(
    worker: ModelWorker, config: ResilienceConfig, context: LayerContext
) -> ModelWorker:
    if not config.rate_limits.enabled or not config.rate_limits.limits:
        return worker
    shared = None
    if context.redis is not None:
        from ..distributed.ratelimit import SharedRateLimiter

        shared = SharedRateLimiter(context.redis, config.rate_limits.limits, context.provider)
    return RateLimitLayer(worker, config.rate_limits, provider=context.provider, shared=shared)


def _circuit_breaker(
    worker: ModelWorker, config: ResilienceConfig, context: LayerContext
) -> ModelWorker:
    if not config.breaker.enabled:
        return worker
    shared = None
    if context.redis is not None:
        from ..distributed.breaker import SharedBreakers

        shared = SharedBreakers(context.redis, config.breaker)
    return CircuitBreakerLayer(worker, config.breaker, provider=context.provider, shared=shared)


def _retry(worker: ModelWorker, config: ResilienceConfig, context: LayerContext) -> ModelWorker:
    if not config.retry.enabled:
        return worker
    return RetryLayer(worker, config.retry)


LAYERS: tuple[tuple[str, LayerFactory], ...] = (
    ("cache", _cache),
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
) -> ModelWorker:
    """Wrap ``worker`` in every enabled layer, in the order of :data:`LAYERS`.

    A worker that applies some layers inside itself says so with a ``layers_inside``
    attribute (the router puts a breaker and retries below it, one per provider, so that it
    can skip open breakers); those layers are not applied again on top. ``only`` restricts
    the layers to the names given.
    """
    inside = set(getattr(worker, "layers_inside", ()))
    for name, factory in reversed(LAYERS):
        if name not in inside and (only is None or name in only):
            worker = factory(worker, config, context)
    return worker


def iter_layers(worker: ModelWorker) -> Iterator[ModelWorker]:
    """Yield ``worker`` and every worker it wraps (through ``.inner``), outermost first.

    Use it to find a layer and read its ``statistics()``::

        breakers = next(w for w in iter_layers(pipeline.worker)
                        if isinstance(w, CircuitBreakerLayer))
    """
    current: object = worker
    while isinstance(current, ModelWorker):
        yield current
        current = getattr(current, "inner", None)


@asynccontextmanager
async def open_layers(
    worker: ModelWorker, config: Config, *, redis: RedisConnection | None = None
) -> AsyncIterator[ModelWorker]:
    """Wrap ``worker`` in the layers ``config.resilience`` enables, for the ``async with``.

    Args:
        worker: the provider worker.
        config: the whole configuration (its ``resilience`` section is used, and with
            ``distributed.redis_url`` set the layers share their state through Redis).
        redis: an open Redis connection to share state through; when not given and
            ``redis_url`` is set, one is opened for the block.

    Yields:
        The outermost layer (``worker`` itself when no layer is enabled).
    """
    body_error: BaseException | None = None
    async with open_redis_for(config, redis) as redis, trio.open_nursery() as nursery:
        context = LayerContext(nursery, provider_name(worker), redis)
        try:
            yield wrap(worker, config.resilience, context)
        except BaseException as exc:
            # Re-raised outside the nursery, so the caller sees its own exception rather
            # than an ExceptionGroup wrapping it.
            body_error = exc
        nursery.cancel_scope.cancel()
    if body_error is not None:
        raise body_error


@asynccontextmanager
async def open_redis_for(
    config: Config, given: RedisConnection | None
) -> AsyncIterator[RedisConnection | None]:
    """``given``, or a new connection when ``[distributed] redis_url`` is set, or None
    (then nothing is imported or opened)."""
    if given is not None or not _shares_state(config):
        yield given
        return
    from ..distributed.connection import open_redis

    async with open_redis(config.distributed) as redis:
        yield redis


@asynccontextmanager
async def open_shared_state(config: Config) -> AsyncIterator[SharedState | None]:
    """What a pipeline shares through Redis (the connection, durable dead letters) when
    ``[distributed] redis_url`` is set, else None (nothing is imported or opened)."""
    if not _shares_state(config):
        yield None
        return
    from ..distributed.state import open_state

    async with open_state(config) as state:
        yield state


def _shares_state(config: Config) -> bool:
    # getattr: a configuration object of another shape (an application's own root, in
    # tests) may have no [distributed] section at all.
    distributed = getattr(config, "distributed", None)
    return distributed is not None and distributed.redis_url is not None
