"""The adaptive limit's decisions, driven synchronously with explicit time: bounds hold at
every step, drops cut (once per window), latency that holds lets the limit grow, and the
gradient limit tracks a queueing upstream's capacity down and back up."""

from __future__ import annotations

import math
from typing import Any

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from trio_orchestrator.resilience import AdaptiveConfig, AimdLimit, GradientLimit
from trio_orchestrator.resilience.adaptive import LimitAlgorithm, limit_for


@st.composite
def configs(draw: st.DrawFn) -> AdaptiveConfig:
    """Any valid adaptive section, either algorithm."""
    low = draw(st.integers(1, 20))
    high = draw(st.integers(low, 300))
    return AdaptiveConfig(
        enabled=True,
        algorithm=draw(st.sampled_from(["gradient", "aimd"])),
        min_limit=low,
        max_limit=high,
        initial_limit=draw(st.integers(low, high)),
        window=draw(st.sampled_from([0.1, 1.0, 2.0])),
        min_samples=draw(st.integers(1, 5)),
        percentile=draw(st.sampled_from([0.5, 0.9, 1.0])),
        tolerance=draw(st.sampled_from([1.0, 1.25, 2.0])),
        waiting_tolerance=draw(st.sampled_from([1.0, 1.2, 3.0])),
        smoothing=draw(st.sampled_from([0.2, 1.0])),
        backoff=draw(st.sampled_from([0.0, 0.5, 0.7, 0.9])),
        slow_call=draw(st.sampled_from([0.5, 5.0])),
        settle=draw(st.sampled_from([0.0, 0.5, 2.0])),
        fast_growth=draw(st.sampled_from([0.0, 0.6, 1.0])),
    )


class LimitMachine(RuleBasedStateMachine):
    """Random samples, drops, time and reloads; the limit stays in bounds and every drop
    outside the last cut's window cuts it by ``backoff``."""

    @initialize(config=configs())
    def setup(self, config: AdaptiveConfig) -> None:
        self.now = 0.0
        self.limit: LimitAlgorithm = limit_for(config, self.now)
        self.last_cut = -math.inf
        self.drops = 0
        self.cuts = self.raises = 0

    @rule(rtt=st.floats(0.0, 10.0), share=st.floats(0.0, 1.5), wanted=st.booleans())
    def succeed(self, rtt: float, share: float, wanted: bool) -> None:
        in_flight = max(1, round(share * self.limit.limit))
        self.limit.observe(self.now, rtt, in_flight, False, wanted=wanted)
        if isinstance(self.limit, AimdLimit) and rtt > self.limit.config.slow_call:
            self._expect_drop_counted()

    @rule()
    def drop(self) -> None:
        before = self.limit.limit
        probing = isinstance(self.limit, GradientLimit) and self.limit.probing
        config = self.limit.config
        # The gradient limit also cuts at once on an answer that queued (once a window too).
        self.last_cut = max(self.last_cut, self.limit._last_cut)
        self.limit.observe(self.now, 0.0, before, True)
        self.drops += 1
        if self.now - self.last_cut >= config.window:
            self.last_cut = self.now
            if not probing:  # a probe's limit is half the estimate the cut applies to
                expected = max(config.min_limit, math.floor(before * config.backoff))
                assert self.limit.limit == expected
        else:
            assert self.limit.limit == before

    @rule(dt=st.sampled_from([0.0, 0.05, 0.3, 1.0, 5.0, 100.0]))
    def advance(self, dt: float) -> None:
        self.now += dt

    @rule(config=configs())
    def reload(self, config: AdaptiveConfig) -> None:
        config = attrs.evolve(config, algorithm=self.limit.config.algorithm)
        self.limit.reconfigure(config)

    def _expect_drop_counted(self) -> None:
        self.drops += 1
        if self.now - self.last_cut >= self.limit.config.window:
            self.last_cut = self.now

    @invariant()
    def within_bounds(self) -> None:
        config = self.limit.config
        assert config.min_limit <= self.limit.limit <= config.max_limit

    @invariant()
    def counters_only_grow(self) -> None:
        stats = self.limit.statistics()
        assert stats.drops == self.drops
        assert stats.cuts >= self.cuts
        assert stats.raises >= self.raises
        self.cuts, self.raises = stats.cuts, stats.raises


