"""One call wires metrics, traces and request logs onto a running pipeline."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

import attrs

from ..catalogue import Catalogue, catalogue_for
from ..seams import HasStatistics, Layer, iter_layers, provider_name
from .hooks import ObservationHooks
from .layers import PER_TARGET
from .logging import RequestLogger
from .metrics import (
    PipelineCollector,
    RequestMetrics,
    StageTimes,
    StatisticsCollector,
    StatisticsSource,
    prometheus,
    render_metrics,
)
from .tracing import RequestTracer, build_tracer_provider

if TYPE_CHECKING:
    from collections.abc import Mapping

    from opentelemetry.sdk.trace import TracerProvider
    from prometheus_client import CollectorRegistry
    from prometheus_client.registry import Collector

    from ..config import Config
    from ..pipeline.core import Pipeline

__all__ = ["Instrumentation", "Part", "instrument_pipeline", "provider_name"]

Part = tuple[object, str | None]
"""A component to export, and the provider it serves (None for a gateway-wide one)."""


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

    def register_statistics(
        self,
        kind: str,
        component: StatisticsSource,
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


def instrument_pipeline(
    pipeline: Pipeline,
    config: Config | None = None,
    registry: CollectorRegistry | None = None,
    *,
    tracer_provider: TracerProvider | None = None,
    parts: Iterable[Part] | None = None,
    catalogue: Catalogue | None = None,
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
        parts: the components whose statistics to export, each with its provider's label
            (the gateway passes every part it built); by default the layers of the
            pipeline's worker and its dead-letter queue. Parts that are not
            :class:`~trio_orchestrator.seams.HasStatistics` are skipped.
        catalogue: the model facts whose prices the ``cost`` metric counts with (default: the
            configuration's ``[catalogue]`` over the bundled one).

    Returns:
        The handle to register component statistics on, render ``/metrics`` and shut down.

    Raises:
        ImportError: metrics or tracing are on but their extra is not installed.
        ValueError: ``registry`` already holds a pipeline's metrics.
    """
    config = config or pipeline.config
    observability = config.observability
    metrics, tracing = observability.metrics, observability.tracing
    *_, innermost = iter_layers(pipeline.worker)
    provider = metrics.provider or provider_name(innermost)
    result = Instrumentation(None, None)
    stage_times = None
    if metrics.enabled:
        registry = prometheus().REGISTRY if registry is None else registry
        result.registry, result.statistics = registry, StatisticsCollector()
        result.register_collector(PipelineCollector(pipeline))
        result.register_collector(result.statistics)
        known = catalogue_for(config.catalogue) if catalogue is None else catalogue
        requests = RequestMetrics(metrics, provider, known)
        result.register_collector(requests)
        pipeline.add_listener(requests)
        export_parts(result, _parts_of(pipeline) if parts is None else parts)
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


def export_parts(observed: Instrumentation, parts: Iterable[Part]) -> None:
    """Export the statistics of every :class:`~trio_orchestrator.seams.HasStatistics` part
    as its ``metric_kind`` says, labelled with its provider (once per kind and provider)."""
    per_target: dict[str, list[HasStatistics]] = {}
    seen: set[tuple[str, str | None]] = set()
    for part, provider in parts:
        if not isinstance(part, HasStatistics):
            continue
        kind = part.metric_kind
        if kind in PER_TARGET:
            per_target.setdefault(kind, []).append(part)
        elif (kind, provider) not in seen:
            seen.add((kind, provider))
            labels = {} if provider is None else {"provider": provider}
            observed.register_statistics(kind, part, labels=labels, counters=part.metric_counters)
    for kind, group in per_target.items():
        observed.register_collector(PER_TARGET[kind](group))


def _parts_of(pipeline: Pipeline) -> list[Part]:
    """The dead letters, and every layer labelled with the provider at the bottom of the
    chain (not with the worker right below it, which is mostly another layer)."""
    *layers, innermost = iter_layers(pipeline.worker)
    provider = provider_name(innermost)
    parts: list[Part] = [(pipeline.dead_letters, None)]
    parts += [(layer, provider) for layer in layers if isinstance(layer, Layer)]
    return parts
