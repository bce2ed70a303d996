"""Configuration of the resilience layers: ``[resilience.*]`` in the TOML file.

Every layer is off by default, so a bare configuration behaves exactly like a pipeline with
no layers; turn each on with ``enabled = true`` in its section.
"""

from __future__ import annotations

from collections.abc import Iterable

import attrs

from ..validators import (
    Range,
    at_least_one,
    fraction,
    fraction_below_one,
    non_negative_finite,
    non_negative_time,
    one_of,
    positive_int,
    positive_number,
    positive_time,
    unit_interval,
)

__all__ = [
    "ADAPTIVE_ALGORITHMS",
    "AdaptiveConfig",
    "BreakerConfig",
    "LimitConfig",
    "RateLimitsConfig",
    "ResilienceConfig",
    "RetryConfig",
    "SemanticCacheConfig",
]

LATENCY_ANOMALY_MODES = ("off", "ewma", "zscore")
ADAPTIVE_ALGORITHMS = ("gradient", "aimd")
LIMIT_SCOPES = ("provider", "model", "user", "api_key")
LIMIT_MODES = ("wait", "reject")


_optional_positive = attrs.validators.optional(positive_number)


@attrs.frozen
class BreakerConfig:
    """The circuit breaker: one per provider and model.

    Attributes:
        enabled: put the circuit-breaker layer in the request path.
        failure_threshold: consecutive failures that open the circuit while the window
            holds fewer than ``minimum_calls`` calls (too few for a rate to mean much). Once
            it holds that many, only the failure rate decides: at high throughput a run of
            failures is luck, not health, and would open the circuit on an upstream that
            answers most calls.
        failure_rate_threshold: failure rate over ``window`` (with at least ``minimum_calls``
            calls in it) that opens the circuit, in (0, 1].
        window: seconds of the rolling window the failure rate is measured over.
        minimum_calls: calls in the window before the failure rate is trusted.
        cooldown: seconds the circuit stays open after it first opens.
        cooldown_multiplier: the cool-down grows by this factor after each probe round in
            which every probe failed (≥ 1); a round in which some probes succeeded, but too
            few to close, reopens for the same cool-down.
        max_cooldown: the cool-down never exceeds this many seconds.
        jitter: the cool-down is shortened by a random fraction up to this much, in [0, 1),
            so breakers opened together do not probe together.
        half_open_probes: calls let through at once while half-open; their results decide.
        probe_success_threshold: fraction of a probe round that must succeed to close.
        latency_anomaly: ``off``, ``ewma`` (exponentially weighted mean and variance) or
            ``zscore`` (mean and deviation of the last ``latency_window`` calls): a call whose
            time to first event is far above its baseline counts as a failure.
        latency_threshold: how far above: this many standard deviations.
        latency_min_excess: and at least this many seconds above the mean (so a perfectly
            steady baseline does not trip on noise).
        latency_warmup: calls observed before anomalies are judged.
        latency_alpha: the EWMA's weight of the newest sample, in (0, 1].
        latency_window: samples the z-score baseline keeps.
    """

    enabled: bool = False
    failure_threshold: int = attrs.field(default=5, validator=positive_int)
    failure_rate_threshold: float = attrs.field(default=0.5, validator=fraction)
    window: float = attrs.field(default=60.0, validator=positive_number)
    minimum_calls: int = attrs.field(default=20, validator=positive_int)
    cooldown: float = attrs.field(default=5.0, validator=positive_number)
    cooldown_multiplier: float = attrs.field(default=2.0, validator=at_least_one)
    max_cooldown: float = attrs.field(default=300.0, validator=positive_number)
    jitter: float = attrs.field(default=0.1, validator=fraction_below_one)
    half_open_probes: int = attrs.field(default=3, validator=positive_int)
    probe_success_threshold: float = attrs.field(default=1.0, validator=fraction)
    latency_anomaly: str = attrs.field(default="off", validator=one_of(*LATENCY_ANOMALY_MODES))
    latency_threshold: float = attrs.field(default=4.0, validator=positive_number)
    latency_min_excess: float = attrs.field(default=0.05, validator=non_negative_time)
    latency_warmup: int = attrs.field(default=20, validator=positive_int)
    latency_alpha: float = attrs.field(default=0.1, validator=fraction)
    latency_window: int = attrs.field(default=100, validator=positive_int)

    def __attrs_post_init__(self) -> None:
        if self.max_cooldown < self.cooldown:
            raise ValueError(
                f"max_cooldown ({self.max_cooldown}) must be ≥ cooldown ({self.cooldown})"
            )


