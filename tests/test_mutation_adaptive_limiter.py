"""Behaviour of the adaptive limiter and its layer that the mutation session
(scripts/mutation.py, resilience/adaptive_limiter.py) showed unpinned: admission order, the
wait budget, counters, statistics, per-model targets, reloads and what counts as a drop."""

from __future__ import annotations

import attrs
import trio
import trio.testing

from trio_orchestrator.resilience import AdaptiveConfig, AdaptiveLimitLayer
from trio_orchestrator.workers import EchoWorker


def _config(**changes: object) -> AdaptiveConfig:
    base = AdaptiveConfig(enabled=True, initial_limit=2, max_limit=10, max_waiting=4)
    return attrs.evolve(base, **changes)  # type: ignore[arg-type]


async def test_an_unused_layer_reports_its_initial_limit(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Before any call, the layer's statistics are the provider's initial limit, all zero."""
    layer = AdaptiveLimitLayer(EchoWorker(), _config(initial_limit=3), provider="p")
    stats = layer.statistics()
    assert (stats.target, stats.limit, stats.in_flight, stats.waiting) == ("p", 3, 0, 0)
    assert (stats.baseline_rtt, stats.window_rtt) == (0.0, 0.0)
    assert (stats.admitted, stats.shed, stats.drops, stats.cuts, stats.raises) == (0,) * 5
    assert layer.targets() == ()
