"""Resilience layers: rate limits, circuit breakers, retries, and their composition.

Each layer is a worker wrapping a worker; :func:`open_layers` stacks the enabled ones in the
order cache → coalescing → rate limit → circuit breaker → retry → provider.
"""

from .breaker import (
    BreakerState,
    BreakerStatistics,
    CircuitBreaker,
    CircuitBreakerLayer,
    LatencyBaseline,
    Permit,
)
from .config import BreakerConfig, LimitConfig, RateLimitsConfig, ResilienceConfig, RetryConfig
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
from .stack import LAYERS, LayerContext, iter_layers, open_layers, provider_name

__all__ = [
    "LAYERS",
    "BreakerConfig",
    "BreakerState",
    "BreakerStatistics",
    "BucketStatistics",
    "Charge",
    "CircuitBreaker",
    "CircuitBreakerLayer",
    "LatencyBaseline",
    "LayerContext",
    "LimitConfig",
    "Permit",
    "RateLimitLayer",
    "RateLimitStatistics",
    "RateLimiter",
    "RateLimitsConfig",
    "ResilienceConfig",
    "RetryConfig",
    "RetryLayer",
    "RetryStatistics",
    "TokenBucket",
    "estimate_tokens",
    "iter_layers",
    "open_layers",
    "provider_name",
]
