"""The decisions of an adaptive concurrency limit, pure and synchronous.

A limit algorithm is fed one sample per finished call -- its time to the first event
(``rtt``), how many calls were in flight when it started, and whether it was *dropped* (the
upstream answered 429, 503/529 or another 5xx, or the call timed out) -- with the time
given explicitly, and says what the limit is now. Nothing here awaits or reads a clock, so
a Hypothesis state machine drives it step by step (``tests/test_adaptive.py``); the Trio
side that admits calls up to the limit is :mod:`.adaptive_limiter`.

Two algorithms, chosen by ``[providers.providers.adaptive] algorithm``:

:class:`GradientLimit` (``"gradient"``) follows Envoy's adaptive concurrency filter
(``source/extensions/filters/http/adaptive_concurrency/controller/gradient_controller.cc``
and its documentation): samples are gathered over a window; the window's latency is a
percentile of its samples (Envoy: ``sample_aggregate_percentile``, p50); it is compared
with a baseline, the ideal latency (Envoy's minRTT plus a buffer, here ``tolerance``)::

    gradient  = clamp(tolerance * baseline / window_latency, 0.5, 2.0)
    new_limit = gradient * limit + sqrt(gradient * limit)      # Envoy's headroom

Envoy measures its minRTT by throttling the upstream to a few requests (3) until it has
gathered 50 samples, every 60 s; an LLM call takes seconds, so that would cost many
seconds of throughput. Here the baseline is the lowest window latency since the last
*probe*, and a probe holds the limit at half the estimate for one window only, every
``probe_interval`` (and once after the first window, so a start above the upstream's
capacity is corrected at once). Half is enough: the gradient keeps the estimate within
``tolerance`` plus a square root of the capacity, so half of it leaves the upstream
unqueued, and that window's latency is the no-load latency -- lower or higher than the old
baseline (a model that became slower for good), it is the baseline from then on. Only calls
admitted during the probe count (those started before it met the old queue). A baseline
that instead drifted with the load, as Netflix's ``Gradient2Limit``'s exponentially
averaged long RTT does, lets latency ratchet up under sustained overload. From
``Gradient2Limit`` come two other rules: the limit does not grow while the caller is "app
limited" (fewer than half the limit in flight: low latency then proves nothing about more
load), and an optional ``smoothing`` of each step.

When the limit shrinks, the gradient scales the calls that were in flight (what made the
latency) rather than a limit above them that the callers never filled, so a limit that grew
past the load comes down in one window.

LLM calls last longer than a window, so a window that took every call ending in it would
judge the limit before the last decision, and the limit would swing. After each decision the
calls ending within ``settle`` times the last window's latency are left out (most were
admitted before it; Envoy and Netflix decide per window of samples for the same reason). A
probe that meets a queue -- latency above ``tolerance`` times the old baseline, as when the
capacity fell below the probe's limit -- does not take it for the baseline: it halves the
limit again until the latency stops falling. And a window with no queue at all (within
``fast_growth`` of the baseline) doubles the limit, TCP's slow start, so a capacity that came
back is found in a few windows. While callers wait for a slot (or were refused one within a
window), the limit grows faster still: each answer that met no queue allows one more call,
TCP's slow start per acknowledgement, which doubles the limit within one call's latency
instead of once a window plus its settling (up to twice what the last decision left, so a
window still judges each doubling).

While callers wait, the window is also judged by ``waiting_tolerance`` (1.2) instead of
``tolerance`` (1.5): the gateway's own queue then keeps the upstream busy, and a queue
upstream as well only makes the admitted calls slower (the limit sits nearer the capacity;
the rest wait at the gateway or are shed). Without callers waiting, the wider tolerance
keeps a limit that noise in the latency would otherwise cut below what the callers need.

A queue hides from the median: the calls still in it have not answered. Little's law finds
it: the upstream served at once, on average, the seconds of service of the calls answered
over a span, divided by the span -- each call's service being the time it held its slot
(``held``: to the end of its stream) less what its first event came later than the baseline.
An answer later than ``tolerance`` times the baseline (a queue) cuts the limit at once to
``tolerance`` times that plus its square root, when that is below what ``backoff`` gives --
the capacity fell, and the limit goes to it in one step, not window after window (at most
once per window; never while probing). A window in which some call queued while more were in
flight than ``tolerance`` times what was served is capped the same way. Seconds before the
first of the calls counted started are left out: an idle upstream shows nothing of what it
can serve.

Errors are the other signal: a drop cuts the limit by ``backoff`` at once (not at the end
of the window: a 429 is the upstream saying "now"), but at most once per window, because
the calls already in flight when the first 429 came were admitted under the old limit and
their 429s carry no news -- TCP's "one reduction per round trip".

:class:`AimdLimit` (``"aimd"``) is Netflix's ``AIMDLimit``: each successful call while at
least half the limit is in flight adds one; a drop, or a call slower than ``slow_call``,
multiplies the limit by ``backoff`` (here, again, once per window).

Both keep the limit within ``[min_limit, max_limit]`` at every step, and take a reloaded
configuration without losing their state (:meth:`reconfigure`).
"""

