"""Circuit breakers: a pure decision core, and the layer that keeps one per provider and model.

::

                 failure rate ≥ threshold over the window (≥ minimum_calls calls),
                 or, while the window holds fewer calls, N consecutive failures
       ┌────────┐ ─────────────────────────────────────────────▶ ┌──────┐
       │ closed │                                                │ open │
       └────────┘ ◀─── probe success rate ≥ threshold ───┐       └──────┘
                                                  ┌───────────┐     │ cool-down over
                                                  │ half-open │ ◀───┘
                                                  └───────────┘ ── round failed ──▶ open
                                                  (every probe failed: a longer cool-down;
                                                   some succeeded: the same cool-down)

Why the consecutive rule yields to the rate once the window holds ``minimum_calls`` calls: at
high throughput a run of N failures is a matter of luck, not of health (with 20 % of calls
failing at random, a run of five starts about once every 4,000 calls, and failures that come
in bursts — a stall timing out many calls at once — make runs far likelier), so it would open
the circuit on a mostly healthy upstream again and again. With few calls a rate means little, and
a run of failures is the better evidence.

:class:`CircuitBreaker` never reads a clock: every method takes ``now``, so a Hypothesis state
machine can drive it synchronously against a reference model. Each transition starts a new
*generation*; the result of a call admitted in an earlier generation still feeds the latency
statistics but no longer moves the state (it describes a past the breaker has left).
"""

from __future__ import annotations

import enum
import math
import random
from collections import deque
from typing import TYPE_CHECKING, ClassVar, Protocol

import attrs
import trio

from ..errors import CircuitOpen, WorkerError
from ..events import StreamEvent
from ..types import PromptRequest
from ..workers.base import EventSink, ModelWorker
from .config import BreakerConfig, refuse_toggle

if TYPE_CHECKING:
    from ..routing.registry import ModelDeployment

__all__ = [
    "BreakerState",
    "BreakerStatistics",
    "CircuitBreaker",
    "CircuitBreakerLayer",
    "LatencyBaseline",
    "Permit",
    "SharedBreakerState",
]

_LATENCY_SAMPLES = 1024


class BreakerState(enum.Enum):
    """Where a breaker is."""

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


@attrs.frozen
class Permit:
    """The breaker's answer to one call; hand it back with the call's result."""

    admitted: bool
    """True when the call may go ahead."""
    probe: bool = False
    """True when the call is a half-open probe."""
    generation: int = 0
    """The breaker's generation when it admitted the call."""
    retry_after: float = 0.0
    """When refused: seconds until a call may be admitted again (an estimate while half-open)."""


@attrs.frozen
class BreakerStatistics:
    """A snapshot of one breaker."""

    target: str
    """``provider/model``."""
    state: str
    """``closed``, ``open`` or ``half_open``."""
    transitions: int
    """State changes since the breaker was made."""
    times_opened: int
    """Transitions into ``open``."""
    calls: int
    """Calls admitted."""
    failures: int
    """Calls counted as failures (latency anomalies included)."""
    rejected: int
    """Calls refused with ``CircuitOpen``."""
    error_rate: float
    """Failures / calls over the rolling window now (0 when it is empty)."""
    consecutive_failures: int
    """Failures since the last success while closed."""
    latency_mean: float
    """Mean time to first event of the last calls (seconds; 0 when none)."""
    latency_p99: float
    """99th percentile of the same (seconds; 0 when none)."""
    latency_anomalies: int
    """Successful calls counted as failures because they were anomalously slow."""
    retry_after: float
    """Seconds until the next probe may pass (0 unless open)."""


