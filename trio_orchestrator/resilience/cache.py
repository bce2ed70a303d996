"""The answer cache: completed answers kept by request key, with a TTL and an LRU bound.

Only complete answers are stored (a stream that ended with exactly one ``Done`` and no
error); an error, a cancellation or a caller leaving stores nothing. A hit replays the stored
events (text deltas, tool-call events, usage, ``Done``) through the caller's sink, so a
streaming caller still gets a stream. Expiry uses Trio's clock (:func:`trio.current_time`).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import ClassVar, Generic, TypeVar

import attrs
import trio

from ..events import Done, StreamEvent
from ..types import PromptRequest
from ..validators import positive_int, positive_time
from ..workers.base import EventSink, ModelWorker
from .config import CacheConfig, refuse_toggle
from .keys import is_deterministic, request_key

__all__ = ["CacheConfig", "CacheLayer", "CacheStatistics", "LRUStore"]

V = TypeVar("V")


@attrs.frozen
class CacheStatistics:
    """A snapshot of an answer cache."""

    hits: int
    """Requests answered from the cache."""
    misses: int
    """Eligible requests not found (or found expired) and sent to the inner worker."""
    evictions: int
    """Entries dropped because the cache was full (least recently used first)."""
    expirations: int
    """Entries dropped because their TTL had passed when they were looked up."""
    stored: int
    """Answers stored."""
    bypassed: int
    """Requests not eligible for the cache (sampled), passed straight through."""
    size: int
    """Entries held now (expired ones included until looked up or evicted)."""
    max_entries: int
    """The LRU bound."""


@attrs.define(eq=False)
class LRUStore(Generic[V]):
    """A synchronous LRU map with a per-entry TTL; the cache layer's storage.

    Args:
        max_entries: the bound; inserting beyond it evicts the least recently used entry.
        ttl: seconds an entry lives after it was put.
    """

    max_entries: int = attrs.field(validator=positive_int)
    ttl: float = attrs.field(validator=positive_time)
    _entries: OrderedDict[str, tuple[float, V]] = attrs.field(factory=OrderedDict, init=False)
    hits: int = attrs.field(default=0, init=False)
    misses: int = attrs.field(default=0, init=False)
    evictions: int = attrs.field(default=0, init=False)
    expirations: int = attrs.field(default=0, init=False)

    def resize(self, max_entries: int, ttl: float) -> None:
        """Change the bound and the TTL, evicting least recently used entries beyond it."""
        self.max_entries, self.ttl = max_entries, ttl
        while len(self._entries) > max_entries:
            self._entries.popitem(last=False)
            self.evictions += 1

    def __len__(self) -> int:
        return len(self._entries)

    def keys(self) -> list[str]:
        """The keys held, least recently used first."""
        return list(self._entries)

    def get(self, key: str, now: float) -> V | None:
        """Return the live value for ``key`` (marking it most recently used), else None."""
        entry = self._entries.get(key)
        if entry is not None and now >= entry[0]:
            del self._entries[key]
            self.expirations += 1
            entry = None
        if entry is None:
            self.misses += 1
            return None
        self._entries.move_to_end(key)
        self.hits += 1
        return entry[1]

    def put(self, key: str, value: V, now: float) -> None:
        """Store ``value`` as the most recently used entry, evicting beyond the bound."""
        self._entries[key] = (now + self.ttl, value)
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)
            self.evictions += 1


def _complete(events: list[StreamEvent]) -> bool:
    """A whole answer: it ends with ``Done``, and that is its only ``Done``."""
    return (
        bool(events)
        and isinstance(events[-1], Done)
        and (sum(isinstance(e, Done) for e in events) == 1)
    )


@attrs.define(eq=False)
class CacheLayer:
    """A worker layer that answers repeated requests from a cache of complete answers.

    Args:
        inner: the worker that answers misses.
        config: size, TTL and which requests are eligible.
    """

    _inner: ModelWorker
    _config: CacheConfig
    _store: LRUStore[tuple[StreamEvent, ...]] = attrs.field(init=False)
    _stored: int = attrs.field(default=0, init=False)
    _bypassed: int = attrs.field(default=0, init=False)

    def __attrs_post_init__(self) -> None:
        self._store = LRUStore(self._config.max_entries, self._config.ttl)

    def reconfigure(self, section: CacheConfig, /) -> list[str]:
        """Apply a reloaded ``[resilience.cache]``: size bound, TTL and eligibility."""
        refused = refuse_toggle("cache", self._config.enabled, section.enabled)
        # The semantic cache's own layer takes the rest of its section, when it runs.
        refused += refuse_toggle(
            "cache.semantic", self._config.semantic.enabled, section.semantic.enabled
        )
        if not refused:
            self._config = section
            self._store.resize(section.max_entries, section.ttl)
        return refused

    @property
    def inner(self) -> ModelWorker:
        """The worker this layer wraps."""
        return self._inner

    async def generate(self, request: PromptRequest, emit: EventSink) -> None:
        """Replay a cached answer to ``request``, or ask ``inner`` and keep a complete answer.

        Raises:
            WorkerError: whatever ``inner`` raised on a miss (never cached).
        """
        if not (self._config.cache_sampled or is_deterministic(request)):
            self._bypassed += 1
            await self._inner.generate(request, emit)
            return
        key = request_key(request)
        cached = self._store.get(key, trio.current_time())
        if cached is not None:
            await trio.lowlevel.checkpoint()
            for event in cached:
                await emit(event)
            return
        await self._answer_and_store(key, request, emit)

    async def _answer_and_store(self, key: str, request: PromptRequest, emit: EventSink) -> None:
        recorded: list[StreamEvent] = []

        async def record(event: StreamEvent) -> None:
            recorded.append(event)
            await emit(event)

        await self._inner.generate(request, record)
        if _complete(recorded):
            self._store.put(key, tuple(recorded), trio.current_time())
            self._stored += 1

    metric_kind: ClassVar[str] = "cache"
    metric_counters: ClassVar[tuple[str, ...]] = (
        "hits",
        "misses",
        "evictions",
        "expirations",
        "stored",
        "bypassed",
    )

    def statistics(self) -> CacheStatistics:
        """Return a snapshot of the cache's counters."""
        store = self._store
        return CacheStatistics(
            hits=store.hits,
            misses=store.misses,
            evictions=store.evictions,
            expirations=store.expirations,
            stored=self._stored,
            bypassed=self._bypassed,
            size=len(store),
            max_entries=store.max_entries,
        )
