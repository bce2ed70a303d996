"""The circuit breaker: its state machine against a reference model, and its layer."""

from __future__ import annotations

import math
import random

import attrs
import orjson
import pytest
import trio
import trio.testing
from _scripted import OK, Recorder, ScriptedWorker, Step, fail
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from trio_orchestrator.errors import BadRequest, CircuitOpen, ServerError
from trio_orchestrator.events import Done, TextDelta, Usage
from trio_orchestrator.resilience import (
    BreakerConfig,
    BreakerState,
    CircuitBreaker,
    CircuitBreakerLayer,
    Permit,
)
from trio_orchestrator.types import GenerationParams, PromptRequest

CLOSED, OPEN, HALF_OPEN = BreakerState.CLOSED, BreakerState.OPEN, BreakerState.HALF_OPEN


def _config(**overrides: object) -> BreakerConfig:
    base: dict[str, object] = {
        "enabled": True,
        "failure_threshold": 3,
        "minimum_calls": 100,
        "cooldown": 10.0,
        "jitter": 0.0,
        "half_open_probes": 2,
    }
    base.update(overrides)
    return BreakerConfig(**base)  # type: ignore[arg-type]


def _fail_times(breaker: CircuitBreaker, n: int, now: float) -> None:
    for _ in range(n):
        breaker.record_failure(breaker.acquire(now), now)


# ------------------------------------------------------------------ reference model


@attrs.define
class ModelBreaker:
    """An independent, deliberately naive statement of the breaker's rules."""

    cfg: BreakerConfig
    rng: random.Random
    state: str = "closed"
    generation: int = 0
    history: list[tuple[float, bool]] = attrs.field(factory=list)
    open_until: float = 0.0
    failed_rounds: int = 0
    in_flight: int = 0
    ok: int = 0
    bad: int = 0

    def tick(self, now: float) -> None:
        if self.state == "open" and now >= self.open_until:
            self.go("half_open")

    def go(self, state: str) -> None:
        self.state, self.generation, self.history = state, self.generation + 1, []
        self.in_flight = self.ok = self.bad = 0

    def acquire(self, now: float) -> tuple[bool, bool, float]:
        self.tick(now)
        if self.state == "closed":
            return True, False, 0.0
        if (
            self.state == "half_open"
            and self.in_flight + self.ok + self.bad < self.cfg.half_open_probes
        ):
            self.in_flight += 1
            return True, True, 0.0
        wait = self.open_until - now if self.state == "open" else self.cfg.cooldown
        return False, False, wait

    def finish(self, generation: int, probe: bool, now: float, outcome: str) -> None:
        self.tick(now)
        if generation != self.generation:
            return
        if outcome == "release":
            self.in_flight -= probe
            return
        failed = outcome == "failure"
        if probe:
            self.in_flight -= 1
            self.ok += not failed
            self.bad += failed
            if self.ok + self.bad == self.cfg.half_open_probes:
                if self.ok / self.cfg.half_open_probes >= self.cfg.probe_success_threshold:
                    self.failed_rounds = 0
                    self.go("closed")
                else:
                    self.failed_rounds += self.ok == 0  # only an all-failed round escalates
                    self.trip(now)
            return
        self.history.append((now, failed))
        trailing = 0
        for _, f in reversed(self.history):
            if not f:
                break
            trailing += 1
        recent = [f for t, f in self.history if t > now - self.cfg.window]
        rate_trips = len(recent) >= self.cfg.minimum_calls and (
            sum(recent) / len(recent) >= self.cfg.failure_rate_threshold
        )
        # A run of failures decides only while the window is too small for a rate.
        run_trips = trailing >= self.cfg.failure_threshold and len(recent) < self.cfg.minimum_calls
        if run_trips or rate_trips:
            self.trip(now)

    def trip(self, now: float) -> None:
        c = self.cfg
        ceiling = min(c.max_cooldown, c.cooldown * c.cooldown_multiplier**self.failed_rounds)
        self.open_until = now + ceiling * (1 - c.jitter * self.rng.random())
        self.go("open")


configs = st.builds(
    BreakerConfig,
    failure_threshold=st.integers(1, 4),
    failure_rate_threshold=st.sampled_from([0.25, 0.5, 1.0]),
    window=st.sampled_from([1.0, 5.0, 30.0]),
    minimum_calls=st.integers(1, 6),
    cooldown=st.sampled_from([0.5, 2.0, 5.0]),
    cooldown_multiplier=st.sampled_from([1.0, 2.0, 3.0]),
    max_cooldown=st.just(20.0),
    jitter=st.sampled_from([0.0, 0.3]),
    half_open_probes=st.integers(1, 3),
    probe_success_threshold=st.sampled_from([0.5, 1.0]),
)


