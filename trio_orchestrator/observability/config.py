"""The ``observability`` section of the configuration: metrics, logs, traces."""

from __future__ import annotations

import itertools
import logging
import math
import re
from collections.abc import Mapping
from typing import Any

import attrs

from ..catalogue.facts import ModelFacts
from ..validators import non_negative_finite, one_of, positive_int, unit_interval

__all__ = [
    "LoggingConfig",
    "MetricsConfig",
    "ModelPrice",
    "ObservabilityConfig",
    "TracingConfig",
]

_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
_LABEL_VALUE = re.compile(r"[A-Za-z0-9_.:/-]{1,64}")


# ``config.model`` imports this module: it imports only the leaf ``validators``.


def _buckets(_instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    """attrs validator: a non-empty, strictly increasing tuple of finite positive numbers."""
    ok = (
        isinstance(value, tuple)
        and len(value) > 0
        and all(
            isinstance(v, int | float) and not isinstance(v, bool) and 0 < v < math.inf
            for v in value
        )
        and all(a < b for a, b in itertools.pairwise(value))
    )
    if not ok:
        raise ValueError(
            f"{attribute.name} must be a non-empty list of finite positive numbers in "
            f"strictly increasing order (seconds), got {value!r}"
        )


def _to_buckets(value: object) -> object:
    return tuple(value) if isinstance(value, list) else value


def _label_value(_instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if value is not None and not (isinstance(value, str) and _LABEL_VALUE.fullmatch(value)):
        raise ValueError(
            f"{attribute.name} must be 1 to 64 characters of letters, digits and _ . : / -, "
            f"got {value!r}"
        )


def _endpoint(_instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if value is not None and not (
        isinstance(value, str) and value.startswith(("http://", "https://"))
    ):
        raise ValueError(f"{attribute.name} must be an http:// or https:// URL, got {value!r}")


@attrs.frozen
class ModelPrice:
    """What one model costs, for the estimated-cost counter (laid over the model catalogue's
    prices; ``[catalogue.models]`` says the same for every part that reads prices).

    Attributes:
        input_per_million: price of a million input (prompt) tokens, in USD.
        output_per_million: price of a million output (generated) tokens, in USD.
        cached_input_per_million: price of a million input tokens read from the provider's
            prompt cache, in USD (unset: the catalogue's, else ``input_per_million``).
    """

    input_per_million: float = attrs.field(default=0.0, validator=non_negative_finite)
    output_per_million: float = attrs.field(default=0.0, validator=non_negative_finite)
    cached_input_per_million: float | None = attrs.field(
        default=None, validator=attrs.validators.optional(non_negative_finite)
    )

    @property
    def facts(self) -> ModelFacts:
        """These prices as catalogue facts."""
        return ModelFacts(
            input_price=self.input_per_million,
            cached_input_price=self.cached_input_per_million,
            output_price=self.output_per_million,
        )

    def cost(self, input_tokens: int, output_tokens: int, cached_input_tokens: int = 0) -> float:
        """Return the estimated cost in USD of a request with these token counts."""
        return self.facts.cost(input_tokens, output_tokens, cached_input_tokens)


LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
FIRST_TOKEN_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
STAGE_BUCKETS = (0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0, 120.0)
# A proxied request costs the gateway about a millisecond: the buckets resolve below it.
OVERHEAD_BUCKETS = (
    0.0001,
    0.00025,
    0.0005,
    0.00075,
    0.001,
    0.0015,
    0.002,
    0.003,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.5,
)


@attrs.frozen
class MetricsConfig:
    """Prometheus metrics (needs the ``metrics`` extra: ``prometheus-client``).

    Attributes:
        enabled: export metrics at all.
        latency_buckets: histogram buckets of the total request latency, in seconds.
        first_token_buckets: histogram buckets of the time to first token, in seconds.
        stage_buckets: histogram buckets of the per-stage processing time, in seconds.
        overhead_buckets: histogram buckets of the gateway's own time per request
            (``trio_orchestrator_gateway_overhead_seconds``), in seconds.
        stage_timing: time each stage per request (two clock readings per stage and request;
            off removes the per-stage hook entirely when tracing is off too).
        provider: the ``provider`` label of this pipeline's requests; by default the worker's
            ``provider`` or ``name`` attribute, else its class name without ``Worker``.
        max_models: distinct ``model`` label values kept; requests naming any further model
            are counted under ``model="other"`` (label values stay bounded).
        prices: USD per million input and output tokens, by model name, laid over the model
            catalogue's prices (``[catalogue]``); a model priced by neither has no
            estimated-cost counter.
    """

    enabled: bool = True
    latency_buckets: tuple[float, ...] = attrs.field(
        default=LATENCY_BUCKETS, converter=_to_buckets, validator=_buckets
    )
    first_token_buckets: tuple[float, ...] = attrs.field(
        default=FIRST_TOKEN_BUCKETS, converter=_to_buckets, validator=_buckets
    )
    stage_buckets: tuple[float, ...] = attrs.field(
        default=STAGE_BUCKETS, converter=_to_buckets, validator=_buckets
    )
    overhead_buckets: tuple[float, ...] = attrs.field(
        default=OVERHEAD_BUCKETS, converter=_to_buckets, validator=_buckets
    )
    stage_timing: bool = True
    provider: str | None = attrs.field(default=None, validator=_label_value)
    max_models: int = attrs.field(default=32, validator=positive_int)
    # Left out of the hash (a dict has none), so the whole Config stays hashable.
    prices: Mapping[str, ModelPrice] = attrs.field(factory=dict, hash=False)


@attrs.frozen
class LoggingConfig:
    """Structured logs.

    Attributes:
        level: level of the ``trio_orchestrator`` logger (``DEBUG`` … ``CRITICAL``).
        json: write one JSON object per line instead of ``key=value`` text.
        requests: log one line per finished request at ``INFO`` on
            ``trio_orchestrator.requests``.
        log_prompts: include prompt and answer text in request lines. Off by default: prompts
            often hold personal data. Secrets are never logged either way.
    """

    level: str = attrs.field(default="INFO", validator=one_of(*_LEVELS))
    json: bool = False
    requests: bool = True
    log_prompts: bool = False

    @property
    def level_number(self) -> int:
        """The level as a :mod:`logging` number."""
        return logging.getLevelNamesMapping()[self.level]


@attrs.frozen
class TracingConfig:
    """OpenTelemetry traces (needs the ``otel`` extra).

    Attributes:
        enabled: trace requests at all.
        service_name: the ``service.name`` resource attribute of exported spans.
        otlp_endpoint: OTLP/HTTP traces URL (``http://127.0.0.1:4318/v1/traces``); when
            unset, spans go to the application's global tracer provider.
        sample_ratio: fraction of new traces sampled (a request with a sampled parent follows
            its parent); only used with ``otlp_endpoint``.
    """

    enabled: bool = False
    service_name: str = "trio-orchestrator"
    otlp_endpoint: str | None = attrs.field(default=None, validator=_endpoint)
    sample_ratio: float = attrs.field(default=1.0, validator=unit_interval)


@attrs.frozen
class ObservabilityConfig:
    """Metrics, logs and traces.

    Attributes:
        metrics: Prometheus metrics.
        logging: structured logs and the per-request log line.
        tracing: OpenTelemetry traces.
        gateway_overhead: measure the time each request spends in the gateway itself, not
            waiting on its upstream: the service answers with an ``x-gateway-overhead-ms``
            header and, with metrics on, observes it in
            ``trio_orchestrator_gateway_overhead_seconds``. It costs a few clock readings
            per request; off, neither is there.
    """

    metrics: MetricsConfig = attrs.field(factory=MetricsConfig)
    logging: LoggingConfig = attrs.field(factory=LoggingConfig)
    tracing: TracingConfig = attrs.field(factory=TracingConfig)
    gateway_overhead: bool = True
