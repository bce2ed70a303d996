"""The key pool: rotation, rest after 429 (capped, per model, jittered, probed early),
disable after 401 (probed after a cool-down, revived by a reload), statistics without keys."""

from __future__ import annotations

import math
import random

import pytest
import trio

from trio_orchestrator.config.secret import Secret
from trio_orchestrator.errors import AuthenticationError, RateLimited
from trio_orchestrator.workers import KeyPool

A, B, C = Secret("sk-key-aaaaaaaa"), Secret("sk-key-bbbbbbbb"), Secret("sk-key-cccccccc")


async def test_keys_rotate() -> None:
    """Ready keys are used in turn."""
    pool = KeyPool([A, B, C])
    assert [pool.acquire() for _ in range(4)] == [A, B, C, A]


async def test_rate_limited_key_rests_for_retry_after(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A key that got a 429 is skipped for its Retry-After, then used again."""
    pool = KeyPool([A, B], jitter=0.0)
    pool.rate_limited(A, 10.0)
    assert [pool.acquire() for _ in range(2)] == [B, B]
    await trio.sleep(10)
    assert A in {pool.acquire(), pool.acquire()}


async def test_default_rest_without_retry_after(autojump_clock: trio.testing.MockClock) -> None:
    """A 429 that named no wait rests the key for default_rest."""
    pool = KeyPool([A], default_rest=3.0, jitter=0.0)
    pool.rate_limited(A, None)
    with pytest.raises(RateLimited) as info:
        pool.acquire()
    assert info.value.retry_after == 3.0


async def test_rejected_key_rests_until_enabled(autojump_clock: trio.testing.MockClock) -> None:
    """A key that got a 401 stays out for its cool-down, or until re-enabled."""
    pool = KeyPool([A, B], rejected_cooldown=600.0)
    pool.rejected(A)
    await trio.sleep(599)
    assert {pool.acquire() for _ in range(3)} == {B}
    pool.enable(A.fingerprint())
    assert A in {pool.acquire() for _ in range(2)}


async def test_all_resting_is_rate_limited_with_the_soonest_wait(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """When every key rests, acquire raises RateLimited with the soonest return."""
    pool = KeyPool([A, B], jitter=0.0)
    pool.rate_limited(A, 30.0)
    pool.rate_limited(B, 5.0)
    with pytest.raises(RateLimited) as info:
        pool.acquire()
    assert info.value.retry_after == 5.0


async def test_all_rejected_is_authentication_error() -> None:
    """When every key was rejected, acquire raises AuthenticationError."""
    pool = KeyPool([A])
    pool.rejected(A)
    with pytest.raises(AuthenticationError):
        pool.acquire()


async def test_statistics_by_fingerprint_never_key() -> None:
    """Statistics count per key under its fingerprint and hold no key."""
    pool = KeyPool([A, B], "p")
    pool.succeeded(pool.acquire())
    pool.rate_limited(pool.acquire(), 1.0)
    stats = pool.statistics()
    assert stats.keys[A.fingerprint()].successes == 1
    assert stats.keys[B.fingerprint()].state == "resting"
    assert stats.ready == 1
    assert A.reveal() not in repr(stats) + repr(pool)


def test_a_pool_needs_secret_keys() -> None:
    """Plain strings are refused, so a key cannot slip in unmasked."""
    with pytest.raises(TypeError):
        KeyPool(["sk-plain"])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="at least one"):
        KeyPool([])


def test_secrets_are_the_keys_in_use_after_a_reload() -> None:
    """``secrets`` (what error text is scrubbed of) follows replace_keys, not the first keys."""
    pool = KeyPool([Secret("sk-old")])
    pool.replace_keys([Secret("sk-new-1"), Secret("sk-new-2")])
    assert [s.reveal() for s in pool.secrets] == ["sk-new-1", "sk-new-2"]


# ------------------------------------------------------------------ 429: capped, per model


async def test_a_long_retry_after_rests_a_key_at_most_max_rest(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Retry-After: 3600 rests the only key for max_rest, not an hour."""
    pool = KeyPool([A], max_rest=30.0, probe_interval=math.inf, jitter=0.0)
    pool.rate_limited(A, 3600.0)
    with pytest.raises(RateLimited) as info:
        pool.acquire()
    assert info.value.retry_after == 30.0
    await trio.sleep(30)
    assert pool.acquire() is A


async def test_a_rest_for_one_model_leaves_the_key_to_the_others(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A 429 for model m rests (key, m): other models still get the key, m does not."""
    pool = KeyPool([A], "p", probe_interval=math.inf)
    pool.rate_limited(A, 60.0, "m")
    assert pool.acquire("other") is A
    assert pool.acquire() is A
    with pytest.raises(RateLimited, match="resting for m"):
        pool.acquire("m")
    assert pool.unready() is None
    assert set(pool.statistics().keys[A.fingerprint()].model_rests) == {"m"}


async def test_a_429_for_no_model_rests_the_whole_key() -> None:
    """A 429 to a call naming no model rests the key for every model."""
    pool = KeyPool([A], "p", probe_interval=math.inf)
    pool.rate_limited(A, 60.0)
    with pytest.raises(RateLimited):
        pool.acquire("m")
    assert pool.statistics().keys[A.fingerprint()].state == "resting"


async def test_while_every_key_rests_one_probe_per_key_passes_each_interval(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """With every key resting, one call per key passes each probe_interval; its success
    ends the rest."""
    pool = KeyPool([A, B], max_rest=30.0, probe_interval=2.0, jitter=0.0)
    pool.rate_limited(A, 3600.0, "m")
    pool.rate_limited(B, 3600.0, "m")
    with pytest.raises(RateLimited) as info:
        pool.acquire("m")
    assert info.value.retry_after == 2.0
    await trio.sleep(2)
    probes = [pool.acquire("m"), pool.acquire("m")]
    assert set(probes) == {A, B}
    with pytest.raises(RateLimited):
        pool.acquire("m")  # one probe per key per interval
    started = trio.current_time()
    pool.rate_limited(probes[1], 3600.0, "m")  # that probe was refused again
    pool.succeeded(probes[0], "m", since=started)
    assert [pool.acquire("m") for _ in range(2)] == [probes[0]] * 2
    assert pool.statistics().keys[probes[0].fingerprint()].probes == 1


async def test_a_success_that_began_before_a_429_leaves_its_rest(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A call that started before another call's 429 does not end that rest by succeeding."""
    pool = KeyPool([A], probe_interval=math.inf)
    key = pool.acquire("m")
    started = trio.current_time()
    await trio.sleep(1)
    pool.rate_limited(key, 10.0, "m")
    pool.succeeded(key, "m", since=started)
    with pytest.raises(RateLimited):
        pool.acquire("m")


async def test_rests_end_spread_out(autojump_clock: trio.testing.MockClock) -> None:
    """Keys rested by the same 429 wake at different times, within 10 % of the rest."""
    keys = [Secret(f"sk-key-{i:08d}") for i in range(20)]
    pool = KeyPool(keys, max_rest=30.0, rng=random.Random(7))
    for key in keys:
        pool.rate_limited(key, 3600.0)
    ends = [s.resting_until for s in pool.statistics().keys.values()]
    assert len(set(ends)) == len(ends)
    assert all(e is not None and 30.0 <= e <= 33.0 for e in ends)


async def test_reloaded_settings_shorten_a_running_rest(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A reload lowering max_rest shortens the rests already running."""
    pool = KeyPool([A], max_rest=600.0, probe_interval=math.inf, jitter=0.0)
    pool.rate_limited(A, 3600.0)
    pool.configure(default_rest=5.0, max_rest=10.0, probe_interval=5.0, rejected_cooldown=60.0)
    await trio.sleep(10)
    assert pool.acquire() is A


# ------------------------------------------------------------------ 401: cool-down, revive


async def test_a_rejected_key_is_probed_once_after_its_cooldown(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """After the cool-down a rejected key takes one probe; a success brings it back."""
    pool = KeyPool([A, B], rejected_cooldown=300.0, jitter=0.0)
    pool.rejected(A)
    await trio.sleep(300)
    assert pool.acquire() is A  # the probe
    started = trio.current_time()
    assert {pool.acquire() for _ in range(3)} == {B}  # one probe only
    pool.succeeded(A, None, since=started)
    assert A in {pool.acquire() for _ in range(2)}
    assert pool.statistics().keys[A.fingerprint()].state == "ready"


async def test_a_rejected_probe_doubles_the_cooldown(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A 401 to the probe disables the key again for twice the cool-down."""
    pool = KeyPool([A], rejected_cooldown=300.0, jitter=0.0)
    pool.rejected(A)
    await trio.sleep(300)
    pool.rejected(pool.acquire())
    await trio.sleep(599)
    with pytest.raises(AuthenticationError, match="tried again in 1s"):
        pool.acquire()
    await trio.sleep(1)
    assert pool.acquire() is A


async def test_revive_enables_every_rejected_key() -> None:
    """revive() (a reload) brings every rejected key back at once."""
    pool = KeyPool([A, B], "p")
    pool.rejected(A)
    pool.rejected(B)
    reason = pool.unready()
    assert reason is not None
    assert "disabled after a 401" in reason
    pool.revive()
    assert {pool.acquire() for _ in range(2)} == {A, B}
    assert pool.unready() is None