TestLimitMachine = LimitMachine.TestCase


def test_a_reload_raising_min_limit_during_a_probe_keeps_the_limit_in_bounds() -> None:
    """A probe holds the limit at half the estimate; a reload raising ``min_limit`` above
    that probe limit still gives a limit within the new bounds (found by the state machine)."""
    config = AdaptiveConfig(
        enabled=True, initial_limit=2, min_limit=1, max_limit=2, window=0.1, min_samples=1
    )
    limit = limit_for(config, 0.0)
    limit.observe(0.3, 0.0, 1, False)  # the first window closes: a probe at half begins
    assert isinstance(limit, GradientLimit)
    assert limit.probing
    assert limit.limit == 1
    limit.reconfigure(attrs.evolve(config, min_limit=2))
    assert limit.limit == 2


def _window(
    limit: LimitAlgorithm, start: float, rtt: float, in_flight: int, *, wanted: bool = False
) -> float:
    """Calls with latency ``rtt``, ``in_flight`` at once, ending one after another from
    ``start`` to the end of a 1 s window that follows the time the last decision settles:
    as many a second as Little's law says (``in_flight / rtt``, at least four), while
    callers wait for a slot if ``wanted``; returns the window's end."""
    end = start + 1.0
    if isinstance(limit, GradientLimit):
        end = max(start, limit._settled) + 1.0
    per_second = max(4.0, in_flight / rtt) if rtt > 0 else 4.0
    calls = max(4, round(per_second * (end - start)))
    for step in range(calls):
        now = start + (step + 1) * (end - start) / calls
        limit.observe(now, rtt, in_flight, False, wanted=wanted)
    return end


def _gradient(**changes: Any) -> GradientLimit:
    """A gradient limit past its first window and first probe (at 0.5 s), at about time 2
    (its last decision: ``_window_start``)."""
    config = AdaptiveConfig(enabled=True, min_samples=4, max_limit=1000, probe_interval=1000.0)
    limit = GradientLimit(attrs.evolve(config, **changes), 0.0)
    now = _window(limit, 0.0, 0.5, limit.limit)
    assert limit.probing
    _window(limit, now, 0.5, limit.limit)
    assert not limit.probing
    return limit


def test_the_first_window_is_followed_by_a_probe_at_half_the_limit() -> None:
    """After the first window the limit halves for one window, whose latency becomes the
    baseline; then the estimate is back."""
    limit = GradientLimit(AdaptiveConfig(enabled=True, min_samples=4, initial_limit=40), 0.0)
    now = _window(limit, 0.0, 2.0, 40)
    assert (limit.limit, limit.probing) == (20, True)
    limit.observe(now + 0.1, 9.0, 40, False)  # started before the probe: not counted
    _window(limit, now, 0.5, 20)
    assert not limit.probing
    assert limit.statistics().baseline_rtt == 0.5


def test_each_answer_without_a_queue_grows_the_limit_while_callers_wait() -> None:
    """TCP's slow start per acknowledgement: while callers wait for a slot, each answer at
    the baseline allows one more call at once, before any window closes -- up to twice the
    limit the last decision left. Without waiting callers, or for an answer that queued,
    the limit holds until the window is judged."""
    limit, idle = _gradient(), _gradient()
    start, now = limit.limit, limit._window_start + 0.01  # within the settling: no window
    for step in range(5):
        limit.observe(now + step * 0.01, 0.5, start, False, wanted=True)
        idle.observe(now + step * 0.01, 0.5, start, False, wanted=False)
    assert (limit.limit, idle.limit) == (start + 5, start)
    limit.observe(now + 0.06, 0.5 * 1.4, start, False, wanted=True)  # it queued
    assert limit.limit == start + 5
    for step in range(3 * start):
        limit.observe(now + 0.07 + step * 1e-4, 0.5, start, False, wanted=True)
    assert limit.limit == 2 * start
    assert limit.statistics().window_rtt == idle.statistics().window_rtt  # no window closed


