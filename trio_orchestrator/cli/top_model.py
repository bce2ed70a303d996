"""What ``trio-orchestrator top`` shows, computed from what the service answers.

Nothing here does I/O or reads a clock: a :class:`Poll` holds one round of answers
(``/metrics``, ``/v1/stats`` and, when the service has it, ``/v1/admin/spend``) and the time
it was taken; :func:`build_screen` turns the previous and the current poll into a
:class:`Screen` of rows, which :mod:`.top` draws. Rates and latency percentiles are over the
window between the two polls, the way Prometheus' ``rate()`` and ``histogram_quantile()``
read two scrapes; the first screen, with no earlier poll, shows them since start.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import attrs

__all__ = [
    "ErrorRow",
    "Latency",
    "Poll",
    "ProviderRow",
    "Scrape",
    "Screen",
    "StageRow",
    "Throughput",
    "build_screen",
    "histogram_quantile",
    "parse_metrics",
    "parse_spend",
]

PREFIX = "trio_orchestrator"
QUANTILES = (0.5, 0.9, 0.99)
TOP_SPENDERS = 10

_Labels = frozenset[tuple[str, str]]


@attrs.frozen
class Scrape:
    """One reading of ``/metrics``: every sample's value by metric name and labels."""

    samples: Mapping[tuple[str, _Labels], float]
    """``(sample name, labels) -> value``; a histogram's samples end in ``_bucket``,
    ``_count`` and ``_sum``, a counter's in ``_total``."""

    def series(self, name: str) -> Iterator[tuple[dict[str, str], float]]:
        """Every sample called ``name``, with its labels."""
        for (sample, labels), value in self.samples.items():
            if sample == name:
                yield dict(labels), value

    def sum_by(self, name: str, label: str) -> dict[str, float]:
        """The samples called ``name`` added up per value of ``label``."""
        sums: dict[str, float] = defaultdict(float)
        for labels, value in self.series(name):
            sums[labels.get(label, "")] += value
        return dict(sums)

    def total(self, name: str) -> float:
        """The samples called ``name`` added up over all labels."""
        return sum(value for _labels, value in self.series(name))

    def buckets(self, name: str) -> dict[float, float]:
        """Histogram ``name``'s cumulative bucket counts by upper bound, over all labels."""
        counts: dict[float, float] = defaultdict(float)
        for labels, value in self.series(f"{name}_bucket"):
            counts[float(labels["le"])] += value
        return dict(counts)


