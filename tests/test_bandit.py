"""The bandit: rewards, and convergence on a scripted environment."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from trio_orchestrator.routing import Bandit, BanditConfig, reward

TRIALS = 1500
LAST = 500


def run(bandit: Bandit, rates: list[float], env: random.Random) -> float:
    """Play TRIALS rounds; return the share of the last LAST choices that were the best arm."""
    arms = [f"arm{i}" for i in range(len(rates))]
    best = arms[rates.index(max(rates))]
    hits = 0
    for trial in range(TRIALS):
        arm = bandit.choose(arms)
        success = env.random() < rates[arms.index(arm)]
        bandit.update(arm, 1.0 if success else 0.0)
        hits += trial >= TRIALS - LAST and arm == best
    return hits / LAST


# Arms of different success rates, the best at least 0.25 ahead of the next.
environments = st.integers(2, 4).flatmap(
    lambda n: st.tuples(
        st.floats(0.5, 0.95),
        st.lists(st.floats(0.0, 1.0), min_size=n - 1, max_size=n - 1),
        st.integers(0, n - 1),
    )
)


def arrange(best: float, others: list[float], position: int) -> list[float]:
    rates = [min(o * (best - 0.25), best - 0.25) for o in others]
    rates.insert(position, best)
    return rates


@given(env=environments, seed=st.integers(0, 2**32 - 1))
def test_thompson_sampling_settles_on_the_best_arm(
    env: tuple[float, list[float], int], seed: int
) -> None:
    """After 1000 rounds, Thompson sampling picks the best arm ≥ 90% of the last 500."""
    rates = arrange(*env)
    bandit = Bandit(BanditConfig(algorithm="thompson"), random.Random(seed))
    assert run(bandit, rates, random.Random(seed + 1)) >= 0.9


@given(env=environments, seed=st.integers(0, 2**32 - 1))
def test_epsilon_greedy_settles_on_the_best_arm(
    env: tuple[float, list[float], int], seed: int
) -> None:
    """With ε = 0.1, ε-greedy picks the best arm ≥ 80% of the last 500 rounds."""
    rates = arrange(*env)
    config = BanditConfig(algorithm="epsilon-greedy", epsilon=0.1)
    bandit = Bandit(config, random.Random(seed))
    assert run(bandit, rates, random.Random(seed + 1)) >= 0.8


def test_an_untried_arm_is_tried_before_a_known_mediocre_one() -> None:
    """ε-greedy (ε = 0) counts an untried arm as perfect, so it is tried."""
    bandit = Bandit(BanditConfig(algorithm="epsilon-greedy", epsilon=0.0), random.Random(1))
    bandit.update("known", 0.6)
    assert bandit.choose(["known", "new"]) == "new"


@given(
    latency=st.floats(0, 1e6),
    cost=st.floats(0, 1e6),
    success=st.booleans(),
)
def test_a_reward_is_in_the_unit_interval_and_zero_for_a_failure(
    latency: float, cost: float, success: bool
) -> None:
    """Every reward lies in [0, 1]; a failure earns exactly 0."""
    value = reward(BanditConfig(), success=success, latency=latency, cost=cost)
    assert 0.0 <= value <= 1.0
    if not success:
        assert value == 0.0


def test_faster_and_cheaper_successes_earn_more() -> None:
    """Among successes, lower latency and lower cost score higher."""
    config = BanditConfig()
    assert reward(config, success=True, latency=1, cost=0) > reward(
        config, success=True, latency=20, cost=0
    )
    assert reward(config, success=True, latency=1, cost=0.0) > reward(
        config, success=True, latency=1, cost=0.04
    )


def test_rewards_outside_the_unit_interval_are_refused() -> None:
    """update() rejects a reward outside [0, 1] rather than skewing the posterior."""
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        Bandit().update("a", 1.5)


def test_statistics_report_pulls_and_mean_reward() -> None:
    """statistics() gives each arm's pulls and average reward."""
    bandit = Bandit()
    bandit.update("a", 1.0)
    bandit.update("a", 0.0)
    (arm,) = bandit.statistics()
    assert (arm.name, arm.pulls, arm.mean_reward) == ("a", 2, 0.5)
