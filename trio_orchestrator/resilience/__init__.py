"""Resilience layers: rate limits, circuit breakers, retries, coalescing, cache.

Each layer is a worker wrapping a worker; :func:`wrap` stacks the enabled ones in the order
cache → semantic cache → coalescing → rate limit → circuit breaker → retry → provider. A
provider's adaptive concurrency limit (:mod:`.adaptive`, :mod:`.adaptive_limiter`) sits
directly around it, put there by the composition root from its entry's ``[adaptive]``.
Priority admission works at the inference stage's entry instead:
:mod:`trio_orchestrator.pipeline.priority`
(its ``PriorityConfig``, ``[pipeline.priority]``, is here with the other sections).
"""

from .adaptive import AimdLimit, GradientLimit, LimitStatistics
from .adaptive_limiter import (
    AdaptiveLimiter,
    AdaptiveLimitLayer,
    AdaptiveStatistics,
    ConcurrencyLimited,
)
from .breaker import (
    BreakerState,
    BreakerStatistics,
    CircuitBreaker,
    CircuitBreakerLayer,
    LatencyBaseline,
    Permit,
)
from .cache import CacheLayer, CacheStatistics, LRUStore
from .coalesce import CoalescingLayer, CoalescingStatistics
from .config import (
    AdaptiveConfig,
    BreakerConfig,
    CacheConfig,
    CoalescingConfig,
    LimitConfig,
    PriorityConfig,
    RateLimitsConfig,
    ResilienceConfig,
    RetryConfig,
    SemanticCacheConfig,
)
from .keys import is_deterministic, request_key
from .ratelimit import (
    BucketStatistics,
    Charge,
    RateLimiter,
    RateLimitLayer,
    RateLimitStatistics,
    TokenBucket,
    estimate_tokens,
)
from .retry import RetryLayer, RetryStatistics
from .semantic_cache import SemanticCacheLayer, SemanticCacheStatistics, SemanticIndex
from .stack import LAYERS, LayerContext, iter_layers, provider_name, wrap

__all__ = [
    "LAYERS",
    "AdaptiveConfig",
    "AdaptiveLimitLayer",
    "AdaptiveLimiter",
    "AdaptiveStatistics",
    "AimdLimit",
    "BreakerConfig",
    "BreakerState",
    "BreakerStatistics",
    "BucketStatistics",
    "CacheConfig",
    "CacheLayer",
    "CacheStatistics",
    "Charge",
    "CircuitBreaker",
    "CircuitBreakerLayer",
    "CoalescingConfig",
    "CoalescingLayer",
    "CoalescingStatistics",
    "ConcurrencyLimited",
    "GradientLimit",
    "LRUStore",
    "LatencyBaseline",
    "LayerContext",
    "LimitConfig",
    "LimitStatistics",
    "Permit",
    "PriorityConfig",
    "RateLimitLayer",
    "RateLimitStatistics",
    "RateLimiter",
    "RateLimitsConfig",
    "ResilienceConfig",
    "RetryConfig",
    "RetryLayer",
    "RetryStatistics",
    "SemanticCacheConfig",
    "SemanticCacheLayer",
    "SemanticCacheStatistics",
    "SemanticIndex",
    "TokenBucket",
    "estimate_tokens",
    "is_deterministic",
    "iter_layers",
    "provider_name",
    "request_key",
    "wrap",
]