@attrs.frozen
class RetryConfig:
    """Retries of failed provider calls.

    Attributes:
        enabled: put the retry layer in the request path.
        max_attempts: calls in all, the first included (so 3 means up to 2 retries).
        initial_backoff: the cap of the first backoff, in seconds; each backoff is drawn
            uniformly from [0, cap] ("full jitter").
        multiplier: the cap grows by this factor per retry (≥ 1).
        max_backoff: the cap never exceeds this many seconds.
        max_retry_after: a provider asking to wait longer than this (``Retry-After``) is not
            retried; the error goes to the caller at once.
        restart_stream: allow a retry after events reached the caller. The new attempt must
            repeat the events already sent exactly (they are swallowed, the rest passes on);
            if it diverges, the caller gets the original error and the attempt is cut at
            the first differing event. On by default: a stream cut mid-answer by a
            deterministic upstream (temperature 0, a seed, a cached answer) then ends whole,
            and any other gets the error it would have had. Off: no retry once an event
            has been emitted.
    """

    enabled: bool = False
    max_attempts: int = attrs.field(default=3, validator=positive_int)
    initial_backoff: float = attrs.field(default=0.5, validator=positive_number)
    multiplier: float = attrs.field(default=2.0, validator=at_least_one)
    max_backoff: float = attrs.field(default=30.0, validator=positive_number)
    max_retry_after: float = attrs.field(default=60.0, validator=positive_time)
    restart_stream: bool = True


@attrs.frozen
class LimitConfig:
    """One rate limit: a token bucket per value of its scope.

    Exactly one of ``requests_per_second``, ``requests_per_minute`` and ``tokens_per_minute``
    is given.

    Attributes:
        scope: what the limit is counted per: ``provider``, ``model`` (the request's
            ``params.model``), ``user`` (``request.meta["user"]``) or ``api_key``
            (``request.meta["api_key_id"]``). A request without that meta key is not
            limited by this limit.
        requests_per_second: requests admitted per second.
        requests_per_minute: requests admitted per minute.
        tokens_per_minute: estimated tokens per minute (prompt characters / 4 plus
            ``max_tokens``), corrected by the real usage after the call.
        burst: the bucket's size, i.e. what may pass at once after a quiet spell; default:
            one period's worth of the rate (at least 1).
        mode: ``wait`` (queue in FIFO order, up to the request's deadline) or ``reject``
            (refuse at once with ``RateLimitExceeded`` and its ``retry_after``).
        match: only limit requests whose scope value equals this (e.g. one model); default:
            every value gets its own bucket.
    """

    scope: str = attrs.field(validator=one_of(*LIMIT_SCOPES))
    requests_per_second: float | None = attrs.field(default=None, validator=_optional_positive)
    requests_per_minute: float | None = attrs.field(default=None, validator=_optional_positive)
    tokens_per_minute: float | None = attrs.field(default=None, validator=_optional_positive)
    burst: float | None = attrs.field(default=None, validator=_optional_positive)
    mode: str = attrs.field(default="wait", validator=one_of(*LIMIT_MODES))
    match: str | None = None

    def __attrs_post_init__(self) -> None:
        given = [
            self.requests_per_second,
            self.requests_per_minute,
            self.tokens_per_minute,
        ]
        if sum(rate is not None for rate in given) != 1:
            raise ValueError(
                "a limit needs exactly one of requests_per_second, requests_per_minute, "
                f"tokens_per_minute (scope {self.scope!r})"
            )

    @property
    def counts_tokens(self) -> bool:
        """True for a tokens-per-minute limit, False for a requests limit."""
        return self.tokens_per_minute is not None

    @property
    def rate(self) -> float:
        """Units (requests or tokens) refilled per second."""
        if self.requests_per_second is not None:
            return self.requests_per_second
        per_minute = self.requests_per_minute or self.tokens_per_minute
        assert per_minute is not None
        return per_minute / 60.0

    @property
    def capacity(self) -> float:
        """The bucket's size: ``burst``, or one period's worth of the rate (at least 1)."""
        if self.burst is not None:
            return self.burst
        period = self.requests_per_second or self.requests_per_minute or self.tokens_per_minute
        assert period is not None
        return max(1.0, period)


def _to_limits(limits: Iterable[LimitConfig]) -> tuple[LimitConfig, ...]:
    return tuple(limits)


