"""A multi-armed bandit over deployments: learn which one of a group serves best.

Each outcome earns a reward in [0, 1], a configurable mix of success, speed and cheapness
(:func:`reward`). Two algorithms:

* ``thompson``: each arm keeps a Beta(1 + Σreward, 1 + Σ(1 - reward)) posterior; the arm
  with the highest sample is chosen (fractional rewards update the Beta counts fractionally).
* ``epsilon-greedy``: with probability ε a uniformly random arm, otherwise the arm with the
  best mean reward; arms never tried count as perfect so each is tried once.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

import attrs

from .registry import BanditConfig

__all__ = ["ArmStatistics", "Bandit", "reward"]


def reward(config: BanditConfig, *, success: bool, latency: float, cost: float) -> float:
    """Score one outcome in [0, 1] by the configured mix of success, speed and cheapness.

    A failure earns nothing: speed and cheapness count only when the call succeeded.
    """
    if not success:
        return 0.0
    speed = max(0.0, 1.0 - latency / config.latency_scale)
    cheapness = max(0.0, 1.0 - cost / config.cost_scale)
    total = config.success_weight + config.latency_weight + config.cost_weight
    return (
        config.success_weight + config.latency_weight * speed + config.cost_weight * cheapness
    ) / total


@attrs.define
class _Arm:
    pulls: int = 0
    total: float = 0.0


@attrs.frozen
class ArmStatistics:
    """What the bandit has learned about one arm."""

    name: str
    """The deployment's name."""
    pulls: int
    """Outcomes recorded."""
    mean_reward: float | None
    """Average reward (``None`` before the first outcome)."""


@attrs.define(eq=False)
class Bandit:
    """Chooses among arms (deployment names) and learns from their rewards.

    Args:
        config: algorithm, ε and reward mix.
        rng: the random source (seed it for reproducible choices).
    """

    config: BanditConfig = attrs.field(factory=BanditConfig)
    rng: random.Random = attrs.field(factory=random.Random)
    _arms: dict[str, _Arm] = attrs.field(factory=dict, init=False)

    def choose(self, arms: Sequence[str]) -> str:
        """Return the arm to try next among ``arms`` (not empty)."""
        if not arms:
            raise ValueError("choose() needs at least one arm")
        if self.config.algorithm == "thompson":
            return max(arms, key=self._sample)
        if self.rng.random() < self.config.epsilon:
            return self.rng.choice(list(arms))
        return max(arms, key=self._mean)

    def update(self, arm: str, value: float) -> None:
        """Record a reward in [0, 1] for ``arm``."""
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"a reward must be in [0, 1], got {value!r}")
        state = self._arms.get(arm)
        if state is None:
            state = self._arms[arm] = _Arm()
        state.pulls += 1
        state.total += value

    def statistics(self) -> tuple[ArmStatistics, ...]:
        """Return what was learned per arm, by name."""
        return tuple(
            ArmStatistics(name, arm.pulls, arm.total / arm.pulls if arm.pulls else None)
            for name, arm in sorted(self._arms.items())
        )

    def _sample(self, name: str) -> float:
        arm = self._arms.get(name) or _Arm()
        return self.rng.betavariate(1.0 + arm.total, 1.0 + arm.pulls - arm.total)

    def _mean(self, name: str) -> float:
        arm = self._arms.get(name)
        if arm is None or not arm.pulls:
            return 1.0
        return arm.total / arm.pulls
