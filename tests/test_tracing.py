"""OpenTelemetry traces: spans per request, stage and attempt, and traceparent in and out."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator, Sequence
from typing import ClassVar

import attrs
import pytest
import trio

pytest.importorskip("opentelemetry.sdk", reason="the otel extra is not installed")

from observability_helpers import ScriptedWorker, request
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import (
    InMemorySpanExporter,
)
from opentelemetry.trace import StatusCode

from trio_orchestrator import (
    Config,
    Done,
    PromptRequest,
    ServerError,
    TextDelta,
    open_gateway,
    open_pipeline,
)
from trio_orchestrator.observability import (
    MetricsConfig,
    ObservabilityConfig,
    TracingConfig,
    attempt_span,
    extract_context,
    inject_headers,
    instrument_pipeline,
    trace_meta,
)
from trio_orchestrator.workers.base import EventSink

TRACED = Config(
    observability=ObservabilityConfig(
        metrics=MetricsConfig(enabled=False), tracing=TracingConfig(enabled=True)
    )
)
UNOBSERVED = ObservabilityConfig(
    metrics=MetricsConfig(enabled=False), tracing=TracingConfig(enabled=False)
)
PARENT_TRACE = "0af7651916cd43dd8448eb211c80319c"
PARENT_SPAN = "b7ad6b7169203331"


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    """An in-memory span exporter."""
    return InMemorySpanExporter()


@pytest.fixture
def provider(exporter: InMemorySpanExporter) -> Iterator[TracerProvider]:
    """A tracer provider that exports every span to ``exporter`` as it ends."""
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield provider
    provider.shutdown()


@attrs.define(eq=False)
class RetryingWorker:
    """Tries twice, as a retry layer would: the first attempt fails, the second answers.

    Records the headers it would have sent upstream on each attempt.
    """

    sent: list[dict[str, str]] = attrs.field(factory=list)

    async def generate(self, request: PromptRequest, emit: EventSink) -> None:
        """Fail one attempt, then answer."""
        for attempt in (1, 2):
            try:
                with attempt_span("upstream attempt", attempt=attempt):
                    self.sent.append(dict(inject_headers({"accept": "text/event-stream"})))
                    await trio.lowlevel.checkpoint()
                    if attempt == 1:
                        raise ServerError("upstream said 500", provider="fake", status=500)
            except ServerError:
                continue
        await emit(TextDelta("ok"))
        await emit(Done("stop", "ok"))


def by_name(spans: Sequence[ReadableSpan]) -> dict[str, list[ReadableSpan]]:
    """Spans grouped by name."""
    grouped: dict[str, list[ReadableSpan]] = {}
    for span in spans:
        grouped.setdefault(span.name, []).append(span)
    return grouped


def attempt_number(span: ReadableSpan) -> int:
    """The ``attempt`` attribute of an attempt span."""
    number = (span.attributes or {})["attempt"]
    assert isinstance(number, int)
    return number


async def traced_run(
    provider: TracerProvider, worker: object, *requests: PromptRequest
) -> list[BaseException | None]:
    """Submit ``requests`` one by one on a traced pipeline; return the errors, if any."""
    errors: list[BaseException | None] = []
    async with open_pipeline(worker, TRACED) as pipeline:  # type: ignore[arg-type]
        instrument_pipeline(pipeline, tracer_provider=provider)
        for r in requests:
            try:
                await pipeline.submit(r)
            except Exception as exc:
                errors.append(exc)
            else:
                errors.append(None)
    return errors


async def test_each_stage_is_a_child_of_the_request_span(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    """One request span, with one child span per stage, all in one trace."""
    await traced_run(provider, ScriptedWorker(), request("hello"))
    spans = by_name(exporter.get_finished_spans())
    (root,) = spans["orchestrator.request"]
    assert root.context is not None
    for stage in ("rag", "assemble", "inference", "post", "stream"):
        (span,) = spans[f"orchestrator.stage {stage}"]
        assert span.parent is not None
        assert span.parent.span_id == root.context.span_id
        assert span.context is not None
        assert span.context.trace_id == root.context.trace_id


async def test_attempts_are_children_of_the_worker_call(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    """Both attempts show under the generate span, under the inference stage; the first
    failed."""
    await traced_run(provider, RetryingWorker(), request("hello"))
    spans = by_name(exporter.get_finished_spans())
    (inference,) = spans["orchestrator.stage inference"]
    (generate,) = spans["orchestrator.generate"]
    assert inference.context is not None
    assert generate.context is not None
    assert generate.parent is not None
    assert generate.parent.span_id == inference.context.span_id
    attempts = sorted(spans["upstream attempt"], key=attempt_number)
    assert [a.parent.span_id for a in attempts if a.parent] == [generate.context.span_id] * 2
    assert [a.status.status_code for a in attempts] == [StatusCode.ERROR, StatusCode.UNSET]


async def test_upstream_headers_carry_the_attempts_traceparent(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    """The traceparent sent upstream names the trace and the attempt span that sent it."""
    worker = RetryingWorker()
    await traced_run(provider, worker, request("hello"))
    spans = by_name(exporter.get_finished_spans())
    attempts = sorted(spans["upstream attempt"], key=attempt_number)
    for headers, span in zip(worker.sent, attempts, strict=True):
        assert span.context is not None
        _version, trace_id, span_id, _flags = headers["traceparent"].split("-")
        assert (int(trace_id, 16), int(span_id, 16)) == (
            span.context.trace_id,
            span.context.span_id,
        )


async def test_incoming_traceparent_becomes_the_parent(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    """A request whose meta carries a traceparent continues that trace, under that span."""
    meta = trace_meta({"TraceParent": f"00-{PARENT_TRACE}-{PARENT_SPAN}-01"})
    await traced_run(provider, ScriptedWorker(), PromptRequest(input="hello", meta=meta))
    (root,) = by_name(exporter.get_finished_spans())["orchestrator.request"]
    assert root.context is not None
    assert root.parent is not None
    assert root.context.trace_id == int(PARENT_TRACE, 16)
    assert root.parent.span_id == int(PARENT_SPAN, 16)


async def test_failed_request_span_says_how_it_ended(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    """A failed request's span has an error status, the outcome and the error class."""
    await traced_run(provider, ScriptedWorker(), request("fail"))
    (root,) = by_name(exporter.get_finished_spans())["orchestrator.request"]
    assert root.status.status_code is StatusCode.ERROR
    assert root.attributes is not None
    assert root.attributes["trio_orchestrator.outcome"] == "failed"
    assert root.attributes["error.type"] == "ServerError"