@attrs.frozen
class RateLimitsConfig:
    """Local rate limits, checked together before each provider call.

    Attributes:
        enabled: put the rate-limit layer in the request path.
        limits: the limits; a request is charged against every one that applies to it,
            atomically (all admit, or none is charged).
        default_max_tokens: the output tokens assumed when estimating a request that sets
            no ``max_tokens``.
        max_buckets: past this many buckets (one per provider, model, user and key seen),
            buckets that have refilled completely are forgotten (they would be recreated
            full, so no decision changes).
    """

    enabled: bool = False
    limits: tuple[LimitConfig, ...] = attrs.field(default=(), converter=_to_limits)
    default_max_tokens: int = attrs.field(default=256, validator=positive_int)
    max_buckets: int = attrs.field(default=100_000, validator=positive_int)


@attrs.frozen
class CoalescingConfig:
    """How identical in-flight requests are merged.

    Attributes:
        enabled: put the coalescing layer in the request path (default ``False``, like every
            layer; when on, only deterministic requests are merged unless
            ``coalesce_sampled`` is set, so merging never changes what a caller could have
            received).
        coalesce_sampled: also merge requests whose temperature is above 0 or unset (the
            provider's default, which is sampled). Subscribers then all get the same sample
            instead of independent ones. Default ``False``.
        max_subscribers: subscribers one upstream call may have; a request beyond that starts
            its own call. Default 10 000.
    """

    enabled: bool = False
    coalesce_sampled: bool = False
    max_subscribers: int = attrs.field(default=10_000, validator=positive_int)


SEMANTIC_SCOPES = ("api_key", "global")


@attrs.frozen
class SemanticCacheConfig:
    """The semantic cache: a miss in the exact cache is answered from a stored answer to a
    question *close enough* in meaning (cosine similarity of embeddings ≥ ``threshold``).

    Only the last user turn is embedded; everything else that shapes the answer — the
    model, the generation parameters, the system prompt and earlier turns, the retrieved
    context and (by default) the caller's API key — must match exactly (it forms the
    entry's scope), so one tenant never gets another's answer.

    Attributes:
        enabled: put the semantic cache in the request path, just inside the exact cache.
            Default ``False``: it answers questions nobody asked verbatim, so it is opted
            into.
        embedding_model: the embedding model the last user turn is embedded with (required
            when enabled, e.g. ``"text-embedding-3-small"``). Changing it needs a restart
            (stored vectors of one model mean nothing to another).
        embedding_provider: the ``[[providers]]`` label whose worker embeds; empty (the
            default) embeds through the gateway's own worker below the cache (its router
            or balancer resolves ``embedding_model``). Changing it needs a restart.
        threshold: the least cosine similarity, in (0, 1], that counts as the same
            question. Default 0.95: with general-purpose embedding models, paraphrases of
            a question score about 0.9 to 0.98 and different questions on the same topic
            0.7 to 0.9, so 0.95 trades hits for a low false-hit rate; lower it only after
            measuring your own pairs (see docs/semantic-cache.md).
        max_entries: the most answers kept across all scopes; the least recently used is
            evicted beyond it. A lookup scans its scope's entries (pure Python), so this
            also bounds the lookup time. Default 10000.
        ttl: seconds an answer stays valid after it was stored. Default 300.
        scope: ``"api_key"`` (default): an entry answers only callers with the same API
            key id (``request.meta["api_key_id"]``; callers without one share the
            unauthenticated scope); ``"global"``: every caller may get any caller's
            answer (a single-tenant gateway).
        cache_sampled: also cache requests whose temperature is above 0 or unset. Default
            ``False``, as for the exact cache.
    """

    enabled: bool = attrs.field(default=False)
    embedding_model: str = attrs.field(default="", metadata={"reloadable": False})
    embedding_provider: str = attrs.field(default="", metadata={"reloadable": False})
    threshold: float = attrs.field(default=0.95, validator=fraction)
    max_entries: int = attrs.field(default=10_000, validator=positive_int)
    ttl: float = attrs.field(default=300.0, validator=positive_time)
    scope: str = attrs.field(default="api_key", validator=one_of(*SEMANTIC_SCOPES))
    cache_sampled: bool = False

    def __attrs_post_init__(self) -> None:
        if self.enabled and not self.embedding_model:
            raise ValueError("embedding_model is required when the semantic cache is enabled")


