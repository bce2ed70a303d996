"""The circuit breaker layer with shared state: what it asks and tells the other processes.

Written for the mutation session (scripts/mutation.py): the Redis-backed tests of shared
breakers (tests/test_distributed_breaker.py) need a server and a real clock, so the layer's
side of the protocol is pinned here against an in-memory fake of the shared state.
"""

from __future__ import annotations

import random

import attrs
import pytest
import trio
import trio.testing
from _scripted import OK, Recorder, ScriptedWorker, Step, fail

from trio_orchestrator.errors import BadRequest, CircuitOpen, ServerError
from trio_orchestrator.events import Done, TextDelta, Usage
from trio_orchestrator.resilience import (
    BreakerConfig,
    BreakerState,
    CircuitBreaker,
    CircuitBreakerLayer,
    LatencyBaseline,
)
from trio_orchestrator.routing.registry import ModelDeployment
from trio_orchestrator.types import GenerationParams, PromptRequest
from trio_orchestrator.workers.base import EventSink

REQUEST = PromptRequest(input="hi", params=GenerationParams(model="m1"))


def _config(**overrides: object) -> BreakerConfig:
    base: dict[str, object] = {
        "enabled": True,
        "failure_threshold": 1,
        "minimum_calls": 100,
        "cooldown": 10.0,
        "jitter": 0.0,
        "half_open_probes": 1,
    }
    base.update(overrides)
    return BreakerConfig(**base)  # type: ignore[arg-type]


@attrs.frozen
class Verdict:
    """A shared verdict as the fake gives it."""

    state: str = "closed"
    retry_after: float = 0.0
    admitted: bool = True


@attrs.define(eq=False)
class FakeShared:
    """Shared breaker state in memory: answers ``verdict``, records every call made to it."""

    verdict: Verdict = attrs.field(factory=Verdict)
    error: BaseException | None = None
    calls: list[tuple[str, str]] = attrs.field(factory=list)
    hold: trio.Event | None = None
    """When set, the next check waits for this event before it answers."""

    async def check(self, target: str) -> Verdict:
        await trio.lowlevel.checkpoint()  # a cancelled, unshielded caller stops here
        self.calls.append(("check", target))
        if self.hold is not None:
            hold, self.hold = self.hold, None
            await hold.wait()
        if self.error is not None:
            raise self.error
        return self.verdict

    async def opened(self, target: str) -> None:
        await trio.lowlevel.checkpoint()  # a cancelled, unshielded caller stops here
        self.calls.append(("opened", target))

    async def probe_succeeded(self, target: str) -> None:
        await trio.lowlevel.checkpoint()  # a cancelled, unshielded caller stops here
        self.calls.append(("probe_succeeded", target))

    async def release(self, target: str) -> None:
        await trio.lowlevel.checkpoint()  # a cancelled, unshielded caller stops here
        self.calls.append(("release", target))


def _layer(worker: ScriptedWorker, shared: FakeShared, **config: object) -> CircuitBreakerLayer:
    return CircuitBreakerLayer(worker, _config(**config), provider="p", shared=shared)


async def test_a_closed_call_checks_the_shared_state_and_publishes_nothing() -> None:
    """A successful call outside a probe asks the shared state once and tells it nothing."""
    shared = FakeShared()
    layer = _layer(ScriptedWorker([OK]), shared)
    await layer.generate(REQUEST, Recorder())
    assert shared.calls == [("check", "p/m1")]


PROBE = Verdict(state="probe")


@pytest.mark.parametrize(
    ("step", "published"),
    [
        (OK, "probe_succeeded"),
        (fail(ServerError("boom")), "opened"),
        (fail(BadRequest("no")), "release"),
    ],
)
async def test_a_shared_probe_publishes_its_outcome(step: Step, published: str) -> None:
    """A call the shared state made a probe tells it the outcome: success closes the circuit
    for everyone, a tripping failure reopens it, an error that says nothing gives the slot
    back (the local breaker, still closed, would not open on one failure here)."""
    shared = FakeShared(PROBE)
    layer = _layer(ScriptedWorker([step]), shared, failure_threshold=2)
    try:
        await layer.generate(REQUEST, Recorder())
    except (ServerError, BadRequest):
        pass
    assert shared.calls == [("check", "p/m1"), (published, "p/m1")]


