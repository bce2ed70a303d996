"""The resilience configuration's own rules that the mutation session (scripts/mutation.py,
resilience/config.py) showed unpinned: cross-field checks, a limit's rate and bucket size,
and the refusal to switch a layer on or off by reload."""

from __future__ import annotations

import pytest

from trio_orchestrator.resilience.config import BreakerConfig


def test_max_cooldown_may_equal_but_not_undercut_cooldown() -> None:
    """max_cooldown equal to cooldown is accepted; below it is refused with both values."""
    assert BreakerConfig(cooldown=5.0, max_cooldown=5.0).max_cooldown == 5.0
    with pytest.raises(ValueError, match=r"max_cooldown \(4\.0\) must be ≥ cooldown \(5\.0\)"):
        BreakerConfig(cooldown=5.0, max_cooldown=4.0)
