"""Prometheus metrics: the exposition parses and agrees with what a scripted workload did."""

from __future__ import annotations

import enum
import shutil
from contextlib import AbstractContextManager, nullcontext

import attrs
import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st
from observability_helpers import (
    GateRetriever,
    ScriptedWorker,
    request,
    samples,
    scripted_workload,
    small_config,
    value,
)
from prometheus_client import CollectorRegistry
from prometheus_client.core import HistogramMetricFamily

from trio_orchestrator import EchoWorker, open_pipeline
from trio_orchestrator.observability import (
    MetricsConfig,
    ModelPrice,
    StatisticsCollector,
    instrument_pipeline,
    render_metrics,
)
from trio_orchestrator.observability.metrics import Histogram

OUTCOMES = {"completed": 7, "failed": 2, "shed": 1, "expired": 1, "cancelled": 1}


async def run_workload(config: object = None) -> CollectorRegistry:
    """Run the scripted workload on an instrumented pipeline; return its registry."""
    registry = CollectorRegistry()
    gate = GateRetriever()
    cfg = config or small_config()
    async with open_pipeline(ScriptedWorker(), cfg, retriever=gate) as pipeline:  # type: ignore[arg-type]
        instrument_pipeline(pipeline, registry=registry)
        await scripted_workload(pipeline, gate)
    return registry


async def test_pipeline_counters_match_the_workload(autojump_clock: object) -> None:
    """The scrape-time pipeline counters say exactly what the workload did, outcome by outcome."""
    parsed = samples(await run_workload())
    for outcome, count in OUTCOMES.items():
        assert value(parsed, "trio_orchestrator_pipeline_requests_total", outcome=outcome) == count
    assert value(parsed, "trio_orchestrator_pipeline_submitted_total") == 12
    assert value(parsed, "trio_orchestrator_pipeline_in_flight") == 0


async def test_request_counters_by_provider_and_model_match(autojump_clock: object) -> None:
    """The listener counts each outcome once, under the worker's provider and the model."""
    parsed = samples(await run_workload())
    for outcome, count in OUTCOMES.items():
        labels = {"provider": "scripted", "model": "gpt-test", "outcome": outcome}
        assert value(parsed, "trio_orchestrator_requests_total", **labels) == count
        duration = "trio_orchestrator_request_duration_seconds_count"
        assert value(parsed, duration, **labels) == count


async def test_shed_is_counted_at_admission_and_dead_lettered(autojump_clock: object) -> None:
    """The one refused request shows as an admission shed and as one dead letter."""
    parsed = samples(await run_workload())
    assert value(parsed, "trio_orchestrator_stage_shed_total", stage="admission") == 1
    assert value(parsed, "trio_orchestrator_stage_shed_total") == 1
    assert value(parsed, "trio_orchestrator_dead_letters_total") == 1
    assert value(parsed, "trio_orchestrator_dead_letters_size") == 1


async def test_upstream_errors_are_counted_by_class(autojump_clock: object) -> None:
    """Both ServerErrors are counted under their class name, and nothing else is."""
    parsed = samples(await run_workload())
    assert value(parsed, "trio_orchestrator_upstream_errors_total", error="ServerError") == 2
    assert value(parsed, "trio_orchestrator_upstream_errors_total") == 2


async def test_tokens_count_the_completed_requests_usage(autojump_clock: object) -> None:
    """Input tokens are the prompts' words, output tokens three per completed request."""
    parsed = samples(await run_workload())
    # block (1) + "hello there" (2) + five "hello <secret> i" (3 each)
    assert value(parsed, "trio_orchestrator_tokens_total", type="input") == 1 + 2 + 15
    assert value(parsed, "trio_orchestrator_tokens_total", type="output") == 7 * 3


async def test_latency_histogram_places_the_expired_request(autojump_clock: object) -> None:
    """The request that expired after 5 s lands in the 5 s bucket, not the 2.5 s one."""
    parsed = samples(await run_workload())
    bucket = "trio_orchestrator_request_duration_seconds_bucket"
    assert value(parsed, bucket, outcome="expired", le="2.5") == 0
    assert value(parsed, bucket, outcome="expired", le="5.0") == 1


async def test_time_to_first_token_counts_requests_with_output(autojump_clock: object) -> None:
    """Only the seven requests whose worker emitted something have a time to first token."""
    parsed = samples(await run_workload())
    assert value(parsed, "trio_orchestrator_time_to_first_token_seconds_count") == 7


