"""Prometheus metrics: the pipeline read at scrape time, finished requests counted as they end.

Three sources feed one registry:

- :class:`PipelineCollector` reads :meth:`Pipeline.statistics` when Prometheus scrapes:
  requests by outcome, in flight, per-stage queue depth, capacity, peak and shed counts,
  inference slots. Nothing is counted twice.
- :class:`RequestMetrics`, a pipeline listener, counts each finished request by provider,
  model and outcome, and observes its latency, time to first token, tokens, cost and error;
  :class:`StageTimes` holds the per-stage processing time the pipeline hooks observe. Both
  keep plain Python numbers (the pipeline runs on one thread; no locks on the request path)
  and export them at scrape time.
- :class:`StatisticsCollector` exports the numeric fields of any registered component's
  frozen-attrs ``statistics()`` (breakers, limiters, caches, the dead-letter queue…).

``prometheus_client`` is imported on first use, once (the ``metrics`` extra).
"""

from __future__ import annotations

import enum
import gc
import re
from bisect import bisect_left
from collections.abc import Iterable, Iterator, Mapping, Sequence
from itertools import accumulate
from types import ModuleType
from typing import TYPE_CHECKING, Any, Final, Protocol

import attrs

from ..catalogue.facts import Catalogue, ModelFacts, bundled_catalogue
from ..errors import WorkerError
from .config import MetricsConfig

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry
    from prometheus_client.metrics_core import (
        CounterMetricFamily,
        GaugeMetricFamily,
        HistogramMetricFamily,
        Metric,
    )

    _Family = CounterMetricFamily | GaugeMetricFamily

    from ..pipeline.core import Pipeline
    from ..pipeline.job import FinishedRequest
    from ..pipeline.statistics import PipelineStatistics

__all__ = [
    "PREFIX",
    "HeapCollector",
    "Histogram",
    "OverheadTimes",
    "PipelineCollector",
    "RequestMetrics",
    "StageTimes",
    "StatisticsCollector",
    "metrics_content_type",
    "render_metrics",
]

PREFIX: Final = "trio_orchestrator"
OUTCOMES: Final = ("completed", "failed", "shed", "expired", "cancelled")
OTHER: Final = "other"
_MAX_LABEL_LENGTH: Final = 100
_MAX_ERROR_CLASSES: Final = 64

_prometheus: ModuleType | None = None


def prometheus() -> ModuleType:
    """Return ``prometheus_client``, importing it on first use only.

    Raises:
        ImportError: it is not installed; the message says which extra to install.
    """
    global _prometheus
    if _prometheus is None:
        try:
            import prometheus_client
            import prometheus_client.core
        except ImportError as exc:  # pragma: no cover - the dev extra installs it
            raise ImportError(
                "metrics need prometheus-client: pip install 'trio-orchestrator[metrics]', "
                "or set observability.metrics.enabled = false"
            ) from exc
        _prometheus = prometheus_client
    return _prometheus


def render_metrics(registry: CollectorRegistry | None = None) -> bytes:
    """Return the Prometheus text exposition of ``registry`` (the body of ``GET /metrics``).

    Args:
        registry: the registry :func:`instrument_pipeline` used (default: the global one).
    """
    prom = prometheus()
    data: bytes = prom.generate_latest(prom.REGISTRY if registry is None else registry)
    return data


def metrics_content_type() -> str:
    """The ``Content-Type`` of :func:`render_metrics`'s output."""
    content_type: str = prometheus().CONTENT_TYPE_LATEST
    return content_type


# ------------------------------------------------------------------------- the pipeline