@attrs.define(eq=False)
class LatencyBaseline:
    """Judges whether a latency is far above its running baseline.

    ``ewma``: exponentially weighted mean and variance (weight ``alpha``); ``zscore``: mean and
    standard deviation of the last ``window`` samples. A sample is anomalous when it is more
    than ``threshold`` deviations and more than ``min_excess`` seconds above the mean, once
    ``warmup`` samples have been seen. Each sample joins the baseline after it is judged.
    """

    mode: str
    threshold: float
    min_excess: float
    warmup: int
    alpha: float
    window: int
    _count: int = attrs.field(default=0, init=False)
    _mean: float = attrs.field(default=0.0, init=False)
    _variance: float = attrs.field(default=0.0, init=False)
    _samples: deque[float] = attrs.field(factory=deque, init=False)

    @classmethod
    def from_config(cls, config: BreakerConfig) -> LatencyBaseline | None:
        """The baseline ``config`` asks for, or None when anomaly detection is off."""
        if config.latency_anomaly == "off":
            return None
        return cls(
            config.latency_anomaly,
            config.latency_threshold,
            config.latency_min_excess,
            config.latency_warmup,
            config.latency_alpha,
            config.latency_window,
        )

    def observe(self, latency: float) -> bool:
        """Judge ``latency``, then add it to the baseline; return True if it was anomalous."""
        anomalous = self._count >= self.warmup and self._is_anomaly(latency)
        self._count += 1
        if self.mode == "ewma":
            self._update_ewma(latency)
        else:
            self._samples.append(latency)
            if len(self._samples) > self.window:
                self._samples.popleft()
        return anomalous

    def _is_anomaly(self, latency: float) -> bool:
        mean, deviation = self._mean_and_deviation()
        excess = latency - mean
        return excess > self.min_excess and excess > self.threshold * deviation

    def _mean_and_deviation(self) -> tuple[float, float]:
        if self.mode == "ewma":
            return self._mean, math.sqrt(self._variance)
        n = len(self._samples)
        mean = sum(self._samples) / n
        return mean, math.sqrt(sum((x - mean) ** 2 for x in self._samples) / n)

    def _update_ewma(self, latency: float) -> None:
        if self._count == 1:
            self._mean = latency
            return
        # West's incremental EWMA of mean and variance.
        delta = latency - self._mean
        self._mean += self.alpha * delta
        self._variance = (1 - self.alpha) * (self._variance + self.alpha * delta * delta)


