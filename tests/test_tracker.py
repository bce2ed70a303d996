"""The outcome tracker: moving averages, error classes, and profile files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from trio_orchestrator import RateLimited, ServerError
from trio_orchestrator.routing import OutcomeTracker


def test_the_first_observation_sets_the_average_and_later_ones_move_it_by_alpha() -> None:
    """EWMA: the first latency is taken as is, the next moves it by alpha of the gap."""
    tracker = OutcomeTracker(alpha=0.5)
    tracker.started("d")
    tracker.succeeded("d", latency=2.0, ttft=1.0, cost=0.1)
    tracker.started("d")
    tracker.succeeded("d", latency=4.0, ttft=None, cost=0.3)
    assert tracker.latency("d") == pytest.approx(3.0)
    assert tracker.ttft("d") == pytest.approx(1.0)
    (stats,) = tracker.statistics().deployments
    assert stats.cost == pytest.approx(0.2)
    assert stats.total_cost == pytest.approx(0.4)
    assert stats.in_flight == 0


def test_failures_raise_the_error_rate_and_are_counted_by_class() -> None:
    """Each failure moves the error rate towards 1 and counts its error class."""
    tracker = OutcomeTracker(alpha=0.5)
    tracker.failed("d", ServerError("x"))
    tracker.failed("d", RateLimited("y"))
    tracker.failed("d", RateLimited("z"))
    assert tracker.error_rate("d") == pytest.approx(0.875)
    (stats,) = tracker.statistics().deployments
    assert stats.errors == {"ServerError": 1, "RateLimited": 2}
    assert stats.failures == 3


def test_an_unknown_deployment_has_no_latency_and_no_errors() -> None:
    """A deployment never seen reads as unmeasured, with a zero error rate."""
    tracker = OutcomeTracker()
    assert (tracker.latency("x"), tracker.ttft("x"), tracker.error_rate("x")) == (None, None, 0)


def test_in_flight_counts_calls_started_and_not_ended() -> None:
    """started() adds a call in flight; success, failure or abandonment remove it."""
    tracker = OutcomeTracker()
    for _ in range(3):
        tracker.started("d")
    tracker.abandoned("d")
    tracker.failed("d", ServerError("x"))
    assert tracker.in_flight("d") == 1


@given(
    outcomes=st.lists(
        st.tuples(st.booleans(), st.floats(0, 100), st.floats(0, 10)), min_size=1, max_size=30
    )
)
def test_profiles_survive_an_export_import_round_trip(
    outcomes: list[tuple[bool, float, float]], tmp_path_factory: pytest.TempPathFactory
) -> None:
    """What one tracker exports, another imports identically (in-flight calls excepted)."""
    path = tmp_path_factory.mktemp("profiles") / "p.json"
    first = OutcomeTracker()
    for i, (ok, latency, cost) in enumerate(outcomes):
        name = f"d{i % 3}"
        first.started(name)
        if ok:
            first.succeeded(name, latency=latency, ttft=latency / 2, cost=cost)
        else:
            first.failed(name, ServerError("x"), cost=cost)
    first.export_profiles(path)
    second = OutcomeTracker()
    assert second.import_profiles(path) == len(first.statistics().deployments)
    assert second.statistics() == first.statistics()


def test_an_import_keeps_the_calls_in_flight_now(tmp_path: Path) -> None:
    """Importing replaces the learned figures but not the live in-flight count."""
    saved = OutcomeTracker()
    saved.succeeded("d", latency=1.0, ttft=None, cost=0.0)
    saved.export_profiles(tmp_path / "p.json")
    live = OutcomeTracker()
    live.started("d")
    live.import_profiles(tmp_path / "p.json")
    assert live.in_flight("d") == 1
    assert live.latency("d") == 1.0


@pytest.mark.parametrize(
    "content",
    [
        "[]",
        '{"version": 99, "deployments": {}}',
        '{"version": 1, "deployments": {"d": {"bogus": 1}}}',
        '{"version": 1, "deployments": {"d": {"latency": "slow"}}}',
    ],
)
def test_a_file_that_is_not_a_profile_export_is_rejected(tmp_path: Path, content: str) -> None:
    """Import refuses foreign or damaged files with a ValueError naming the problem."""
    path = tmp_path / "p.json"
    path.write_text(content)
    with pytest.raises(ValueError, match=r"p\.json|profile 'd'"):
        OutcomeTracker().import_profiles(path)


def test_the_export_is_readable_json_with_a_version(tmp_path: Path) -> None:
    """The file is plain JSON, versioned, one entry per deployment."""
    tracker = OutcomeTracker()
    tracker.failed("d", ServerError("x"))
    tracker.export_profiles(tmp_path / "p.json")
    data = json.loads((tmp_path / "p.json").read_text())
    assert data["version"] == 1
    assert data["deployments"]["d"]["errors"] == {"ServerError": 1}