class PipelineCollector:
    """Reads one pipeline's :meth:`~Pipeline.statistics` each time the registry is collected.

    Args:
        pipeline: the pipeline to read.
    """

    def __init__(self, pipeline: Pipeline) -> None:
        self._pipeline = pipeline

    def describe(self) -> Iterator[Metric]:
        """The metric families (so a registry notices a second pipeline's name clash)."""
        return self.collect()

    def collect(self) -> Iterator[Metric]:
        """Yield the pipeline's metric families, read now."""
        core = prometheus().core
        gauge, counter = core.GaugeMetricFamily, core.CounterMetricFamily
        stats = self._pipeline.statistics()
        p = PREFIX
        requests = counter(
            f"{p}_pipeline_requests",
            "Requests ended, by outcome (read from the pipeline's own counters).",
            labels=["outcome"],
        )
        for outcome in OUTCOMES:
            requests.add_metric([outcome], getattr(stats, outcome))
        yield requests
        yield counter(f"{p}_pipeline_submitted", "Requests submitted.", value=stats.submitted)
        yield gauge(f"{p}_pipeline_in_flight", "Requests not yet ended.", value=stats.in_flight)
        yield gauge(
            f"{p}_pipeline_waiting_to_enter",
            "Callers waiting for room in the entry channel.",
            value=stats.waiting_to_enter,
        )
        yield gauge(
            f"{p}_inference_active",
            "Requests holding an inference slot.",
            value=stats.inference_active,
        )
        yield gauge(
            f"{p}_inference_concurrency",
            "Inference slots.",
            value=stats.inference_concurrency,
        )
        yield counter(
            f"{p}_sink_errors",
            "Exceptions raised by output sinks.",
            value=stats.sink_errors,
        )
        yield from self._stages(stats)

    def _stages(self, stats: PipelineStatistics) -> Iterator[Metric]:
        core = prometheus().core
        gauge, counter = core.GaugeMetricFamily, core.CounterMetricFamily
        p, stage = PREFIX, ["stage"]
        depth = gauge(
            f"{p}_stage_queue_depth", "Requests waiting in a stage's input.", labels=stage
        )
        capacity = gauge(f"{p}_stage_capacity", "A stage's input channel buffer.", labels=stage)
        peak = gauge(f"{p}_stage_queue_peak", "Most requests ever waiting at once.", labels=stage)
        processed = counter(
            f"{p}_stage_processed", "Requests a stage took from its input.", labels=stage
        )
        shed = counter(
            f"{p}_stage_shed",
            "Requests shed because a stage's input was full (admission: refused at entry).",
            labels=stage,
        )
        for s in stats.stages:
            depth.add_metric([s.name], s.queue_depth)
            capacity.add_metric([s.name], s.capacity)
            peak.add_metric([s.name], s.peak_depth)
            processed.add_metric([s.name], s.processed)
            shed.add_metric([s.name], s.shed)
        # Every shed request not shed by a stage was refused at admission.
        shed.add_metric(["admission"], max(0, stats.shed - sum(s.shed for s in stats.stages)))
        yield from (depth, capacity, peak, processed, shed)


# ------------------------------------------------------------------------- finished requests


class _BoundedLabel:
    """Keeps a label's values bounded: the first ``limit`` distinct values, then ``other``."""

    def __init__(self, limit: int, always: Iterable[str] = ()) -> None:
        self._known = set(always)
        self._limit = limit + len(self._known)

    def __call__(self, value: str) -> str:
        if value in self._known:
            return value
        if len(self._known) >= self._limit or len(value) > _MAX_LABEL_LENGTH:
            return OTHER
        self._known.add(value)
        return value


class Histogram:
    """A histogram kept in plain Python numbers (no locks: the pipeline runs on one thread),
    exported by a collector at scrape time.

    Args:
        bounds: the buckets' upper bounds, increasing.
    """

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        """Count one observation."""
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value

    def add_to(self, family: HistogramMetricFamily, labels: list[str]) -> None:
        """Add this histogram's cumulative buckets to ``family`` as one series."""
        counts, total = list(self.counts), self.sum  # one consistent reading
        cumulative = list(accumulate(counts))
        edges = [repr(float(b)) for b in self.bounds] + ["+Inf"]
        family.add_metric(labels, list(zip(edges, cumulative, strict=True)), total)


@attrs.define(eq=False, slots=True)
class _Outcomes:
    """The numbers kept for one (model, outcome)."""

    latency: Histogram
    requests: int = 0


@attrs.define(eq=False, slots=True)
class _Model:
    """The numbers kept for one model."""

    first_token: Histogram
    input_tokens: int = 0
    output_tokens: int = 0
    cost: float = 0.0
    priced: bool = False


