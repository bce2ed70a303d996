"""Prometheus metrics: the pipeline read at scrape time, finished requests counted as they end.

Three sources feed one registry:

- :class:`PipelineCollector` reads :meth:`Pipeline.statistics` when Prometheus scrapes:
  requests by outcome, in flight, per-stage queue depth, capacity, peak and shed counts,
  inference slots. Nothing is counted twice.
- :class:`RequestMetrics`, a pipeline listener, counts each finished request by provider,
  model and outcome, and observes its latency, time to first token, tokens, cost and error.
- :class:`StatisticsCollector` exports the numeric fields of any registered component's
  frozen-attrs ``statistics()`` (breakers, limiters, caches, the dead-letter queue…).

``prometheus_client`` is imported on first use, once (the ``metrics`` extra).
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterable, Iterator, Mapping
from types import ModuleType
from typing import TYPE_CHECKING, Any, Final, Protocol

import attrs

from ..errors import WorkerError
from .config import MetricsConfig, ModelPrice

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry, Counter, Histogram
    from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric

    _Family = CounterMetricFamily | GaugeMetricFamily

    from ..pipeline.core import Pipeline
    from ..pipeline.job import FinishedRequest

__all__ = [
    "PREFIX",
    "PipelineCollector",
    "RequestMetrics",
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

    def _stages(self, stats: Any) -> Iterator[Metric]:
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


@attrs.define(eq=False, slots=True)
class _Children:
    """Pre-resolved metric children for one (model, outcome), so a request costs no lookups."""

    requests: Any
    latency: Any
    first_token: Any
    input_tokens: Any
    output_tokens: Any
    cost: Any
    price: ModelPrice | None


class RequestMetrics:
    """A pipeline listener: counts and times each finished request.

    Exports ``requests_total``, ``request_duration_seconds``,
    ``time_to_first_token_seconds``, ``tokens_total``, ``cost_usd_total`` (with prices
    configured) and ``upstream_errors_total``, labelled by ``provider`` and ``model`` (and
    ``outcome``, token ``type`` or ``error`` class). Label values are bounded: the provider is
    one per pipeline, models beyond ``max_models`` count as ``other``.

    Args:
        registry: where to register the metrics.
        config: buckets, model cap and prices.
        provider: the ``provider`` label value.
    """

    def __init__(self, registry: CollectorRegistry, config: MetricsConfig, provider: str) -> None:
        prom, p = prometheus(), PREFIX
        by_model = ["provider", "model"]
        self._provider = provider
        self._prices = dict(config.prices)
        self._model = _BoundedLabel(config.max_models, always=self._prices)
        self._error = _BoundedLabel(_MAX_ERROR_CLASSES)
        self._children: dict[tuple[str, str], _Children] = {}
        self._requests: Counter = prom.Counter(
            f"{p}_requests",
            "Requests ended, by provider, model and outcome.",
            [*by_model, "outcome"],
            registry=registry,
        )
        self._latency: Histogram = prom.Histogram(
            f"{p}_request_duration_seconds",
            "Seconds from submission to the request's end.",
            [*by_model, "outcome"],
            buckets=config.latency_buckets,
            registry=registry,
        )
        self._first_token: Histogram = prom.Histogram(
            f"{p}_time_to_first_token_seconds",
            "Seconds from submission to the worker's first event.",
            by_model,
            buckets=config.first_token_buckets,
            registry=registry,
        )
        self._tokens: Counter = prom.Counter(
            f"{p}_tokens", "Tokens of completed requests, by type (input, output).",
            [*by_model, "type"], registry=registry,
        )  # fmt: skip
        self._cost: Counter | None = None
        if self._prices:
            self._cost = prom.Counter(
                f"{p}_cost_usd", "Estimated cost of completed requests, in USD.",
                by_model, registry=registry,
            )  # fmt: skip
        self._errors: Counter = prom.Counter(
            f"{p}_upstream_errors",
            "Failed requests, by error class.",
            [*by_model, "error"],
            registry=registry,
        )

    def __call__(self, record: FinishedRequest) -> None:
        """Count one finished request."""
        model = self._model(record.request.params.model)
        outcome = record.outcome.value
        children = self._children.get((model, outcome)) or self._resolve(model, outcome)
        children.requests.inc()
        children.latency.observe(record.latency)
        if record.time_to_first_token is not None:
            children.first_token.observe(record.time_to_first_token)
        completion = record.completion
        if completion is not None and completion.usage is not None:
            usage = completion.usage
            children.input_tokens.inc(usage.input_tokens)
            children.output_tokens.inc(usage.output_tokens)
            if children.price is not None:
                children.cost.inc(children.price.cost(usage.input_tokens, usage.output_tokens))
        if isinstance(record.error, WorkerError):
            error = self._error(type(record.error).__name__)
            self._errors.labels(self._provider, model, error).inc()

    def _resolve(self, model: str, outcome: str) -> _Children:
        provider = self._provider
        price = self._prices.get(model)
        children = _Children(
            requests=self._requests.labels(provider, model, outcome),
            latency=self._latency.labels(provider, model, outcome),
            first_token=self._first_token.labels(provider, model),
            input_tokens=self._tokens.labels(provider, model, "input"),
            output_tokens=self._tokens.labels(provider, model, "output"),
            cost=None if self._cost is None else self._cost.labels(provider, model),
            price=price if self._cost is not None else None,
        )
        self._children[model, outcome] = children
        return children


def stage_histogram(registry: CollectorRegistry, config: MetricsConfig) -> Histogram:
    """Return the per-stage processing-time histogram, registered in ``registry``."""
    histogram: Histogram = prometheus().Histogram(
        f"{PREFIX}_stage_duration_seconds",
        "Seconds a stage held a request, from taking it off its input to handing it on.",
        ["stage"],
        buckets=config.stage_buckets,
        registry=registry,
    )
    return histogram


# ------------------------------------------------------------------------- any component

_NAME = re.compile(r"[a-z][a-z0-9_]*")
_LABEL = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")


class HasStatistics(Protocol):
    """Anything with a ``statistics()`` method returning a frozen attrs instance."""

    def statistics(self) -> Any:
        """Return a snapshot of the component's counters."""


@attrs.frozen
class _Entry:
    component: HasStatistics
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
        component: HasStatistics,
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


def _snapshot(component: HasStatistics) -> Any:
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
