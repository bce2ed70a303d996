"""Rate limits: token buckets per provider, model, user and API key, checked together.

Each configured limit (:class:`~trio_orchestrator.resilience.config.LimitConfig`) keeps one
token bucket per value of its scope: per provider, per model (``request.params.model``), per
user (``request.meta["user"]``) or per API key (``request.meta["api_key_id"]``). A request is
charged against every bucket that applies to it, atomically: either all of them have room and
all are charged, or none is (:meth:`RateLimiter.try_acquire`, which has no checkpoint).

Requests limits charge 1. Tokens-per-minute limits charge an estimate before the call —
``ceil(characters of the chat / 4) + max_tokens`` (``default_max_tokens`` when the request
sets none; for an embedding request, its inputs' characters / 4 and no output) — and are
corrected by the real ``Usage`` after it: the unused part is given back, an overrun is taken
(the bucket may go below zero, delaying later calls). Without a reported usage the estimate
stands. A charge larger than a bucket is clamped to the bucket's size, so
that a big request waits for a full bucket instead of never passing.

The arithmetic (:class:`TokenBucket`, :class:`RateLimiter`) takes ``now`` explicitly and never
reads a clock; :class:`RateLimitLayer` is the worker that applies it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import ClassVar, Protocol

import attrs
import trio

from ..errors import RateLimitExceeded
from ..events import Done, StreamEvent, Usage
from ..types import PromptRequest
from ..workers.base import EventSink, ModelWorker
from .config import LimitConfig, RateLimitsConfig, refuse_toggle

__all__ = [
    "BucketStatistics",
    "Charge",
    "RateLimitLayer",
    "RateLimitStatistics",
    "RateLimiter",
    "SharedLimits",
    "TokenBucket",
    "estimate_tokens",
]

# Float arithmetic may leave a bucket a hair short of a charge at the very time its wait said
# it would be full; a shortfall this small is treated as room.
_EPSILON = 1e-9


@attrs.define(eq=False, slots=True)
class TokenBucket:
    """A bucket of ``capacity`` units refilled at ``rate`` units per second; starts full.

    Args:
        rate: units added per second.
        capacity: the most units the bucket holds.
    """

    rate: float
    capacity: float
    _level: float = attrs.field(init=False)
    _updated: float = attrs.field(default=-math.inf, init=False)

    def __attrs_post_init__(self) -> None:
        self._level = self.capacity

    def level(self, now: float) -> float:
        """The units available at ``now`` (negative while paying back an overrun)."""
        self._refill(now)
        return self._level

    def wait_time(self, cost: float, now: float) -> float:
        """Seconds from ``now`` until ``cost`` units are available (0 if they are now)."""
        self._refill(now)
        shortfall = min(cost, self.capacity) - self._level
        return 0.0 if shortfall <= _EPSILON else shortfall / self.rate

    def take(self, cost: float, now: float) -> None:
        """Remove ``cost`` units (clamped to the capacity); the level may go below zero."""
        self._refill(now)
        self._level -= min(cost, self.capacity)

    def give_back(self, units: float, now: float) -> None:
        """Return ``units`` (never above the capacity)."""
        self._refill(now)
        self._level = min(self.capacity, self._level + units)

    def _refill(self, now: float) -> None:
        # The first refill (from -inf) fills the bucket, which is where it starts anyway.
        if now > self._updated:
            level = self._level + (now - self._updated) * self.rate
            self._level = level if level < self.capacity else self.capacity
            self._updated = now


@attrs.frozen
class Charge:
    """What one request owes one bucket."""

    bucket: TokenBucket
    cost: float
    limit: LimitConfig


@attrs.frozen
class BucketStatistics:
    """One bucket of one limit."""

    scope: str
    """``provider``, ``model``, ``user`` or ``api_key``."""
    key: str
    """The scope's value this bucket counts (a model name, a user…)."""
    unit: str
    """``requests`` or ``tokens``."""
    level: float
    """Units available now."""
    capacity: float
    """The bucket's size."""


@attrs.frozen
class RateLimitStatistics:
    """A snapshot of a rate-limit layer."""

    admitted: int
    """Requests admitted (at once or after waiting)."""
    rejected: int
    """Requests refused with ``RateLimitExceeded``."""
    waited: int
    """Requests that waited before being admitted."""
    waiting: int
    """Requests waiting now."""
    wait_seconds: float
    """Total seconds admitted requests spent waiting."""
    buckets: tuple[BucketStatistics, ...]
    """Every bucket in use."""


