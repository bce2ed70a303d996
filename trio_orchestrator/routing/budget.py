"""Spending per API key and per model, and the error for a request that would overspend.

Two ledgers: :class:`BudgetLedger` holds ``[routing.budgets]`` (limits from the
configuration, one period in seconds on Trio's clock); :class:`KeyBudgets` holds each
virtual key's own budget over a calendar period (UTC day, week or month, or ``total``),
seeded from storage at start so that a restart keeps what was spent.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import attrs
import trio

from ..errors import WorkerError
from ..storage.base import period_bounds
from .registry import BudgetConfig

__all__ = ["BudgetExceeded", "BudgetLedger", "BudgetStatistics", "KeyBudgets"]

_CONFIG_ADVICE = (
    "raise the limit in routing.budgets, ask for a cheaper model or a smaller max_tokens, "
    "or wait for the budget period to restart"
)


class BudgetExceeded(WorkerError):
    """A request's predicted cost would exceed a spending limit, so no call was made.

    Not retryable until the budget period restarts (``retry_after`` says when, if it does).

    Args:
        scope: ``"api_key"`` or ``"model"``.
        name: the API key id or the model name.
        limit: the limit in dollars.
        spent: dollars spent in the current period.
        needed: the request's predicted cost in dollars (the cheapest that fits otherwise).
        retry_after: seconds until the period restarts, when it does.
        advice: what to do about it (default: the advice for ``[routing.budgets]``).
    """

    def __init__(
        self,
        scope: str,
        name: str,
        *,
        limit: float,
        spent: float,
        needed: float,
        retry_after: float | None = None,
        advice: str = _CONFIG_ADVICE,
    ) -> None:
        self.scope, self.name = scope, name
        self.limit, self.spent, self.needed = limit, spent, needed
        super().__init__(
            f"budget exceeded for {scope} {name!r}: ${spent:.6f} spent of ${limit:.6f}, and "
            f"this request would cost about ${needed:.6f}; {advice}",
            retry_after=retry_after,
        )


@attrs.frozen
class BudgetStatistics:
    """Spending in the current period."""

    per_api_key: dict[str, float]
    """Dollars spent per API key id."""
    per_model: dict[str, float]
    """Dollars spent per public model name."""
    refused: int
    """Requests refused for a budget since start."""


@attrs.define(eq=False)
class BudgetLedger:
    """Adds up spending per API key and per model, and says what would overspend.

    Args:
        config: the limits and the period.
    """

    config: BudgetConfig
    _keys: dict[str, float] = attrs.field(factory=dict, init=False)
    _models: dict[str, float] = attrs.field(factory=dict, init=False)
    _period_start: float | None = attrs.field(default=None, init=False)
    _refused: int = attrs.field(default=0, init=False)

    def take_spending_from(self, other: BudgetLedger) -> None:
        """Carry ``other``'s spending so far over (a reload changes limits, not history)."""
        self._keys, self._models = dict(other._keys), dict(other._models)
        self._period_start, self._refused = other._period_start, other._refused

    def _roll(self) -> None:
        now = trio.current_time()
        if self._period_start is None:
            self._period_start = now
        elif now - self._period_start >= self.config.period:
            periods = (now - self._period_start) // self.config.period
            self._period_start += periods * self.config.period
            self._keys.clear()
            self._models.clear()

    def _retry_after(self) -> float | None:
        if math.isinf(self.config.period) or self._period_start is None:
            return None
        return max(self._period_start + self.config.period - trio.current_time(), 0.0)

    def key_left(self, api_key: str | None) -> float:
        """Dollars the API key may still spend this period (``inf``: no limit)."""
        if api_key is None:
            return math.inf
        self._roll()
        limit = self.config.per_api_key.get(api_key, self.config.default_per_api_key)
        return limit - self._keys.get(api_key, 0.0)

    def model_left(self, model: str) -> float:
        """Dollars the public model may still spend this period (``inf``: no limit)."""
        limit = self.config.per_model.get(model)
        if limit is None:
            return math.inf
        self._roll()
        return limit - self._models.get(model, 0.0)

    def refuse(self, scope: str, name: str, needed: float) -> BudgetExceeded:
        """Count a refusal and return the error that says so."""
        self._refused += 1
        if scope == "api_key":
            limit = self.config.per_api_key.get(name, self.config.default_per_api_key)
            spent = self._keys.get(name, 0.0)
        else:
            limit, spent = self.config.per_model[name], self._models.get(name, 0.0)
        return BudgetExceeded(
            scope, name, limit=limit, spent=spent, needed=needed, retry_after=self._retry_after()
        )

    def charge(self, api_key: str | None, model: str, cost: float) -> None:
        """Add ``cost`` dollars to the API key's and the model's spending."""
        if cost <= 0:
            return
        self._roll()
        if api_key is not None:
            self._keys[api_key] = self._keys.get(api_key, 0.0) + cost
        self._models[model] = self._models.get(model, 0.0) + cost

    def statistics(self) -> BudgetStatistics:
        """Return spending in the current period."""
        return BudgetStatistics(dict(self._keys), dict(self._models), self._refused)


@attrs.define(eq=False)
class KeyBudgets:
    """Dollars spent per API key in its budget's current calendar period (UTC).

    The fast, in-memory check on the request path: :meth:`charge` after each request,
    :meth:`exceeded` before the next. Seed it from storage with :meth:`seed` at start.
    Reads Unix time (calendar periods are wall-clock periods) from ``clock``.
    """

    clock: Callable[[], float] = time.time
    _spent: dict[str, tuple[str | None, float]] = attrs.field(factory=dict, init=False)
    _refused: int = attrs.field(default=0, init=False)

    def _current(self, key_id: str, period: str) -> float:
        start, _ = period_bounds(period, self.clock())
        began, spent = self._spent.get(key_id, (start, 0.0))
        return spent if began == start else 0.0

    def seed(self, key_id: str, period: str, dollars: float) -> None:
        """Set what ``key_id`` has spent in its current ``period`` (read from storage)."""
        start, _ = period_bounds(period, self.clock())
        self._spent[key_id] = (start, dollars)

    def charge(self, key_id: str, period: str, dollars: float) -> None:
        """Add ``dollars`` to what ``key_id`` spent in its current ``period``."""
        if dollars <= 0:
            return
        start, _ = period_bounds(period, self.clock())
        self._spent[key_id] = (start, self._current(key_id, period) + dollars)

    def spent(self, key_id: str, period: str) -> float:
        """Dollars ``key_id`` spent in its current ``period``."""
        return self._current(key_id, period)

    def exceeded(self, key_id: str, budget: float, period: str) -> BudgetExceeded | None:
        """The error refusing ``key_id``'s next request when it has spent ``budget`` dollars
        (counted), else None."""
        spent = self._current(key_id, period)
        if spent < budget:
            return None
        self._refused += 1
        _, end = period_bounds(period, self.clock())
        retry_after = None if end is None else max(end - self.clock(), 0.0)
        advice = (
            "raise the key's budget (PATCH /v1/admin/keys/{id}) or wait for its "
            f"{period} to restart"
            if end is not None
            else "raise the key's budget"
        )
        return BudgetExceeded(
            "api_key",
            key_id,
            limit=budget,
            spent=spent,
            needed=0.0,
            retry_after=retry_after,
            advice=advice,
        )

    def forget(self, key_id: str) -> None:
        """Drop ``key_id``'s count (a revoked key)."""
        self._spent.pop(key_id, None)

    @property
    def refused(self) -> int:
        """Requests refused for a key's budget since start."""
        return self._refused
