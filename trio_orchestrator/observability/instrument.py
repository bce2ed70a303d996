"""One call wires metrics, traces and request logs onto a running pipeline."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

import attrs

from .hooks import ObservationHooks
from .layers import register_layers
from .logging import RequestLogger
from .metrics import (
    HasStatistics,
    PipelineCollector,
    RequestMetrics,
    StageTimes,
    StatisticsCollector,
    prometheus,
    render_metrics,
)
from .tracing import RequestTracer, build_tracer_provider

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping

    from opentelemetry.sdk.trace import TracerProvider
    from prometheus_client import CollectorRegistry
    from prometheus_client.registry import Collector

    from ..config import Config
    from ..pipeline.core import Pipeline

__all__ = ["Instrumentation", "instrument_pipeline", "provider_name"]

_REDIS_COUNTERS = (
    "operations",
    "failures",
    "timeouts",
    "refused_while_down",
    "times_lost",
    "times_recovered",
)


@attrs.define(eq=False)
class Instrumentation:
    """What :func:`instrument_pipeline` set up. Keep it: components register through it, and
    :meth:`close` (or a ``with`` block) takes the metrics out of the registry again.

    Attributes:
        registry: the Prometheus registry holding the metrics, or None with metrics off.
        statistics: exports registered components' ``statistics()``, or None with metrics off.
        tracer_provider: the provider built from ``tracing.otlp_endpoint`` (shut down by
            :meth:`close`), or None.
    """

    registry: CollectorRegistry | None
    statistics: StatisticsCollector | None
    tracer_provider: TracerProvider | None = None
    _collectors: list[Collector] = attrs.field(factory=list, init=False)

    def register_collector(self, collector: Collector) -> None:
        """Register ``collector`` with the registry, to be unregistered with the rest.

        Args:
            collector: a Prometheus collector.
        """
        assert self.registry is not None
        self.registry.register(collector)
        self._collectors.append(collector)

    # The old name, still called by observability/layers.py (which the composition-root work
    # rewrites); remove it with that call (tests/test_private_names.py lists it as known).
    _register = register_collector

    def register_statistics(
        self,
        kind: str,
        component: HasStatistics,
        *,
        labels: Mapping[str, str] | None = None,
        counters: Iterable[str] = (),
    ) -> None:
        """Export ``component.statistics()`` as ``trio_orchestrator_<kind>_<field>``.

        See :meth:`StatisticsCollector.register` for the arguments. Does nothing when
        metrics are off.
        """
        if self.statistics is not None:
            self.statistics.register(kind, component, labels=labels, counters=counters)

    def render(self) -> bytes:
        """The text exposition for ``GET /metrics`` (empty with metrics off)."""
        return b"" if self.registry is None else render_metrics(self.registry)

    def close(self) -> None:
        """Take the metrics out of the registry, and flush and close the tracer provider this
        instrumentation built, if any. The pipeline can then be instrumented again (after a
        restart or reload) into the same registry.

        Flushing spans may block on the network: from Trio, call it through
        ``trio.to_thread.run_sync``.
        """
        if self.registry is not None:
            for collector in self._collectors:
                self.registry.unregister(collector)
            self._collectors.clear()
        if self.tracer_provider is not None:
            self.tracer_provider.shutdown()
            self.tracer_provider = None

    def __enter__(self) -> Instrumentation:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def provider_name(worker: object) -> str:
    """The ``provider`` label for ``worker``: its ``provider`` or ``name`` attribute when a
    string, else its class name without ``Worker``, lower-cased (``EchoWorker`` → ``echo``)."""
    for attribute in ("provider", "name"):
        value = getattr(worker, attribute, None)
        if isinstance(value, str) and value:
            break
    else:
        value = type(worker).__name__.removesuffix("Worker").lower() or "worker"
    return re.sub(r"[^A-Za-z0-9_.:/-]", "_", value)[:64]


def instrument_pipeline(
    pipeline: Pipeline,
    config: Config | None = None,
    registry: CollectorRegistry | None = None,
    *,
    tracer_provider: TracerProvider | None = None,
) -> Instrumentation:
    """Wire metrics, traces and request logs onto ``pipeline``, as ``config`` says.

    Call it once, right after :func:`open_pipeline`, before submitting requests::

        async with open_pipeline(worker, config) as pipeline:
            with instrument_pipeline(pipeline, config) as observed:
                ...

    Args:
        pipeline: the running pipeline.
        config: the configuration (default: the pipeline's); its ``observability`` section
            decides what is on.
        registry: the Prometheus registry (default: ``prometheus_client.REGISTRY``).
        tracer_provider: where spans go (default: built from ``tracing.otlp_endpoint``, else
            the global provider).

    Returns:
        The handle to register component statistics on, render ``/metrics`` and shut down.

    Raises:
        ImportError: metrics or tracing are on but their extra is not installed.
        ValueError: ``registry`` already holds a pipeline's metrics.
    """
    observability = (config or pipeline.config).observability
    metrics, tracing = observability.metrics, observability.tracing
    provider = metrics.provider or provider_name(pipeline.worker)
    result = Instrumentation(None, None)
    stage_times = None
    if metrics.enabled:
        registry = prometheus().REGISTRY if registry is None else registry
        result.registry, result.statistics = registry, StatisticsCollector()
        result.register_collector(PipelineCollector(pipeline))
        result.register_collector(result.statistics)
        requests = RequestMetrics(metrics, provider)
        result.register_collector(requests)
        pipeline.add_listener(requests)
        result.register_statistics(
            "dead_letters", pipeline.dead_letters, counters=("total", "dropped", "replayed")
        )
        register_layers(result, pipeline.worker)
        if pipeline.redis is not None:  # [distributed]: trio_orchestrator_redis_up and kin
            result.register_statistics("redis", pipeline.redis, counters=_REDIS_COUNTERS)
        if metrics.stage_timing:
            stage_times = StageTimes(metrics)
            result.register_collector(stage_times)
    tracer = None
    if tracing.enabled:
        if tracer_provider is None:
            tracer_provider = result.tracer_provider = build_tracer_provider(tracing)
        tracer = RequestTracer(tracer_provider)
    if stage_times is not None or tracer is not None:
        pipeline.set_hooks(ObservationHooks(stage_times, tracer))
    if observability.logging.requests:
        pipeline.add_listener(
            RequestLogger(provider, log_prompts=observability.logging.log_prompts)
        )
    return result