def estimate_tokens(request: PromptRequest, default_max_tokens: int) -> int:
    """The tokens a request is charged before the call: chat characters / 4, plus output
    (an embedding request: its inputs' characters / 4, a token array its length; no output)."""
    if request.embed is not None:
        texts = sum(len(i) for i in request.embed if isinstance(i, str))
        arrays = sum(len(i) for i in request.embed if isinstance(i, tuple))
        return math.ceil(texts / 4) + arrays
    characters = sum(len(message.content) for message in request.chat())
    return math.ceil(characters / 4) + (request.params.max_tokens or default_max_tokens)


@attrs.define(eq=False)
class RateLimiter:
    """The buckets of a set of limits; pure arithmetic with explicit times.

    Args:
        limits: the limits.
    """

    limits: Sequence[LimitConfig]
    _buckets: dict[tuple[int, str], TokenBucket] = attrs.field(factory=dict, init=False)
    # Per scope values: the request-count charges (cost 1, reusable as they are) and the
    # token buckets (charged a per-request estimate). Built once per distinct key.
    _plans: dict[tuple[str | None, ...], tuple[list[Charge], list[Charge]]] = attrs.field(
        factory=dict, init=False
    )

    def charges(self, keys: dict[str, str], tokens: int) -> list[Charge]:
        """The charges for a request whose scope values are ``keys`` and estimate ``tokens``.

        Args:
            keys: scope → value (``provider``, ``model``, and when known ``user``,
                ``api_key``); a limit whose scope is missing does not apply.
            tokens: the request's token estimate.
        """
        plan_key = tuple(keys.get(limit.scope) for limit in self.limits)
        plan = self._plans.get(plan_key)
        if plan is None:
            plan = self._plans[plan_key] = self._plan(plan_key)
        requests, token_charges = plan
        if not token_charges:
            return requests
        return requests + [Charge(c.bucket, tokens, c.limit) for c in token_charges]

    def _plan(self, plan_key: tuple[str | None, ...]) -> tuple[list[Charge], list[Charge]]:
        requests: list[Charge] = []
        tokens: list[Charge] = []
        for index, (limit, key) in enumerate(zip(self.limits, plan_key, strict=True)):
            if key is None or (limit.match is not None and key != limit.match):
                continue
            bucket = self._buckets.get((index, key))
            if bucket is None:
                bucket = self._buckets[index, key] = TokenBucket(limit.rate, limit.capacity)
            (tokens if limit.counts_tokens else requests).append(Charge(bucket, 1, limit))
        return requests, tokens

    @staticmethod
    def try_acquire(charges: Sequence[Charge], now: float) -> tuple[float, bool]:
        """Charge every bucket if all have room; otherwise charge none.

        Returns:
            ``(0.0, False)`` when charged; else the seconds until all would have room, and
            whether a refusing limit is in ``reject`` mode.
        """
        # The hot path of every request: TokenBucket's refill and take inlined (it doubles
        # the checks per second).
        wait, reject = 0.0, False
        for charge in charges:
            bucket = charge.bucket
            capacity = bucket.capacity
            if now > bucket._updated:
                level = bucket._level + (now - bucket._updated) * bucket.rate
                bucket._level = level if level < capacity else capacity
                bucket._updated = now
            cost = charge.cost if charge.cost < capacity else capacity
            shortfall = cost - bucket._level
            if shortfall > _EPSILON:
                needed = shortfall / bucket.rate
                if needed > wait:
                    wait = needed
                reject = reject or charge.limit.mode == "reject"
        if wait == 0.0:
            for charge in charges:
                bucket = charge.bucket
                bucket._level -= charge.cost if charge.cost < bucket.capacity else bucket.capacity
        return wait, reject

    @property
    def size(self) -> int:
        """Buckets held."""
        return len(self._buckets)

    def sweep(self, now: float) -> int:
        """Forget every bucket that is full at ``now`` and return how many were forgotten.

        A full bucket is indistinguishable from the fresh one that replaces it on the next
        request, so this bounds memory (one bucket per user ever seen) without changing any
        decision.
        """
        buckets = self._buckets
        full = [key for key, bucket in buckets.items() if bucket.level(now) >= bucket.capacity]
        for key in full:
            del buckets[key]
        if full:
            self._plans.clear()  # plans hold buckets; they are rebuilt on demand
        return len(full)

    def statistics(self, now: float) -> tuple[BucketStatistics, ...]:
        """One snapshot per bucket in use."""
        return tuple(
            BucketStatistics(
                scope=self.limits[index].scope,
                key=key,
                unit="tokens" if self.limits[index].counts_tokens else "requests",
                level=bucket.level(now),
                capacity=bucket.capacity,
            )
            for (index, key), bucket in self._buckets.items()
        )