class BreakerAgainstModel(RuleBasedStateMachine):
    """Drives a CircuitBreaker and ModelBreaker with the same calls; they must agree."""

    def __init__(self) -> None:
        super().__init__()
        self.now = 0.0
        self.permits: list[tuple[Permit, int, bool]] = []

    @initialize(config=configs, seed=st.integers(0, 2**32))
    def setup(self, config: BreakerConfig, seed: int) -> None:
        self.breaker = CircuitBreaker(config, "p/m", rng=random.Random(seed))
        self.model = ModelBreaker(config, random.Random(seed))

    @rule()
    def acquire(self) -> None:
        permit = self.breaker.acquire(self.now)
        admitted, probe, wait = self.model.acquire(self.now)
        assert (permit.admitted, permit.probe) == (admitted, probe)
        assert math.isclose(permit.retry_after, wait, abs_tol=1e-9)
        if admitted:
            self.permits.append((permit, self.model.generation, probe))

    @precondition(lambda self: self.permits)
    @rule(
        data=st.data(),
        outcome=st.sampled_from(["success", "failure", "timeout", "release"]),
    )
    def finish(self, data: st.DataObject, outcome: str) -> None:
        index = data.draw(st.integers(0, len(self.permits) - 1))
        permit, generation, probe = self.permits.pop(index)
        if outcome == "success":
            self.breaker.record_success(permit, self.now, 0.1)
        elif outcome == "release":
            self.breaker.release(permit, self.now)
        else:  # a timeout is reported to the breaker as a failure
            self.breaker.record_failure(permit, self.now)
        self.model.finish(
            generation, probe, self.now, "failure" if outcome == "timeout" else outcome
        )

    @rule(dt=st.sampled_from([0.0, 0.1, 0.5, 1.0, 2.0, 5.0, 25.0]))
    def advance(self, dt: float) -> None:
        self.now += dt

    @rule(n=st.integers(2, 4))
    def acquire_concurrently(self, n: int) -> None:
        for _ in range(n):
            self.acquire()

    @invariant()
    def same_state_and_error_rate(self) -> None:
        if hasattr(self, "breaker"):
            self.model.tick(self.now)
            assert self.breaker.state(self.now).value == self.model.state
            recent = [f for t, f in self.model.history if t > self.now - self.model.cfg.window]
            expected = sum(recent) / len(recent) if recent else 0.0
            assert self.breaker.statistics(self.now).error_rate == expected


TestBreakerAgainstModel = BreakerAgainstModel.TestCase
TestBreakerAgainstModel.settings = settings(settings(), stateful_step_count=80)


# ------------------------------------------------------------------ the pure breaker


def test_consecutive_failures_open_the_circuit() -> None:
    """N consecutive failures open it; a success in between resets the count."""
    breaker = CircuitBreaker(_config())
    _fail_times(breaker, 2, 0.0)
    breaker.record_success(breaker.acquire(0.0), 0.0, 0.1)
    _fail_times(breaker, 2, 0.0)
    assert breaker.state(0.0) is CLOSED
    _fail_times(breaker, 1, 0.0)
    assert breaker.state(0.0) is OPEN


def test_a_run_of_failures_decides_only_while_the_window_is_too_small_for_a_rate() -> None:
    """Once the window holds minimum_calls calls, N failures in a row do not open it."""
    breaker = CircuitBreaker(_config(failure_threshold=2, minimum_calls=4))
    for _ in range(4):
        breaker.record_success(breaker.acquire(0.0), 0.0, 0.1)
    _fail_times(breaker, 3, 0.0)
    assert breaker.state(0.0) is CLOSED  # 3 in a row, but 3/7 < 0.5


def _load(breaker: CircuitBreaker, failure_rate: float, calls: int, seed: int) -> None:
    """Drive ``breaker`` as 64 concurrent callers at 1,000 calls/s would: each slot's call
    ends (failed with probability ``failure_rate``) in random order, then a new one starts."""
    rng = random.Random(seed)
    now = 0.0
    in_flight = [breaker.acquire(now) for _ in range(64)]
    for _ in range(calls):
        now += 0.001
        permit = in_flight.pop(rng.randrange(len(in_flight)))
        if permit.admitted and rng.random() < failure_rate:
            breaker.record_failure(permit, now)
        elif permit.admitted:
            breaker.record_success(permit, now, 0.01)
        in_flight.append(breaker.acquire(now))


