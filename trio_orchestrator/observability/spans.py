"""The trace helpers workers and layers call: the span of one upstream attempt, and
``traceparent`` headers in and out (see :mod:`.tracing` for the spans of a request).

They sit below everything that calls them (workers, the retry layer, the service's guard)
and need nothing from the pipeline. The ``opentelemetry`` packages (the ``otel`` extra) are
imported only when tracing is turned on; every helper here is a cheap no-op until then.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, MutableMapping
from contextlib import AbstractContextManager, nullcontext
from contextvars import ContextVar
from types import SimpleNamespace
from typing import TYPE_CHECKING, cast

if TYPE_CHECKING:
    from opentelemetry.context import Context
    from opentelemetry.trace import Span, Tracer

__all__ = [
    "CURRENT_TRACER",
    "attempt_span",
    "extract_context",
    "inject_headers",
    "otel",
    "trace_meta",
]

_TRACEPARENT = re.compile(r"[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}")

CURRENT_TRACER: ContextVar[Tracer | None] = ContextVar("trio_orchestrator_tracer", default=None)
"""The tracer of the pipeline whose worker call is running in this task, if it traces (set by
:class:`~trio_orchestrator.observability.tracing.RequestTracer`)."""
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
    tracer = CURRENT_TRACER.get()
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
    if _otel is not None and CURRENT_TRACER.get() is not None:
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
