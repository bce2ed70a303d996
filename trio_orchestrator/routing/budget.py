"""Spending per API key and per model, and the error for a request that would overspend."""

from __future__ import annotations

import math

import attrs
import trio

from ..errors import WorkerError
from .registry import BudgetConfig

__all__ = ["BudgetExceeded", "BudgetLedger", "BudgetStatistics"]


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
    ) -> None:
        self.scope, self.name = scope, name
        self.limit, self.spent, self.needed = limit, spent, needed
        super().__init__(
            f"budget exceeded for {scope} {name!r}: ${spent:.6f} spent of ${limit:.6f}, and "
            f"this request would cost about ${needed:.6f}; raise the limit in "
            f"routing.budgets, ask for a cheaper model or a smaller max_tokens, or wait "
            f"for the budget period to restart",
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