@pytest.mark.parametrize("seed", range(3))
def test_random_failures_below_the_rate_never_open_it_at_high_throughput(seed: int) -> None:
    """20 % random failures over 20,000 calls at 64-way concurrency leave it closed."""
    breaker = CircuitBreaker(BreakerConfig(enabled=True))
    _load(breaker, 0.2, 20_000, seed)
    assert breaker.statistics(20.0).times_opened == 0


def test_random_failures_above_the_rate_open_it_at_high_throughput() -> None:
    """60 % random failures at the same load open it."""
    breaker = CircuitBreaker(BreakerConfig(enabled=True))
    _load(breaker, 0.6, 2_000, 0)
    assert breaker.statistics(2.0).times_opened >= 1


def test_failure_rate_opens_only_with_minimum_calls() -> None:
    """A failure rate over the threshold opens the circuit once the window has enough calls."""
    breaker = CircuitBreaker(
        _config(failure_threshold=100, minimum_calls=4, failure_rate_threshold=0.5)
    )
    for failed in (True, False, True):
        permit = breaker.acquire(1.0)
        if failed:
            breaker.record_failure(permit, 1.0)
        else:
            breaker.record_success(permit, 1.0, 0.1)
    assert breaker.state(1.0) is CLOSED  # 2/3 failed, but only 3 calls
    breaker.record_success(breaker.acquire(1.0), 1.0, 0.1)
    assert breaker.state(1.0) is OPEN  # 2/4 = 0.5


def test_failures_outside_the_window_do_not_count() -> None:
    """Calls older than the window leave the failure rate."""
    breaker = CircuitBreaker(
        _config(failure_threshold=100, minimum_calls=2, failure_rate_threshold=1.0, window=10.0)
    )
    _fail_times(breaker, 1, 0.0)
    _fail_times(breaker, 1, 10.0)
    assert breaker.state(10.0) is CLOSED
    assert breaker.statistics(10.0).error_rate == 1.0


def test_cooldown_grows_per_failed_round_and_is_capped() -> None:
    """Each failed probe round multiplies the cool-down, up to max_cooldown."""
    breaker = CircuitBreaker(
        _config(failure_threshold=1, half_open_probes=1, cooldown_multiplier=3.0, max_cooldown=50.0)
    )
    _fail_times(breaker, 1, 0.0)
    now, waits = 0.0, []
    for _ in range(4):
        waits.append(breaker.retry_after(now))
        now += waits[-1]
        _fail_times(breaker, 1, now)  # the probe fails
    assert waits == [10.0, 30.0, 50.0, 50.0]


def test_a_partly_successful_probe_round_reopens_for_the_same_cooldown() -> None:
    """2 of 3 probes succeeding (short of the threshold) reopens without a longer wait."""
    breaker = CircuitBreaker(_config(failure_threshold=1, half_open_probes=3))
    _fail_times(breaker, 1, 0.0)
    probes = [breaker.acquire(10.0) for _ in range(3)]
    breaker.record_success(probes[0], 10.0, 0.1)
    breaker.record_failure(probes[1], 10.0)
    breaker.record_success(probes[2], 10.0, 0.1)
    assert breaker.state(10.0) is OPEN
    assert breaker.retry_after(10.0) == 10.0  # not 20: the upstream answered two of three


def test_jitter_shortens_the_cooldown_by_at_most_its_fraction() -> None:
    """With jitter j the cool-down lies in [(1 - j)·c, c] and varies between breakers."""
    waits = set()
    for seed in range(20):
        breaker = CircuitBreaker(_config(failure_threshold=1, jitter=0.5), rng=random.Random(seed))
        _fail_times(breaker, 1, 0.0)
        waits.add(breaker.retry_after(0.0))
    assert all(5.0 <= wait <= 10.0 for wait in waits)
    assert len(waits) > 1


def test_half_open_admits_at_most_k_probes_and_rejects_the_rest() -> None:
    """After the cool-down K probes pass; the next call is refused with a retry-after."""
    breaker = CircuitBreaker(_config(failure_threshold=1, half_open_probes=2))
    _fail_times(breaker, 1, 0.0)
    assert not breaker.acquire(5.0).admitted
    probes = [breaker.acquire(10.0), breaker.acquire(10.0)]
    refused = breaker.acquire(10.0)
    assert [p.probe for p in probes] == [True, True]
    assert not refused.admitted
    assert refused.retry_after > 0


