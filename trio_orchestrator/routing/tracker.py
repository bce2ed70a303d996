"""The outcome tracker: what each deployment's calls cost and how they went.

Per deployment it keeps exponentially weighted moving averages (EWMA) of latency, time to
first event, error rate and cost, plus counts per error class. The ``latency`` and
``reliability`` strategies read it; profiles are saved to and loaded from JSON so a restart
does not forget them.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs

__all__ = ["DeploymentStatistics", "OutcomeTracker", "TrackerStatistics"]

_PROFILE_VERSION = 1


@attrs.define
class _Profile:
    latency: float | None = None
    ttft: float | None = None
    error_rate: float = 0.0
    cost: float | None = None
    successes: int = 0
    failures: int = 0
    total_cost: float = 0.0
    errors: dict[str, int] = attrs.field(factory=dict)
    in_flight: int = 0


@attrs.frozen
class DeploymentStatistics:
    """What the tracker knows about one deployment."""

    name: str
    """The deployment's name."""
    latency: float | None
    """EWMA of seconds from call to ``Done`` over successes (``None``: no success yet)."""
    ttft: float | None
    """EWMA of seconds from call to the first event (``None``: none seen yet)."""
    error_rate: float
    """EWMA of failure (1) against success (0) over calls: the recent error rate."""
    cost: float | None
    """EWMA of dollars per successful call."""
    successes: int
    """Calls that ended with ``Done``."""
    failures: int
    """Calls that raised a worker error."""
    total_cost: float
    """Dollars spent on this deployment, failed calls' reported usage included."""
    errors: Mapping[str, int]
    """Failures by error class name."""
    in_flight: int
    """Calls running now."""


@attrs.frozen
class TrackerStatistics:
    """A snapshot of the tracker."""

    deployments: tuple[DeploymentStatistics, ...]
    """One entry per deployment seen, by name."""


def _ewma(old: float | None, new: float, alpha: float) -> float:
    return new if old is None else old + alpha * (new - old)