@pytest.mark.parametrize(
    ("threshold", "step", "published"),
    [
        (1, fail(ServerError("boom")), [("opened", "p/m1")]),
        (2, fail(ServerError("boom")), []),
        (1, fail(BadRequest("no")), []),
    ],
)
async def test_outside_a_probe_only_an_opening_is_published(
    threshold: int, step: Step, published: list[tuple[str, str]]
) -> None:
    """Outside a probe, a failure is published only when it opened the local circuit."""
    shared = FakeShared()
    layer = _layer(ScriptedWorker([step]), shared, failure_threshold=threshold)
    with pytest.raises((ServerError, BadRequest)):
        await layer.generate(REQUEST, Recorder())
    assert shared.calls == [("check", "p/m1"), *published]


async def test_a_probe_cancelled_by_its_caller_still_gives_its_slot_back(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A shared probe whose caller leaves (before any deadline) reports the release even
    though the call was cancelled, so the other processes' probe slot is not lost."""
    shared = FakeShared(PROBE)
    layer = _layer(ScriptedWorker([Step(delay=10.0)]), shared)
    with trio.move_on_after(100.0):  # a deadline far away: leaving is not a timeout
        async with trio.open_nursery() as nursery:
            nursery.start_soon(layer.generate, REQUEST, Recorder())
            await trio.sleep(1.0)
            nursery.cancel_scope.cancel()
    assert shared.calls == [("check", "p/m1"), ("release", "p/m1")]
    assert layer.statistics()[0].failures == 0


async def _open_locally_then_cool_down(layer: CircuitBreakerLayer) -> None:
    """Open the local circuit with one failure and wait out its cool-down (half-open)."""
    with pytest.raises(ServerError):
        await layer.generate(REQUEST, Recorder())
    await trio.sleep(10.0)
    assert layer.statistics()[0].state == "half_open"


async def test_a_shared_refusal_fails_fast_and_frees_the_local_probe(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Another process holding the circuit open refuses the call with CircuitOpen (its own
    message and retry_after) without calling the worker, and the local probe slot the call
    took is given back, so the next call, once the shared state admits, goes through."""
    worker = ScriptedWorker([fail(ServerError("boom")), OK])
    shared = FakeShared()
    layer = _layer(worker, shared)
    await _open_locally_then_cool_down(layer)
    shared.verdict = Verdict(state="open", retry_after=5.0, admitted=False)
    with pytest.raises(CircuitOpen) as info:
        await layer.generate(REQUEST, Recorder())
    assert str(info.value) == (
        "the circuit for p/m1 is open (shared by every process) after repeated failures; "
        "retry in 5 s"
    )
    assert info.value.retry_after == 5.0
    assert worker.calls == 1
    shared.verdict = PROBE
    await layer.generate(REQUEST, Recorder())
    assert (worker.calls, layer.statistics()[0].state) == (2, "closed")


async def test_an_unreachable_shared_state_frees_the_local_probe(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The shared state failing to answer fails the call with its error and gives the local
    probe slot back, so the next call is admitted locally."""
    worker = ScriptedWorker([fail(ServerError("boom")), OK])
    shared = FakeShared()
    layer = _layer(worker, shared)
    await _open_locally_then_cool_down(layer)
    shared.error = OSError("connection refused")
    with pytest.raises(OSError, match="connection refused"):
        await layer.generate(REQUEST, Recorder())
    shared.error = None
    await layer.generate(REQUEST, Recorder())
    assert (worker.calls, layer.statistics()[0].state) == (2, "closed")


@pytest.mark.parametrize(
    "answer", [Verdict("open", 5.0, admitted=False), OSError("connection refused")]
)
async def test_a_call_refused_by_the_shared_state_after_a_local_opening(
    answer: Verdict | OSError,
) -> None:
    """A call still waiting for the shared state's verdict while a concurrent call opens the
    local circuit, then refused (or left without an answer) by the shared state, fails with
    that refusal (or error) and leaves the circuit open."""
    shared = FakeShared(hold=trio.Event())
    release = shared.hold
    assert release is not None
    layer = _layer(ScriptedWorker([fail(ServerError("boom"))]), shared)
    outcomes: list[type[BaseException]] = []

    async def waiting_call() -> None:
        try:
            await layer.generate(REQUEST, Recorder())
        except (CircuitOpen, OSError) as exc:
            outcomes.append(type(exc))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(waiting_call)
        await trio.testing.wait_all_tasks_blocked()
        with pytest.raises(ServerError):
            await layer.generate(REQUEST, Recorder())
        if isinstance(answer, Verdict):
            shared.verdict = answer
        else:
            shared.error = answer
        release.set()
    assert outcomes == [type(answer) if isinstance(answer, OSError) else CircuitOpen]
    assert layer.statistics()[0].state == "open"


# ------------------------------------------------------------------ the layer, without shared state


async def test_a_refusal_says_which_circuit_is_open_and_for_how_long(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The CircuitOpen of a local refusal names the target and the seconds to wait."""
    layer = CircuitBreakerLayer(ScriptedWorker([fail(ServerError("boom"))]), _config())
    layer.provider = "p"
    with pytest.raises(ServerError):
        await layer.generate(REQUEST, Recorder())
    await trio.sleep(2.5)
    with pytest.raises(CircuitOpen) as info:
        await layer.generate(REQUEST, Recorder())
    assert str(info.value) == (
        "the circuit for p/m1 is open after repeated failures; retry in 7.5 s"
    )


async def test_latency_is_the_time_to_the_first_event(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A call's latency is measured to its first event, not to its end."""

    class SlowTail:
        async def generate(self, request: PromptRequest, emit: EventSink) -> None:
            await trio.sleep(1.0)
            await emit(TextDelta("a"))
            await trio.sleep(10.0)
            usage = Usage(1, 1)
            await emit(Done("stop", "a", usage, (), "m1"))

    layer = CircuitBreakerLayer(SlowTail(), _config())
    await layer.generate(REQUEST, Recorder())
    assert layer.statistics()[0].latency_mean == 1.0


async def test_the_layers_rng_draws_each_breakers_jitter(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """With a seeded rng, an opened breaker's cool-down is the one that seed draws."""
    layer = CircuitBreakerLayer(
        ScriptedWorker([fail(ServerError("boom"))]),
        _config(jitter=0.5),
        rng=random.Random(7),
    )
    with pytest.raises(ServerError):
        await layer.generate(REQUEST, Recorder())
    expected = 10.0 * (1.0 - 0.5 * random.Random(7).random())
    assert layer.statistics()[0].retry_after == expected


@pytest.mark.parametrize(
    ("error", "state"), [(ServerError("boom"), "open"), (BadRequest("no"), "closed")]
)
async def test_an_error_wrapped_alone_in_a_group_is_judged_as_itself(
    error: Exception, state: str
) -> None:
    """A worker's nursery wrapping its one error in an ExceptionGroup does not change the
    verdict: a tripping error opens the circuit, a BadRequest does not."""

    class Grouped:
        async def generate(self, request: PromptRequest, emit: EventSink) -> None:
            raise ExceptionGroup("worker", [error])

    layer = CircuitBreakerLayer(Grouped(), _config())
    with pytest.raises(ExceptionGroup):
        await layer.generate(REQUEST, Recorder())
    assert layer.statistics()[0].state == state


async def test_a_call_released_after_another_opened_the_circuit(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A call admitted while closed that ends with a BadRequest after a concurrent call
    opened the circuit is released cleanly: its error reaches its caller, the circuit stays
    open."""
    worker = ScriptedWorker(
        [fail(ServerError("boom"), delay=1.0), fail(BadRequest("no"), delay=2.0)]
    )
    layer = CircuitBreakerLayer(worker, _config())
    errors: list[type[BaseException]] = []

    async def call() -> None:
        try:
            await layer.generate(REQUEST, Recorder())
        except (ServerError, BadRequest) as exc:
            errors.append(type(exc))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(call)
        nursery.start_soon(call)
    assert errors == [ServerError, BadRequest]
    assert layer.statistics()[0].state == "open"


async def test_reconfigure_takes_new_thresholds_for_existing_targets() -> None:
    """A reload's thresholds apply at once to the breakers already made; a toggle is refused."""
    layer = CircuitBreakerLayer(
        ScriptedWorker([fail(ServerError("boom"))]), _config(failure_threshold=3)
    )
    with pytest.raises(ServerError):
        await layer.generate(REQUEST, Recorder())
    assert layer.reconfigure(_config(failure_threshold=2)) == []
    assert layer.config.failure_threshold == 2
    with pytest.raises(ServerError):
        await layer.generate(REQUEST, Recorder())
    assert layer.statistics()[0].state == "open"
    assert layer.reconfigure(_config(enabled=False)) == [
        "resilience.breaker.enabled: adding or removing a layer needs a restart True → False"
    ]
    assert layer.config.failure_threshold == 2


def _deployment(provider: str, upstream: str) -> ModelDeployment:
    return ModelDeployment(
        name=f"{upstream}@{provider}", model=upstream, provider=provider, upstream_model=upstream
    )


async def test_is_available_judges_only_this_providers_open_targets() -> None:
    """A deployment is unavailable only while this provider's breaker for its upstream model
    is open; other providers' deployments and unseen models are available."""
    worker = ScriptedWorker([fail(ServerError("boom")), OK])
    layer = CircuitBreakerLayer(worker, _config(), provider="p")
    assert layer.is_available(_deployment("p", "m1"))
    with pytest.raises(ServerError):
        await layer.generate(REQUEST, Recorder())
    await layer.generate(attrs.evolve(REQUEST, params=GenerationParams(model="m2")), Recorder())
    assert not layer.is_available(_deployment("p", "m1"))
    assert layer.is_available(_deployment("p", "m2"))
    assert layer.is_available(_deployment("q", "m1"))
    assert layer.is_available(_deployment("p", "m3"))


async def test_unready_only_when_every_target_is_open() -> None:
    """The provider is unready only once every target it has called has an open breaker."""
    worker = ScriptedWorker([OK, fail(ServerError("boom"))])
    layer = CircuitBreakerLayer(worker, _config(), provider="p")
    assert layer.unready() is None
    await layer.generate(attrs.evolve(REQUEST, params=GenerationParams(model="m2")), Recorder())
    with pytest.raises(ServerError):
        await layer.generate(REQUEST, Recorder())
    assert layer.unready() is None  # m2 still admits calls
    with pytest.raises(ServerError):
        await layer.generate(attrs.evolve(REQUEST, params=GenerationParams(model="m2")), Recorder())
    assert layer.unready() == "every circuit breaker of p is open"


# ------------------------------------------------------------------ latency baselines


def _verdict(mode: str, history: list[float], latency: float, **overrides: float) -> bool:
    """Whether ``latency`` is an anomaly for a baseline that has seen ``history``."""
    settings: dict[str, float] = {
        "threshold": 2.0,
        "min_excess": 0.0,
        "warmup": 1,
        "alpha": 0.5,
        "window": 2,
    }
    settings.update(overrides)
    baseline = LatencyBaseline(
        mode,
        settings["threshold"],
        settings["min_excess"],
        int(settings["warmup"]),
        settings["alpha"],
        int(settings["window"]),
    )
    for sample in history:
        baseline.observe(sample)
    return baseline.observe(latency)


@pytest.mark.parametrize("mode", ["ewma", "zscore"])
def test_a_latency_is_judged_from_the_call_after_warmup(mode: str) -> None:
    """With a warmup of 3, the fourth call is the first one judged."""
    assert not _verdict(mode, [1.0, 1.0], 100.0, warmup=3)
    assert _verdict(mode, [1.0, 1.0, 1.0], 100.0, warmup=3)


@pytest.mark.parametrize("mode", ["ewma", "zscore"])
def test_an_anomaly_must_exceed_the_minimum_excess(mode: str) -> None:
    """Over a steady baseline, exactly min_excess above the mean is not an anomaly."""
    assert not _verdict(mode, [1.0, 1.0], 1.5, min_excess=0.5)
    assert _verdict(mode, [1.0, 1.0], 1.5625, min_excess=0.5)


@pytest.mark.parametrize("mode", ["ewma", "zscore"])
def test_an_anomaly_must_exceed_threshold_deviations(mode: str) -> None:
    """After 1 s then 3 s both baselines have mean 2 s and deviation 1 s (EWMA at alpha 0.5;
    population deviation of the window): 2 deviations above is not anomalous, more is."""
    assert not _verdict(mode, [1.0, 3.0], 4.0)
    assert _verdict(mode, [1.0, 3.0], 4.25)


def test_the_ewma_variance_follows_each_sample() -> None:
    """After 1, 3, 2 s the EWMA (alpha 0.5) has mean 2 s and variance 0.5 (deviation
    0.707 s), so the 2-deviation bound is 3.414 s."""
    assert not _verdict("ewma", [1.0, 3.0, 2.0], 3.4)
    assert _verdict("ewma", [1.0, 3.0, 2.0], 3.45)


def test_the_zscore_baseline_keeps_only_its_window() -> None:
    """A window of 2 forgets the first of three samples."""
    assert not _verdict("zscore", [100.0, 1.0, 3.0], 4.0)
    assert _verdict("zscore", [100.0, 1.0, 3.0], 4.25)


# ------------------------------------------------------------------ the state machine's edges


def _opened(**config: object) -> CircuitBreaker:
    """A breaker opened at time 0 by one failure (cool-down 10 s, one probe)."""
    breaker = CircuitBreaker(_config(**config), "p/m1")
    breaker.record_failure(breaker.acquire(0.0), 0.0)
    return breaker


def test_retry_after_is_zero_while_closed_or_while_a_probe_slot_is_free() -> None:
    """A closed breaker, and a half-open one with a free probe slot, admit now (0 s); a
    half-open one with every slot taken says the base cool-down."""
    assert CircuitBreaker(_config(), "p/m1").retry_after(0.0) == 0.0
    breaker = _opened()
    assert breaker.retry_after(4.0) == 6.0
    assert breaker.retry_after(10.0) == 0.0
    assert breaker.acquire(10.0).probe
    assert breaker.retry_after(10.0) == 10.0


def test_openings_and_transitions_are_counted_each_time() -> None:
    """Open, half-open, open again, half-open, closed: two openings, five transitions."""
    breaker = _opened()
    breaker.record_failure(breaker.acquire(10.0), 10.0)  # the probe fails: open again
    probe = breaker.acquire(30.0)  # after the doubled cool-down
    breaker.record_success(probe, 30.0, 0.1)
    stats = breaker.statistics(30.0)
    assert (stats.state, stats.times_opened, stats.transitions) == ("closed", 2, 5)


def test_a_closed_circuit_starts_its_run_of_failures_afresh() -> None:
    """After a probe closes the circuit, it takes failure_threshold new failures to open it
    again, and the statistics count the calls and the run so far."""
    breaker = _opened()
    breaker.config = _config(failure_threshold=2)  # as a reload does
    breaker.record_success(breaker.acquire(10.0), 10.0, 0.1)
    assert breaker.statistics(10.0).consecutive_failures == 0
    breaker.record_failure(breaker.acquire(11.0), 11.0)
    stats = breaker.statistics(11.0)
    assert (stats.state, stats.calls, stats.consecutive_failures) == ("closed", 3, 1)
    breaker.record_failure(breaker.acquire(12.0), 12.0)
    assert breaker.statistics(12.0).state == "open"


def test_a_closed_circuit_opens_again_with_the_base_cool_down() -> None:
    """A failed probe round doubles the cool-down (20 s), but once a probe closes the
    circuit, the next opening waits the base cool-down (10 s) again."""
    breaker = _opened()
    breaker.record_failure(breaker.acquire(10.0), 10.0)
    assert breaker.retry_after(10.0) == 20.0
    breaker.record_success(breaker.acquire(30.0), 30.0, 0.1)
    breaker.record_failure(breaker.acquire(31.0), 31.0)
    assert (breaker.state(31.0), breaker.retry_after(31.0)) == (BreakerState.OPEN, 10.0)


def test_a_probe_that_reported_frees_no_slot_of_its_round() -> None:
    """Half-open with three probes: after one probe succeeds, exactly two more calls are
    let through as probes, and the fourth is refused until the round is decided."""
    breaker = _opened(half_open_probes=3)
    breaker.record_success(breaker.acquire(10.0), 10.0, 0.1)
    permits = [breaker.acquire(10.0) for _ in range(3)]
    assert [(p.admitted, p.probe) for p in permits] == [(True, True), (True, True), (False, False)]
    assert breaker.state(10.0) is BreakerState.HALF_OPEN


def test_a_probe_round_is_decided_by_its_last_failure() -> None:
    """Half-open with three probes: a failed probe's slot stays used (the fourth call is
    refused); the circuit stays half-open after two failures and opens on the third."""
    breaker = _opened(half_open_probes=3)
    breaker.record_failure(breaker.acquire(10.0), 10.0)
    second, third, fourth = (breaker.acquire(10.0) for _ in range(3))
    assert (second.probe, third.probe, fourth.admitted) == (True, True, False)
    breaker.record_failure(second, 10.0)
    assert breaker.state(10.0) is BreakerState.HALF_OPEN
    breaker.record_failure(third, 10.0)
    assert breaker.state(10.0) is BreakerState.OPEN


def test_a_call_from_before_the_last_opening_cannot_reopen_a_half_open_circuit() -> None:
    """After open, half-open, closed, a call admitted while closed that fails only once the
    circuit has opened again and turned half-open is stale: the circuit stays half-open and
    admits its probe."""
    breaker = _opened()
    breaker.record_success(breaker.acquire(10.0), 10.0, 0.1)  # the probe closes it
    late = breaker.acquire(11.0)
    breaker.record_failure(breaker.acquire(11.0), 11.0)  # opens again, for 10 s
    breaker.record_failure(late, 21.0)
    assert breaker.state(21.0) is BreakerState.HALF_OPEN
    assert breaker.acquire(21.0).probe


def test_a_closed_circuit_starts_its_error_rate_afresh() -> None:
    """The failures that opened the circuit are not held against it once a probe closed
    it: one success then shows an error rate of 0."""
    breaker = _opened(minimum_calls=2, failure_rate_threshold=0.5)
    breaker.record_success(breaker.acquire(10.0), 10.0, 0.1)
    breaker.record_success(breaker.acquire(11.0), 11.0, 0.1)
    assert breaker.statistics(11.0).error_rate == 0.0


def test_with_latency_anomaly_off_a_slow_success_is_a_success() -> None:
    """latency_anomaly "off": however slow a success after the warmup, it counts no anomaly
    and no failure."""
    breaker = CircuitBreaker(
        _config(latency_anomaly="off", latency_warmup=1, latency_min_excess=0.01), "p/m1"
    )
    for latency in (0.1, 0.1, 0.1, 50.0):
        breaker.record_success(breaker.acquire(0.0), 0.0, latency)
    stats = breaker.statistics(0.0)
    assert (stats.latency_anomalies, stats.failures, stats.state) == (0, 0, "closed")


def test_statistics_of_a_fresh_breaker_are_zero() -> None:
    """Before any call: no latency, nothing to wait for."""
    stats = CircuitBreaker(_config(), "p/m1").statistics(0.0)
    assert (stats.latency_mean, stats.latency_p99, stats.retry_after) == (0.0, 0.0, 0.0)


def test_statistics_retry_after_is_zero_unless_open() -> None:
    """Half-open with its probe out, the statistics say 0 s to wait (retry_after itself
    gives the cool-down then)."""
    breaker = _opened()
    breaker.acquire(10.0)
    assert breaker.statistics(10.0).retry_after == 0.0


def test_failures_and_anomalies_accumulate() -> None:
    """Each failure and each slow success adds to the counts; a success takes none away."""
    config = _config(
        failure_threshold=10,
        latency_anomaly="zscore",
        latency_threshold=1.0,
        latency_warmup=2,
        latency_window=10,
    )
    breaker = CircuitBreaker(config, "p/m1")
    for latency in (1.0, 1.0, 50.0, 50.0):
        breaker.record_success(breaker.acquire(0.0), 0.0, latency)
    breaker.record_failure(breaker.acquire(0.0), 0.0)
    breaker.record_success(breaker.acquire(0.0), 0.0, 1.0)
    stats = breaker.statistics(0.0)
    assert (stats.failures, stats.latency_anomalies) == (3, 2)


def test_each_refusal_is_counted() -> None:
    """Two calls refused while open count two rejections."""
    breaker = _opened()
    assert not breaker.acquire(1.0).admitted
    assert not breaker.acquire(2.0).admitted
    assert breaker.statistics(2.0).rejected == 2


def test_the_error_rate_forgets_calls_that_left_the_window() -> None:
    """A success that left the window no longer dilutes the failures after it."""
    breaker = CircuitBreaker(_config(failure_threshold=100, window=10.0), "p/m1")
    breaker.record_success(breaker.acquire(0.0), 0.0, 0.1)
    breaker.record_failure(breaker.acquire(1.0), 1.0)
    breaker.record_failure(breaker.acquire(2.0), 2.0)
    assert breaker.statistics(5.0).error_rate == pytest.approx(2 / 3)
    assert breaker.statistics(10.5).error_rate == 1.0


def test_the_configured_latency_mode_is_the_one_used() -> None:
    """latency_anomaly = "ewma" judges by the EWMA: after 1, 3, 2 s (alpha 0.5) a 3.45 s
    call is anomalous there (as is the 3 s after a lone 1 s), though not for the z-score of
    the same three samples."""
    config = _config(
        failure_threshold=100,
        latency_anomaly="ewma",
        latency_threshold=2.0,
        latency_min_excess=0.0,
        latency_warmup=1,
        latency_alpha=0.5,
    )
    breaker = CircuitBreaker(config, "p/m1")
    for latency in (1.0, 3.0, 2.0, 3.45):
        breaker.record_success(breaker.acquire(0.0), 0.0, latency)
    assert breaker.statistics(0.0).latency_anomalies == 2  # 3 s over 1 s, and 3.45 s
    assert not _verdict("zscore", [1.0, 3.0, 2.0], 3.45, window=100)