class RequestMetrics:
    """A pipeline listener that counts and times each finished request, and the collector
    that exports those numbers.

    Exports ``requests_total``, ``request_duration_seconds``,
    ``time_to_first_token_seconds``, ``tokens_total``, ``cost_usd_total`` (for the models
    whose prices are known) and ``upstream_errors_total``, labelled by ``provider`` and
    ``model`` (and ``outcome``, token ``type`` or ``error`` class). Label values are
    bounded: the provider is one per pipeline, models beyond ``max_models`` count as
    ``other``.

    A request's cost is priced by the model it asked for, else by the model that answered
    (``Completion.model``: a router's upstream name), from the model catalogue with
    ``config.prices`` laid over it; cached input tokens cost the cached-input price.

    Args:
        config: buckets, model cap and prices.
        provider: the ``provider`` label value.
        catalogue: the model facts (default: the bundled catalogue).
    """

    def __init__(
        self, config: MetricsConfig, provider: str, catalogue: Catalogue | None = None
    ) -> None:
        self._config = config
        self._provider = provider
        self._prices = dict(config.prices)
        known = bundled_catalogue() if catalogue is None else catalogue
        self._catalogue = known.overridden({m: p.facts for m, p in self._prices.items()})
        self._model = _BoundedLabel(config.max_models, always=self._prices)
        self._error = _BoundedLabel(_MAX_ERROR_CLASSES)
        self._outcomes: dict[tuple[str, str], _Outcomes] = {}
        self._models: dict[str, _Model] = {}
        self._errors: dict[tuple[str, str], int] = {}

    def __call__(self, record: FinishedRequest) -> None:
        """Count one finished request."""
        asked = record.request.params.model
        model = self._model(asked)
        key = (model, record.outcome.value)
        outcomes = self._outcomes.get(key) or self._new_outcomes(key)
        outcomes.requests += 1
        outcomes.latency.observe(record.latency)
        numbers = self._models.get(model) or self._new_model(model)
        if record.time_to_first_token is not None:
            numbers.first_token.observe(record.time_to_first_token)
        completion = record.completion
        if completion is not None and completion.usage is not None:
            usage = completion.usage
            numbers.input_tokens += usage.input_tokens
            numbers.output_tokens += usage.output_tokens
            facts = self._price_of(asked, completion.model)
            if facts is not None:
                numbers.priced = True
                numbers.cost += facts.cost(
                    usage.input_tokens, usage.output_tokens, usage.cached_input_tokens
                )
        if isinstance(record.error, WorkerError):
            error_key = (model, self._error(type(record.error).__name__))
            self._errors[error_key] = self._errors.get(error_key, 0) + 1

    def _new_outcomes(self, key: tuple[str, str]) -> _Outcomes:
        outcomes = self._outcomes[key] = _Outcomes(Histogram(self._config.latency_buckets))
        return outcomes

    def _new_model(self, model: str) -> _Model:
        numbers = self._models[model] = _Model(Histogram(self._config.first_token_buckets))
        return numbers

    def _price_of(self, asked: str, answered: str | None) -> ModelFacts | None:
        for name in (asked, answered):
            facts = None if name is None else self._catalogue.get(name)
            if facts is not None and facts.priced:
                return facts
        return None

    def describe(self) -> Iterator[Metric]:
        """The metric families (so a registry notices a name clash)."""
        return self.collect()

    def collect(self) -> Iterator[Metric]:
        """Yield the request metric families, read now."""
        yield from self._by_outcome()
        yield from self._by_model()
        family = prometheus().core.CounterMetricFamily(
            f"{PREFIX}_upstream_errors",
            "Failed requests, by error class.",
            labels=["provider", "model", "error"],
        )
        for (model, error), count in list(self._errors.items()):
            family.add_metric([self._provider, model, error], count)
        yield family

    def _by_outcome(self) -> Iterator[Metric]:
        core, labels = prometheus().core, ["provider", "model", "outcome"]
        requests = core.CounterMetricFamily(
            f"{PREFIX}_requests", "Requests ended, by provider, model and outcome.", labels=labels
        )
        latency = core.HistogramMetricFamily(
            f"{PREFIX}_request_duration_seconds",
            "Seconds from submission to the request's end.",
            labels=labels,
        )
        for (model, outcome), numbers in list(self._outcomes.items()):
            requests.add_metric([self._provider, model, outcome], numbers.requests)
            numbers.latency.add_to(latency, [self._provider, model, outcome])
        yield from (requests, latency)

    def _by_model(self) -> Iterator[Metric]:
        core, labels = prometheus().core, ["provider", "model"]
        first_token = core.HistogramMetricFamily(
            f"{PREFIX}_time_to_first_token_seconds",
            "Seconds from submission to the worker's first event.",
            labels=labels,
        )
        tokens = core.CounterMetricFamily(
            f"{PREFIX}_tokens",
            "Tokens of completed requests, by type (input, output).",
            labels=[*labels, "type"],
        )
        cost = core.CounterMetricFamily(
            f"{PREFIX}_cost_usd", "Estimated cost of completed requests, in USD.", labels=labels
        )
        for model, numbers in list(self._models.items()):
            numbers.first_token.add_to(first_token, [self._provider, model])
            tokens.add_metric([self._provider, model, "input"], numbers.input_tokens)
            tokens.add_metric([self._provider, model, "output"], numbers.output_tokens)
            if numbers.priced or model in self._prices:
                cost.add_metric([self._provider, model], numbers.cost)
        yield from (first_token, tokens)
        if self._prices or any(n.priced for n in self._models.values()):
            yield cost