@attrs.define(eq=False)
class CircuitBreaker:
    """The breaker's state machine, driven with explicit times.

    Call :meth:`acquire` before a call; if admitted, report its end with exactly one of
    :meth:`record_success`, :meth:`record_failure` or :meth:`release` (neither: the caller went
    away, or the error says nothing about the upstream's health).

    The breaker draws exactly one number from ``rng`` each time it opens (the cool-down's
    jitter), so tests can reproduce it with a seeded :class:`random.Random`.

    Args:
        config: thresholds, cool-downs, probes, latency anomaly detection.
        name: the target's name, for statistics.
        rng: the source of jitter.
    """

    config: BreakerConfig
    name: str = ""
    _rng: random.Random = attrs.field(factory=random.Random, alias="rng")
    _state: BreakerState = attrs.field(default=BreakerState.CLOSED, init=False)
    _generation: int = attrs.field(default=0, init=False)
    _consecutive: int = attrs.field(default=0, init=False)
    _window: deque[tuple[float, bool]] = attrs.field(factory=deque, init=False)
    _window_failures: int = attrs.field(default=0, init=False)
    _open_until: float = attrs.field(default=0.0, init=False)
    _failed_rounds: int = attrs.field(default=0, init=False)
    _probes_in_flight: int = attrs.field(default=0, init=False)
    _probe_successes: int = attrs.field(default=0, init=False)
    _probe_failures: int = attrs.field(default=0, init=False)
    _transitions: int = attrs.field(default=0, init=False)
    _times_opened: int = attrs.field(default=0, init=False)
    _calls: int = attrs.field(default=0, init=False)
    _failures: int = attrs.field(default=0, init=False)
    _rejected: int = attrs.field(default=0, init=False)
    _anomalies: int = attrs.field(default=0, init=False)
    _latencies: deque[float] = attrs.field(
        factory=lambda: deque(maxlen=_LATENCY_SAMPLES), init=False
    )
    _baseline: LatencyBaseline | None = attrs.field(default=None, init=False)

    def __attrs_post_init__(self) -> None:
        self._baseline = LatencyBaseline.from_config(self.config)

    # ----------------------------------------------------------------- queries

    def state(self, now: float) -> BreakerState:
        """The state at time ``now`` (an expired cool-down makes an open breaker half-open)."""
        self._advance(now)
        return self._state

    def retry_after(self, now: float) -> float:
        """Seconds until a call may be admitted: 0 when closed, an estimate while half-open."""
        self._advance(now)
        if self._state is BreakerState.CLOSED:
            return 0.0
        if self._state is BreakerState.OPEN:
            return self._open_until - now
        # Half-open with every probe slot taken: the probes' results decide, at an unknown
        # time; the base cool-down is an honest lower bound for a full reopen-and-probe.
        return 0.0 if self._probe_slot_free() else self.config.cooldown

    # ----------------------------------------------------------------- calls

    def acquire(self, now: float) -> Permit:
        """Ask to make a call at ``now``; a refusal says how long to wait."""
        self._advance(now)
        if self._state is BreakerState.CLOSED:
            self._calls += 1
            return Permit(True, False, self._generation)
        if self._state is BreakerState.HALF_OPEN and self._probe_slot_free():
            self._probes_in_flight += 1
            self._calls += 1
            return Permit(True, True, self._generation)
        self._rejected += 1
        return Permit(False, retry_after=self.retry_after(now))

    def record_success(self, permit: Permit, now: float, latency: float) -> None:
        """The call admitted by ``permit`` succeeded; its time to first event was ``latency``.

        With latency anomaly detection on, an anomalously slow success counts as a failure.
        """
        self._latencies.append(latency)
        if self._baseline is not None and self._baseline.observe(latency):
            self._anomalies += 1
            self._record(permit, now, failed=True)
        else:
            self._record(permit, now, failed=False)

    def record_failure(self, permit: Permit, now: float) -> None:
        """The call admitted by ``permit`` failed (an error that trips, or a timeout)."""
        self._record(permit, now, failed=True)

    def release(self, permit: Permit, now: float) -> None:
        """The call admitted by ``permit`` ended without evidence either way."""
        self._advance(now)
        if permit.probe and permit.generation == self._generation:
            self._probes_in_flight -= 1

    # ----------------------------------------------------------------- transitions

    def _record(self, permit: Permit, now: float, *, failed: bool) -> None:
        self._advance(now)
        self._failures += failed
        if permit.generation != self._generation:
            return
        if permit.probe:
            self._record_probe(now, failed=failed)
        else:
            self._record_closed(now, failed=failed)

    def _record_closed(self, now: float, *, failed: bool) -> None:
        self._consecutive = self._consecutive + 1 if failed else 0
        self._window.append((now, failed))
        self._window_failures += failed
        self._prune(now)
        if self._rate_tripped() or self._run_tripped():
            self._open(now)

    def _record_probe(self, now: float, *, failed: bool) -> None:
        self._probes_in_flight -= 1
        if failed:
            self._probe_failures += 1
        else:
            self._probe_successes += 1
        probes = self.config.half_open_probes
        if self._probe_successes + self._probe_failures < probes:
            return
        if self._probe_successes / probes >= self.config.probe_success_threshold:
            self._close()
            return
        # Only a round in which nothing succeeded is evidence that the upstream is still
        # down; a partly successful one waits the same cool-down again rather than a longer.
        self._failed_rounds += self._probe_successes == 0
        self._open(now)

    def _rate_tripped(self) -> bool:
        calls = len(self._window)
        return (
            calls >= self.config.minimum_calls
            and self._window_failures / calls >= self.config.failure_rate_threshold
        )

    def _run_tripped(self) -> bool:
        """A run of consecutive failures decides only while a rate cannot be trusted."""
        return (
            self._consecutive >= self.config.failure_threshold
            and len(self._window) < self.config.minimum_calls
        )

    def _prune(self, now: float) -> None:
        horizon = now - self.config.window
        window = self._window
        while window and window[0][0] <= horizon:
            _, failed = window.popleft()
            self._window_failures -= failed

    def _advance(self, now: float) -> None:
        if self._state is BreakerState.OPEN and now >= self._open_until:
            self._move(BreakerState.HALF_OPEN)
            self._probes_in_flight = self._probe_successes = self._probe_failures = 0

    def _probe_slot_free(self) -> bool:
        used = self._probes_in_flight + self._probe_successes + self._probe_failures
        return used < self.config.half_open_probes

    def _open(self, now: float) -> None:
        cfg = self.config
        ceiling = min(cfg.max_cooldown, cfg.cooldown * cfg.cooldown_multiplier**self._failed_rounds)
        self._open_until = now + ceiling * (1.0 - cfg.jitter * self._rng.random())
        self._times_opened += 1
        self._move(BreakerState.OPEN)

    def _close(self) -> None:
        self._failed_rounds = 0
        self._move(BreakerState.CLOSED)

    def _move(self, state: BreakerState) -> None:
        self._state = state
        self._generation += 1
        self._transitions += 1
        self._consecutive = 0
        self._window.clear()
        self._window_failures = 0

    # ----------------------------------------------------------------- statistics

    def statistics(self, now: float) -> BreakerStatistics:
        """A snapshot at time ``now``."""
        self._advance(now)
        self._prune(now)
        calls = len(self._window)
        latencies = sorted(self._latencies)
        n = len(latencies)
        return BreakerStatistics(
            target=self.name,
            state=self._state.value,
            transitions=self._transitions,
            times_opened=self._times_opened,
            calls=self._calls,
            failures=self._failures,
            rejected=self._rejected,
            error_rate=self._window_failures / calls if calls else 0.0,
            consecutive_failures=self._consecutive,
            latency_mean=sum(latencies) / n if n else 0.0,
            latency_p99=latencies[math.ceil(0.99 * n) - 1] if n else 0.0,
            latency_anomalies=self._anomalies,
            retry_after=self.retry_after(now) if self._state is BreakerState.OPEN else 0.0,
        )