async def test_stage_durations_follow_each_request(autojump_clock: object) -> None:
    """Each stage times the requests it held; inference held the hung ones for 5 s and 1 s."""
    parsed = samples(await run_workload())
    count = "trio_orchestrator_stage_duration_seconds_count"
    assert value(parsed, count, stage="rag") == 11
    assert value(parsed, count, stage="inference") == 11
    assert value(parsed, count, stage="post") == 7
    assert value(parsed, count, stage="stream") == 7
    total = value(parsed, "trio_orchestrator_stage_duration_seconds_sum", stage="inference")
    assert total == pytest.approx(6.0)


async def test_stage_gauges_show_capacity_and_peak(autojump_clock: object) -> None:
    """Capacities come from the config; the entry's peak depth saw the one buffered request."""
    parsed = samples(await run_workload())
    assert value(parsed, "trio_orchestrator_stage_capacity", stage="rag") == 1
    assert value(parsed, "trio_orchestrator_stage_capacity", stage="inference") == 1024
    assert value(parsed, "trio_orchestrator_stage_queue_peak", stage="rag") == 1
    assert value(parsed, "trio_orchestrator_inference_concurrency") == 256


ALLOWED_LABELS = {"outcome", "stage", "provider", "model", "type", "error", "le"}


async def test_no_label_carries_an_identifier(autojump_clock: object) -> None:
    """Label names are from a fixed set, and no request, session, user or key id is a value."""
    parsed = samples(await run_workload())
    names = {name for _, labels in parsed for name, _ in labels}
    values = {v for _, labels in parsed for _, v in labels}
    assert names <= ALLOWED_LABELS
    assert not {v for v in values if v.startswith("req_")}
    assert not values & {"session-123", "user-456", "Bearer sk-live-SECRET"}


async def test_model_label_values_are_capped() -> None:
    """Beyond max_models distinct models, requests count under model="other"."""
    registry = CollectorRegistry()
    config = small_config(metrics=MetricsConfig(max_models=2))
    async with open_pipeline(ScriptedWorker(), config) as pipeline:
        instrument_pipeline(pipeline, registry=registry)
        for i in range(5):
            await pipeline.submit(request("hello", model=f"model-{i}"))
    parsed = samples(registry)
    models = {
        v
        for (n, ls), _ in parsed.items()
        if n.startswith("trio_orchestrator_requests")
        for k, v in ls
        if k == "model"
    }
    assert models == {"model-0", "model-1", "other"}
    assert value(parsed, "trio_orchestrator_requests_total", model="other") == 3


async def test_cost_is_estimated_from_configured_prices() -> None:
    """With a price per model, completed requests add their estimated cost in USD."""
    registry = CollectorRegistry()
    price = ModelPrice(input_per_million=1_000_000.0, output_per_million=2_000_000.0)
    config = small_config(metrics=MetricsConfig(prices={"gpt-test": price}))
    async with open_pipeline(ScriptedWorker(), config) as pipeline:
        instrument_pipeline(pipeline, registry=registry)
        await pipeline.submit(request("hello world"))  # 2 tokens in, 3 out
    assert value(samples(registry), "trio_orchestrator_cost_usd_total", model="gpt-test") == 8.0


async def test_cost_is_not_exported_without_prices() -> None:
    """Without prices there is no cost metric at all, rather than a misleading zero."""
    registry = CollectorRegistry()
    async with open_pipeline(ScriptedWorker()) as pipeline:
        instrument_pipeline(pipeline, registry=registry)
        await pipeline.submit(request("hello"))
    assert not any(name.startswith("trio_orchestrator_cost") for name, _ in samples(registry))


async def test_disabled_metrics_install_nothing() -> None:
    """With metrics and tracing off, no hooks are installed and nothing is exported."""
    config = small_config(metrics=MetricsConfig(enabled=False))
    async with open_pipeline(EchoWorker(), config) as pipeline:
        observed = instrument_pipeline(pipeline)
        pipeline.set_hooks(_NoHooks())  # would raise had instrumentation set hooks
        await pipeline.submit(request("hello"))
    assert observed.registry is None
    assert observed.render() == b""


async def test_metrics_without_stage_timing_install_no_hooks() -> None:
    """stage_timing = false keeps the per-stage hooks out of the request path."""
    config = small_config(metrics=MetricsConfig(stage_timing=False))
    registry = CollectorRegistry()
    async with open_pipeline(EchoWorker(), config) as pipeline:
        instrument_pipeline(pipeline, registry=registry)
        pipeline.set_hooks(_NoHooks())
        await pipeline.submit(request("hello"))
    parsed = samples(registry)
    assert value(parsed, "trio_orchestrator_requests_total") == 1
    assert not any(n.startswith("trio_orchestrator_stage_duration") for n, _ in parsed)