class StageTimes:
    """Per-stage processing time, kept by the pipeline hooks and exported at scrape time.

    Args:
        config: the stage buckets.
    """

    def __init__(self, config: MetricsConfig) -> None:
        from ..pipeline.core import STAGES  # not at import: the config model imports this

        self.histograms = {stage: Histogram(config.stage_buckets) for stage in STAGES}

    def describe(self) -> Iterator[Metric]:
        """The metric family (so a registry notices a name clash)."""
        return self.collect()

    def collect(self) -> Iterator[Metric]:
        """Yield the per-stage histogram."""
        family = prometheus().core.HistogramMetricFamily(
            f"{PREFIX}_stage_duration_seconds",
            "Seconds a stage held a request, from taking it off its input to handing it on.",
            labels=["stage"],
        )
        for stage, histogram in self.histograms.items():
            histogram.add_to(family, [stage])
        yield family


class OverheadTimes:
    """The gateway's own time per request (``x-gateway-overhead-ms``), by endpoint and
    whether it streamed, kept by the service and exported at scrape time.

    Args:
        buckets: the histogram's buckets, in seconds.
    """

    def __init__(self, buckets: Sequence[float]) -> None:
        self._buckets = tuple(buckets)
        self.histograms: dict[tuple[str, str], Histogram] = {}

    def observe(self, endpoint: str, stream: bool, seconds: float) -> None:
        """Count one request's overhead.

        Args:
            endpoint: the endpoint's path (a fixed set: the label stays bounded).
            stream: whether the answer was streamed.
            seconds: the overhead.
        """
        key = (endpoint, "yes" if stream else "no")
        histogram = self.histograms.get(key)
        if histogram is None:
            histogram = self.histograms[key] = Histogram(self._buckets)
        histogram.observe(seconds)

    def describe(self) -> Iterator[Metric]:
        """The metric family (so a registry notices a name clash)."""
        return self.collect()

    def collect(self) -> Iterator[Metric]:
        """Yield the overhead histogram."""
        family = prometheus().core.HistogramMetricFamily(
            f"{PREFIX}_gateway_overhead_seconds",
            "Seconds a request spent in the gateway, not waiting on an upstream: from its "
            "arrival to its response's headers (a stream's: its first event), less the "
            "upstream waits (x-gateway-overhead-ms).",
            labels=["endpoint", "stream"],
        )
        for (endpoint, stream), histogram in list(self.histograms.items()):
            histogram.add_to(family, [endpoint, stream])
        yield family


class HeapCollector:
    """The garbage collector's figures, read at scrape time: full collections stall every
    request in flight, and a frozen heap (``service.freeze_heap``) is what keeps them short.
    """

    def describe(self) -> Iterator[Metric]:
        """The metric families (so a registry notices a name clash)."""
        return self.collect()

    def collect(self) -> Iterator[Metric]:
        """Yield the frozen objects and the collections by generation."""
        core = prometheus().core
        yield core.GaugeMetricFamily(
            f"{PREFIX}_gc_frozen_objects",
            "Objects the garbage collector does not scan: the heap frozen once the service "
            "listened, and again after each burst (service.freeze_heap); 0 when not frozen.",
            value=gc.get_freeze_count(),
        )
        collections = core.CounterMetricFamily(
            f"{PREFIX}_gc_collections",
            "Garbage collections of each generation since the process started (2: full "
            "collections, which scan every object not frozen).",
            labels=["generation"],
        )
        for generation, figures in enumerate(gc.get_stats()):
            collections.add_metric([str(generation)], figures["collections"])
        yield collections


# ------------------------------------------------------------------------- any component

_NAME = re.compile(r"[a-z][a-z0-9_]*")
_LABEL = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")


class StatisticsSource(Protocol):
    """Anything with a ``statistics()`` method returning a frozen attrs instance."""

    def statistics(self) -> Any:
        """Return a snapshot of the component's counters."""


@attrs.frozen
class _Entry:
    component: StatisticsSource
    labels: tuple[tuple[str, str], ...]
    counters: frozenset[str]


