"""A pool of API keys for one provider: rotated, rested on 429, disabled on 401.

A key that is rate limited rests for the provider's ``Retry-After`` (or ``default_rest``);
a key the provider rejects rests until :meth:`KeyPool.enable` re-enables it; the other keys
carry on. Statistics are keyed by :meth:`Secret.fingerprint`, never by the key.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import attrs
import trio

from ..config.secret import Secret
from ..errors import AuthenticationError, RateLimited

if TYPE_CHECKING:
    from ..routing.registry import ModelDeployment

__all__ = [
    "KeyPool",
    "KeyPoolStatistics",
    "KeyStatistics",
]


@attrs.frozen
class KeyStatistics:
    """What one key has done.

    Attributes:
        state: ``"ready"``, ``"resting"`` (rate limited) or ``"disabled"`` (rejected).
        requests: calls made with the key.
        successes: calls that got an answer.
        rate_limited: 429 answers.
        rejected: 401 answers.
        resting_until: when a resting key becomes ready again (Trio clock), else ``None``.
    """

    state: str
    requests: int
    successes: int
    rate_limited: int
    rejected: int
    resting_until: float | None


@attrs.frozen
class KeyPoolStatistics:
    """A snapshot of a key pool.

    Attributes:
        provider: the provider's name.
        keys: per-key statistics, by key fingerprint (``sha256:…``).
        ready: keys usable now.
    """

    provider: str
    keys: Mapping[str, KeyStatistics]
    ready: int


@attrs.define(eq=False)
class _Key:
    secret: Secret
    requests: int = 0
    successes: int = 0
    rate_limited: int = 0
    rejected: int = 0
    resting_until: float = -math.inf
    disabled: bool = False

    def ready(self, now: float) -> bool:
        return not self.disabled and now >= self.resting_until


def _check_keys(_instance: object, _attribute: object, value: Sequence[Secret]) -> None:
    if not value:
        raise ValueError("a KeyPool needs at least one key")
    if not all(isinstance(key, Secret) for key in value):
        raise TypeError("KeyPool keys must be Secret values (wrap each key in Secret(...))")


@attrs.define(eq=False, repr=False)
class KeyPool:
    """Several API keys for one provider, used in turn.

    Args:
        keys: the keys (a single key is a pool of one).
        provider: the provider's name, for errors and statistics.
        default_rest: seconds a rate-limited key rests when the provider gave no reset time.
    """

    _keys_in: Sequence[Secret] = attrs.field(alias="keys", validator=_check_keys)
    provider: str = ""
    default_rest: float = 60.0
    _keys: list[_Key] = attrs.field(init=False)
    _next: int = attrs.field(default=0, init=False)

    def __attrs_post_init__(self) -> None:
        self._keys = [_Key(secret) for secret in self._keys_in]

    def __repr__(self) -> str:
        return f"KeyPool(provider={self.provider!r}, keys={len(self._keys)})"

    def __len__(self) -> int:
        return len(self._keys)

    @property
    def secrets(self) -> list[Secret]:
        """The keys in use now (after a reload, the reloaded ones), in rotation order."""
        return [key.secret for key in self._keys]

    def replace_keys(self, keys: Sequence[Secret]) -> None:
        """Use ``keys`` from now on (a reload): a key kept keeps its statistics and rest."""
        _check_keys(self, None, keys)
        kept = {key.secret.fingerprint(): key for key in self._keys}
        self._keys = [kept.get(secret.fingerprint(), _Key(secret)) for secret in keys]
        self._next %= len(self._keys)

    def acquire(self) -> Secret:
        """Return the next ready key, in rotation.

        Raises:
            RateLimited: every usable key is resting; ``retry_after`` says for how long.
            AuthenticationError: every key was rejected and none was re-enabled.
        """
        now = trio.current_time()
        n = len(self._keys)
        for step in range(n):
            key = self._keys[(self._next + step) % n]
            if key.ready(now):
                self._next = (self._next + step + 1) % n
                key.requests += 1
                return key.secret
        raise self._exhausted(now)

    def unready(self) -> str | None:
        """Why this provider can take no request now (every key resting or disabled), or
        None (a readiness check)."""
        return (
            None if self.has_ready() else f"every API key of {self.provider} is resting or disabled"
        )

    def has_ready(self) -> bool:
        """Whether some key is usable now."""
        now = trio.current_time()
        return any(key.ready(now) for key in self._keys)

    def is_available(self, deployment: ModelDeployment) -> bool:
        """A router health check: False while every key of this provider is resting, so the
        router skips its deployments instead of calling and being refused."""
        return deployment.provider != self.provider or self.has_ready()

    def succeeded(self, secret: Secret) -> None:
        """Record an answered call made with ``secret``."""
        self._find(secret).successes += 1

    def rate_limited(self, secret: Secret, retry_after: float | None) -> None:
        """Rest ``secret`` for ``retry_after`` seconds (``default_rest`` when ``None``)."""
        key = self._find(secret)
        key.rate_limited += 1
        rest = self.default_rest if retry_after is None else retry_after
        key.resting_until = max(key.resting_until, trio.current_time() + rest)

    def rejected(self, secret: Secret) -> None:
        """Disable ``secret`` until :meth:`enable` (the provider answered 401)."""
        key = self._find(secret)
        key.rejected += 1
        key.disabled = True

    def enable(self, fingerprint: str) -> None:
        """Re-enable the key with this fingerprint, and end its rest.

        Raises:
            KeyError: no key in the pool has that fingerprint.
        """
        for key in self._keys:
            if key.secret.fingerprint() == fingerprint:
                key.disabled = False
                key.resting_until = -math.inf
                return
        raise KeyError(f"no key with fingerprint {fingerprint!r} in this pool")

    def statistics(self) -> KeyPoolStatistics:
        """Return a snapshot of every key's state and counters."""
        now = trio.current_time()
        return KeyPoolStatistics(
            provider=self.provider,
            keys={key.secret.fingerprint(): self._key_statistics(key, now) for key in self._keys},
            ready=sum(key.ready(now) for key in self._keys),
        )

    @staticmethod
    def _key_statistics(key: _Key, now: float) -> KeyStatistics:
        state = "disabled" if key.disabled else "ready" if key.ready(now) else "resting"
        return KeyStatistics(
            state=state,
            requests=key.requests,
            successes=key.successes,
            rate_limited=key.rate_limited,
            rejected=key.rejected,
            resting_until=key.resting_until if state == "resting" else None,
        )

    def _find(self, secret: Secret) -> _Key:
        for key in self._keys:
            if key.secret is secret or key.secret == secret:
                return key
        raise KeyError("that key is not in this pool")

    def _exhausted(self, now: float) -> RateLimited | AuthenticationError:
        resting = [key.resting_until - now for key in self._keys if not key.disabled]
        name = self.provider or "the provider"
        if resting:
            wait = min(resting)
            return RateLimited(
                f"every API key of {name} is resting after a 429; the first is ready in "
                f"{wait:.1f}s; retry then, or add keys to the pool",
                provider=self.provider,
                retry_after=wait,
            )
        return AuthenticationError(
            f"every API key of {name} was rejected (401); fix the keys in the configuration "
            "and re-enable them",
            provider=self.provider,
        )