async def test_exposition_passes_promtool(autojump_clock: object) -> None:
    """`promtool check metrics` accepts the exposition (skipped without Debian's prometheus)."""
    if shutil.which("promtool") is None:
        pytest.skip("promtool is not on PATH (apt-get install prometheus)")
    registry = await run_workload()
    result = await trio.run_process(
        ["promtool", "check", "metrics"],
        stdin=render_metrics(registry),
        capture_stdout=True,
        capture_stderr=True,
        check=False,
    )
    assert result.returncode == 0, (result.stdout + result.stderr).decode()


async def test_instrumenting_twice_into_one_registry_is_refused() -> None:
    """A second pipeline in the same registry is an error, not silently merged series."""
    registry = CollectorRegistry()
    async with open_pipeline(EchoWorker()) as first, open_pipeline(EchoWorker()) as second:
        instrument_pipeline(first, registry=registry)
        with pytest.raises(ValueError, match="Duplicated"):
            instrument_pipeline(second, registry=registry)


class _NoHooks:
    def started(self, job: object) -> None: ...
    def stage_entered(self, job: object, stage: str) -> None: ...
    def stage_left(self, job: object) -> None: ...
    def inference(self, job: object) -> AbstractContextManager[None]:
        return nullcontext()

    def finished(self, job: object) -> None: ...


# ------------------------------------------------------------------------- component statistics


