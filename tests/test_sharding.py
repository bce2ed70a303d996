"""Session affinity by FNV-1a."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from trio_orchestrator import shard_session
from trio_orchestrator.sharding import fnv1a_64


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        # Test vectors from the FNV reference (draft-eastlake-fnv, FNV-1a 64-bit).
        (b"", 0xCBF29CE484222325),
        (b"a", 0xAF63DC4C8601EC8C),
        (b"foobar", 0x85944171F73967E8),
    ],
)
def test_fnv1a_64_matches_the_reference_vectors(data: bytes, expected: int) -> None:
    """The hash equals the published FNV-1a 64-bit test vectors."""
    assert fnv1a_64(data) == expected


@given(st.text(), st.integers(1, 1000))
def test_a_session_always_maps_to_the_same_shard_in_range(session: str, n: int) -> None:
    """A session's shard is stable and within range(n)."""
    shard = shard_session(session, n)
    assert 0 <= shard < n
    assert shard == shard_session(session, n)


def test_zero_shards_is_an_error() -> None:
    """Asking for fewer than one shard is refused with a clear message."""
    with pytest.raises(ValueError, match="at least 1"):
        shard_session("s", 0)
