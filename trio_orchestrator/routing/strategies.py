"""Routing strategies: how the deployments that may serve a request are put in order.

The first deployment of the order is tried first; the rest form the fallback chain. Every
strategy sees only deployments that passed the pre-call check; unavailable ones are already
set aside (see :class:`HealthCheck`), so no strategy can pick one while another is available.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Sequence
from typing import Protocol, runtime_checkable

import attrs

from ..types import PromptRequest
from .bandit import Bandit
from .registry import ModelDeployment
from .tracker import OutcomeTracker

__all__ = [
    "Candidate",
    "HealthCheck",
    "RoutingDecision",
    "StrategyContext",
    "complexity_score",
    "order",
]


@runtime_checkable
class HealthCheck(Protocol):
    """Says whether a deployment may be called now.

    Circuit breakers (open: not available) and key pools (every key resting: not available)
    implement it; the router skips unavailable deployments while another is available.
    """

    def is_available(self, deployment: ModelDeployment) -> bool:
        """Return whether ``deployment`` may be called now; must be quick and not block."""


@attrs.frozen
class Candidate:
    """A deployment that may serve the request, with what the router predicts for it.

    Attributes:
        deployment: the deployment.
        predicted_cost: dollars, from the estimated input tokens and the expected output.
        predicted_latency: seconds (time to first event for streams) from the tracker's
            EWMA; ``None`` when it has not been measured.
    """

    deployment: ModelDeployment
    predicted_cost: float
    predicted_latency: float | None


@attrs.frozen
class RoutingDecision:
    """Why the router chose what it chose, for one request.

    Attributes:
        requested: the model name or alias the client asked for.
        strategy: the strategy that ordered the candidates.
        chosen: the deployment tried first.
        fallbacks: the deployments tried next, in order, if it fails.
        predicted_cost: dollars predicted for the chosen deployment.
        predicted_latency: seconds predicted for it (``None``: not measured yet).
        reason: one sentence saying why it was chosen.
        skipped: ``(deployment name, why)`` for each candidate left out.
        prompt_tokens: the estimated input tokens.
        complexity: the complexity score, for the ``complexity`` strategy.
    """

    requested: str
    strategy: str
    chosen: ModelDeployment
    fallbacks: tuple[ModelDeployment, ...]
    predicted_cost: float
    predicted_latency: float | None
    reason: str
    skipped: tuple[tuple[str, str], ...] = ()
    prompt_tokens: int = 0
    complexity: float | None = None

    @property
    def chain(self) -> tuple[ModelDeployment, ...]:
        """The chosen deployment followed by the fallbacks."""
        return (self.chosen, *self.fallbacks)


@attrs.define
class StrategyContext:
    """What a strategy may consult besides the candidates."""

    tracker: OutcomeTracker
    rng: random.Random
    bandit: Bandit | None = None
    pools: tuple[tuple[ModelDeployment, ...], tuple[ModelDeployment, ...]] | None = None
    complexity: float = 0.0
    threshold: float = 0.4


_CODE = re.compile(r"```|\bdef |\bclass |\bfunction\b|#include|SELECT\s", re.IGNORECASE)
_HARD = re.compile(
    r"\b(why|how|explain|prove|derive|analy[sz]e|compare|design|debug|optimi[sz]e|"
    r"refactor|step by step|trade-?offs?)\b",
    re.IGNORECASE,
)


def complexity_score(request: PromptRequest, prompt_tokens: int) -> float:
    """Score how demanding ``request`` looks, in [0, 1].

    The sum, capped at 1, of:

    * length: ``0.35 * min(prompt_tokens / 2000, 1)``;
    * code: ``0.2`` when the last user message holds code (a fence, ``def``, ``class``…);
    * reasoning words (why, how, explain, prove, compare, design, debug, step by step…) in
      the last user message: ``0.07`` each, at most ``0.21``;
    * tools offered: ``0.15``;
    * a long conversation: ``0.1 * min(messages / 10, 1)``.
    """
    chat = request.chat()
    last = next((m.content for m in reversed(chat) if m.role == "user"), "")
    score = 0.35 * min(prompt_tokens / 2000, 1.0)
    if _CODE.search(last):
        score += 0.2
    score += min(len(_HARD.findall(last)) * 0.07, 0.21)
    if request.params.tools:
        score += 0.15
    score += 0.1 * min(len(chat) / 10, 1.0)
    return min(score, 1.0)


def _by_cost(c: Candidate) -> tuple[float, str]:
    return (c.predicted_cost, c.deployment.name)


def _cost(candidates: Sequence[Candidate], _ctx: StrategyContext) -> list[Candidate]:
    return sorted(candidates, key=_by_cost)


def _latency(candidates: Sequence[Candidate], _ctx: StrategyContext) -> list[Candidate]:
    # Unmeasured deployments count as instant, so each is measured once before it is judged.
    return sorted(candidates, key=lambda c: (c.predicted_latency or 0.0, *_by_cost(c)))


def _reliability(candidates: Sequence[Candidate], ctx: StrategyContext) -> list[Candidate]:
    rate = ctx.tracker.error_rate
    return sorted(
        candidates,
        key=lambda c: (rate(c.deployment.name), c.predicted_latency or 0.0, *_by_cost(c)),
    )


def _least_loaded(candidates: Sequence[Candidate], ctx: StrategyContext) -> list[Candidate]:
    load = ctx.tracker.in_flight
    return sorted(
        candidates, key=lambda c: (load(c.deployment.name) / c.deployment.weight, *_by_cost(c))
    )


def _weighted(candidates: Sequence[Candidate], ctx: StrategyContext) -> list[Candidate]:
    # Efraimidis-Spirakis: sorting by u ** (1 / w) draws a weighted order without replacement.
    keys = {c.deployment.name: ctx.rng.random() ** (1.0 / c.deployment.weight) for c in candidates}
    return sorted(candidates, key=lambda c: -keys[c.deployment.name])


def _complexity(candidates: Sequence[Candidate], ctx: StrategyContext) -> list[Candidate]:
    cheap, strong = ctx.pools or ((), ())
    first, second = (strong, cheap) if ctx.complexity >= ctx.threshold else (cheap, strong)
    rank = {d.name: 0 for d in second}
    rank.update({d.name: -1 for d in first})
    return sorted(candidates, key=lambda c: (rank.get(c.deployment.name, 1), *_by_cost(c)))


def _bandit(candidates: Sequence[Candidate], ctx: StrategyContext) -> list[Candidate]:
    if ctx.bandit is None:
        return _cost(candidates, ctx)
    best = ctx.bandit.choose([c.deployment.name for c in candidates])
    return sorted(candidates, key=lambda c: (c.deployment.name != best, *_by_cost(c)))


_STRATEGIES: dict[str, Callable[[Sequence[Candidate], StrategyContext], list[Candidate]]] = {
    "cost": _cost,
    "latency": _latency,
    "reliability": _reliability,
    "least-loaded": _least_loaded,
    "weighted": _weighted,
    "complexity": _complexity,
    "bandit": _bandit,
}

_REASONS = {
    "cost": "cheapest predicted cost",
    "latency": "lowest measured latency",
    "reliability": "lowest recent error rate",
    "least-loaded": "fewest calls in flight per unit of weight",
    "weighted": "drawn by weight",
    "complexity": "complexity-scored pool",
    "bandit": "the bandit's choice",
}


def order(
    strategy: str, candidates: Sequence[Candidate], ctx: StrategyContext
) -> tuple[list[Candidate], str]:
    """Order ``candidates`` by ``strategy``; return the order and a reason for its head.

    Raises:
        ValueError: ``strategy`` is not a known strategy.
    """
    try:
        ordered = _STRATEGIES[strategy](candidates, ctx)
    except KeyError:
        raise ValueError(f"unknown routing strategy {strategy!r}") from None
    return ordered, _explain(strategy, ordered[0], ctx) if ordered else ""


def _explain(strategy: str, head: Candidate, ctx: StrategyContext) -> str:
    reason = f"{head.deployment.name}: {_REASONS[strategy]}"
    if strategy == "cost":
        reason += f" (${head.predicted_cost:.6f})"
    elif strategy == "latency" and head.predicted_latency is not None:
        reason += f" ({head.predicted_latency:.3f} s)"
    elif strategy == "latency":
        reason += " (not measured yet: measured first)"
    elif strategy == "reliability":
        reason += f" ({ctx.tracker.error_rate(head.deployment.name):.2f})"
    elif strategy == "complexity":
        pool = "strong" if ctx.complexity >= ctx.threshold else "cheap"
        reason += f": score {ctx.complexity:.2f} vs threshold {ctx.threshold:.2f} → {pool}"
    return reason