@attrs.define(eq=False)
class OutcomeTracker:
    """Records per-deployment outcomes; cheap enough to call on every attempt.

    Args:
        alpha: weight of the newest observation in each moving average, in (0, 1].
    """

    alpha: float = attrs.field(default=0.2)
    _profiles: dict[str, _Profile] = attrs.field(factory=dict, init=False)

    @alpha.validator
    def _check_alpha(self, _attribute: object, value: float) -> None:
        if not 0 < value <= 1:
            raise ValueError(f"alpha must be in (0, 1], got {value!r}")

    def _profile(self, name: str) -> _Profile:
        profile = self._profiles.get(name)
        if profile is None:
            profile = self._profiles[name] = _Profile()
        return profile

    def started(self, name: str) -> None:
        """A call to deployment ``name`` began."""
        self._profile(name).in_flight += 1

    def succeeded(self, name: str, *, latency: float, ttft: float | None, cost: float) -> None:
        """A call to ``name`` ended with ``Done`` after ``latency`` seconds, costing ``cost``."""
        profile, alpha = self._profile(name), self.alpha
        profile.in_flight = max(profile.in_flight - 1, 0)
        profile.successes += 1
        profile.latency = _ewma(profile.latency, latency, alpha)
        if ttft is not None:
            profile.ttft = _ewma(profile.ttft, ttft, alpha)
        profile.error_rate += alpha * (0.0 - profile.error_rate)
        profile.cost = _ewma(profile.cost, cost, alpha)
        profile.total_cost += cost

    def failed(self, name: str, error: BaseException, *, cost: float = 0.0) -> None:
        """A call to ``name`` raised ``error`` (its class name is counted)."""
        profile = self._profile(name)
        profile.in_flight = max(profile.in_flight - 1, 0)
        profile.failures += 1
        profile.error_rate += self.alpha * (1.0 - profile.error_rate)
        kind = type(error).__name__
        profile.errors[kind] = profile.errors.get(kind, 0) + 1
        profile.total_cost += cost

    def timed_out(self, name: str, *, elapsed: float, cost: float = 0.0) -> None:
        """A call to ``name`` was still running when the request's deadline passed.

        Counted as a failure (class ``DeadlineExceeded``) and ``elapsed`` enters the latency
        average as a lower bound, so a deployment that hangs does not look unmeasured.
        """
        profile = self._profile(name)
        profile.in_flight = max(profile.in_flight - 1, 0)
        profile.failures += 1
        profile.error_rate += self.alpha * (1.0 - profile.error_rate)
        profile.errors["DeadlineExceeded"] = profile.errors.get("DeadlineExceeded", 0) + 1
        profile.latency = _ewma(profile.latency, elapsed, self.alpha)
        profile.total_cost += cost

    def abandoned(self, name: str) -> None:
        """A call to ``name`` was cancelled (no evidence either way)."""
        profile = self._profile(name)
        profile.in_flight = max(profile.in_flight - 1, 0)

    def latency(self, name: str) -> float | None:
        """EWMA latency of ``name`` in seconds, or ``None`` when unknown."""
        profile = self._profiles.get(name)
        return None if profile is None else profile.latency

    def ttft(self, name: str) -> float | None:
        """EWMA time to first event of ``name`` in seconds, or ``None`` when unknown."""
        profile = self._profiles.get(name)
        return None if profile is None else profile.ttft

    def error_rate(self, name: str) -> float:
        """Recent error rate of ``name`` in [0, 1] (0 when unknown)."""
        profile = self._profiles.get(name)
        return 0.0 if profile is None else profile.error_rate

    def in_flight(self, name: str) -> int:
        """Calls to ``name`` running now."""
        profile = self._profiles.get(name)
        return 0 if profile is None else profile.in_flight

    def statistics(self) -> TrackerStatistics:
        """Return a snapshot of every deployment's profile."""
        return TrackerStatistics(
            tuple(
                DeploymentStatistics(
                    name=name,
                    latency=p.latency,
                    ttft=p.ttft,
                    error_rate=p.error_rate,
                    cost=p.cost,
                    successes=p.successes,
                    failures=p.failures,
                    total_cost=p.total_cost,
                    errors=dict(p.errors),
                    in_flight=p.in_flight,
                )
                for name, p in sorted(self._profiles.items())
            )
        )

    def export_profiles(self, path: str | os.PathLike[str]) -> None:
        """Write every profile (not the in-flight counts) to ``path`` as JSON, atomically."""
        data = {
            "version": _PROFILE_VERSION,
            "deployments": {
                name: attrs.asdict(profile, filter=lambda a, _: a.name != "in_flight")
                for name, profile in sorted(self._profiles.items())
            },
        }
        target = Path(path)
        temporary = target.with_name(target.name + ".tmp")
        temporary.write_text(json.dumps(data, indent=1, sort_keys=True), encoding="utf-8")
        temporary.replace(target)

    def import_profiles(self, path: str | os.PathLike[str]) -> int:
        """Load profiles from ``path``, replacing those of the same names.

        Returns:
            how many profiles were loaded.

        Raises:
            ValueError: the file is not a profile export of a version this code reads.
            OSError: the file cannot be read.
        """
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        if not isinstance(data, dict) or data.get("version") != _PROFILE_VERSION:
            raise ValueError(f"{path}: not a routing profile file of version {_PROFILE_VERSION}")
        loaded = {name: _load_profile(name, raw) for name, raw in data["deployments"].items()}
        for name, profile in loaded.items():
            profile.in_flight = self.in_flight(name)
            self._profiles[name] = profile
        return len(loaded)


def _load_profile(name: str, raw: Any) -> _Profile:
    try:
        profile = _Profile(**raw)
    except TypeError as exc:
        raise ValueError(f"profile {name!r}: {exc}") from exc
    for value in (profile.latency, profile.ttft, profile.cost, profile.error_rate):
        if value is not None and not (isinstance(value, int | float) and math.isfinite(value)):
            raise ValueError(f"profile {name!r}: {value!r} is not a finite number")
    profile.errors = {str(k): int(v) for k, v in dict(profile.errors).items()}
    return profile
