"""The experiments' metrics, labelled by experiment and variant, read at scrape time.

- ``trio_orchestrator_experiment_requests_total{experiment, variant}``: requests finished
  (since the experiment began: restarts included, as the endpoint counts them);
- ``trio_orchestrator_experiment_errors_total{experiment, variant}``: of those, failed;
- ``trio_orchestrator_experiment_latency_seconds{experiment, variant}``: a histogram of the
  successes' latency (this process's);
- ``trio_orchestrator_experiment_state{experiment, state}``: 1 for the state it is in
  (``running``, ``rolled_back``, ``stopped``), 0 for the others.

The label values are bounded by the configuration: only configured experiments and variants.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from ..routing.experiments import LATENCY_BUCKETS, STATUSES, Experiments
from .metrics import PREFIX, prometheus

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric

__all__ = ["ExperimentCollector"]


class ExperimentCollector:
    """Exports :class:`~trio_orchestrator.routing.experiments.Experiments` as Prometheus
    metrics.

    Args:
        experiments: the gateway's experiments.
    """

    def __init__(self, experiments: Experiments) -> None:
        self._experiments = experiments

    def describe(self) -> Iterator[Metric]:
        """The metric families (so a registry notices a name clash)."""
        return self.collect()

    def collect(self) -> Iterator[Metric]:
        """Yield the per-variant counters and histogram, and each experiment's state."""
        core = prometheus().core
        labels = ["experiment", "variant"]
        requests = core.CounterMetricFamily(
            f"{PREFIX}_experiment_requests",
            "Requests an experiment's variant finished.",
            labels=labels,
        )
        errors = core.CounterMetricFamily(
            f"{PREFIX}_experiment_errors", "Requests an experiment's variant failed.", labels=labels
        )
        latency = core.HistogramMetricFamily(
            f"{PREFIX}_experiment_latency_seconds",
            "Seconds an experiment's variant took to answer (successes).",
            labels=labels,
        )
        edges = [repr(float(b)) for b in LATENCY_BUCKETS] + ["+Inf"]
        for view in self._experiments.views():
            names = [view.experiment, view.variant]
            requests.add_metric(names, view.requests)
            errors.add_metric(names, view.errors)
            cumulative, running = [], 0
            for count in view.latency_buckets:
                running += count
                cumulative.append(running)
            latency.add_metric(names, list(zip(edges, cumulative, strict=True)), view.latency_sum)
        state = core.GaugeMetricFamily(
            f"{PREFIX}_experiment_state",
            "1 for the state an experiment is in (running, rolled_back, stopped), else 0.",
            labels=["experiment", "state"],
        )
        for experiment in self._experiments.ids:
            status = self._experiments.status(experiment)
            for name in STATUSES:
                state.add_metric([experiment, name], 1.0 if name == status else 0.0)
        yield from (requests, errors, latency, state)
