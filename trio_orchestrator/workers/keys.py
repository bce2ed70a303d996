"""A pool of API keys for one provider: rotated, rested on 429, disabled on 401, probed.

The rules, each kept short on purpose so that one bad answer cannot take a provider down:

- **Rest after a 429.** A key rests for the provider's ``Retry-After`` (``default_rest`` when
  it named none), never longer than ``max_rest``, lengthened by a random fraction of at most
  ``jitter`` so that keys rested together do not wake together (their probe times too).
- **Per model.** A 429 to a request for model *M* rests the pair (key, *M*): the key goes
  on serving the provider's other models. Upstreams limit per model (OpenAI's and
  Anthropic's limits are per model or model class; their 429s name the model's limit),
  and where a limit is account-wide instead, each other model costs one more 429 before it
  rests too. A 429 to a call naming no model (``GET /models``) rests the whole key.
- **Early probes.** While no key is ready for a model, one call per resting key passes every
  ``probe_interval``: a recovered upstream is found without waiting out the rest. A call
  that succeeds ends every rest its key had when the call started.
- **Disabled after a 401**, then probed: after ``rejected_cooldown`` one call may use the key
  again (even while other keys are ready; a 401 there falls through to the next key); a
  success enables it, another 401 doubles the cool-down (at most an hour, or the cool-down
  when that is longer). :meth:`KeyPool.revive` (every configuration reload) and
  :meth:`KeyPool.enable` bring disabled keys back at once.

Statistics are keyed by :meth:`Secret.fingerprint`, never by the key.
"""

from __future__ import annotations

import math
import random
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

#: The most a rest or cool-down is lengthened by, as a fraction of it (spreads the wake-ups).
REST_JITTER = 0.1
#: A rejected key's cool-down grows to at most this (or its configured value, if longer).
MAX_REJECTED_COOLDOWN = 3600.0


@attrs.frozen
class KeyStatistics:
    """What one key has done, and its state.

    Attributes:
        state: ``"ready"``, ``"resting"`` (rate limited as a whole) or ``"disabled"``
            (rejected).
        requests: calls made with the key.
        successes: calls that got an answer.
        rate_limited: 429 answers.
        rejected: 401 answers.
        resting_until: when a resting key becomes ready again (Trio clock), else ``None``.
        model_rests: models the key rests for (a 429 for that model), each with when its rest
            ends (Trio clock).
        next_probe: when a resting or disabled key may next take one probe call (Trio
            clock), else ``None``.
        probes: probe calls made with the key while it rested or was disabled.
    """

    state: str
    requests: int
    successes: int
    rate_limited: int
    rejected: int
    resting_until: float | None
    model_rests: Mapping[str, float] = attrs.field(factory=dict)
    next_probe: float | None = None
    probes: int = 0


@attrs.frozen
class KeyPoolStatistics:
    """A snapshot of a key pool.

    Attributes:
        provider: the provider's name.
        keys: per-key statistics, by key fingerprint (``sha256:…``).
        ready: keys usable now (for some model: not resting as a whole, not disabled).
    """

    provider: str
    keys: Mapping[str, KeyStatistics]
    ready: int


@attrs.define
class _Rest:
    """One rest: of a whole key, or of a (key, model) pair."""

    since: float
    until: float
    probe_at: float


@attrs.define(eq=False)
class _Key:
    secret: Secret
    requests: int = 0
    successes: int = 0
    rate_limited: int = 0
    rejected: int = 0
    probes: int = 0
    rest: _Rest | None = None
    model_rests: dict[str, _Rest] = attrs.field(factory=dict)
    # Disabled: since when (None when enabled), when the next probe may pass, and the
    # cool-down that follows the next 401.
    disabled_since: float | None = None
    probe_at: float = math.inf
    cooldown: float = 0.0

    @property
    def disabled(self) -> bool:
        return self.disabled_since is not None

    def blocking(self, model: str | None, now: float) -> list[_Rest]:
        """The rests that keep this key from a call for ``model`` now."""
        rests = [self.rest] if self.rest is not None else []
        if model is not None and (pair := self.model_rests.get(model)) is not None:
            rests.append(pair)
        return [rest for rest in rests if rest.until > now]

    def ready(self, model: str | None, now: float) -> bool:
        return not self.disabled and not self.blocking(model, now)

    def next_call(self, model: str | None, now: float) -> float:
        """When a call for ``model`` could next pass with this key (ready or a probe)."""
        if self.disabled:
            return self.probe_at
        rests = self.blocking(model, now)
        if not rests:
            return now
        return min(max(r.until for r in rests), max(r.probe_at for r in rests))