class SharedLimits(Protocol):
    """Buckets shared with other processes (see
    :class:`~trio_orchestrator.distributed.SharedRateLimiter`)."""

    async def try_acquire(self, keys: dict[str, str], tokens: int) -> tuple[float, bool] | None:
        """Like :meth:`RateLimiter.try_acquire`; ``None``: unavailable, use local buckets."""

    async def reconcile(self, keys: dict[str, str], estimate: int, actual: int) -> None:
        """Correct the token buckets by a request's real usage."""


@attrs.define(eq=False)
class RateLimitLayer:
    """A worker that admits calls to ``inner`` within the configured rate limits.

    When a bucket lacks room: a limit in ``reject`` mode refuses at once; otherwise the
    request queues, first come first served among requests charged to the same buckets, and
    is refused at once if its wait would reach its effective deadline. A refusal is
    :class:`~trio_orchestrator.errors.RateLimitExceeded` with ``retry_after``.

    Args:
        inner: the worker to call.
        config: the limits.
        provider: the provider's name (the value of the ``provider`` scope).
        shared: when given, the buckets are shared with other processes (in Redis) and the
            local ones are used only while it is unavailable.
    """

    inner: ModelWorker
    config: RateLimitsConfig
    provider: str = attrs.field(default="default", kw_only=True)
    shared: SharedLimits | None = attrs.field(default=None, kw_only=True)
    _limiter: RateLimiter = attrs.field(init=False)
    _queues: dict[tuple[int, ...], trio.Lock] = attrs.field(factory=dict, init=False)
    _counts_tokens: bool = attrs.field(init=False)
    _sweep_at: int = attrs.field(init=False)
    _admitted: int = attrs.field(default=0, init=False)
    _rejected: int = attrs.field(default=0, init=False)
    _waited: int = attrs.field(default=0, init=False)
    _waiting: int = attrs.field(default=0, init=False)
    _wait_seconds: float = attrs.field(default=0.0, init=False)

    def __attrs_post_init__(self) -> None:
        self._limiter = RateLimiter(self.config.limits)
        self._counts_tokens = any(limit.counts_tokens for limit in self.config.limits)
        self._sweep_at = self.config.max_buckets

    def reconfigure(self, section: RateLimitsConfig, /) -> list[str]:
        """Apply reloaded ``[resilience.rate_limits]`` to what is admitted next (fresh, full
        buckets; requests already waiting keep the buckets they wait on)."""
        refused = refuse_toggle("rate_limits", self.config.enabled, section.enabled)
        if not refused and section != self.config:
            self.config = section
            self.__attrs_post_init__()
            self._queues = {}
        return refused

    metric_kind: ClassVar[str] = "rate_limit"
    metric_counters: ClassVar[tuple[str, ...]] = ("admitted", "rejected", "waited")

    def statistics(self) -> RateLimitStatistics:
        """A snapshot of the counters and buckets."""
        return RateLimitStatistics(
            admitted=self._admitted,
            rejected=self._rejected,
            waited=self._waited,
            waiting=self._waiting,
            wait_seconds=self._wait_seconds,
            buckets=self._limiter.statistics(trio.current_time()),
        )

    async def generate(self, request: PromptRequest, emit: EventSink) -> None:
        """Wait for (or be refused) room in every applicable bucket, then call ``inner``.

        Raises:
            RateLimitExceeded: a ``reject`` limit had no room, or waiting would pass the
                deadline.
        """
        estimate = (
            estimate_tokens(request, self.config.default_max_tokens) if self._counts_tokens else 0
        )
        limiter = self._limiter
        if limiter.size > self._sweep_at and not self._queues:
            limiter.sweep(trio.current_time())
            self._sweep_at = max(self.config.max_buckets, 2 * limiter.size)
        keys = self._keys(request)
        charges = limiter.charges(keys, estimate)
        if self.shared is None or not await self._admit_shared(self.shared, keys, estimate):
            await self._admit(charges)
        if not estimate or not any(charge.limit.counts_tokens for charge in charges):
            await self.inner.generate(request, emit)
            return
        usage: Usage | None = None

        async def metered_emit(event: StreamEvent) -> None:
            nonlocal usage
            if isinstance(event, Usage):
                usage = event
            elif isinstance(event, Done) and event.usage is not None:
                usage = event.usage
            await emit(event)

        try:
            await self.inner.generate(request, metered_emit)
        finally:
            if usage is not None and self.shared is not None:
                with trio.CancelScope(shield=True):  # bounded by the operation timeout
                    await self.shared.reconcile(keys, estimate, usage.total_tokens)
            elif usage is not None:
                self._reconcile(charges, estimate, usage.total_tokens)

    def _keys(self, request: PromptRequest) -> dict[str, str]:
        keys = {"provider": self.provider, "model": request.params.model}
        user = request.meta.get("user")
        if user is not None:
            keys["user"] = user
        api_key = request.meta.get("api_key_id")
        if api_key is not None:
            keys["api_key"] = api_key
        return keys

    async def _admit(self, charges: list[Charge]) -> None:
        queue_key = tuple(id(charge.bucket) for charge in charges) if self._queues else ()
        queue = self._queues.get(queue_key) if queue_key else None
        if queue is None or not queue.locked():
            wait, reject = self._limiter.try_acquire(charges, trio.current_time())
            if wait == 0.0:
                self._admitted += 1
                return
            self._refuse_if(reject, wait, trio.current_effective_deadline())
        await self._wait_in_line(queue_key or tuple(id(c.bucket) for c in charges), charges)

    async def _admit_shared(self, shared: SharedLimits, keys: dict[str, str], tokens: int) -> bool:
        """Wait for (or be refused) room in the shared buckets; False: they are unavailable
        and the local buckets decide."""
        deadline = trio.current_effective_deadline()
        start = trio.current_time()
        slept = False  # a round trip to Redis takes time too, but is no wait for room
        while (answer := await shared.try_acquire(keys, tokens)) is not None:
            wait, reject = answer
            if wait == 0.0:
                self._admitted += 1
                if slept:
                    self._waited += 1
                    self._wait_seconds += trio.current_time() - start
                return True
            self._refuse_if(reject, wait, deadline)
            self._waiting += 1
            try:
                await trio.sleep(wait)
            finally:
                self._waiting -= 1
            slept = True
        return False

    async def _wait_in_line(self, queue_key: tuple[int, ...], charges: list[Charge]) -> None:
        queue = self._queues.setdefault(queue_key, trio.Lock())
        start = trio.current_time()
        deadline = trio.current_effective_deadline()
        self._waiting += 1
        try:
            async with queue:  # trio.Lock is fair: waiters are served in arrival order
                while True:
                    wait, reject = self._limiter.try_acquire(charges, trio.current_time())
                    if wait == 0.0:
                        break
                    self._refuse_if(reject, wait, deadline)
                    await trio.sleep(wait)
        finally:
            self._waiting -= 1
            idle = not queue.locked() and not queue.statistics().tasks_waiting
            if idle and self._queues.get(queue_key) is queue:
                del self._queues[queue_key]
        self._admitted += 1
        self._waited += 1
        self._wait_seconds += trio.current_time() - start

    def _refuse_if(self, reject: bool, wait: float, deadline: float) -> None:
        now = trio.current_time()
        if reject:
            why = "a rate limit in reject mode has no room"
        elif now + wait >= deadline:
            why = "waiting for room would pass the request's deadline"
        else:
            return
        self._rejected += 1
        raise RateLimitExceeded(
            f"rate limited locally: {why}; retry in {wait:.3g} s", retry_after=wait
        )

    def _reconcile(self, charges: list[Charge], estimate: int, actual: int) -> None:
        now = trio.current_time()
        for charge in charges:
            if not charge.limit.counts_tokens:
                continue
            charged = min(estimate, charge.bucket.capacity)
            if actual < charged:
                charge.bucket.give_back(charged - actual, now)
            elif actual > charged:
                charge.bucket.take(actual - charged, now)