def test_a_window_in_which_callers_waited_is_judged_by_waiting_tolerance() -> None:
    """A window 35 % slower than the baseline: within ``tolerance`` (1.5) the limit grows;
    while callers wait for a slot, beyond ``waiting_tolerance`` (1.2), it shrinks -- the
    gateway's queue keeps the upstream busy, a queue upstream only slows the calls."""
    # 100 calls: the headroom (a square root of the limit) hides less of the cut than at 20.
    waiting, idle = _gradient(initial_limit=100), _gradient(initial_limit=100)
    before = waiting.limit
    _window(waiting, waiting._window_start, 0.5 * 1.35, before, wanted=True)
    _window(idle, idle._window_start, 0.5 * 1.35, before, wanted=False)
    assert waiting.limit < before < idle.limit
    # waiting_tolerance as wide as tolerance: waiting callers change nothing.
    relaxed = _gradient(initial_limit=100, waiting_tolerance=1.5)
    _window(relaxed, relaxed._window_start, 0.5 * 1.35, before, wanted=True)
    assert relaxed.limit == idle.limit


def test_the_gradient_limit_grows_while_latency_holds() -> None:
    """Windows at full load and an unchanged latency raise the limit each time."""
    limit = _gradient()
    now, seen = 2.0, [limit.limit]
    for _ in range(6):
        now = _window(limit, now, 0.5, limit.limit)
        seen.append(limit.limit)
    assert seen == sorted(seen)
    assert len(set(seen)) == len(seen)
    assert limit.statistics().raises == 6


def test_the_gradient_limit_does_not_grow_while_app_limited() -> None:
    """Low latency with fewer than half the limit in flight proves nothing: no raise."""
    limit = _gradient(initial_limit=40)
    now = 2.0
    for _ in range(5):
        now = _window(limit, now, 0.5, 10)
    assert limit.limit == 40


def test_the_gradient_limit_falls_when_latency_climbs() -> None:
    """Latency four times the baseline cuts the limit, at most by half a window."""
    limit = _gradient(initial_limit=64)
    now = _window(limit, 2.0, 0.5, 64)
    before = limit.limit
    _window(limit, now, 2.0, before)
    assert before / 2 <= limit.limit < before
    assert limit.statistics().cuts == 1


@pytest.mark.parametrize("algorithm", ["gradient", "aimd"])
def test_a_burst_of_drops_cuts_once_per_window(algorithm: str) -> None:
    """Sixty-four 429s from calls already in flight cut once; the next window's cut again."""
    limit = limit_for(AdaptiveConfig(enabled=True, algorithm=algorithm, initial_limit=64), 0.0)
    for i in range(64):
        limit.observe(0.01 * i, 0.1, 64, True)
    assert limit.limit == math.floor(64 * 0.7)
    limit.observe(1.5, 0.1, 44, True)
    assert limit.limit == math.floor(44 * 0.7)
    assert limit.statistics().cuts == 2


def test_aimd_adds_one_per_call_at_load_and_cuts_a_slow_call() -> None:
    """AIMD: +1 per successful call with half the limit in flight; a slow call is a drop."""
    limit = AimdLimit(AdaptiveConfig(enabled=True, algorithm="aimd", initial_limit=10), 0.0)
    for i in range(5):
        limit.observe(0.1 * i, 0.2, 10, False)
    assert limit.limit == 15
    limit.observe(1.0, 0.2, 2, False)  # app limited: no growth
    assert limit.limit == 15
    limit.observe(2.0, 6.0, 15, False)  # slower than slow_call
    assert limit.limit == math.floor(15 * 0.7)


def _queueing(limit: GradientLimit, now: float, capacity: int, windows: int) -> float:
    """Windows of an upstream that serves ``capacity`` calls at once in 0.5 s and queues
    the rest: latency climbs with the calls beyond capacity."""
    for _ in range(windows):
        in_flight = limit.limit
        rtt = 0.5 * max(1.0, in_flight / capacity)
        now = _window(limit, now, rtt, in_flight)
    if limit.probing:  # judge the estimate, not the probe's half of it
        now = _window(limit, now, 0.5, limit.limit)
    return now