from __future__ import annotations

import math
from collections import deque
from typing import TypeAlias

import attrs

from .config import AdaptiveConfig

__all__ = [
    "AimdLimit",
    "GradientLimit",
    "LimitAlgorithm",
    "LimitStatistics",
    "limit_for",
]

# Envoy clamps the gradient so one noisy window at most halves or doubles the limit.
_MIN_GRADIENT = 0.5
_MAX_GRADIENT = 2.0


@attrs.frozen
class LimitStatistics:
    """What a limit algorithm has decided.

    Attributes:
        limit: calls allowed in flight now.
        baseline_rtt: the latency the gradient compares against (seconds; 0 before the
            first window, and always for ``aimd``).
        window_rtt: the last closed window's latency (seconds; 0 before the first).
        samples: calls observed.
        drops: calls that were dropped (429, 5xx, timeout; for ``aimd`` also slow).
        cuts: times the limit went down.
        raises: times the limit went up.
    """

    limit: int
    baseline_rtt: float
    window_rtt: float
    samples: int
    drops: int
    cuts: int
    raises: int


@attrs.define(eq=False)
class _Limit:
    """What both algorithms share: the estimate, its bounds, cutting, the counters."""

    config: AdaptiveConfig
    _estimate: float = attrs.field(init=False)
    _window_start: float = attrs.field(default=0.0, init=False)
    _last_cut: float = attrs.field(default=-math.inf, init=False)
    _samples: int = attrs.field(default=0, init=False)
    _drops: int = attrs.field(default=0, init=False)
    _cuts: int = attrs.field(default=0, init=False)
    _raises: int = attrs.field(default=0, init=False)

    def __attrs_post_init__(self) -> None:
        self._estimate = float(self.config.initial_limit)

    @property
    def limit(self) -> int:
        """Calls allowed in flight now, within ``[min_limit, max_limit]``."""
        return int(self._estimate)

    def reconfigure(self, config: AdaptiveConfig) -> None:
        """Take reloaded settings; the limit stays, moved into the new bounds."""
        self.config = config
        self._set(self._estimate)

    def _set(self, estimate: float) -> None:
        """Move the estimate (clamped to the bounds), counting a cut or a raise."""
        before = self.limit
        self._estimate = min(max(estimate, self.config.min_limit), self.config.max_limit)
        if self.limit < before:
            self._cuts += 1
        elif self.limit > before:
            self._raises += 1

    def _drop(self, now: float, started: float = math.inf, bound: float = math.inf) -> bool:
        """Count a drop and cut the limit, unless it was cut within this window already
        or the call started before the last cut.

        Args:
            now: the time the call ended.
            started: the time it was admitted.
            bound: the limit cut to at most (below what ``backoff`` gives).

        Returns:
            True when it cut (the current window then starts afresh).
        """
        self._drops += 1
        stale = started < self._last_cut and bound >= self.limit
        if now - self._last_cut < self.config.window or stale:
            return False
        self._last_cut = now
        # The limit in effect is cut, not the fractional estimate behind it: 7 at 0.7 is 4.
        self._set(min(math.floor(int(self._estimate) * self.config.backoff), bound))
        return True

    def _statistics(self, baseline: float, window: float) -> LimitStatistics:
        return LimitStatistics(
            limit=self.limit,
            baseline_rtt=baseline,
            window_rtt=window,
            samples=self._samples,
            drops=self._drops,
            cuts=self._cuts,
            raises=self._raises,
        )


