"""Strategy ordering and the complexity score."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from trio_orchestrator import GenerationParams, Message, PromptRequest, Tool
from trio_orchestrator.routing import (
    STRATEGIES,
    Candidate,
    ModelDeployment,
    OutcomeTracker,
    StrategyContext,
    complexity_score,
    order,
)


def candidates(n: int) -> list[Candidate]:
    return [
        Candidate(ModelDeployment(f"d{i}", "m", "p", weight=1 + i), float(n - i), None)
        for i in range(n)
    ]


@given(n=st.integers(1, 12), strategy=st.sampled_from(sorted(STRATEGIES)), seed=st.integers())
def test_every_strategy_returns_a_permutation_of_its_candidates(
    n: int, strategy: str, seed: int
) -> None:
    """No strategy drops or duplicates a candidate: the chain holds each exactly once."""
    pool = candidates(n)
    ordered, reason = order(strategy, pool, StrategyContext(OutcomeTracker(), random.Random(seed)))
    assert sorted(c.deployment.name for c in ordered) == sorted(c.deployment.name for c in pool)
    assert reason.startswith(ordered[0].deployment.name)


def test_an_unknown_strategy_is_an_error() -> None:
    """order() refuses a strategy it does not know."""
    with pytest.raises(ValueError, match="unknown routing strategy"):
        order("psychic", candidates(2), StrategyContext(OutcomeTracker(), random.Random()))


@given(st.text(max_size=3000), st.integers(0, 20_000), st.booleans(), st.integers(0, 30))
def test_the_complexity_score_stays_in_the_unit_interval(
    text: str, tokens: int, tools: bool, turns: int
) -> None:
    """Whatever the request, the score is in [0, 1]."""
    params = GenerationParams(tools=(Tool("f"),) if tools else ())
    messages = [Message("user", "x")] * turns
    request = PromptRequest(messages=messages, input=text, params=params)
    assert 0.0 <= complexity_score(request, tokens) <= 1.0


def test_each_signal_raises_the_complexity_score() -> None:
    """Length, code, reasoning words and tools each add to the score."""
    base = complexity_score(PromptRequest(input="hello"), 10)
    assert complexity_score(PromptRequest(input="hello"), 2000) == pytest.approx(
        base + 0.35 - 0.35 * 10 / 2000
    )
    assert complexity_score(PromptRequest(input="```x```"), 10) > base
    assert complexity_score(PromptRequest(input="explain why"), 10) == pytest.approx(base + 0.14)
    tools = GenerationParams(tools=(Tool("f"),))
    assert complexity_score(PromptRequest(input="hello", params=tools), 10) == pytest.approx(
        base + 0.15
    )