def _check_keys(_instance: object, _attribute: object, value: Sequence[Secret]) -> None:
    if not value:
        raise ValueError("a KeyPool needs at least one key")
    if not all(isinstance(key, Secret) for key in value):
        raise TypeError("KeyPool keys must be Secret values (wrap each key in Secret(...))")


@attrs.define(eq=False, repr=False)
class KeyPool:
    """Several API keys for one provider, used in turn (see the module for the rules).

    Args:
        keys: the keys (a single key is a pool of one).
        provider: the provider's name, for errors and statistics.
        default_rest: seconds a rate-limited key rests when the provider gave no reset time.
        max_rest: the longest a 429 rests a key, whatever the provider asked.
        probe_interval: while no key is ready for a model, one call per resting key passes
            this often.
        rejected_cooldown: seconds before a rejected (401) key is tried again with one call.
        models: the models the provider serves, when its configuration lists them: the pool
            is unready (:meth:`unready`) once every key rests for all of them.
        jitter: rests and cool-downs are lengthened by a random fraction of at most this.
        rng: the random source of the jitter (tests pass a seeded one).
    """

    _keys_in: Sequence[Secret] = attrs.field(alias="keys", validator=_check_keys)
    provider: str = ""
    default_rest: float = 60.0
    max_rest: float = 30.0
    probe_interval: float = 5.0
    rejected_cooldown: float = 300.0
    models: Sequence[str] = ()
    jitter: float = REST_JITTER
    rng: random.Random = attrs.field(factory=random.Random)
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

    def configure(
        self,
        *,
        default_rest: float,
        max_rest: float,
        probe_interval: float,
        rejected_cooldown: float,
    ) -> None:
        """Take reloaded settings; a rest running past the new ``max_rest`` is shortened."""
        self.default_rest, self.max_rest = default_rest, max_rest
        self.probe_interval, self.rejected_cooldown = probe_interval, rejected_cooldown
        for key in self._keys:
            for rest in [key.rest, *key.model_rests.values()]:
                if rest is not None:
                    rest.until = min(rest.until, rest.since + max_rest * (1 + self.jitter))

    def revive(self) -> None:
        """Enable every disabled key (a reload: the operator says the keys are fixed)."""
        for key in self._keys:
            self._enable(key)

    # ------------------------------------------------------------------ handing out keys

    def acquire(self, model: str | None = None) -> Secret:
        """Return a key for a call for ``model``: a disabled key whose cool-down is over (one
        probe), else the next ready key in rotation, else a resting key due for a probe.

        Args:
            model: the model the call is for (``None``: a call naming no model).

        Raises:
            RateLimited: no key may take the call now; ``retry_after`` says when one may.
            AuthenticationError: every key was rejected and none is due for a probe.
        """
        now = trio.current_time()
        key = (
            self._due_disabled(now) or self._next_ready(model, now) or self._due_resting(model, now)
        )
        if key is None:
            raise self._exhausted(model, now)
        key.requests += 1
        return key.secret

    def _due_disabled(self, now: float) -> _Key | None:
        for key in self._keys:
            if key.disabled and key.probe_at <= now:
                key.probe_at = now + key.cooldown  # one probe per cool-down
                key.probes += 1
                return key
        return None

    def _next_ready(self, model: str | None, now: float) -> _Key | None:
        n = len(self._keys)
        for step in range(n):
            key = self._keys[(self._next + step) % n]
            if key.ready(model, now):
                self._next = (self._next + step + 1) % n
                return key
        return None

    def _due_resting(self, model: str | None, now: float) -> _Key | None:
        for key in self._keys:
            rests = [] if key.disabled else key.blocking(model, now)
            if rests and all(rest.probe_at <= now for rest in rests):
                for rest in rests:
                    rest.probe_at = now + self._jittered(self.probe_interval)
                key.probes += 1
                return key
        return None

    def can_call(self, model: str | None = None) -> bool:
        """Whether :meth:`acquire` would hand out a key for ``model`` now."""
        now = trio.current_time()
        return any(key.next_call(model, now) <= now for key in self._keys)

    def has_ready(self, model: str | None = None) -> bool:
        """Whether some key is usable now for ``model`` without a probe (``None``: for some
        model, that is, not resting as a whole and not disabled)."""
        now = trio.current_time()
        return any(key.ready(model, now) for key in self._keys)

    def wait(self, model: str | None = None) -> float:
        """Seconds until a call for ``model`` could pass (0 when one can now)."""
        now = trio.current_time()
        return max(0.0, min(key.next_call(model, now) for key in self._keys) - now)

    def unready(self) -> str | None:
        """Why this provider can take no request now, or None (a readiness check): every key
        is disabled, resting as a whole, or resting for every model in ``models``. A key
        resting for some models serves the others (any others when ``models`` is empty)."""
        now = trio.current_time()
        if any(self._serves(key, now) for key in self._keys):
            return None
        states = ", ".join(self._describe(key, now) for key in self._keys)
        return f"every API key of {self.provider} is resting or disabled: {states}"

    def _serves(self, key: _Key, now: float) -> bool:
        if not key.ready(None, now):
            return False
        return not self.models or any(key.ready(model, now) for model in self.models)

    def is_available(self, deployment: ModelDeployment) -> bool:
        """A router health check: False while no key of this provider may take a call for the
        deployment's model, so the router skips it instead of calling and being refused."""
        if deployment.provider != self.provider:
            return True
        return self.can_call(deployment.upstream_model or deployment.model)

    # ------------------------------------------------------------------ outcomes

    def succeeded(self, secret: Secret, model: str | None = None, since: float = -math.inf) -> None:
        """Record an answered call made with ``secret`` for ``model``, started at ``since``.

        The answer proves the key works: it ends the key's whole rest and its rest for
        ``model``, and enables it, when these began before the call did (a 429 or 401 seen
        by a later call stands).
        """
        key = self._find(secret)
        key.successes += 1
        if key.rest is not None and key.rest.since <= since:
            key.rest = None
        pair = None if model is None else key.model_rests.get(model)
        if model is not None and pair is not None and pair.since <= since:
            del key.model_rests[model]
        if key.disabled_since is not None and key.disabled_since <= since:
            self._enable(key)

    def rate_limited(
        self, secret: Secret, retry_after: float | None, model: str | None = None
    ) -> None:
        """Rest ``secret`` (for ``model`` only, when given) for ``retry_after`` seconds
        (``default_rest`` when ``None``), at most ``max_rest``, plus jitter."""
        key = self._find(secret)
        key.rate_limited += 1
        now = trio.current_time()
        asked = self.default_rest if retry_after is None else retry_after
        until = now + self._jittered(min(asked, self.max_rest))
        rest = key.rest if model is None else key.model_rests.get(model)
        if rest is None or rest.until <= now:
            rest = _Rest(since=now, until=until, probe_at=now + self._jittered(self.probe_interval))
        else:
            rest.since, rest.until = now, max(rest.until, until)
            rest.probe_at = max(rest.probe_at, now + self._jittered(self.probe_interval))
        if model is None:
            key.rest = rest
        else:
            key.model_rests[model] = rest

    def rejected(self, secret: Secret) -> None:
        """Disable ``secret`` (the provider answered 401) until a probe after its cool-down
        succeeds, a reload, or :meth:`enable`; each 401 in a row doubles the cool-down."""
        key = self._find(secret)
        key.rejected += 1
        now = trio.current_time()
        if key.disabled:
            ceiling = max(MAX_REJECTED_COOLDOWN, self.rejected_cooldown)
            key.cooldown = min(2 * key.cooldown, ceiling)
        else:
            key.cooldown = self.rejected_cooldown
        key.disabled_since = now
        key.probe_at = now + self._jittered(key.cooldown)

    def enable(self, fingerprint: str) -> None:
        """Re-enable the key with this fingerprint, and end its rests.

        Raises:
            KeyError: no key in the pool has that fingerprint.
        """
        for key in self._keys:
            if key.secret.fingerprint() == fingerprint:
                self._enable(key)
                key.rest = None
                key.model_rests.clear()
                return
        raise KeyError(f"no key with fingerprint {fingerprint!r} in this pool")

    @staticmethod
    def _enable(key: _Key) -> None:
        key.disabled_since, key.probe_at, key.cooldown = None, math.inf, 0.0

    def _jittered(self, seconds: float) -> float:
        return seconds * (1 + self.jitter * self.rng.random())

    # ------------------------------------------------------------------ statistics

    def statistics(self) -> KeyPoolStatistics:
        """Return a snapshot of every key's state and counters."""
        now = trio.current_time()
        return KeyPoolStatistics(
            provider=self.provider,
            keys={key.secret.fingerprint(): self._key_statistics(key, now) for key in self._keys},
            ready=sum(key.ready(None, now) for key in self._keys),
        )

    @staticmethod
    def _key_statistics(key: _Key, now: float) -> KeyStatistics:
        whole = key.blocking(None, now)
        state = "disabled" if key.disabled else "resting" if whole else "ready"
        models = {m: r.until for m, r in key.model_rests.items() if r.until > now}
        probes = [r.probe_at for r in whole] + [key.model_rests[m].probe_at for m in models]
        next_probe = key.probe_at if key.disabled else min(probes, default=None)
        return KeyStatistics(
            state=state,
            requests=key.requests,
            successes=key.successes,
            rate_limited=key.rate_limited,
            rejected=key.rejected,
            resting_until=whole[0].until if state == "resting" else None,
            model_rests=models,
            next_probe=next_probe,
            probes=key.probes,
        )

    def _describe(self, key: _Key, now: float) -> str:
        name = key.secret.fingerprint()[:15] + "…"
        if key.disabled:
            return f"{name} disabled after a 401 (probe in {max(0.0, key.probe_at - now):.0f}s)"
        if not key.blocking(None, now):
            return f"{name} resting after a 429 for every model ({', '.join(self.models)})"
        (rest,) = key.blocking(None, now)
        probe = max(0.0, rest.probe_at - now)
        return f"{name} resting after a 429 ({rest.until - now:.0f}s; probe in {probe:.0f}s)"

    def _find(self, secret: Secret) -> _Key:
        for key in self._keys:
            if key.secret is secret or key.secret == secret:
                return key
        raise KeyError("that key is not in this pool")

    def _exhausted(self, model: str | None, now: float) -> RateLimited | AuthenticationError:
        name = self.provider or "the provider"
        enabled = [key for key in self._keys if not key.disabled]
        if enabled:
            wait = max(0.0, min(key.next_call(model, now) for key in self._keys) - now)
            what = f" for {model}" if model is not None else ""
            return RateLimited(
                f"every API key of {name} is resting{what} after a 429; one may be tried "
                f"again in {wait:.1f}s; retry then, or add keys to the pool",
                provider=self.provider,
                retry_after=wait,
            )
        wait = max(0.0, min(key.probe_at for key in self._keys) - now)
        return AuthenticationError(
            f"every API key of {name} was rejected (401); one is tried again in {wait:.0f}s; "
            "fix the keys in the configuration and reload",
            provider=self.provider,
        )