class SharedVerdict(Protocol):
    """What the shared state says about one call."""

    @property
    def state(self) -> str:
        """``closed``, ``probe``, ``open`` or ``busy``."""

    @property
    def retry_after(self) -> float:
        """Seconds until a call may pass."""

    @property
    def admitted(self) -> bool:
        """True when the call may go ahead."""


class SharedBreakerState(Protocol):
    """Breaker state shared with other processes (see
    :class:`~trio_orchestrator.distributed.SharedBreakers`)."""

    async def check(self, target: str) -> SharedVerdict:
        """The verdict on one call to ``target``."""

    async def opened(self, target: str) -> None:
        """Publish that ``target``'s circuit opened here."""

    async def probe_succeeded(self, target: str) -> None:
        """Close ``target``'s circuit for every process."""

    async def release(self, target: str) -> None:
        """Give back an unused probe slot."""


@attrs.define(eq=False)
class CircuitBreakerLayer:
    """A worker that guards ``inner`` with one :class:`CircuitBreaker` per target.

    The target is ``provider/model`` (the request's ``params.model``). A refused call raises
    :class:`~trio_orchestrator.errors.CircuitOpen` with ``retry_after`` at once, without
    calling ``inner``. What counts as a failure: a ``WorkerError`` whose class
    ``trips_breaker``, an untyped exception other than those a request can cause (the pipeline
    reports it as ``WorkerCrashed``), and a cancellation at or after the call's effective
    deadline (a timeout). Released without counting: a cancellation before the deadline (the
    caller going away, or a stop sequence ending the stream), a ``WorkerError`` that does not
    trip (``BadRequest``…), and a ``TypeError``, ``ValueError`` or ``RecursionError`` — what a
    worker raises when it cannot encode a client's request (orjson's ``JSONEncodeError`` on a
    lone surrogate, an integer past 64 bits, nesting too deep), which says nothing about the
    upstream and must not let one client open the circuit for everyone. Latency is the time
    to the first event.

    Args:
        inner: the worker to guard.
        config: the breaker settings, shared by every target.
        provider: the provider's name, the first part of each target.
        rng: the source of cool-down jitter (seed it in tests).
        shared: when given, an opening is published to every process and every call is
            also checked against the shared state (the local breaker still decides when to
            open, and alone while the shared state is unreachable).
    """

    inner: ModelWorker
    config: BreakerConfig
    provider: str = attrs.field(default="default", kw_only=True)
    rng: random.Random = attrs.field(factory=random.Random, kw_only=True)
    shared: SharedBreakerState | None = attrs.field(default=None, kw_only=True)
    _breakers: dict[str, CircuitBreaker] = attrs.field(factory=dict, init=False)

    metric_kind: ClassVar[str] = "breaker"
    metric_counters: ClassVar[tuple[str, ...]] = (
        "transitions",
        "times_opened",
        "calls",
        "failures",
        "rejected",
    )

    def breaker(self, model: str) -> CircuitBreaker:
        """The breaker of ``model`` at this provider (made on first use)."""
        breaker = self._breakers.get(model)
        if breaker is None:
            name = f"{self.provider}/{model}"
            breaker = self._breakers[model] = CircuitBreaker(self.config, name, rng=self.rng)
        return breaker

    def reconfigure(self, section: BreakerConfig, /) -> list[str]:
        """Apply reloaded ``[resilience.breaker]`` thresholds to every target's breaker (its
        state and current cool-down stay)."""
        refused = refuse_toggle("breaker", self.config.enabled, section.enabled)
        if not refused:
            self.config = section
            for breaker in self._breakers.values():
                breaker.config = section
        return refused

    def is_available(self, deployment: ModelDeployment) -> bool:
        """A router health check: False while this provider's breaker for the deployment's
        upstream model is open (other providers' deployments are not this layer's to judge).
        """
        if deployment.provider != self.provider:
            return True
        breaker = self._breakers.get(deployment.upstream_model)
        return breaker is None or breaker.state(trio.current_time()) is not BreakerState.OPEN

    def unready(self) -> str | None:
        """Why this provider can take no request now: every target's breaker is open (a
        readiness check; None while any target admits calls, or none was called yet)."""
        now = trio.current_time()
        states = [breaker.state(now) for breaker in self._breakers.values()]
        if states and all(state is BreakerState.OPEN for state in states):
            return f"every circuit breaker of {self.provider} is open"
        return None

    def statistics(self) -> tuple[BreakerStatistics, ...]:
        """One snapshot per target seen so far, in order of first use."""
        now = trio.current_time()
        return tuple(breaker.statistics(now) for breaker in self._breakers.values())

    async def generate(self, request: PromptRequest, emit: EventSink) -> None:
        """Call ``inner`` if the target's breaker admits it; see the class docstring.

        Raises:
            CircuitOpen: the breaker refused the call.
        """
        breaker = self.breaker(request.params.model)
        permit = breaker.acquire(trio.current_time())
        if not permit.admitted:
            raise CircuitOpen(
                f"the circuit for {breaker.name} is open after repeated failures; "
                f"retry in {permit.retry_after:.3g} s",
                retry_after=permit.retry_after,
            )
        probe = self.shared is not None and await self._check_shared(breaker, permit)
        first_event_at: float | None = None

        async def timed_emit(event: StreamEvent) -> None:
            nonlocal first_event_at
            if first_event_at is None:
                first_event_at = trio.current_time()
            await emit(event)

        start = trio.current_time()
        # Read before the call: once a surrounding scope is cancelled it reads -inf.
        deadline = trio.current_effective_deadline()
        try:
            await self.inner.generate(request, timed_emit)
        except BaseException as exc:
            counted = _settle(breaker, permit, exc, deadline)
            if self.shared is not None:
                await self._publish(breaker, probe, "failure" if counted else "release")
            raise
        end = trio.current_time()
        breaker.record_success(permit, end, (first_event_at or end) - start)
        if self.shared is not None:
            await self._publish(breaker, probe, "success")

    async def _check_shared(self, breaker: CircuitBreaker, permit: Permit) -> bool:
        """Ask the shared state; True when this call is a shared probe.

        Raises:
            CircuitOpen: another process opened the circuit (or took every probe slot).
        """
        assert self.shared is not None
        try:
            verdict = await self.shared.check(breaker.name)
        except BaseException:
            breaker.release(permit, trio.current_time())
            raise
        if not verdict.admitted:
            breaker.release(permit, trio.current_time())
            raise CircuitOpen(
                f"the circuit for {breaker.name} is open (shared by every process) after "
                f"repeated failures; retry in {verdict.retry_after:.3g} s",
                retry_after=verdict.retry_after,
            )
        return verdict.state == "probe"

    async def _publish(self, breaker: CircuitBreaker, probe: bool, outcome: str) -> None:
        """Tell the shared state what this call showed (nothing, if it changes nothing)."""
        shared = self.shared
        if shared is None:
            return
        opened = breaker.state(trio.current_time()) is BreakerState.OPEN
        # Shielded so that a cancelled call still reports; each operation is bounded by
        # the Redis operation timeout.
        with trio.CancelScope(shield=True):
            if opened or (probe and outcome == "failure"):
                await shared.opened(breaker.name)
            elif probe and outcome == "success":
                await shared.probe_succeeded(breaker.name)
            elif probe:
                await shared.release(breaker.name)


#: Untyped exceptions a request itself can cause in a worker: encoding what the client sent
#: (orjson's ``JSONEncodeError`` is a ``TypeError``; ``UnicodeEncodeError`` a ``ValueError``).
#: Upstream answers are parsed into typed errors (``MalformedResponse``), so these say nothing
#: about the upstream's health.
_REQUEST_FAULTS = (TypeError, ValueError, RecursionError)


def _settle(breaker: CircuitBreaker, permit: Permit, exc: BaseException, deadline: float) -> bool:
    """Report a call that raised ``exc``: a failure (True), or a release without evidence."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]  # a worker's nursery wraps its error
    now = trio.current_time()
    if isinstance(exc, trio.Cancelled):
        counts = now >= deadline  # cancelled by its own deadline: a timeout
    elif isinstance(exc, WorkerError):
        counts = exc.trips_breaker
    else:
        # A crash, but not KeyboardInterrupt and kin, nor one the request caused.
        counts = isinstance(exc, Exception) and not isinstance(exc, _REQUEST_FAULTS)
    if counts:
        breaker.record_failure(permit, now)
    else:
        breaker.release(permit, now)
    return counts
