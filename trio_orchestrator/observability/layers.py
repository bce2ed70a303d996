"""Metrics of the resilience layers, registered from the layer chain a pipeline runs.

Each layer's ``statistics()`` is read at scrape time, never bookkept twice. Breakers have
one target per provider/model, appearing on first use, so they get a collector of their own.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

from .metrics import PREFIX, prometheus

if TYPE_CHECKING:
    from prometheus_client.registry import Collector

    from ..workers.base import ModelWorker
    from .instrument import Instrumentation

__all__ = ["BreakerCollector", "register_layers", "walk_workers"]

_STATES = ("closed", "open", "half_open")


def walk_workers(worker: ModelWorker) -> Iterator[ModelWorker]:
    """Every worker in the chain below ``worker``, including each router deployment's."""
    from ..resilience.stack import iter_layers

    for layer in iter_layers(worker):
        yield layer
        for child in getattr(layer, "deployment_workers", lambda: ())():
            yield from walk_workers(child)


class BreakerCollector:
    """Breaker state, transitions, calls, failures and rejections per provider/model target."""

    def __init__(self, layers: Iterable[Any]) -> None:
        self._layers = tuple(layers)

    def describe(self) -> Iterator[Any]:
        """The metric families (for the registry's name-clash check)."""
        return self.collect()

    def collect(self) -> Iterator[Any]:
        """Yield the families, read from every breaker now."""
        core = prometheus().core
        gauge, counter = core.GaugeMetricFamily, core.CounterMetricFamily
        p = f"{PREFIX}_breaker"
        state = gauge(
            f"{p}_state", "1 for the state each target's breaker is in.", labels=["target", "state"]
        )
        error_rate = gauge(
            f"{p}_error_rate", "Failure rate over the rolling window.", labels=["target"]
        )
        counts = {
            name: counter(f"{p}_{name}", help_, labels=["target"])
            for name, help_ in (
                ("transitions", "State changes."),
                ("times_opened", "Times the breaker opened."),
                ("calls", "Calls admitted."),
                ("failures", "Calls counted as failures."),
                ("rejected", "Calls refused while open or out of probe slots."),
            )
        }
        for layer in self._layers:
            for stats in layer.statistics():
                for name in _STATES:
                    state.add_metric([stats.target, name], float(stats.state == name))
                error_rate.add_metric([stats.target], stats.error_rate)
                for name, family in counts.items():
                    family.add_metric([stats.target], getattr(stats, name))
        yield state
        yield error_rate
        yield from counts.values()


def register_layers(observed: Instrumentation, worker: ModelWorker) -> None:
    """Register the statistics of every resilience layer in ``worker``'s chain."""
    from ..resilience import (
        CacheLayer,
        CircuitBreakerLayer,
        CoalescingLayer,
        RateLimitLayer,
        RetryLayer,
    )
    from ..resilience.stack import provider_name

    breakers: list[CircuitBreakerLayer] = []
    seen: set[tuple[str, str]] = set()
    for layer in walk_workers(worker):
        inner = getattr(layer, "inner", layer)
        labels = {"provider": provider_name(inner)}
        kind_counters: tuple[str, tuple[str, ...]] | None = None
        if isinstance(layer, CircuitBreakerLayer):
            breakers.append(layer)
        elif isinstance(layer, RetryLayer):
            kind_counters = ("retry", ("calls", "attempts", "retries", "recovered"))
        elif isinstance(layer, RateLimitLayer):
            kind_counters = ("rate_limit", ("admitted", "rejected", "waited"))
        elif isinstance(layer, CoalescingLayer):
            kind_counters = ("coalescing", ("upstream_calls", "coalesced", "bypassed", "abandoned"))
        elif isinstance(layer, CacheLayer):
            kind_counters = (
                "cache",
                ("hits", "misses", "evictions", "expirations", "stored", "bypassed"),
            )
        if kind_counters is not None and (kind_counters[0], labels["provider"]) not in seen:
            seen.add((kind_counters[0], labels["provider"]))
            component: Any = layer  # each of these layers has statistics()
            observed.register_statistics(
                kind_counters[0], component, labels=labels, counters=kind_counters[1]
            )
    if breakers:
        collector: Collector = BreakerCollector(breakers)
        observed._register(collector)