@attrs.define(eq=False)
class GradientLimit(_Limit):
    """The latency-gradient limit (see the module docstring).

    Args:
        config: the provider's ``[adaptive]`` section.
        start: the time the first window starts.
    """

    start: float = 0.0
    _rtts: list[float] = attrs.field(factory=list, init=False)
    _max_in_flight: int = attrs.field(default=0, init=False)
    _baseline: float = attrs.field(default=0.0, init=False)
    _window_rtt: float = attrs.field(default=0.0, init=False)
    # Samples of calls that end before this are left out of the window (see _restart).
    _settled: float = attrs.field(default=-math.inf, init=False)
    # While probing, the limit is held at this (half the estimate) for one window.
    _probe_limit: int | None = attrs.field(default=None, init=False)
    # While probing deeper: the latency of the probe's previous window (at twice the limit).
    _probe_rtt: float | None = attrs.field(default=None, init=False)
    _next_probe: float = attrs.field(init=False)
    # The calls answered over the last span and since the window started (see _Served), and
    # the slowest of the window's.
    _recent: _Served = attrs.field(factory=lambda: _Served(), init=False)
    _windowed: _Served = attrs.field(factory=lambda: _Served(), init=False)
    _slowest: float = attrs.field(default=0.0, init=False)
    # Whether callers waited for a slot (or were refused one) while the window's calls ended.
    _wanted: bool = attrs.field(default=False, init=False)
    # The estimate the last decision (a window's close or a cut) left.
    _decided: float = attrs.field(default=0.0, init=False)

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        self._decided = self._estimate
        self._window_start = self._settled = self.start
        self._next_probe = self.start  # the first window is followed by a probe

    @property
    def limit(self) -> int:
        """Calls allowed in flight now (half the estimate while probing the baseline)."""
        estimate = int(self._estimate)
        probe = self._probe_limit
        # A reload may raise min_limit above a probe begun before it: the bounds still hold.
        return estimate if probe is None else min(estimate, max(probe, self.config.min_limit))

    @property
    def probing(self) -> bool:
        """The limit is held low for a window to measure the baseline again."""
        return self._probe_limit is not None

    def observe(
        self,
        now: float,
        rtt: float,
        in_flight: int,
        dropped: bool,
        held: float | None = None,
        *,
        wanted: bool = False,
    ) -> None:
        """Take one finished call.

        Args:
            now: the time it finished.
            rtt: seconds from its start to its first event (ignored for a drop: a 429
                comes back fast and says nothing of the upstream's latency).
            in_flight: calls in flight when it started, itself included.
            dropped: the upstream refused it, failed or timed out.
            held: seconds from its start to its end (its stream's last event), if later
                than its first event.
            wanted: callers are waiting for a slot or were refused one lately (more calls
                are wanted than the limit admits).
        """
        self._samples += 1
        if dropped:
            if now - self._last_cut >= self.config.window:
                self._probe_limit = self._probe_rtt = None  # the cut is news enough; probe later
            if self._drop(now, now - rtt, self._drop_bound(rtt, in_flight)):
                self._restart(now)
            return
        held = rtt if held is None else held
        service = max(held - max(rtt - self._baseline, 0.0), 0.0)  # less its queueing
        self._recent.add(now - held, now, service)
        self._windowed.add(now - held, now, service)
        self._slowest = max(self._slowest, rtt)
        self._wanted = self._wanted or wanted
        if self._cut_to_served(now, rtt):
            return
        if wanted:
            self._grow_per_answer(now - held, rtt)
        if now < self._settled:
            return  # most calls in flight now were admitted before the last decision
        probe = self._probe_limit
        if probe is not None and in_flight > probe:
            return  # started before the probe, amid the old load: not a no-load sample
        self._rtts.append(max(rtt, 0.0))
        self._max_in_flight = max(self._max_in_flight, in_flight)
        config = self.config
        enough = min(config.min_samples, self.limit)  # a low limit has few calls a round
        if now - self._settled >= config.window and len(self._rtts) >= enough:
            self._close(now)

    def _cut_to_served(self, now: float, rtt: float) -> bool:
        """Cut the limit at once to ``tolerance`` times what the upstream served over the
        last span (a window, or a baseline latency if longer), plus headroom, when an
        answer shows a queue (it came later than ``tolerance`` times the baseline) and
        that is below what ``backoff`` gives: the capacity fell, and the limit goes to it
        in one step, not window after window. Once a window at most, never while probing.

        Returns:
            True when it cut (the current window then starts afresh).
        """
        config, baseline = self.config, self._baseline
        span = max(config.window, baseline)
        self._recent.forget(now - span)
        if baseline <= 0.0 or rtt <= config.tolerance * baseline or self.probing:
            return False
        if now - self._last_cut < config.window:
            return False
        news = self.limit * config.backoff
        if _headroom(config.tolerance * self._recent.seconds / span) >= news:
            # The fewest it can have served (the whole span busy) says no cut: spare
            # concurrency()'s walk over the span's calls on every answer of a steady queue.
            return False
        bound = _headroom(config.tolerance * self._recent.concurrency(now - span, now))
        if bound >= news:
            return False  # news for the window's gradient, not for a cut at once
        self._last_cut = now
        self._set(bound)
        self._restart(now)
        return True

    def _grow_per_answer(self, started: float, rtt: float) -> None:
        """One more call allowed for an answer that met no queue while callers wait, TCP's
        slow start per acknowledgement: the limit doubles in one call latency, not once a
        window. At most twice the limit the last decision left."""
        config, baseline = self.config, self._baseline
        if self.probing or baseline <= 0.0 or started < self._last_cut:
            return
        if not _unqueued(rtt, baseline, config):
            return
        self._set(min(self._estimate + 1.0, max(self._decided, 1.0) * _MAX_GRADIENT))

    def _drop_bound(self, rtt: float, in_flight: int) -> float:
        """The limit a drop after ``rtt`` seconds allows: a call that waited that long with
        ``in_flight`` calls ahead and beside it met an upstream serving at most
        ``in_flight * baseline / rtt`` at once (Little's law); the limit is cut to
        ``tolerance`` times that, if lower than ``backoff`` gives. A drop that came fast
        (a 429) bounds nothing."""
        if self._baseline <= 0.0 or rtt <= self._baseline:
            return math.inf
        return _headroom(self.config.tolerance * in_flight * self._baseline / rtt)

    def statistics(self) -> LimitStatistics:
        """The limit, the latencies it is judged by, and the counters."""
        return self._statistics(self._baseline, self._window_rtt)

    def _close(self, now: float) -> None:
        """Judge the window that ends now and start the next."""
        config = self.config
        window_rtt = _percentile(self._rtts, config.percentile)
        self._window_rtt = window_rtt
        used = self._max_in_flight
        app_limited = used < self._estimate / 2
        served = self._windowed.concurrency(self._window_start, now)
        slowest, wanted = self._slowest, self._wanted
        self._restart(now)
        if self._probe_limit is not None:
            self._probed(now, window_rtt)
            return
        if self._baseline <= 0.0 or window_rtt < self._baseline:
            self._baseline = window_rtt
        if now >= self._next_probe and self._estimate >= 2 * config.min_limit:
            self._probe_limit = max(config.min_limit, int(self._estimate) // 2)
            return
        baseline = self._baseline
        if window_rtt <= 0.0 or baseline <= 0.0:
            return  # answers faster than the clock ticks: nothing to judge by
        # While callers wait for a slot, the gateway's queue keeps the upstream busy: a queue
        # upstream as well adds latency, not throughput.
        tolerance = min(config.waiting_tolerance, config.tolerance) if wanted else config.tolerance
        gradient = tolerance * baseline / window_rtt
        gradient = min(max(gradient, _MIN_GRADIENT), _MAX_GRADIENT)
        if _unqueued(window_rtt, baseline, config):
            gradient = _MAX_GRADIENT  # no queue at all: double, as TCP's slow start does
            self._next_probe = now + config.probe_interval  # and the baseline still holds
        if gradient >= 1.0:
            if app_limited:
                return  # low latency at low load says nothing about more load
            target = _headroom(gradient * self._estimate)
            # Grown by use (TCP's and BBR's app-limited rule): to at most twice the calls
            # that were in flight, so a limit above what the callers send stays near it.
            target = min(target, max(self._estimate, 2.0 * used))
        else:
            # Shrinking, the gradient scales the load that made the latency (the calls in
            # flight), not a limit the callers never filled.
            target = _headroom(gradient * max(min(self._estimate, used), 1.0))
        if slowest > config.tolerance * baseline and used > tolerance * served:
            # Some call queued, and more were in flight than the upstream served: the
            # window's median may hide the queue (the calls still in it have not answered).
            target = min(target, _headroom(tolerance * served))
        self._set(self._estimate + config.smoothing * (target - self._estimate))

    def _probed(self, now: float, window_rtt: float) -> None:
        """Judge a probe's window: its latency is the baseline from now on, lower or higher
        -- unless the upstream was still queueing at the probe's limit.

        A latency above ``tolerance`` times the old baseline may be a model that became
        slower, or a queue: the capacity fell below the probe's limit, and the probe measured
        the queue. Which one, a probe at half the limit again tells: a queue shrinks with the
        load, a slower model does not. So the probe goes on at half until its latency stops
        falling (or is within ``tolerance`` of the old baseline, or the limit is at its
        minimum); then that latency is the baseline, and the estimate at most twice the
        probe's limit that saw no queue.
        """
        config = self.config
        probe = self._probe_limit or config.min_limit
        old, before = self._baseline, self._probe_rtt
        queued = old > 0.0 and config.tolerance * old < window_rtt
        fell = before is None or window_rtt * config.tolerance < before
        if queued and fell and probe // 2 >= config.min_limit:
            self._probe_limit, self._probe_rtt = probe // 2, window_rtt
            return
        if before is not None:  # the probe had to go lower: the estimate was a queue's
            self._set(min(self._estimate, 2 * probe))
            self._decided = self._estimate  # a decision too: growth per answer starts here
        self._probe_limit = self._probe_rtt = None
        self._baseline = window_rtt
        self._next_probe = now + config.probe_interval

    def _restart(self, now: float) -> None:
        self._decided = self._estimate
        self._window_start = now
        self._settled = now + self.config.settle * self._window_rtt
        self._rtts.clear()
        self._max_in_flight = 0
        self._windowed.forget(math.inf)
        self._slowest = 0.0
        self._wanted = False


@attrs.define(eq=False)
class AimdLimit(_Limit):
    """Additive increase, multiplicative decrease (see the module docstring).

    Args:
        config: the provider's ``[adaptive]`` section.
        start: unused (the signature is the gradient's).
    """

    start: float = 0.0

    def observe(
        self,
        now: float,
        rtt: float,
        in_flight: int,
        dropped: bool,
        held: float | None = None,
        *,
        wanted: bool = False,
    ) -> None:
        """Take one finished call (the arguments are :meth:`GradientLimit.observe`'s)."""
        self._samples += 1
        if dropped or rtt > self.config.slow_call:
            self._drop(now)
        elif in_flight * 2 >= self.limit:
            self._set(self._estimate + 1)

    def statistics(self) -> LimitStatistics:
        """The limit and the counters."""
        return self._statistics(0.0, 0.0)


@attrs.define(eq=False)
class _Served:
    """Little's law over the calls answered: how many the upstream served at once."""

    # (start, end, seconds of service) of each call answered, in order of their ends.
    _answers: deque[tuple[float, float, float]] = attrs.field(factory=deque)
    _seconds: float = 0.0

    @property
    def seconds(self) -> float:
        """The calls' seconds of service, summed."""
        return max(self._seconds, 0.0)

    def add(self, start: float, end: float, seconds: float) -> None:
        self._answers.append((start, end, seconds))
        self._seconds += seconds

    def forget(self, before: float) -> None:
        """Leave out the calls answered before ``before``."""
        answers = self._answers
        while answers and answers[0][1] < before:
            self._seconds -= answers.popleft()[2]
        if not answers:
            self._seconds = 0.0  # no drift of float sums

    def concurrency(self, since: float, now: float) -> float:
        """Calls served at once, on average, from ``since`` to ``now`` -- or from the first
        of these calls' starts, if later: before it the upstream may have been idle, and
        an idle second is no evidence of what it can serve (inf with no calls)."""
        if not self._answers:
            return math.inf
        start = max(since, min(start for start, _, _ in self._answers))
        return max(self._seconds, 0.0) / (now - start) if now > start else math.inf


LimitAlgorithm: TypeAlias = GradientLimit | AimdLimit
"""Either algorithm."""


def limit_for(config: AdaptiveConfig, start: float) -> LimitAlgorithm:
    """The algorithm ``config.algorithm`` names, its first window starting at ``start``."""
    if config.algorithm == "aimd":
        return AimdLimit(config, start)
    return GradientLimit(config, start)


def _headroom(target: float) -> float:
    """Envoy's headroom: a square root of the target on top of it."""
    return target + math.sqrt(target)


def _unqueued(window_rtt: float, baseline: float, config: AdaptiveConfig) -> bool:
    """Whether a window's latency is so close to the baseline that no call queued: within
    ``fast_growth`` of the way from the baseline to ``tolerance`` times it."""
    margin = (config.tolerance - 1.0) * config.fast_growth
    return config.fast_growth > 0.0 and window_rtt <= baseline * (1.0 + margin)


def _percentile(values: list[float], fraction: float) -> float:
    """The nearest-rank percentile of ``values`` (not empty), ``fraction`` in (0, 1]."""
    ordered = sorted(values)
    rank = max(math.ceil(fraction * len(ordered)), 1)
    return ordered[rank - 1]
