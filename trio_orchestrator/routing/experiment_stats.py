"""The statistics of experiments, from running sums, with nothing but :mod:`math`.

- A success rate's interval is Wilson's score interval (it stays inside [0, 1] and behaves at
  0 and n successes, where the normal approximation does not).
- A mean's interval is the normal approximation, ``mean ± z·s/√n``; for latency it is taken
  on log latency and mapped back with ``exp``: an interval on the geometric mean, which is
  the median of a log-normal latency.
- "Worse than control beyond a margin" is a one-sided test of a shifted null hypothesis:
  for errors, ``H0: p_v - p_c ≤ margin`` by the two-proportion z statistic with unpooled
  variance (pooling assumes ``p_v = p_c``, which a margin contradicts); for latency,
  ``H0: μ_v - μ_c ≤ log(1 + margin)`` on log latencies by Welch's z statistic. Both use the
  normal approximation, sound at the sample sizes ``min_samples`` asks for.
"""

from __future__ import annotations

import math

import attrs

__all__ = [
    "Z95",
    "Interval",
    "Moments",
    "log_latency_worse_p",
    "mean_interval",
    "normal_sf",
    "one_sided_p",
    "proportion_worse_p",
    "wilson",
    "z_for",
]


@attrs.frozen
class Interval:
    """An estimate and its two-sided confidence interval."""

    estimate: float
    low: float
    high: float


@attrs.define
class Moments:
    """Running count, sum and sum of squares of some quantity."""

    n: int = 0
    total: float = 0.0
    squares: float = 0.0

    def add(self, value: float) -> None:
        """Count one observation."""
        self.n += 1
        self.total += value
        self.squares += value * value

    @property
    def mean(self) -> float:
        """The mean (NaN with no observation)."""
        return self.total / self.n if self.n else math.nan

    @property
    def variance(self) -> float:
        """The sample variance (``n - 1``), 0 with fewer than two observations."""
        if self.n < 2:
            return 0.0
        return max(0.0, (self.squares - self.total * self.total / self.n) / (self.n - 1))


def normal_sf(z: float) -> float:
    """P(Z > z) for a standard normal Z."""
    return 0.5 * math.erfc(z / math.sqrt(2.0))


def z_for(confidence: float) -> float:
    """The two-sided critical value for ``confidence`` (1.959964 for 0.95), by bisection on
    :func:`normal_sf` (no inverse of erf in :mod:`math`)."""
    tail = (1.0 - confidence) / 2.0
    low, high = 0.0, 40.0
    for _ in range(200):
        middle = (low + high) / 2.0
        if normal_sf(middle) > tail:
            low = middle
        else:
            high = middle
    return (low + high) / 2.0


Z95 = z_for(0.95)


def wilson(successes: int, n: int, z: float = Z95) -> Interval:
    """Wilson's score interval for a proportion ``successes / n`` (all NaN when ``n`` is 0)."""
    if n == 0:
        return Interval(math.nan, math.nan, math.nan)
    p = successes / n
    z2 = z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    return Interval(p, max(0.0, centre - half), min(1.0, centre + half))


def mean_interval(moments: Moments, z: float = Z95) -> Interval:
    """The mean with its normal-approximation interval (the mean itself for n = 1)."""
    if moments.n == 0:
        return Interval(math.nan, math.nan, math.nan)
    mean = moments.mean
    half = z * math.sqrt(moments.variance / moments.n)
    return Interval(mean, mean - half, mean + half)


def one_sided_p(difference: float, margin: float, standard_error: float) -> float:
    """The p-value of ``H0: true difference ≤ margin`` against ``H1: > margin``.

    With no spread at all (``standard_error`` 0) the answer is 0 when the difference is
    beyond the margin and 1 otherwise.
    """
    excess = difference - margin
    if standard_error <= 0.0:
        return 0.0 if excess > 0 else 1.0
    return normal_sf(excess / standard_error)


def proportion_worse_p(errors_v: int, n_v: int, errors_c: int, n_c: int, margin: float) -> float:
    """The p-value that the variant's error rate exceeds control's by more than ``margin``
    (one-sided two-proportion z-test, unpooled standard error)."""
    p_v, p_c = errors_v / n_v, errors_c / n_c
    se = math.sqrt(p_v * (1 - p_v) / n_v + p_c * (1 - p_c) / n_c)
    return one_sided_p(p_v - p_c, margin, se)


def log_latency_worse_p(variant: Moments, control: Moments, margin: float) -> float:
    """The p-value that the variant's mean log latency exceeds control's by more than
    ``log(1 + margin)`` (one-sided Welch z-test)."""
    if math.isinf(margin):
        return 1.0
    se = math.sqrt(variant.variance / variant.n + control.variance / control.n)
    return one_sided_p(variant.mean - control.mean, math.log1p(margin), se)
