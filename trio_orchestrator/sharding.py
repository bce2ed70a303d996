"""Session affinity: the same session always maps to the same shard."""

from __future__ import annotations

__all__ = ["fnv1a_64", "shard_session"]

_FNV_OFFSET = 0xCBF29CE484222325
_FNV_PRIME = 0x100000001B3
_MASK = 0xFFFFFFFFFFFFFFFF


def fnv1a_64(data: bytes) -> int:
    """Return the 64-bit FNV-1a hash of ``data``."""
    h = _FNV_OFFSET
    for byte in data:
        h = ((h ^ byte) * _FNV_PRIME) & _MASK
    return h


def shard_session(session: str, n: int) -> int:
    """Return the shard in ``range(n)`` for ``session`` (FNV-1a of its UTF-8 bytes, mod n).

    Raises:
        ValueError: ``n`` is less than 1.
    """
    if n < 1:
        raise ValueError(f"the number of shards must be at least 1, got {n}")
    return fnv1a_64(session.encode("utf-8")) % n
