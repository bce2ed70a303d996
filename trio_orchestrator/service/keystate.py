"""The state of API keys, as ``GET /v1/stats`` shows it: every provider's key pools, and the
router's spending per service key and per model (its budget ledger).

Times are seconds from now (the pool's own clock means nothing to a client); keys appear
by fingerprint only, never by value.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import attrs
import trio

from ..routing.router import RouterWorker
from ..workers.keys import KeyPool, KeyStatistics

if TYPE_CHECKING:
    from ..gateway import Gateway

__all__ = ["budgets_json", "key_pools_json"]


def key_pools_json(gateway: Gateway | None) -> dict[str, Any]:
    """Every key pool of ``gateway``, by provider: each key's state, counters and rests.

    Args:
        gateway: the running gateway, or None before it started.

    Returns:
        ``{provider: {"ready": n, "keys": {fingerprint: {...}}}}``; a key's ``rest_seconds``
        (a rest of the whole key), ``model_rests`` (model → seconds) and
        ``next_probe_seconds`` say when it may be used or tried again.
    """
    if gateway is None:
        return {}
    now = trio.current_time()
    pools: dict[str, Any] = {}
    for part, _provider in gateway.parts():
        if isinstance(part, KeyPool):
            stats = part.statistics()
            keys = {name: _key_json(key, now) for name, key in stats.keys.items()}
            pools[stats.provider] = {"ready": stats.ready, "keys": keys}
    return pools


def budgets_json(gateway: Gateway | None) -> dict[str, Any] | None:
    """The router's spending in the current budget period (what ``trio-orchestrator top``
    ranks keys by).

    Args:
        gateway: the running gateway, or None before it started.

    Returns:
        ``{"per_api_key": {key id: dollars}, "per_model": {model: dollars}, "refused": n}``,
        or None when there is no router (only a router prices and charges requests).
    """
    if gateway is None:
        return None
    for part, _provider in gateway.parts():
        if isinstance(part, RouterWorker):
            return attrs.asdict(part.ledger.statistics())
    return None


def _key_json(key: KeyStatistics, now: float) -> dict[str, Any]:
    return {
        "state": key.state,
        "requests": key.requests,
        "successes": key.successes,
        "rate_limited": key.rate_limited,
        "rejected": key.rejected,
        "probes": key.probes,
        "rest_seconds": _until(key.resting_until, now),
        "model_rests": {model: _until(until, now) for model, until in key.model_rests.items()},
        "next_probe_seconds": _until(key.next_probe, now),
    }


def _until(when: float | None, now: float) -> float | None:
    return None if when is None else round(max(0.0, when - now), 3)