def test_successful_probe_round_closes_the_circuit() -> None:
    """When the probes' success rate reaches the threshold the circuit closes."""
    breaker = CircuitBreaker(_config(failure_threshold=1, half_open_probes=2))
    _fail_times(breaker, 1, 0.0)
    probes = [breaker.acquire(10.0), breaker.acquire(10.0)]
    breaker.record_success(probes[0], 10.0, 0.1)
    assert breaker.state(10.0) is HALF_OPEN
    breaker.record_success(probes[1], 10.0, 0.1)
    assert breaker.state(10.0) is CLOSED


def test_released_probe_frees_its_slot() -> None:
    """A probe whose caller went away frees its slot for another probe."""
    breaker = CircuitBreaker(_config(failure_threshold=1, half_open_probes=1))
    _fail_times(breaker, 1, 0.0)
    breaker.release(breaker.acquire(10.0), 10.0)
    assert breaker.acquire(10.0).admitted


def test_result_of_an_earlier_generation_does_not_move_the_state() -> None:
    """A call admitted while closed that fails after the circuit opened changes nothing."""
    breaker = CircuitBreaker(_config(failure_threshold=1, half_open_probes=1))
    stale = breaker.acquire(0.0)
    _fail_times(breaker, 1, 0.0)
    probe = breaker.acquire(10.0)
    breaker.record_failure(stale, 10.0)
    assert breaker.state(10.0) is HALF_OPEN
    breaker.record_success(probe, 10.0, 0.1)
    assert breaker.state(10.0) is CLOSED


@pytest.mark.parametrize("mode", ["ewma", "zscore"])
def test_anomalously_slow_success_counts_as_failure(mode: str) -> None:
    """With latency anomaly detection, a call far slower than its baseline trips."""
    breaker = CircuitBreaker(
        _config(
            failure_threshold=1, latency_anomaly=mode, latency_warmup=10, latency_min_excess=0.5
        )
    )
    for i in range(30):
        breaker.record_success(breaker.acquire(0.0), 0.0, 1.0 + 0.01 * (i % 3))
    assert breaker.state(0.0) is CLOSED
    breaker.record_success(breaker.acquire(0.0), 0.0, 5.0)
    assert breaker.state(0.0) is OPEN
    assert breaker.statistics(0.0).latency_anomalies == 1


def test_latency_within_the_band_is_a_success() -> None:
    """A latency only a little above the baseline does not trip."""
    breaker = CircuitBreaker(
        _config(failure_threshold=1, latency_anomaly="ewma", latency_warmup=10)
    )
    for i in range(30):
        breaker.record_success(breaker.acquire(0.0), 0.0, 1.0 + 0.1 * (i % 3))
    breaker.record_success(breaker.acquire(0.0), 0.0, 1.3)
    assert breaker.state(0.0) is CLOSED


def test_statistics_report_latency_rejections_and_transitions() -> None:
    """statistics() gives mean and p99 latency, rejected calls and transitions."""
    breaker = CircuitBreaker(_config(failure_threshold=1, minimum_calls=1000), "p/m")
    for latency in range(1, 101):
        breaker.record_success(breaker.acquire(0.0), 0.0, float(latency))
    _fail_times(breaker, 1, 0.0)
    breaker.acquire(1.0)
    stats = breaker.statistics(1.0)
    assert (stats.target, stats.state, stats.transitions, stats.rejected) == ("p/m", "open", 1, 1)
    assert stats.latency_mean == 50.5
    assert stats.latency_p99 == 99.0
    assert stats.retry_after == 9.0


# ------------------------------------------------------------------ the layer

REQUEST = PromptRequest(input="hi", params=GenerationParams(model="m1"))


async def test_layer_fails_fast_once_open(autojump_clock: trio.testing.MockClock) -> None:
    """After N tripping failures the layer raises CircuitOpen without calling the worker."""
    worker = ScriptedWorker([fail(ServerError("boom"))])
    layer = CircuitBreakerLayer(worker, _config(failure_threshold=2), provider="p")
    for _ in range(2):
        with pytest.raises(ServerError):
            await layer.generate(REQUEST, Recorder())
    with pytest.raises(CircuitOpen) as info:
        await layer.generate(REQUEST, Recorder())
    assert worker.calls == 2
    assert info.value.retry_after == 10.0


