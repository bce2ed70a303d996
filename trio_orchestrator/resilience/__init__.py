"""Resilience layers: each wraps a worker and is itself a worker."""

from .cache import CacheConfig, CacheLayer, CacheStatistics, LRUStore
from .coalesce import CoalescingConfig, CoalescingLayer, CoalescingStatistics
from .front import FrontLayers, wrap_coalescing_and_cache
from .keys import is_deterministic, request_key
from .priority import PriorityAdmission, PriorityConfig, PriorityStatistics

__all__ = [
    "CacheConfig",
    "CacheLayer",
    "CacheStatistics",
    "CoalescingConfig",
    "CoalescingLayer",
    "CoalescingStatistics",
    "FrontLayers",
    "LRUStore",
    "PriorityAdmission",
    "PriorityConfig",
    "PriorityStatistics",
    "is_deterministic",
    "request_key",
    "wrap_coalescing_and_cache",
]