def parse_metrics(text: str) -> Scrape:
    """Read Prometheus' text format (what ``GET /metrics`` answers).

    Args:
        text: the body of the answer.

    Returns:
        every sample of it.

    Raises:
        ValueError: ``text`` is not in the text format.
    """
    from prometheus_client.parser import text_string_to_metric_families

    samples: dict[tuple[str, _Labels], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[sample.name, frozenset(sample.labels.items())] = sample.value
    return Scrape(samples)


def histogram_quantile(q: float, buckets: Mapping[float, float]) -> float | None:
    """The ``q``-quantile of a histogram, interpolated within its bucket as Prometheus'
    ``histogram_quantile`` does.

    Args:
        q: the quantile, 0 to 1.
        buckets: cumulative counts by upper bound; one bound is ``+Inf``.

    Returns:
        the estimate, or None when the histogram holds no observation (or has no
        ``+Inf`` bucket). An estimate in the ``+Inf`` bucket is the highest finite bound.
    """
    bounds = sorted(buckets)
    if len(bounds) < 2 or not math.isinf(bounds[-1]):
        return None
    counts, highest = [], 0.0
    for (
        bound
    ) in bounds:  # a counter reset between scrapes may break monotony; Prometheus fixes it so
        highest = max(highest, buckets[bound])
        counts.append(highest)
    total = counts[-1]
    if total <= 0:
        return None
    rank = q * total
    index = next(i for i, count in enumerate(counts) if count >= rank)
    if index == len(bounds) - 1:
        return bounds[-2]
    upper = bounds[index]
    if index == 0 and upper <= 0:
        return upper
    lower = 0.0 if index == 0 else bounds[index - 1]
    below = 0.0 if index == 0 else counts[index - 1]
    inside = counts[index] - below
    return lower + (upper - lower) * ((rank - below) / inside) if inside else upper


_SPEND_NAMES = ("key", "api_key", "api_key_id", "key_id", "label", "name", "group")
_SPEND_VALUES = ("cost_usd", "spend_usd", "spend", "cost", "usd", "total_cost")


def parse_spend(body: Any) -> list[tuple[str, float]] | None:
    """Spending per key from an answer of ``GET /v1/admin/spend?group_by=key``.

    The endpoint is newer than this dashboard, so the answer is read leniently: a list of
    objects (bare, or under ``data``), each naming a key and a dollar amount under one of
    the usual field names.

    Args:
        body: the decoded JSON answer.

    Returns:
        ``(key, dollars)`` pairs, or None when the answer has no such shape.
    """
    rows = body.get("data") if isinstance(body, dict) else body
    if not isinstance(rows, list):
        return None
    spend = []
    for row in rows:
        if not isinstance(row, dict):
            return None
        name = next((row[k] for k in _SPEND_NAMES if isinstance(row.get(k), str)), None)
        value = next((row[k] for k in _SPEND_VALUES if _is_number(row.get(k))), None)
        if name is None or value is None:
            return None
        spend.append((name, float(value)))
    return spend


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


@attrs.frozen
class Poll:
    """What one round of polling the service got, and when."""

    at: float
    """When it was taken, in seconds of a monotonic clock."""
    metrics: Scrape | None = None
    """``/metrics``, or None when it could not be read (metrics off, say)."""
    stats: Mapping[str, Any] | None = None
    """``/v1/stats``, decoded; None when it could not be read."""
    spend: Sequence[tuple[str, float]] | None = None
    """``/v1/admin/spend`` per key, when the service has it and the key may read it."""
    error: str | None = None
    """Why the service could not be read at all, in one line; None when it could."""


@attrs.frozen
class Throughput:
    """Requests per second over the window, and the service's counts since start."""

    requests_per_second: float | None
    """Requests ended per second (any outcome); None on the first screen."""
    outcomes: Mapping[str, int]
    """``/v1/stats`` counts since start: submitted, completed, failed, shed, expired,
    cancelled, in_flight."""


@attrs.frozen
class Latency:
    """Percentiles of one histogram over the window, in seconds (None: no observation)."""

    name: str
    p50: float | None
    p90: float | None
    p99: float | None
    count: int
    """Observations in the window."""


@attrs.frozen
class StageRow:
    """One pipeline stage: requests waiting in its channel, and its capacity."""

    name: str
    queue_depth: int
    capacity: int
    processed: int
    shed: int


@attrs.frozen
class ErrorRow:
    """One class of failure: its count since start and its rate over the window."""

    name: str
    total: int
    per_second: float | None


@attrs.frozen
class ProviderRow:
    """One provider's health."""

    name: str
    requests_per_second: float | None
    """Requests it ended per second over the window; None on the first screen."""
    breaker: str
    """``closed``, ``open``, ``half_open`` (the worst of its targets, with how many are
    so when some are not), or ``-`` without a breaker."""
    keys_ready: int | None
    """Keys usable now, of ``keys_total``; None when the provider has no key pool."""
    keys_total: int | None
    resting: tuple[str, ...]
    """Fingerprints of keys resting or rejected, with seconds left when known."""


@attrs.frozen
class Screen:
    """Everything one frame of the dashboard shows."""

    url: str
    error: str | None
    """Why the service cannot be read; everything else is empty then."""
    window: float | None
    """Seconds between the two polls the rates are over; None since start."""
    draining: bool = False
    throughput: Throughput | None = None
    latency: tuple[Latency, ...] = ()
    in_flight: Mapping[str, int] = attrs.field(factory=dict)
    """``in_flight``, ``waiting_to_enter``, ``inference_active`` of ``inference_slots``."""
    stages: tuple[StageRow, ...] = ()
    errors: tuple[ErrorRow, ...] = ()
    providers: tuple[ProviderRow, ...] = ()
    spenders: tuple[tuple[str, float], ...] = ()
    """The keys that spent most, most first."""
    spend_source: str | None = None
    """Where ``spenders`` came from: ``/v1/admin/spend``, the budget ledger, or None."""


def build_screen(url: str, previous: Poll | None, current: Poll) -> Screen:
    """The frame for ``current``, with rates over the window since ``previous``.

    Args:
        url: the service's address, for the title.
        previous: the poll before, or None for the first frame (rates since start).
        current: the poll just taken.

    Returns:
        the rows to draw.
    """
    if current.error is not None:
        return Screen(url, current.error, None)
    if previous is not None and previous.error is not None:
        previous = None
    window = None if previous is None else current.at - previous.at
    stats = current.stats or {}
    pipeline = stats.get("pipeline") or {}
    spenders, source = _spenders(current, stats)
    metrics = _Window(current.metrics, None if previous is None else previous.metrics, window)
    return Screen(
        url=url,
        error=None,
        window=window,
        draining=bool(stats.get("draining")),
        throughput=Throughput(metrics.rate_all(f"{PREFIX}_requests_total"), _outcomes(pipeline)),
        latency=tuple(metrics.latencies()),
        in_flight=_in_flight(pipeline),
        stages=tuple(_stage_row(stage) for stage in pipeline.get("stages", ())),
        errors=tuple(metrics.errors()),
        providers=tuple(_providers(metrics, stats.get("keys") or {})),
        spenders=spenders,
        spend_source=source,
    )


_OUTCOMES = ("submitted", "completed", "failed", "shed", "expired", "cancelled", "in_flight")


def _outcomes(pipeline: Mapping[str, Any]) -> dict[str, int]:
    return {name: int(pipeline.get(name, 0)) for name in _OUTCOMES}


def _in_flight(pipeline: Mapping[str, Any]) -> dict[str, int]:
    return {
        "in_flight": int(pipeline.get("in_flight", 0)),
        "waiting_to_enter": int(pipeline.get("waiting_to_enter", 0)),
        "inference_active": int(pipeline.get("inference_active", 0)),
        "inference_slots": int(pipeline.get("inference_concurrency", 0)),
    }


def _stage_row(stage: Mapping[str, Any]) -> StageRow:
    return StageRow(
        name=str(stage.get("name", "?")),
        queue_depth=int(stage.get("queue_depth", 0)),
        capacity=int(stage.get("capacity", 0)),
        processed=int(stage.get("processed", 0)),
        shed=int(stage.get("shed", 0)),
    )


def _spenders(
    current: Poll, stats: Mapping[str, Any]
) -> tuple[tuple[tuple[str, float], ...], str | None]:
    if current.spend is not None:
        pairs, source = list(current.spend), "/v1/admin/spend"
    else:
        budgets = stats.get("budgets")
        if not isinstance(budgets, Mapping):
            return (), None
        pairs = [(str(k), float(v)) for k, v in (budgets.get("per_api_key") or {}).items()]
        source = "budget ledger"
    ranked = sorted(pairs, key=lambda pair: (-pair[1], pair[0]))[:TOP_SPENDERS]
    return tuple(ranked), source


@attrs.frozen
class _Window:
    """Two scrapes and the seconds between them: differences of counters and histograms."""

    now: Scrape | None
    before: Scrape | None
    seconds: float | None

    def _delta(
        self, sums_now: Mapping[Any, float], sums_before: Mapping[Any, float]
    ) -> dict[Any, float]:
        # A counter lower than before was reset (the service restarted): its value now is
        # what happened since, as Prometheus' rate() reads a reset.
        out = {}
        for key, value in sums_now.items():
            old = sums_before.get(key, 0.0)
            out[key] = value - old if value >= old else value
        return out

    def _per_second(self, delta: float) -> float | None:
        if self.seconds is None or self.seconds <= 0:
            return None
        return delta / self.seconds

    def rate_all(self, name: str) -> float | None:
        """Samples ``name`` added up, per second over the window."""
        return self.rate_by(name, None).get("", None)

    def rate_by(self, name: str, label: str | None) -> dict[str, float | None]:
        """Samples ``name`` per value of ``label`` (all together for None), per second."""
        if self.now is None:
            return {}
        now = self._sums(self.now, name, label)
        before = {} if self.before is None else self._sums(self.before, name, label)
        return {k: self._per_second(v) for k, v in self._delta(now, before).items()}

    @staticmethod
    def _sums(scrape: Scrape, name: str, label: str | None) -> dict[str, float]:
        return {"": scrape.total(name)} if label is None else scrape.sum_by(name, label)

    def latencies(self) -> Iterator[Latency]:
        """Request latency and time to first token over the window (since start at first)."""
        for title, name in (
            ("request", f"{PREFIX}_request_duration_seconds"),
            ("first token", f"{PREFIX}_time_to_first_token_seconds"),
        ):
            if self.now is None:
                continue
            now = self.now.buckets(name)
            if not now:
                continue
            before = {} if self.before is None else self.before.buckets(name)
            window = self._delta(now, before) if self.before is not None else now
            count = int(window.get(math.inf, 0.0))
            p50, p90, p99 = (histogram_quantile(q, window) for q in QUANTILES)
            yield Latency(title, p50, p90, p99, count)

    def errors(self) -> Iterator[ErrorRow]:
        """Upstream errors by class, then requests shed, expired and cancelled."""
        if self.now is None:
            return
        classes = self.now.sum_by(f"{PREFIX}_upstream_errors_total", "error")
        rates = self.rate_by(f"{PREFIX}_upstream_errors_total", "error")
        for name in sorted(classes, key=lambda n: (-classes[n], n)):
            yield ErrorRow(name, int(classes[name]), rates.get(name))
        outcomes = self.now.sum_by(f"{PREFIX}_pipeline_requests_total", "outcome")
        outcome_rates = self.rate_by(f"{PREFIX}_pipeline_requests_total", "outcome")
        for name in ("shed", "expired", "cancelled"):
            if outcomes.get(name):
                yield ErrorRow(name, int(outcomes[name]), outcome_rates.get(name))

    def breakers(self) -> dict[str, list[str]]:
        """Each provider's targets' breaker states."""
        states: dict[str, list[str]] = defaultdict(list)
        if self.now is None:
            return states
        for labels, value in self.now.series(f"{PREFIX}_breaker_state"):
            if value == 1.0 and "target" in labels:
                provider = labels["target"].split("/", 1)[0]
                states[provider].append(labels.get("state", "?"))
        return states


_WORST_FIRST = ("open", "half_open", "closed")


def _breaker_summary(states: Sequence[str]) -> str:
    if not states:
        return "-"
    worst = min(states, key=lambda s: _WORST_FIRST.index(s) if s in _WORST_FIRST else 0)
    bad = sum(1 for s in states if s == worst)
    return worst if bad == len(states) else f"{worst} {bad}/{len(states)}"


def _resting(keys: Mapping[str, Any]) -> tuple[str, ...]:
    resting = []
    for name, key in keys.items():
        state = str(key.get("state", "ready"))
        models = key.get("model_rests") or {}
        if state == "ready" and not models:
            continue
        rest = key.get("rest_seconds")
        text = f"{name} {state}" + ("" if rest is None else f" {rest:.0f}s")
        if models:
            text += " (" + ", ".join(f"{m} {s:.0f}s" for m, s in sorted(models.items())) + ")"
        resting.append(text)
    return tuple(resting)


def _providers(window: _Window, pools: Mapping[str, Any]) -> Iterable[ProviderRow]:
    rates = window.rate_by(f"{PREFIX}_requests_total", "provider")
    breakers = window.breakers()
    for name in sorted(set(rates) | set(breakers) | set(pools)):
        pool = pools.get(name)
        keys = pool.get("keys", {}) if isinstance(pool, Mapping) else None
        yield ProviderRow(
            name=name,
            requests_per_second=rates.get(name),
            breaker=_breaker_summary(breakers.get(name, [])),
            keys_ready=None if pool is None else int(pool.get("ready", 0)),
            keys_total=None if keys is None else len(keys),
            resting=() if keys is None else _resting(keys),
        )
