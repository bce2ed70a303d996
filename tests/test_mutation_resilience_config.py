"""The resilience configuration's own rules that the mutation session (scripts/mutation.py,
resilience/config.py) showed unpinned: cross-field checks, a limit's rate and bucket size,
and the refusal to switch a layer on or off by reload."""

from __future__ import annotations

import pytest

from trio_orchestrator.resilience.config import (
    AdaptiveConfig,
    BreakerConfig,
    LimitConfig,
    RateLimitsConfig,
    SemanticCacheConfig,
    refuse_toggle,
)


def test_max_cooldown_may_equal_but_not_undercut_cooldown() -> None:
    """max_cooldown equal to cooldown is accepted; below it is refused with both values."""
    assert BreakerConfig(cooldown=5.0, max_cooldown=5.0).max_cooldown == 5.0
    with pytest.raises(ValueError, match=r"max_cooldown \(4\.0\) must be ≥ cooldown \(5\.0\)"):
        BreakerConfig(cooldown=5.0, max_cooldown=4.0)


def test_a_limit_needs_exactly_one_rate() -> None:
    """No rate, or two rates, is refused naming the three and the scope; one is accepted."""
    for rates in ({}, {"requests_per_second": 1.0, "tokens_per_minute": 60.0}):
        with pytest.raises(ValueError, match="exactly one") as refused:
            LimitConfig(scope="user", **rates)  # type: ignore[arg-type]
        assert str(refused.value) == (
            "a limit needs exactly one of requests_per_second, requests_per_minute, "
            "tokens_per_minute (scope 'user')"
        )
    with pytest.raises(ValueError, match="exactly one"):
        LimitConfig(
            scope="user", requests_per_second=1.0, requests_per_minute=1.0, tokens_per_minute=1.0
        )
    assert LimitConfig(scope="user", requests_per_minute=6.0).requests_per_minute == 6.0


@pytest.mark.parametrize(
    ("rate", "per_second", "capacity", "tokens"),
    [
        ({"requests_per_second": 4.0}, 4.0, 4.0, False),
        ({"requests_per_second": 0.5}, 0.5, 1.0, False),
        ({"requests_per_minute": 120.0}, 2.0, 120.0, False),
        ({"requests_per_minute": 0.5}, 0.5 / 60, 1.0, False),
        ({"tokens_per_minute": 6000.0}, 100.0, 6000.0, True),
    ],
)
def test_a_limit_s_rate_and_default_bucket(
    rate: dict[str, float], per_second: float, capacity: float, tokens: bool
) -> None:
    """The refill rate is per second whatever unit was given; the bucket holds one period's
    worth (at least 1); only a tokens limit counts tokens."""
    limit = LimitConfig(scope="model", **rate)  # type: ignore[arg-type]
    assert limit.rate == pytest.approx(per_second)
    assert limit.capacity == capacity
    assert limit.counts_tokens is tokens


def test_a_given_burst_is_the_bucket() -> None:
    """burst, when given, is the bucket's size, below or above the rate."""
    assert LimitConfig(scope="user", requests_per_second=10.0, burst=2.0).capacity == 2.0
    assert LimitConfig(scope="user", requests_per_minute=1.0, burst=0.5).capacity == 0.5


def test_rate_limits_take_any_iterable_of_limits_as_a_tuple() -> None:
    """limits given as a list or a generator are kept as a tuple, in order."""
    one = LimitConfig(scope="user", requests_per_second=1.0)
    two = LimitConfig(scope="model", tokens_per_minute=10.0)
    assert RateLimitsConfig(limits=[one, two]).limits == (one, two)
    assert RateLimitsConfig(limits=iter([two])).limits == (two,)


def test_the_semantic_cache_needs_an_embedding_model_only_when_enabled() -> None:
    """Enabled without embedding_model is refused; disabled without one, or enabled with
    one, is accepted."""
    with pytest.raises(ValueError, match="embedding_model") as refused:
        SemanticCacheConfig(enabled=True)
    assert str(refused.value) == ("embedding_model is required when the semantic cache is enabled")
    assert not SemanticCacheConfig().enabled
    assert SemanticCacheConfig(enabled=True, embedding_model="e").embedding_model == "e"


def test_refuse_toggle_refuses_only_a_switch() -> None:
    """The same enabled is no refusal; a switch either way names the layer and both values."""
    assert refuse_toggle("retry", True, True) == []
    assert refuse_toggle("retry", False, False) == []
    assert refuse_toggle("retry", False, True) == [
        "resilience.retry.enabled: adding or removing a layer needs a restart False → True"
    ]
    assert refuse_toggle("cache", True, False) == [
        "resilience.cache.enabled: adding or removing a layer needs a restart True → False"
    ]


@pytest.mark.parametrize(
    ("bounds", "ok"),
    [
        ((1, 1, 1), True),
        ((2, 5, 9), True),
        ((2, 2, 9), True),
        ((2, 9, 9), True),
        ((3, 2, 9), False),
        ((2, 10, 9), False),
        ((5, 5, 4), False),
    ],
)
def test_adaptive_limits_keep_min_initial_max_in_order(
    bounds: tuple[int, int, int], ok: bool
) -> None:
    """min_limit ≤ initial_limit ≤ max_limit, equality allowed; otherwise refused with all
    three."""
    low, initial, high = bounds
    if ok:
        config = AdaptiveConfig(min_limit=low, initial_limit=initial, max_limit=high)
        assert (config.min_limit, config.initial_limit, config.max_limit) == bounds
        return
    with pytest.raises(ValueError, match="must satisfy") as refused:
        AdaptiveConfig(min_limit=low, initial_limit=initial, max_limit=high)
    assert str(refused.value) == (
        "adaptive limits must satisfy min_limit ≤ initial_limit ≤ max_limit, got "
        f"{low}, {initial}, {high}"
    )
