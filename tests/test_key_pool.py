"""The key pool: rotation, rest after 429, disable after 401, statistics without keys."""

from __future__ import annotations

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
    pool = KeyPool([A, B])
    pool.rate_limited(A, 10.0)
    assert [pool.acquire() for _ in range(2)] == [B, B]
    await trio.sleep(10)
    assert A in {pool.acquire(), pool.acquire()}


async def test_default_rest_without_retry_after(autojump_clock: trio.testing.MockClock) -> None:
    """A 429 that named no wait rests the key for default_rest."""
    pool = KeyPool([A], default_rest=3.0)
    pool.rate_limited(A, None)
    with pytest.raises(RateLimited) as info:
        pool.acquire()
    assert info.value.retry_after == 3.0


async def test_rejected_key_rests_until_enabled(autojump_clock: trio.testing.MockClock) -> None:
    """A key that got a 401 stays out, however long, until re-enabled."""
    pool = KeyPool([A, B])
    pool.rejected(A)
    await trio.sleep(3600)
    assert {pool.acquire() for _ in range(3)} == {B}
    pool.enable(A.fingerprint())
    assert A in {pool.acquire() for _ in range(2)}


async def test_all_resting_is_rate_limited_with_the_soonest_wait(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """When every key rests, acquire raises RateLimited with the soonest return."""
    pool = KeyPool([A, B])
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