class StatisticsCollector:
    """Exports registered components' ``statistics()`` fields at scrape time.

    Each numeric field ``f`` of a component registered as ``kind`` becomes the gauge
    ``trio_orchestrator_<kind>_<f>`` (a counter ``…_<f>_total`` if named in ``counters``),
    labelled with the labels given at registration; ``bool`` fields export 0 or 1; an
    :class:`enum.Enum` field exports one series per member, labelled ``<f>="<member>"``, 1 for
    the current one (a state set); nested attrs instances are flattened as ``<f>_<g>``. Other
    fields (strings, mappings, tuples) are skipped: they would not make bounded series.
    """

    def __init__(self) -> None:
        self._entries: dict[tuple[str, tuple[tuple[str, str], ...]], _Entry] = {}

    def register(
        self,
        kind: str,
        component: StatisticsSource,
        *,
        labels: Mapping[str, str] | None = None,
        counters: Iterable[str] = (),
    ) -> None:
        """Export ``component.statistics()`` under ``trio_orchestrator_<kind>_…``.

        Args:
            kind: what the component is: ``breaker``, ``rate_limit``, ``cache``…
                (lower case, digits, underscores).
            component: has a ``statistics()`` method returning a frozen attrs instance.
            labels: bounded label values telling components of one kind apart, e.g.
                ``{"target": "openai"}``; every component of a kind uses the same label
                names. Never a request, session, user or key id.
            counters: the fields that only ever grow (hits, transitions…), exported as
                counters.

        Raises:
            ValueError: a bad kind or label name, a label set differing from the kind's other
                components, an already-registered (kind, labels), a counter that is not a
                numeric field, or ``statistics()`` not returning an attrs instance.
        """
        labels = dict(labels or {})
        if not _NAME.fullmatch(kind):
            raise ValueError(f"kind must be lower case letters, digits and _, got {kind!r}")
        bad = [name for name in labels if not _LABEL.fullmatch(name) or name.startswith("__")]
        if bad:
            raise ValueError(f"invalid label names {bad}: use letters, digits and _")
        self._check_same_label_names(kind, labels)
        key = (kind, tuple(sorted(labels.items())))
        if key in self._entries:
            raise ValueError(f"a {kind} with labels {labels} is registered already")
        counters = frozenset(counters)
        fields = _numeric_fields(_snapshot(component))
        numbers = {name for name, _, enum_type in fields if enum_type is None}
        if not counters <= numbers:
            raise ValueError(
                f"counters {sorted(counters - numbers)} are not numeric fields of "
                f"{type(component).__name__}.statistics(): {sorted(numbers)}"
            )
        self._entries[key] = _Entry(component, key[1], counters)

    def unregister(self, kind: str, labels: Mapping[str, str] | None = None) -> None:
        """Stop exporting the component registered as ``kind`` with ``labels``.

        Raises:
            KeyError: none is registered so.
        """
        del self._entries[kind, tuple(sorted((labels or {}).items()))]

    def _check_same_label_names(self, kind: str, labels: Mapping[str, str]) -> None:
        for other_kind, other in self._entries:
            names = {name for name, _ in other}
            if other_kind == kind and names != set(labels):
                raise ValueError(
                    f"every {kind} must have the label names {sorted(names)}, got {sorted(labels)}"
                )

    def collect(self) -> Iterator[Metric]:
        """Yield one family per exported field, read now."""
        families: dict[str, _Family] = {}
        for (kind, _), entry in self._entries.items():
            names = [name for name, _ in entry.labels]
            values = [value for _, value in entry.labels]
            for field, value, enum_type in _numeric_fields(_snapshot(entry.component)):
                name = f"{PREFIX}_{kind}_{field}"
                if enum_type is not None:
                    family = families.get(name) or _family(name, kind, field, [*names, field])
                    for member in enum_type:
                        family.add_metric([*values, member.name.lower()], float(member is value))
                else:
                    counter = field in entry.counters
                    family = families.get(name) or _family(name, kind, field, names, counter)
                    family.add_metric(values, float(value))
                families[name] = family
        yield from families.values()


def _family(name: str, kind: str, field: str, labels: list[str], counter: bool = False) -> _Family:
    core = prometheus().core
    doc = f"The {field.replace('_', ' ')} field of {kind} statistics."
    family: _Family = (core.CounterMetricFamily if counter else core.GaugeMetricFamily)(
        name, doc, labels=labels
    )
    return family


def _snapshot(component: StatisticsSource) -> Any:
    stats = component.statistics()
    if not attrs.has(type(stats)):
        raise ValueError(
            f"{type(component).__name__}.statistics() must return an attrs instance, "
            f"got {type(stats).__name__}"
        )
    return stats


def _numeric_fields(
    stats: Any, prefix: str = ""
) -> Iterator[tuple[str, Any, type[enum.Enum] | None]]:
    """(name, value, enum type or None) for each exportable field, nested ones flattened."""
    for field in attrs.fields(type(stats)):
        value = getattr(stats, field.name)
        name = prefix + field.name
        if isinstance(value, enum.Enum):
            yield name, value, type(value)
        elif isinstance(value, bool | int | float):
            yield name, value, None
        elif attrs.has(type(value)):
            yield from _numeric_fields(value, f"{name}_")
