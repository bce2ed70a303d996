"""Collectors for components whose ``statistics()`` is one snapshot per target.

Circuit breakers have one target per provider/model, appearing on first use, so they get a
collector of their own (:data:`PER_TARGET`); every other component's flat statistics go
through :class:`~trio_orchestrator.observability.metrics.StatisticsCollector`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

from .metrics import PREFIX, prometheus

if TYPE_CHECKING:
    from prometheus_client.registry import Collector

__all__ = ["PER_TARGET", "BreakerCollector"]

_STATES = ("closed", "open", "half_open")


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


PER_TARGET: dict[str, Callable[[Iterable[Any]], Collector]] = {"breaker": BreakerCollector}
"""Metric kinds whose components report one snapshot per target, and their collector."""