async def test_every_span_ends_when_a_request_expires(
    provider: TracerProvider, exporter: InMemorySpanExporter, autojump_clock: object
) -> None:
    """An expired request leaves no span open: its inference stage and request spans end."""
    await traced_run(provider, ScriptedWorker(), request("hang", timeout=2.0))
    spans = by_name(exporter.get_finished_spans())
    (root,) = spans["orchestrator.request"]
    assert root.attributes is not None
    assert root.attributes["trio_orchestrator.outcome"] == "expired"
    assert len(spans["orchestrator.stage inference"]) == 1
    assert len(spans["orchestrator.generate"]) == 1


async def test_no_spans_or_headers_without_tracing(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    """With tracing off, workers' helpers do nothing: no spans, no traceparent sent."""
    worker = RetryingWorker()
    async with open_pipeline(worker, Config()) as pipeline:
        await pipeline.submit(request("hello"))
    assert exporter.get_finished_spans() == ()
    assert all("traceparent" not in headers for headers in worker.sent)


def test_trace_meta_keeps_only_well_formed_traceparents() -> None:
    """A malformed traceparent is dropped rather than passed on."""
    assert trace_meta({"traceparent": "not-a-trace"}) == {}
    good = f"00-{PARENT_TRACE}-{PARENT_SPAN}-01"
    assert trace_meta({"traceparent": good, "tracestate": "a=b"}) == {
        "traceparent": good,
        "tracestate": "a=b",
    }


def test_extract_context_reads_an_incoming_header() -> None:
    """extract_context turns an incoming traceparent header into an OpenTelemetry context."""
    from opentelemetry import trace

    context = extract_context({"Traceparent": f"00-{PARENT_TRACE}-{PARENT_SPAN}-01"})
    span_context = trace.get_current_span(context).get_span_context()
    assert (span_context.trace_id, span_context.span_id) == (
        int(PARENT_TRACE, 16),
        int(PARENT_SPAN, 16),
    )


# ------------------------------------------------------------------------- OTLP export


class _Collector(http.server.BaseHTTPRequestHandler):
    received: ClassVar[list[tuple[str, bytes]]] = []

    def do_POST(self) -> None:
        length = int(self.headers["Content-Length"])
        self.received.append((self.path, self.rfile.read(length)))
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        """Quiet."""


@pytest.fixture
def otlp_collector() -> Iterator[tuple[str, list[tuple[str, bytes]]]]:
    """A fake OTLP/HTTP collector on 127.0.0.1 (free port); yields its URL and what it got."""
    received: list[tuple[str, bytes]] = []
    handler = type("Handler", (_Collector,), {"received": received})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1/traces", received
    server.shutdown()
    server.server_close()
    thread.join()


async def test_spans_are_exported_over_otlp(
    otlp_collector: tuple[str, list[tuple[str, bytes]]],
) -> None:
    """With an OTLP endpoint configured, the request's spans reach the collector."""
    url, received = otlp_collector
    tracing = TracingConfig(enabled=True, otlp_endpoint=url, service_name="orchestrator-test")
    config = Config(
        observability=ObservabilityConfig(metrics=MetricsConfig(enabled=False), tracing=tracing)
    )
    async with open_pipeline(ScriptedWorker(), config) as pipeline:
        observed = instrument_pipeline(pipeline)
        await pipeline.submit(request("hello"))
    await trio.to_thread.run_sync(observed.close)
    assert [path for path, _ in received] == ["/v1/traces"]
    body = received[0][1]
    assert b"orchestrator.request" in body
    assert b"orchestrator-test" in body


async def test_streamed_request_is_traced_through_every_stage(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    """pipeline.stream gets the same request span and stage children as submit."""
    async with open_pipeline(ScriptedWorker(), TRACED) as pipeline:
        instrument_pipeline(pipeline, tracer_provider=provider)
        async with pipeline.stream(request("hello")) as events:
            async for _ in events:
                pass
    spans = by_name(exporter.get_finished_spans())
    (root,) = spans["orchestrator.request"]
    assert root.context is not None
    stages = [n for n in spans if n.startswith("orchestrator.stage")]
    assert len(stages) == 5
    assert all(
        s.parent and s.parent.span_id == root.context.span_id for n in stages for s in spans[n]
    )


async def test_the_real_retry_layer_and_http_worker_carry_each_attempt_upstream(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    """With the retry layer and the OpenAI worker over real HTTP: one span per attempt under
    the worker call, and each upstream request carries its own attempt's traceparent."""
    import httpx

    from trio_orchestrator.resilience import ResilienceConfig, RetryConfig
    from trio_orchestrator.testing import FakeBehaviour, open_fake_provider
    from trio_orchestrator.workers.openai import OpenAIWorker

    retrying = attrs.evolve(
        TRACED,
        resilience=ResilienceConfig(retry=RetryConfig(enabled=True, initial_backoff=0.01)),
    )
    async with open_fake_provider(FakeBehaviour(text="ok")) as fake, httpx.AsyncClient() as c:
        fake.script(FakeBehaviour(status=500))
        worker = OpenAIWorker(c, fake.openai_base_url)
        # The gateway builds the retry layer; the spans go to this test's provider.
        untraced = attrs.evolve(retrying, observability=UNOBSERVED)
        async with open_gateway(untraced, worker=worker) as gateway:
            instrument_pipeline(gateway.pipeline, retrying, tracer_provider=provider)
            answer = await gateway.pipeline.submit(request("hello"))
    assert answer.text == "ok"
    attempts = sorted(
        (s for s in exporter.get_finished_spans() if s.name == "upstream attempt"),
        key=attempt_number,
    )
    assert [attempt_number(s) for s in attempts] == [1, 2]
    assert attempts[0].status.status_code is StatusCode.ERROR
    sent = [r.headers["traceparent"] for r in fake.requests]
    expected = [
        f"00-{s.context.trace_id:032x}-{s.context.span_id:016x}-{int(s.context.trace_flags):02x}"
        for s in attempts
    ]
    assert sent == expected


def test_the_service_puts_an_incoming_traceparent_into_the_request_meta() -> None:
    """A caller's well-formed traceparent header reaches the request's meta; junk does not."""
    from trio_orchestrator.service.guard import Caller

    good = f"00-{PARENT_TRACE}-{PARENT_SPAN}-01"
    assert Caller().meta({"TraceParent": good}) == {"traceparent": good}
    assert Caller().meta({"traceparent": "not-a-trace"}) == {}
