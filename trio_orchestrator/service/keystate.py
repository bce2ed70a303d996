"""The state of every provider's API keys, as ``GET /v1/stats`` shows it.

Times are seconds from now (the pool's own clock means nothing to a client); keys appear
by fingerprint only, never by value.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import trio

from ..workers.keys import KeyPool, KeyStatistics

if TYPE_CHECKING:
    from ..gateway import Gateway

__all__ = ["key_pools_json"]


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