@given(first=st.integers(8, 128), second=st.integers(4, 128))
def test_the_gradient_limit_tracks_a_queueing_upstreams_capacity(first: int, second: int) -> None:
    """Whatever the capacity and however it changes, the limit settles near it: at least the
    capacity (no throughput lost) and at most about ``tolerance`` (1.5) times it plus its
    square root (a short queue)."""
    limit = _gradient(initial_limit=20, probe_interval=10.0)
    now = _queueing(limit, 2.0, first, 60)
    assert first <= limit.limit <= _short_queue(first)
    _queueing(limit, now, second, 60)
    assert second <= limit.limit <= _short_queue(second)


def _short_queue(capacity: int) -> float:
    return 1.5 * capacity + math.sqrt(1.5 * capacity) + 4


def test_the_example_configuration_loads(monkeypatch: pytest.MonkeyPatch) -> None:
    """examples/adaptive.toml: a gradient limit per provider and an AIMD limit per model."""
    from pathlib import Path

    from trio_orchestrator.config.load import load_config

    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    config = load_config(Path(__file__).parent.parent / "examples" / "adaptive.toml")
    assert config.providers is not None
    limits = [(p.label, p.adaptive) for p in config.providers.providers]
    assert [(label, a.enabled, a.algorithm, a.per_model) for label, a in limits] == [
        ("vllm-a", True, "gradient", False),
        ("openai", True, "aimd", True),
    ]


def test_a_drop_cuts_the_limit_in_effect_by_backoff() -> None:
    """A cut multiplies the limit callers see (7), not the fractional estimate behind it
    (7.2 would floor to 5): 7 at backoff 0.7 is 4 (found by the state machine)."""
    config = AdaptiveConfig(
        enabled=True,
        initial_limit=10,
        min_limit=4,
        max_limit=10,
        window=0.1,
        min_samples=1,
        percentile=0.5,
        tolerance=1.0,
        smoothing=0.2,
        backoff=0.7,
        fast_growth=0.0,
    )
    limit = limit_for(config, 0.0)
    limit.observe(0.0, 0.0, 10, True)
    assert limit.limit == 7
    limit.observe(0.3, 1.0, 7, False)  # a window's step leaves the estimate between 7 and 8
    assert limit.limit == 7
    limit.observe(0.3, 0.0, 7, True)
    assert limit.limit == 4


def test_calls_ending_while_a_decision_settles_are_left_out() -> None:
    """After a decision, calls that end within ``settle`` times the last window's latency
    were admitted before it: a slow one among them does not make the next window's latency."""
    # Calls four times slower than the baseline, within tolerance: no queue to cut for.
    limit = _gradient(percentile=1.0, initial_limit=40, tolerance=5.0)
    now = _window(limit, 2.0, 2.0, 40)  # a window of 2 s calls: settle for 0.5 * 2 s
    limit.observe(now + 0.5, 9.0, 40, False)  # admitted under the old limit
    _window(limit, now, 2.0, 40)
    assert limit.statistics().window_rtt == 2.0