@attrs.frozen
class CacheConfig:
    """The answer cache.

    Attributes:
        enabled: put the cache layer in the request path. Default ``False``: a cache changes
            what repeated callers see, so it is opted into.
        max_entries: the most answers kept; the least recently used is evicted beyond it.
            Default 1024.
        ttl: seconds an answer stays valid after it was stored (``inf``: until evicted).
            Default 300.
        cache_sampled: also cache requests whose temperature is above 0 or unset; every later
            caller then gets the first sample. Default ``False``.
        semantic: the semantic cache beside it (``[resilience.cache.semantic]``), which
            works with or without the exact cache.
    """

    enabled: bool = False
    max_entries: int = attrs.field(default=1024, validator=positive_int)
    ttl: float = attrs.field(default=300.0, validator=positive_time)
    cache_sampled: bool = False
    semantic: SemanticCacheConfig = attrs.field(factory=SemanticCacheConfig)


@attrs.frozen
class PriorityConfig:
    """Priority admission to inference when every inference slot is busy.

    A request waiting for a slot is ranked by ``submitted_at + level * aging_interval``
    (``level`` 0 for ``CRITICAL`` … 3 for ``LOW``), smallest first, first come first served
    among equals: its effective priority improves by one level for every ``aging_interval``
    seconds it has waited, so a ``LOW`` request is served before any ``CRITICAL`` request
    submitted more than ``3 * aging_interval`` seconds after it, and is never starved.

    Attributes:
        enabled: rank waiting requests by priority (default ``True``); when ``False`` the
            inference stage admits strictly in arrival order.
        aging_interval: seconds of waiting worth one priority level (default 10; ``inf``
            for strict priority, under which a saturated stage may starve ``LOW``).
        max_waiting: requests the inference stage takes from its input channel and holds,
            ranked, while every slot is busy (default 64). When it holds that many it stops
            reading, so its channel fills to ``inference_capacity`` and the stage before it
            sheds: at most ``inference_concurrency + max_waiting + inference_capacity``
            requests are ever in or before inference.
    """

    enabled: bool = True
    aging_interval: float = attrs.field(default=10.0, validator=positive_time)
    max_waiting: int = attrs.field(default=64, validator=positive_int)


@attrs.frozen
class ResilienceConfig:
    """The resilience layers around the provider, outermost first: cache → coalescing →
    rate limit → circuit breaker → retry → provider.

    Attributes:
        cache: the answer cache (TTL and LRU bound; deterministic requests only by default).
        coalescing: identical in-flight requests share one upstream call.
        rate_limits: token buckets per provider, model, user and API key.
        breaker: the circuit breaker per provider and model.
        retry: retries with capped, fully jittered exponential backoff.
    """

    cache: CacheConfig = attrs.field(factory=CacheConfig)
    coalescing: CoalescingConfig = attrs.field(factory=CoalescingConfig)
    rate_limits: RateLimitsConfig = attrs.field(factory=RateLimitsConfig)
    breaker: BreakerConfig = attrs.field(factory=BreakerConfig)
    retry: RetryConfig = attrs.field(factory=RetryConfig)


def refuse_toggle(name: str, old_enabled: bool, new_enabled: bool) -> list[str]:
    """A refusal when a reload would switch a layer on or off (that needs a restart)."""
    if old_enabled == new_enabled:
        return []
    return [
        f"resilience.{name}.enabled: adding or removing a layer needs a restart "
        f"{old_enabled} → {new_enabled}"
    ]


_whole_or_zero = Range("a whole number ≥ 0", integer=True, minimum=0)


