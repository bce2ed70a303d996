"""Virtual keys on the request path: the live table, and the layer that applies each key's
policy (allowed models, aliases, rate limits, budget).

:class:`VirtualKeys` is the in-memory table the guard identifies callers by (a digest
lookup) and :class:`KeyPolicyWorker` reads (an id lookup): no storage read on the request
path. The admin API writes a key to storage first, then puts it here.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Coroutine, Iterator
from typing import Any

import attrs
import trio

from ..errors import ModelNotFound, RateLimitExceeded
from ..events import Done, StreamEvent, Usage
from ..resilience.ratelimit import TokenBucket, estimate_tokens
from ..storage.base import KeyRecord
from ..types import PromptRequest
from ..workers.base import EventSink, ModelWorker
from .budget import KeyBudgets

__all__ = ["KeyPolicyWorker", "VirtualKeys"]

# Output tokens assumed for a tokens-per-minute estimate when a request sets no max_tokens.
_DEFAULT_OUTPUT_TOKENS = 256


@attrs.define(eq=False)
class _Limits:
    """One key's own rate-limit buckets (requests and tokens per minute)."""

    requests: TokenBucket | None
    tokens: TokenBucket | None


def _limits(record: KeyRecord) -> _Limits:
    def bucket(per_minute: int | None) -> TokenBucket | None:
        return None if per_minute is None else TokenBucket(per_minute / 60.0, float(per_minute))

    return _Limits(bucket(record.rpm), bucket(record.tpm))


@attrs.define(eq=False)
class VirtualKeys:
    """The live virtual keys by id and by digest, their budgets and rate-limit buckets.

    Args:
        clock: Unix time, for expiry and budget periods.

    Attributes:
        on_charge: told of each charge (key id, budget period, dollars) after the key's own
            budget took it: how spend is shared with other processes.
    """

    clock: Callable[[], float] = time.time
    budgets: KeyBudgets = attrs.field(init=False)
    on_charge: Callable[[str, str, float], None] | None = attrs.field(default=None, init=False)
    _by_id: dict[str, KeyRecord] = attrs.field(factory=dict, init=False)
    _by_digest: dict[bytes, KeyRecord] = attrs.field(factory=dict, init=False)
    _limits: dict[str, _Limits] = attrs.field(factory=dict, init=False)

    def __attrs_post_init__(self) -> None:
        self.budgets = KeyBudgets(self.clock)

    def put(self, record: KeyRecord) -> None:
        """Add or replace a key (a revoked one is removed); its rate limits start afresh
        when they change."""
        old = self._by_id.pop(record.id, None)
        if old is not None:
            self._by_digest.pop(old.digest, None)
        if record.revoked_at is not None:
            self._limits.pop(record.id, None)
            self.budgets.forget(record.id)
            return
        self._by_id[record.id] = record
        self._by_digest[record.digest] = record
        if old is None or (old.rpm, old.tpm) != (record.rpm, record.tpm):
            self._limits[record.id] = _limits(record)

    def get(self, key_id: str) -> KeyRecord | None:
        """The live key with this id, or None."""
        return self._by_id.get(key_id)

    def identify(self, digest: bytes) -> KeyRecord | None:
        """The key whose secret has this SHA-256 digest, if it is live now."""
        record = self._by_digest.get(digest)
        if record is None or not record.live(self.clock()):
            return None
        return record

    def __iter__(self) -> Iterator[KeyRecord]:
        return iter(list(self._by_id.values()))

    def __len__(self) -> int:
        return len(self._by_id)

    def charge(self, key_id: str, dollars: float) -> None:
        """Add a finished request's cost to its key's budget period."""
        record = self._by_id.get(key_id)
        if record is not None and dollars > 0:
            self.budgets.charge(key_id, record.budget_period, dollars)
            if self.on_charge is not None:
                self.on_charge(key_id, record.budget_period, dollars)

    def limits(self, key_id: str) -> _Limits | None:
        """The key's own rate-limit buckets."""
        return self._limits.get(key_id)


@attrs.define(eq=False)
class KeyPolicyWorker:
    """The outermost layer: applies a virtual key's policy to its requests.

    A request whose ``meta["api_key_id"]`` names a live virtual key has its model name
    mapped through the key's ``aliases``, is refused 404 (OpenAI's ``model_not_found``,
    naming the model) when the key may not use that model, 429 ``insufficient_quota`` once
    the key's budget for the period is spent, and 429 ``rate_limit_exceeded`` past the key's
    own ``rpm`` or ``tpm`` (tokens estimated before the call and corrected by the usage
    after it). Other requests pass unchanged.

    Args:
        inner: the worker it wraps.
        keys: the live virtual keys.
    """

    inner: ModelWorker
    keys: VirtualKeys

    def generate(self, request: PromptRequest, emit: EventSink) -> Coroutine[Any, Any, None]:
        """Apply the key's policy, then call ``inner``.

        Not a coroutine function: the policy is checked when called (a refusal raises from
        the call, inside the caller's ``await``), and unless the key meters tokens the call
        is ``inner``'s own coroutine, with no frame of this layer resumed at every event.

        Raises:
            ModelNotFound: the key may not use the model.
            BudgetExceeded: the key's budget is spent.
            RateLimitExceeded: the key's own rpm or tpm has no room.
        """
        key_id = request.meta.get("api_key_id")
        record = None if key_id is None else self.keys.get(key_id)
        if record is None:
            return self.inner.generate(request, emit)
        request = self._check_model(record, request)
        if record.budget is not None:
            refusal = self.keys.budgets.exceeded(record.id, record.budget, record.budget_period)
            if refusal is not None:
                raise refusal
        limits = self.keys.limits(record.id)
        estimate = self._admit(limits, request)
        if limits is None or limits.tokens is None:
            return self.inner.generate(request, emit)
        return self._metered(limits.tokens, estimate, request, emit)

    @staticmethod
    def _check_model(record: KeyRecord, request: PromptRequest) -> PromptRequest:
        asked = request.params.model
        model = record.aliases.get(asked, asked)
        if record.models and model not in record.models:
            raise ModelNotFound(
                f"The model `{asked}` does not exist or you do not have access to it.",
                provider="gateway",
                status=404,
            )
        if model == asked:
            return request
        return attrs.evolve(request, params=attrs.evolve(request.params, model=model))

    @staticmethod
    def _admit(limits: _Limits | None, request: PromptRequest) -> int:
        """Take room for ``request`` from the key's buckets (all or none); the token
        estimate charged."""
        if limits is None:
            return 0
        now = trio.current_time()
        estimate = 0
        if limits.tokens is not None:
            estimate = estimate_tokens(request, _DEFAULT_OUTPUT_TOKENS)
        waits = [
            bucket.wait_time(cost, now)
            for bucket, cost in ((limits.requests, 1), (limits.tokens, estimate))
            if bucket is not None
        ]
        wait = max(waits, default=0.0)
        if wait > 0:
            raise RateLimitExceeded(
                f"this API key's own rate limit has no room; retry in {wait:.3g} s",
                retry_after=wait,
            )
        if limits.requests is not None:
            limits.requests.take(1, now)
        if limits.tokens is not None:
            limits.tokens.take(estimate, now)
        return estimate

    async def _metered(
        self, bucket: TokenBucket, estimate: int, request: PromptRequest, emit: EventSink
    ) -> None:
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
            if usage is not None:
                now, charged = trio.current_time(), min(estimate, bucket.capacity)
                actual = usage.total_tokens
                if actual < charged:
                    bucket.give_back(charged - actual, now)
                elif actual > charged:
                    bucket.take(actual - charged, now)