async def test_layer_keeps_one_breaker_per_model() -> None:
    """An open circuit for one model leaves another model's calls alone."""
    worker = ScriptedWorker([fail(ServerError("boom")), OK])
    layer = CircuitBreakerLayer(worker, _config(failure_threshold=1), provider="p")
    with pytest.raises(ServerError):
        await layer.generate(REQUEST, Recorder())
    other = attrs.evolve(REQUEST, params=GenerationParams(model="m2"))
    await layer.generate(other, Recorder())
    states = {s.target: s.state for s in layer.statistics()}
    assert states == {"p/m1": "open", "p/m2": "closed"}


async def test_errors_that_do_not_trip_are_not_counted() -> None:
    """A BadRequest (trips_breaker False) leaves the circuit closed."""
    worker = ScriptedWorker([fail(BadRequest("no"))])
    layer = CircuitBreakerLayer(worker, _config(failure_threshold=1))
    with pytest.raises(BadRequest):
        await layer.generate(REQUEST, Recorder())
    assert layer.statistics()[0].state == "closed"


@pytest.mark.parametrize(
    "crash",
    [
        orjson.JSONEncodeError("str is not valid UTF-8: surrogates not allowed"),
        ValueError("Integer exceeds 64-bit range"),
        RecursionError("maximum recursion depth exceeded"),
    ],
)
async def test_a_crash_the_request_caused_is_not_counted(crash: Exception) -> None:
    """A worker failing to encode the client's request releases the call."""

    class Encoding:
        async def generate(self, request: PromptRequest, emit: object) -> None:
            raise crash

    layer = CircuitBreakerLayer(Encoding(), _config(failure_threshold=1))
    with pytest.raises(type(crash)):
        await layer.generate(REQUEST, Recorder())
    stats = layer.statistics()[0]
    assert (stats.state, stats.failures) == ("closed", 0)


async def test_any_other_crash_still_counts() -> None:
    """A worker crashing otherwise (a KeyError on the upstream's answer, say) is a failure."""

    class Crashing:
        async def generate(self, request: PromptRequest, emit: object) -> None:
            raise KeyError("choices")

    layer = CircuitBreakerLayer(Crashing(), _config(failure_threshold=1))
    with pytest.raises(KeyError):
        await layer.generate(REQUEST, Recorder())
    assert layer.statistics()[0].state == "open"


async def test_timeout_by_deadline_counts_as_failure(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A call cancelled by its own deadline is a failure."""
    layer = CircuitBreakerLayer(ScriptedWorker([Step(delay=10.0)]), _config(failure_threshold=1))
    with trio.move_on_after(1.0):
        await layer.generate(REQUEST, Recorder())
    assert layer.statistics()[0].state == "open"


async def test_caller_going_away_is_not_a_failure(autojump_clock: trio.testing.MockClock) -> None:
    """A call cancelled before its deadline (the caller left) does not count."""
    layer = CircuitBreakerLayer(ScriptedWorker([Step(delay=10.0)]), _config(failure_threshold=1))
    with trio.move_on_after(100.0):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(layer.generate, REQUEST, Recorder())
            await trio.sleep(1.0)
            nursery.cancel_scope.cancel()
    stats = layer.statistics()[0]
    assert (stats.state, stats.failures) == ("closed", 0)


async def test_layer_passes_events_through_unchanged() -> None:
    """The events reach the caller as the worker emitted them, ending with one Done."""
    recorder = Recorder()
    layer = CircuitBreakerLayer(ScriptedWorker([Step(tokens=("a", "b"))]), _config())
    await layer.generate(REQUEST, recorder)
    usage = Usage(3, 2)
    assert recorder.events == [
        TextDelta("a"),
        TextDelta("b"),
        usage,
        Done("stop", "ab", usage, (), "m1"),
    ]


async def test_layer_trips_on_a_latency_anomaly(autojump_clock: trio.testing.MockClock) -> None:
    """Through the layer, one call far slower than its steady baseline opens the circuit."""
    steady = [Step(delay=1.0 + 0.01 * (i % 3)) for i in range(25)]
    worker = ScriptedWorker([*steady, Step(delay=10.0)])
    config = _config(failure_threshold=1, latency_anomaly="ewma", latency_warmup=10)
    layer = CircuitBreakerLayer(worker, config)
    for _ in range(26):
        await layer.generate(REQUEST, Recorder())
    stats = layer.statistics()[0]
    assert (stats.state, stats.latency_anomalies) == ("open", 1)
