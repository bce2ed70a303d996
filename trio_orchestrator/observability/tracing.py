"""OpenTelemetry traces: a span per request, a child per stage, per worker call and attempt.

::

    orchestrator.request                       (child of the caller's traceparent, if any)
    ├── orchestrator.stage rag
    ├── orchestrator.stage assemble
    ├── orchestrator.stage inference
    │   └── orchestrator.generate              the worker call; traceparent sent upstream
    │       ├── <attempt_span("… attempt")>    one per upstream attempt (the retry layer)
    │       └── …
    ├── orchestrator.stage post
    └── orchestrator.stage stream

Trace context does not cross Trio memory channels by itself: the request's spans ride on its
job (``Job.observation``), and the worker call runs with the ``generate`` span attached as the
current context, so :func:`inject_headers` and :func:`attempt_span` inside a worker find it.

The ``opentelemetry`` packages (the ``otel`` extra) are imported only when tracing is turned
on; every helper here is a cheap no-op until then.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

import attrs

from .config import TracingConfig
from .spans import CURRENT_TRACER, attempt_span, extract_context, inject_headers, otel, trace_meta

if TYPE_CHECKING:
    from opentelemetry.context import Context
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.trace import Span, Tracer

    from ..pipeline.job import Job
    from ..types import PromptRequest

__all__ = [
    "RequestTracer",
    "attempt_span",
    "build_tracer_provider",
    "extract_context",
    "inject_headers",
    "trace_meta",
]


def build_tracer_provider(config: TracingConfig) -> TracerProvider | None:
    """Return a tracer provider exporting over OTLP/HTTP, or None without an endpoint.

    Without ``otlp_endpoint`` spans go to the application's global provider (whatever
    ``opentelemetry.trace.set_tracer_provider`` installed).
    """
    if config.otlp_endpoint is None:
        return None
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor
    from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

    provider = TracerProvider(
        resource=Resource.create({"service.name": config.service_name}),
        sampler=ParentBased(TraceIdRatioBased(config.sample_ratio)),
    )
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(config.otlp_endpoint)))
    return provider


# ------------------------------------------------------------------------- the pipeline's side


@attrs.define(eq=False, slots=True)
class _Spans:
    request: Span
    context: Context
    stage: Span | None = None


class RequestTracer:
    """Opens and closes one request's spans, for the pipeline's hooks.

    Args:
        provider: where spans go; the global tracer provider when None.
    """

    def __init__(self, provider: TracerProvider | None = None) -> None:
        o = otel()
        self._otel = o
        self._tracer: Tracer = o.trace.get_tracer("trio_orchestrator", tracer_provider=provider)

    def start(self, request: PromptRequest) -> _Spans:
        """Open the request's span, continuing ``meta["traceparent"]`` or the current span."""
        o = self._otel
        parent = o.propagator.extract(request.meta) if "traceparent" in request.meta else None
        span = self._tracer.start_span(
            "orchestrator.request",
            context=parent,
            attributes={
                "trio_orchestrator.request_id": request.request_id,
                "gen_ai.request.model": request.params.model,
                "trio_orchestrator.priority": request.priority.name.lower(),
            },
        )
        return _Spans(span, o.trace.set_span_in_context(span, parent))

    def stage_started(self, spans: _Spans, stage: str) -> None:
        """Open a child span for ``stage``."""
        spans.stage = self._tracer.start_span(f"orchestrator.stage {stage}", spans.context)

    def stage_ended(self, spans: _Spans) -> None:
        """Close the open stage's span, if any."""
        if spans.stage is not None:
            spans.stage.end()
            spans.stage = None

    @contextmanager
    def generate(self, spans: _Spans) -> Iterator[None]:
        """Run the worker call inside a ``generate`` span, attached as the current context."""
        o = self._otel
        parent = spans.context
        if spans.stage is not None:
            parent = o.trace.set_span_in_context(spans.stage, parent)
        with self._tracer.start_as_current_span(
            "orchestrator.generate", context=parent, kind=o.trace.SpanKind.CLIENT
        ):
            token = CURRENT_TRACER.set(self._tracer)
            try:
                yield
            finally:
                CURRENT_TRACER.reset(token)

    def finish(self, spans: _Spans, job: Job) -> None:
        """Close the stage span, record how the request ended and close its span."""
        self.stage_ended(spans)
        span = spans.request
        assert job.outcome is not None
        span.set_attribute("trio_orchestrator.outcome", job.outcome.value)
        completion = job.completion
        if completion is not None and completion.usage is not None:
            span.set_attribute("gen_ai.usage.input_tokens", completion.usage.input_tokens)
            span.set_attribute("gen_ai.usage.output_tokens", completion.usage.output_tokens)
        if job.error is not None and job.outcome.value != "cancelled":
            status = self._otel.trace.Status
            code = self._otel.trace.StatusCode.ERROR
            span.set_status(status(code, f"{type(job.error).__name__}: {job.error}"))
            span.set_attribute("error.type", type(job.error).__name__)
        span.end()
