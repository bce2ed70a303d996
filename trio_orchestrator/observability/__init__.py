"""Observability: Prometheus metrics, OpenTelemetry traces, structured logs.

::

    async with open_pipeline(worker, config) as pipeline:
        observed = instrument_pipeline(pipeline, config)
        observed.register_statistics("breaker", breaker, labels={"target": "openai"})
        ...
        body = render_metrics(observed.registry)      # GET /metrics
"""

from .config import LoggingConfig, MetricsConfig, ModelPrice, ObservabilityConfig, TracingConfig
from .hooks import ObservationHooks
from .instrument import Instrumentation, instrument_pipeline, provider_name
from .logging import JsonFormatter, RequestLogger, TextFormatter, configure_logging
from .metrics import (
    PipelineCollector,
    RequestMetrics,
    StatisticsCollector,
    metrics_content_type,
    render_metrics,
)
from .tracing import attempt_span, extract_context, inject_headers, trace_meta

__all__ = [
    "Instrumentation",
    "JsonFormatter",
    "LoggingConfig",
    "MetricsConfig",
    "ModelPrice",
    "ObservabilityConfig",
    "ObservationHooks",
    "PipelineCollector",
    "RequestLogger",
    "RequestMetrics",
    "StatisticsCollector",
    "TextFormatter",
    "TracingConfig",
    "attempt_span",
    "configure_logging",
    "extract_context",
    "inject_headers",
    "instrument_pipeline",
    "metrics_content_type",
    "provider_name",
    "render_metrics",
    "trace_meta",
]
