"""The front of the layer stack: the answer cache, then coalescing, around a worker."""

from __future__ import annotations

import attrs
import trio

from ..types import PromptRequest
from ..workers.base import EventSink, ModelWorker
from .cache import CacheConfig, CacheLayer, CacheStatistics
from .coalesce import CoalescingConfig, CoalescingLayer, CoalescingStatistics

__all__ = ["FrontLayers", "wrap_coalescing_and_cache"]


@attrs.frozen(eq=False)
class FrontLayers:
    """The cache and coalescing layers as one worker, with handles for their statistics.

    Attributes:
        worker: the outermost layer (or the wrapped worker when both are disabled).
        cache: the cache layer, when enabled.
        coalescing: the coalescing layer, when enabled.
    """

    worker: ModelWorker
    cache: CacheLayer | None
    coalescing: CoalescingLayer | None

    async def generate(self, request: PromptRequest, emit: EventSink) -> None:
        """Answer ``request`` through the cache and coalescing layers."""
        await self.worker.generate(request, emit)

    def cache_statistics(self) -> CacheStatistics | None:
        """The cache's counters, when the cache is enabled."""
        return None if self.cache is None else self.cache.statistics()

    def coalescing_statistics(self) -> CoalescingStatistics | None:
        """The coalescing layer's counters, when it is enabled."""
        return None if self.coalescing is None else self.coalescing.statistics()


def wrap_coalescing_and_cache(
    worker: ModelWorker,
    nursery: trio.Nursery,
    *,
    coalescing: CoalescingConfig | None = None,
    cache: CacheConfig | None = None,
) -> FrontLayers:
    """Wrap ``worker`` as cache → coalescing → ``worker``, each layer only when enabled.

    The cache is outermost so a hit costs no coalescing work, and a miss for a key already in
    flight joins that call rather than starting another.

    Args:
        worker: the next layer down (rate limit, breaker, retry… or a provider).
        nursery: runs coalesced upstream calls; must outlive every request made.
        coalescing: the coalescing settings (defaults when None: enabled).
        cache: the cache settings (defaults when None: disabled).

    Returns:
        The wrapped worker, with its layers' statistics.
    """
    coalescing = coalescing or CoalescingConfig()
    cache = cache or CacheConfig()
    coalescing_layer = CoalescingLayer(worker, coalescing, nursery) if coalescing.enabled else None
    outer: ModelWorker = coalescing_layer or worker
    cache_layer = CacheLayer(outer, cache) if cache.enabled else None
    return FrontLayers(cache_layer or outer, cache_layer, coalescing_layer)