@attrs.frozen
class AdaptiveConfig:
    """A provider's adaptive concurrency limit: ``[providers.providers.adaptive]``, under
    its ``[[providers.providers]]`` entry (see docs/adaptive-concurrency.md).

    The gateway lets at most *limit* calls run at this provider at once and moves the limit
    with what it measures: it raises it while the time to the first token holds, and cuts it
    when that time climbs or the provider answers 429, 503/529, another 5xx or times out. A
    call over the limit waits in a short queue for a slot, or is refused at once with 503
    (``upstream_overloaded``), so an overloaded upstream sheds load at the gateway instead of
    queueing it for seconds upstream. Everything but ``enabled`` and ``per_model`` reloads.

    Attributes:
        enabled: put the adaptive limit in front of this provider.
        algorithm: ``"gradient"`` (the default: latency and errors, after Envoy's adaptive
            concurrency filter and Netflix's Gradient2) or ``"aimd"`` (errors and calls
            slower than ``slow_call`` only: additive increase, multiplicative decrease).
        per_model: one limit per model at this provider (for providers that limit each
            model apart, as OpenAI and Anthropic do); one limit for the provider otherwise.
        initial_limit: the limit at start, within ``[min_limit, max_limit]``.
        min_limit: the limit never goes below this.
        max_limit: the limit never goes above this.
        window: seconds of one sampling window: the gradient limit is recalculated once per
            window, and the limit is cut at most once per window.
        settle: after each decision, the calls that end within this many times the last
            window's latency are left out of the next window (0: none): most were admitted
            before the decision, and their latency is news the last window had. Without it a
            window of calls longer than ``window`` judges the limit before the last one.
        min_samples: calls a window needs before the gradient limit judges it (a window with
            an error is acted on whatever its size).
        percentile: the window's latency is this percentile of its calls' times to the first
            token, in (0, 1] (0.5: the median, as Envoy's default).
        tolerance: how much slower than the baseline (the latency at low load: the lowest
            window latency since the last probe) calls may get before the gradient limit
            shrinks (≥ 1; 1.5, the default, lets them be 50 % slower; Envoy buffers 25 %).
        waiting_tolerance: the ``tolerance`` of a window in which callers waited for a slot
            or were refused one (at most ``tolerance``; ≥ 1). Then the gateway's own queue
            keeps the upstream busy, and a queue upstream as well adds latency, not
            throughput: the admitted calls stay faster while the rest wait or are shed.
        probe_interval: seconds between probes of the baseline: the gradient limit halves
            itself for one window and takes that window's latency as the new baseline, so
            the baseline follows an upstream that became slower (or faster) for good. The
            first probe follows the first window. A probe whose latency is above
            ``tolerance`` times the old baseline halves the limit again for another window,
            until the latency stops falling (a queue shrinks with the load, a slower model
            does not): a probe that meets a queue does not take it for the baseline.
        smoothing: the share of each recalculation taken, in (0, 1] (1: all of it at once).
        fast_growth: a window whose latency is within this share of the way from the
            baseline to ``tolerance`` times it saw no queue at all, and the gradient limit
            doubles (TCP's slow start), in [0, 1] (0: never; it grows by the gradient only).
            While callers wait for a slot, each answer this close to the baseline also
            allows one more call at once (TCP's slow start per acknowledgement: the limit
            doubles within one call's latency, up to twice what the last window decided),
            so an upstream whose capacity came back is found within a few call latencies.
        backoff: the factor that cuts the limit on an error (or, for ``aimd``, a slow call),
            in [0, 1).
        slow_call: for ``aimd``, seconds to the first token beyond which a call counts as a
            drop.
        max_waiting: calls that may wait for a slot when the limit is reached; more are
            refused at once (0: no queue). A waiting call costs no upstream work; the queue
            feeds the upstream between the waves of callers coming back after a refusal.
        max_wait: the longest a call waits for a slot, in seconds; it waits no longer than its
            own deadline leaves for the call either.
    """

    enabled: bool = attrs.field(default=False, metadata={"reloadable": False})
    algorithm: str = attrs.field(default="gradient", validator=one_of(*ADAPTIVE_ALGORITHMS))
    per_model: bool = attrs.field(default=False, metadata={"reloadable": False})
    initial_limit: int = attrs.field(default=20, validator=positive_int)
    min_limit: int = attrs.field(default=1, validator=positive_int)
    max_limit: int = attrs.field(default=256, validator=positive_int)
    window: float = attrs.field(default=1.0, validator=positive_number)
    settle: float = attrs.field(default=0.5, validator=non_negative_finite)
    min_samples: int = attrs.field(default=10, validator=positive_int)
    percentile: float = attrs.field(default=0.5, validator=fraction)
    tolerance: float = attrs.field(default=1.5, validator=at_least_one)
    waiting_tolerance: float = attrs.field(default=1.2, validator=at_least_one)
    probe_interval: float = attrs.field(default=60.0, validator=positive_time)
    smoothing: float = attrs.field(default=1.0, validator=fraction)
    fast_growth: float = attrs.field(default=0.3, validator=unit_interval)
    backoff: float = attrs.field(default=0.7, validator=fraction_below_one)
    slow_call: float = attrs.field(default=5.0, validator=positive_number)
    max_waiting: int = attrs.field(default=64, validator=_whole_or_zero)
    max_wait: float = attrs.field(default=1.0, validator=non_negative_time)

    def __attrs_post_init__(self) -> None:
        if not self.min_limit <= self.initial_limit <= self.max_limit:
            raise ValueError(
                "adaptive limits must satisfy min_limit ≤ initial_limit ≤ max_limit, got "
                f"{self.min_limit}, {self.initial_limit}, {self.max_limit}"
            )