def test_a_probe_that_meets_a_queue_probes_lower_and_keeps_it_out_of_the_baseline() -> None:
    """A probe slower than ``tolerance`` times the old baseline (the capacity fell below the
    probe's limit) halves the limit again; the latency there is the baseline, and the
    estimate comes down to twice that probe's limit."""
    limit = _gradient(initial_limit=80, probe_interval=5.0)
    now = 2.0
    while not limit.probing:  # windows of a short queue until probe_interval has passed
        now = _window(limit, now, 0.65, limit.limit)
    probe = limit.limit
    now = _window(limit, now, 4.0, probe)  # the upstream is still queued at the probe
    assert (limit.probing, limit.limit) == (True, probe // 2)
    assert limit.statistics().baseline_rtt == 0.5
    now = _window(limit, now, 0.5, probe // 2)
    assert not limit.probing
    assert limit.statistics().baseline_rtt == 0.5
    after = limit.limit
    assert after <= 2 * (probe // 2)
    # The probe's estimate is the last decision: growth per answer doubles it at most.
    for step in range(4 * after):
        limit.observe(now + 0.01 + step * 1e-4, 0.5, after, False, wanted=True)
    assert limit.limit == 2 * after


def test_a_probe_whose_latency_holds_at_half_the_load_is_the_new_baseline() -> None:
    """A model that became slower for good: the probe at half the limit is as slow as the
    probe before it, so its latency is the baseline from then on."""
    limit = _gradient(initial_limit=80, probe_interval=5.0)
    now = 2.0
    while not limit.probing:
        now = _window(limit, now, 0.65, limit.limit)
    probe = limit.limit
    now = _window(limit, now, 2.0, probe)
    assert limit.probing
    _window(limit, now, 2.0, probe // 2)
    assert not limit.probing
    assert limit.statistics().baseline_rtt == 2.0


@pytest.mark.parametrize(("fast_growth", "expected"), [(0.3, 80), (0.0, 67)])
def test_a_window_without_a_queue_doubles_the_limit(fast_growth: float, expected: int) -> None:
    """At full load and the baseline's latency, the limit doubles (its square root on top
    is capped at twice the calls in flight); with ``fast_growth = 0`` it grows by the
    gradient (``tolerance``, 1.5, plus its square root) only."""
    limit = _gradient(initial_limit=40, fast_growth=fast_growth)
    _window(limit, 2.0, 0.5, 40)
    assert limit.limit == expected


def _answers(
    limit: GradientLimit, start: float, end: float, per_second: float, **call: Any
) -> None:
    """Calls ending one after another from ``start`` to ``end``, ``per_second`` of them a
    second, each with the same ``rtt``, ``in_flight`` and ``held``."""
    calls = round(per_second * (end - start))
    for step in range(calls):
        now = start + (step + 1) * (end - start) / calls
        limit.observe(now, call["rtt"], call["in_flight"], False, call.get("held"))


def test_an_answer_that_queued_cuts_at_once_to_what_the_upstream_served() -> None:
    """Baseline 0.5 s, limit 40: the upstream answers 20 calls a second (10 served at once,
    Little's law) and one answer comes after 2 s, a queue: the limit is cut before the
    window closes, to ``tolerance`` (1.5) times 10 plus its square root -- not window after
    window by the gradient."""
    limit = _gradient(initial_limit=40)
    start = limit._window_start  # the last decision's time: 40 was decided then
    _answers(limit, start, start + 0.95, 20.0, rtt=0.5, in_flight=40)
    assert limit.limit == 40
    limit.observe(start + 1.01, 2.0, 40, False)
    served = (19 * 0.5 + 0.5) / 1.0  # the slow one was served 0.5 s of its 2 s
    assert limit.limit == int(1.5 * served + math.sqrt(1.5 * served))
    assert limit.statistics().cuts == 1


def test_a_cut_at_once_waits_for_news_deeper_than_backoff() -> None:
    """An answer that queued while the upstream served 20 at once bounds the limit of 40 to
    30 plus a square root: above ``backoff`` (0.7 x 40), no cut at once."""
    limit = _gradient(initial_limit=40)
    start = limit._window_start
    _answers(limit, start, start + 0.95, 40.0, rtt=0.5, in_flight=40)
    limit.observe(start + 1.0, 2.0, 40, False)
    assert limit.limit == 40


def test_a_stream_is_served_until_its_end_not_its_first_token() -> None:
    """Calls whose first token comes at the baseline (0.5 s) and whose stream ends at 4 s,
    10 a second, are 40 served at once: an answer that queued then says the limit of 40 is
    no queue to cut (counted to their first token, 5 would be)."""
    limit = _gradient(initial_limit=40)
    start = limit._window_start
    _answers(limit, start, start + 0.95, 10.0, rtt=0.5, in_flight=40, held=4.0)
    limit.observe(start + 1.0, 1.0, 40, False, 4.5)
    assert limit.limit == 40


def test_a_window_where_a_call_queued_is_capped_by_what_the_upstream_served() -> None:
    """A window at the baseline's median (no queue, by the gradient: the limit would
    double) in which one call queued and 40 were in flight while the upstream served 20 at
    once (too few answers to cut at once): the calls still queued have not answered, and
    the limit goes to ``tolerance`` times what was served, plus its square root."""
    limit = _gradient(initial_limit=40)
    start = limit._window_start
    end = limit._settled + 1.0
    _answers(limit, start, end - 0.05, 40.0, rtt=0.5, in_flight=40)
    limit.observe(end, 1.0, 40, False)  # queued: 1.0 s, past 1.5 x 0.5 s
    assert limit.statistics().window_rtt == 0.5
    served = (round(40.0 * (end - 0.05 - start)) * 0.5 + 0.5) / (end - start)
    assert limit.limit == int(1.5 * served + math.sqrt(1.5 * served))


def test_a_drop_after_a_long_wait_cuts_to_what_the_upstream_can_have_served() -> None:
    """Baseline 0.5 s: a call that timed out after 3 s with 10 in flight met an upstream
    serving at most 10 x 0.5 / 3 at once (Little's law); the limit of 40 is cut to 1.5
    times that plus its square root, deeper than ``backoff`` (28)."""
    limit = _gradient(initial_limit=40)
    limit.observe(3.0, 3.0, 10, True)
    bound = 1.5 * 10 * 0.5 / 3.0
    assert limit.limit == int(bound + math.sqrt(bound))


def test_a_stale_drop_cuts_again_only_with_news() -> None:
    """After a 429 cut 40 to 28, a call admitted before that cut times out a window later:
    its wait bounds the limit to about 44 (above 28), no news -- no second cut; one whose
    bound is below the limit cuts."""
    limit = _gradient(initial_limit=40)
    limit.observe(2.0, 0.1, 40, True)
    assert limit.limit == 28
    limit.observe(3.5, 2.0, 100, True)  # admitted at 1.5, before the cut
    assert limit.limit == 28
    limit.observe(3.6, 2.0, 20, True)  # bound: 1.5 * 20 * 0.5 / 2 = 7.5 plus its root
    assert limit.limit == int(7.5 + math.sqrt(7.5))


def test_a_window_without_a_queue_puts_off_the_probe() -> None:
    """Windows at the baseline's latency past ``probe_interval``: the baseline still holds,
    and no probe halves the limit."""
    limit = _gradient(initial_limit=40, probe_interval=3.0)
    now = 2.0
    for _ in range(6):
        now = _window(limit, now, 0.5, limit.limit)
        assert not limit.probing


def test_a_low_limit_needs_no_more_samples_than_it_has_calls() -> None:
    """With a limit of 4 and ``min_samples`` 10, a window of four calls at the baseline is
    judged (a low limit has few calls a round): the limit grows."""
    limit = GradientLimit(AdaptiveConfig(enabled=True, initial_limit=4, min_samples=10), 0.0)
    for step in range(4):
        limit.observe(0.25 * (step + 1), 0.5, 4, False)
    assert limit.probing  # the first window was judged: the probe follows it


def test_seconds_before_the_first_call_started_are_no_evidence_of_capacity() -> None:
    """After an idle while, 20 calls start 0.8 s ago and answer at the baseline, and one
    answers after 0.8 s, queued: the upstream served them over 0.8 s, not over the whole
    1 s span (the idle 0.2 s would make it look smaller), and the cut is to 1.5 times that."""
    limit = _gradient(initial_limit=40)
    now = limit._window_start + 10.0  # idle since the last decision
    for step in range(20):
        limit.observe(now - 0.3 + 0.005 * step, 0.5, 40, False)
    limit.observe(now, 0.8, 40, False)
    served = (20 * 0.5 + 0.5) / 0.8
    assert limit.limit == int(1.5 * served + math.sqrt(1.5 * served))
