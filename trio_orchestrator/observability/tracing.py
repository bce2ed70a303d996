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

import re
from collections.abc import Iterator, Mapping, MutableMapping
from contextlib import AbstractContextManager, contextmanager, nullcontext
from contextvars import ContextVar
from types import SimpleNamespace
from typing import TYPE_CHECKING, cast

import attrs

from .config import TracingConfig

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

_TRACEPARENT = re.compile(r"[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}")

# The tracer of the pipeline whose worker call is running in this task, if it traces.
_current_tracer: ContextVar[Tracer | None] = ContextVar("trio_orchestrator_tracer", default=None)
_otel: SimpleNamespace | None = None


def otel() -> SimpleNamespace:
    """The OpenTelemetry modules, imported on first use only.

    Raises:
        ImportError: the ``otel`` extra is not installed (the message says so).
    """
    global _otel
    if _otel is None:
        try:
            from opentelemetry import context, trace
            from opentelemetry.trace.propagation.tracecontext import (
                TraceContextTextMapPropagator,
            )
        except ImportError as exc:
            raise ImportError(
                "tracing needs OpenTelemetry: pip install 'trio-orchestrator[otel]', "
                "or set observability.tracing.enabled = false"
            ) from exc
        _otel = SimpleNamespace(
            trace=trace, context=context, propagator=TraceContextTextMapPropagator()
        )
    return _otel


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


# ------------------------------------------------------------------------- for workers


def attempt_span(
    name: str, **attributes: str | int | float | bool
) -> AbstractContextManager[Span | None]:
    """Trace one upstream attempt as a child of the current worker call (for retry layers).

    ::

        for attempt in range(1, tries + 1):
            with attempt_span("openai attempt", attempt=attempt):
                ...

    An exception leaving the block is recorded on the span. Outside a traced worker call
    (tracing off, or no pipeline around) it does nothing and gives None.

    Args:
        name: the span name (keep it low-cardinality: no ids).
        attributes: span attributes, e.g. ``attempt=2``.
    """
    tracer = _current_tracer.get()
    if tracer is None:
        return _NO_SPAN  # every attempt of every request: no generator when tracing is off
    span = tracer.start_as_current_span(name, attributes=attributes)
    return cast("AbstractContextManager[Span | None]", span)


_NO_SPAN: AbstractContextManager[None] = nullcontext()


def inject_headers(headers: MutableMapping[str, str]) -> MutableMapping[str, str]:
    """Add ``traceparent`` (and ``tracestate``) for the current span to ``headers``.

    HTTP workers call this on each upstream request's headers; it does nothing when tracing
    is off. Returns ``headers``.
    """
    if _otel is not None and _current_tracer.get() is not None:
        _otel.propagator.inject(headers)
    return headers


def trace_meta(headers: Mapping[str, str]) -> dict[str, str]:
    """Pick a well-formed ``traceparent`` (and its ``tracestate``) out of incoming headers.

    The service puts the result into ``PromptRequest.meta``; the request's span then
    continues the caller's trace. Needs no OpenTelemetry.
    """
    lowered = {key.lower(): value for key, value in headers.items()}
    traceparent = lowered.get("traceparent", "").strip().lower()
    if not _TRACEPARENT.fullmatch(traceparent):
        return {}
    meta = {"traceparent": traceparent}
    if "tracestate" in lowered:
        meta["tracestate"] = lowered["tracestate"]
    return meta


def extract_context(headers: Mapping[str, str]) -> Context:
    """Return the OpenTelemetry context an incoming ``traceparent`` header names.

    Raises:
        ImportError: the ``otel`` extra is not installed.
    """
    context: Context = otel().propagator.extract(trace_meta(headers))
    return context


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
            token = _current_tracer.set(self._tracer)
            try:
                yield
            finally:
                _current_tracer.reset(token)

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