class State(enum.Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


@attrs.frozen
class FakeWindow:
    failures: int
    """Failures in the window."""


@attrs.frozen
class FakeBreakerStatistics:
    state: State
    """The breaker's state."""
    transitions: int
    """State changes so far."""
    tripped: bool
    """Whether it refuses calls."""
    window: FakeWindow
    """The failure window."""
    target: str
    """Not a number: skipped."""


@attrs.define(eq=False)
class FakeBreaker:
    state: State = State.CLOSED
    transitions: int = 0

    def statistics(self) -> FakeBreakerStatistics:
        return FakeBreakerStatistics(
            self.state, self.transitions, self.state is State.OPEN, FakeWindow(4), "x"
        )


def collector_samples(
    collector: StatisticsCollector,
) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    registry = CollectorRegistry()
    registry.register(collector)
    return samples(registry)


def test_component_statistics_are_exported_at_scrape_time() -> None:
    """A registered component's fields are read on each scrape, counters and gauges alike."""
    collector, breaker = StatisticsCollector(), FakeBreaker()
    collector.register("breaker", breaker, labels={"target": "openai"}, counters=["transitions"])
    breaker.state, breaker.transitions = State.OPEN, 3
    parsed = collector_samples(collector)
    target = {"target": "openai"}
    assert value(parsed, "trio_orchestrator_breaker_transitions_total", **target) == 3
    assert value(parsed, "trio_orchestrator_breaker_tripped", **target) == 1
    assert value(parsed, "trio_orchestrator_breaker_window_failures", **target) == 4
    assert value(parsed, "trio_orchestrator_breaker_state", state="open", **target) == 1
    assert value(parsed, "trio_orchestrator_breaker_state", state="closed", **target) == 0
    assert not any("target" in name for name, _ in parsed if name.endswith("_target"))


def test_components_of_one_kind_share_a_family() -> None:
    """Two breakers export one family with a series per target."""
    collector = StatisticsCollector()
    collector.register("breaker", FakeBreaker(), labels={"target": "a"})
    collector.register("breaker", FakeBreaker(transitions=5), labels={"target": "b"})
    parsed = collector_samples(collector)
    assert value(parsed, "trio_orchestrator_breaker_transitions", target="b") == 5
    assert value(parsed, "trio_orchestrator_breaker_transitions") == 5


def test_unregistered_components_disappear() -> None:
    """After unregister, the component's series are gone from the exposition."""
    collector = StatisticsCollector()
    collector.register("breaker", FakeBreaker(), labels={"target": "a"})
    collector.unregister("breaker", {"target": "a"})
    assert collector_samples(collector) == {}


@pytest.mark.parametrize(
    ("kind", "labels", "counters", "match"),
    [
        ("Breaker", {}, (), "kind"),
        ("breaker", {"bad-label": "x"}, (), "label names"),
        ("breaker", {"target": "a"}, ("state",), "not numeric"),
        ("breaker", {"target": "a"}, ("nope",), "not numeric"),
        ("breaker", {"host": "a"}, (), "label names"),
        ("breaker", {"target": "z"}, (), "registered already"),
    ],
)
def test_bad_registrations_are_refused(
    kind: str, labels: dict[str, str], counters: tuple[str, ...], match: str
) -> None:
    """Registration refuses bad names, mismatched labels, non-numeric counters and repeats."""
    collector = StatisticsCollector()
    collector.register("breaker", FakeBreaker(), labels={"target": "z"})
    with pytest.raises(ValueError, match=match):
        collector.register(kind, FakeBreaker(), labels=labels, counters=counters)


def test_statistics_must_be_attrs() -> None:
    """A component whose statistics() is not an attrs instance is refused at registration."""

    class Plain:
        def statistics(self) -> dict[str, int]:
            return {"hits": 1}

    with pytest.raises(ValueError, match="attrs instance"):
        StatisticsCollector().register("cache", Plain())


async def test_instrumentation_registers_components_with_one_call() -> None:
    """instrument_pipeline's handle exports a component registered through it."""
    registry = CollectorRegistry()
    async with open_pipeline(EchoWorker()) as pipeline:
        observed = instrument_pipeline(pipeline, registry=registry)
        observed.register_statistics(
            "breaker", FakeBreaker(transitions=2), labels={"target": "a"}, counters=["transitions"]
        )
    assert value(samples(registry), "trio_orchestrator_breaker_transitions_total") == 2


# ------------------------------------------------------------------------- the histogram

finite = st.floats(min_value=0, max_value=1e4, allow_nan=False)


@given(
    bounds=st.lists(finite.filter(lambda b: b > 0), min_size=1, max_size=12, unique=True).map(
        sorted
    ),
    observations=st.lists(finite, max_size=50),
)
def test_histogram_buckets_count_observations_at_or_below_each_bound(
    bounds: list[float], observations: list[float]
) -> None:
    """Each cumulative bucket counts exactly the observations ≤ its bound (le is inclusive)."""
    histogram = Histogram(bounds)
    for observation in observations:
        histogram.observe(observation)
    family = HistogramMetricFamily("h", "h", labels=["x"])
    histogram.add_to(family, ["y"])
    buckets = {s.labels["le"]: s.value for s in family.samples if s.name == "h_bucket"}
    for bound in bounds:
        assert buckets[repr(float(bound))] == sum(o <= bound for o in observations)
    assert buckets["+Inf"] == len(observations)
    (total,) = [s.value for s in family.samples if s.name == "h_sum"]
    assert total == pytest.approx(sum(observations))


async def test_closed_instrumentation_leaves_the_registry_for_the_next_pipeline() -> None:
    """After close, a new pipeline instruments into the same registry and counts afresh."""
    registry = CollectorRegistry()
    async with open_pipeline(EchoWorker()) as pipeline:
        with instrument_pipeline(pipeline, registry=registry):
            await pipeline.submit(request("hello"))
    assert samples(registry) == {}
    async with open_pipeline(EchoWorker()) as pipeline:
        instrument_pipeline(pipeline, registry=registry)
        await pipeline.submit(request("hello"))
    assert value(samples(registry), "trio_orchestrator_requests_total") == 1


async def test_streamed_requests_are_counted_like_submitted_ones() -> None:
    """A request through pipeline.stream is counted, timed and its tokens added."""
    registry = CollectorRegistry()
    async with open_pipeline(ScriptedWorker()) as pipeline:
        instrument_pipeline(pipeline, registry=registry)
        async with pipeline.stream(request("hello world")) as events:
            async for _ in events:
                pass
    parsed = samples(registry)
    assert value(parsed, "trio_orchestrator_requests_total", outcome="completed") == 1
    assert value(parsed, "trio_orchestrator_time_to_first_token_seconds_count") == 1
    assert value(parsed, "trio_orchestrator_tokens_total", type="output") == 3
    assert value(parsed, "trio_orchestrator_stage_duration_seconds_count", stage="stream") == 1


async def test_layers_are_labelled_with_the_provider_below_them() -> None:
    """Without the gateway, each layer's metrics carry the provider's label, not the class
    name of the layer it wraps."""
    from trio_orchestrator.config import Config
    from trio_orchestrator.resilience import (
        BreakerConfig,
        LimitConfig,
        RateLimitsConfig,
        ResilienceConfig,
        RetryConfig,
    )
    from trio_orchestrator.resilience.stack import LayerContext, wrap

    limits = RateLimitsConfig(enabled=True, limits=(LimitConfig("provider", 100.0),))
    resilience = ResilienceConfig(
        rate_limits=limits, breaker=BreakerConfig(enabled=True), retry=RetryConfig(enabled=True)
    )
    config = Config(resilience=resilience)
    registry = CollectorRegistry()
    async with trio.open_nursery() as nursery:
        worker = wrap(EchoWorker(), resilience, LayerContext(nursery, "echo"))
        async with open_pipeline(worker, config) as pipeline:
            instrument_pipeline(pipeline, registry=registry)
            await pipeline.submit(request("hi"))
        nursery.cancel_scope.cancel()
    parsed = samples(registry)
    assert value(parsed, "trio_orchestrator_rate_limit_admitted_total", provider="echo") == 1
    assert {v for _, labels in parsed for k, v in labels if k == "provider"} == {"echo"}
