"""The semantic cache: answers to questions close in meaning, not only identical ones.

Sits just inside the exact cache (:mod:`.cache`). For an eligible chat request it embeds the
last user turn through the configured embedding model, scans the stored answers of the
request's *scope* for the nearest vector by cosine similarity, and replays that answer's
events when the similarity reaches ``threshold`` — as the exact cache does, so a streaming
caller still gets a stream. On a miss it asks the inner worker and keeps a complete answer
with its vector.

What is embedded, and what must match exactly: only the last user turn's text is embedded
(that is where paraphrases live). Everything else that changes the answer forms the scope and
must be identical: the caller's API key id (``request.meta["api_key_id"]``, unless
``scope = "global"``), the model and every generation parameter (temperature, max_tokens,
tools, response_format and the rest of ``extra``…), the system prompt and every earlier turn,
and the retrieved context. A system prompt ("answer in French") or an earlier turn changes
the answer even when the question reads the same, and embedding it with the question would
let a near-identical long system prompt drown the question's difference.

Not eligible (passed straight through, counted as ``bypassed``): embedding requests,
``/v1/responses`` bodies, a last turn that is not a user's plain text (tool results, images,
audio), and sampled requests unless ``cache_sampled``. An embedding failure never fails the
request: it is counted and the request goes to the inner worker uncached.

The embedding call is made as the caller (:class:`CallerEmbedder`): a request of the
caller's key, counted against its limits and charged to its budget and spend like any.
What a cache made of a request is marked on its timing (:func:`~..types.mark_cache`), which
the service sends as the ``x-cache`` header (``semantic-hit`` here).

The index is in memory, for one process, bounded by ``max_entries`` in total, LRU with a TTL
on Trio's clock. With ``[distributed]`` each process's index is filled from the entries the
others stored in Redis (:mod:`~trio_orchestrator.distributed.semantic`) on a miss.

A lookup is an exact nearest-neighbour search of the scope's entries. With numpy installed
(the ``semantic`` extra: ``pip install trio-orchestrator[semantic]``) each scope keeps its
unit vectors as the rows of one float32 matrix, and a lookup is one matrix-vector product
and an argmax: about 0.1 ms for 1 000 entries of 384 dimensions, a few ms for 50 000 of
1 536, whatever the vectors. Without numpy it scans in pure Python: each vector carries a
256-bit SimHash signature (sparse random projections), an entry whose signature is too far
to reach the threshold is skipped with one XOR and popcount, and only the rest get the exact
cosine. That is fast while a scope's entries are far apart and slow when they crowd near the
question (real embeddings of questions on one topic do): ~25 ms per 1 000 entries of 384
dimensions, so without numpy keep ``max_entries`` small. The prefilter can, with negligible
probability, skip a true hit; it never makes a false one. An approximate index (HNSW:
usearch) was measured and not chosen: no faster than the matrix up to 10 000 entries a
scope, 0.4-1 ms per insertion, and it can miss. ``benchmarks/bench_semcache.py`` measures
all three.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import math
import operator
import random
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

import attrs
import trio

from ..errors import WorkerError
from ..events import Done, StreamEvent
from ..seams import Embedder
from ..types import GenerationParams, PromptRequest, mark_cache, request_notes
from ..workers.base import EventSink, ModelWorker, collect
from .config import SemanticCacheConfig, refuse_toggle
from .keys import is_deterministic, message_key, params_key

if TYPE_CHECKING:
    from ..distributed.semantic import SharedSemanticIndex

__all__ = [
    "CallerEmbedder",
    "SemanticCacheLayer",
    "SemanticCacheStatistics",
    "SemanticIndex",
    "cosine",
    "hamming_cutoff",
    "normalise",
    "question_of",
    "scope_of",
]


def normalise(vector: Sequence[float]) -> tuple[float, ...]:
    """``vector`` scaled to unit length (a zero vector stays zero: it matches nothing)."""
    norm = math.sqrt(sum(map(operator.mul, vector, vector)))
    if norm == 0.0:
        return tuple(0.0 for _ in vector)
    return tuple(x / norm for x in vector)


def cosine(a: Sequence[float], b: Sequence[float]) -> float:
    """The cosine similarity of two vectors (0.0 when either is zero or their lengths differ)."""
    if len(a) != len(b):
        return 0.0
    return float(sum(map(operator.mul, normalise(a), normalise(b))))


def question_of(request: PromptRequest) -> str | None:
    """The text the semantic cache embeds: the last turn's, when it is a user's plain text.

    Returns:
        The text, or None when ``request`` is not eligible (see the module docstring).
    """
    if request.embed is not None or request.responses_body is not None:
        return None
    chat = request.chat()
    if not chat:
        return None
    last = chat[-1]
    if last.role != "user" or not last.content or last.tool_calls or last.parts:
        return None
    wire = last.wire
    if wire is not None and not (
        set(wire) <= {"role", "content", "name"} and wire.get("content") == last.content
    ):
        return None  # images, audio, files: two such turns alike in text are not alike
    return last.content


def scope_of(request: PromptRequest, *, per_key: bool) -> str:
    """The scope of ``request``'s entry: a digest of everything but its last turn that
    changes the answer (see the module docstring). 64 hex digits, stable across runs."""
    payload: dict[str, Any] = {
        "earlier": [message_key(m) for m in request.chat()[:-1]],
        "context": [[d.id, d.text] for d in request.context],
        "params": params_key(request.params),
        "last_name": request.chat()[-1].name,
    }
    if per_key:
        payload["key"] = request.meta.get("api_key_id")
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=repr)
    return hashlib.sha256(text.encode()).hexdigest()


@attrs.frozen
class CallerEmbedder:
    """Embeds a question *as the caller who asked it*: the embedding request carries the
    caller's ``meta`` (API key id, user, tenant), deadline, priority and timing, and goes
    through ``worker`` -- so every layer that counts or charges a key (rate limits per user
    or key, the router's spend ledger, and what the gateway wraps around it: the virtual
    key's own limits and budget, spend) counts and charges it like any request of that key.

    Args:
        worker: the worker to send the embedding request through.
    """

    worker: ModelWorker

    async def embed_for(self, caller: PromptRequest, text: str, *, model: str) -> list[float]:
        """The vector of ``text`` from ``model``, asked on behalf of ``caller``.

        Raises:
            WorkerError: whatever the worker raised (a refusal, a limit, an upstream failure).
        """
        request = PromptRequest(
            embed=(text,),
            params=GenerationParams(model=model),
            meta=caller.meta,
            deadline=caller.deadline,
            timeout=caller.timeout,
            priority=caller.priority,
            streaming=False,
            timing=caller.timing,
        )
        completion = await collect(self.worker, request)
        (vector,) = completion.embeddings
        return list(vector)


def _first_done(events: list[StreamEvent]) -> bool:
    """Whether the last of ``events`` is the first ``Done`` among them."""
    return not any(isinstance(e, Done) for e in events[:-1])


@attrs.define(eq=False, slots=True)
class _Entry:
    scope: str
    vector: tuple[float, ...]
    signature: int
    events: tuple[StreamEvent, ...]
    expires: float


# Bits of a vector's signature (sign random projections, Charikar's SimHash). Two vectors
# at angle θ differ in each bit with probability θ/π, so the Hamming distance of their
# signatures estimates the angle for the cost of one XOR and one popcount.
SIGNATURE_BITS = 256
# Below this many dimensions the exact scan is as cheap as the signature: no prefilter.
_MIN_PREFILTER_DIM = 32
# Standard deviations of the Hamming distance added to the cutoff: a true hit is filtered
# out only when its signature is this unlucky (a missed hit, never a false one).
_MARGIN_SIGMAS = 6.0


@attrs.frozen
class _Projection:
    """Sparse random ±1 projections for one dimension: each bit is the sign of the sum of
    a few coordinates minus a few others (Achlioptas-style very sparse projections, so a
    signature costs ``bits * 2 * sqrt(dim)`` additions instead of ``bits * dim``)."""

    plus: tuple[Callable[[Sequence[float]], tuple[float, ...]], ...]
    minus: tuple[Callable[[Sequence[float]], tuple[float, ...]], ...]

    @classmethod
    def for_dimension(cls, dim: int, bits: int = SIGNATURE_BITS) -> _Projection:
        rng = random.Random(dim)  # the same projection in every process, for a given dim
        per_side = max(2, math.isqrt(dim) // 2)
        plus, minus = [], []
        for _ in range(bits):
            chosen = rng.sample(range(dim), 2 * per_side)
            plus.append(operator.itemgetter(*chosen[:per_side]))
            minus.append(operator.itemgetter(*chosen[per_side:]))
        return cls(tuple(plus), tuple(minus))

    def signature(self, vector: Sequence[float]) -> int:
        bits = 0
        for plus, minus in zip(self.plus, self.minus, strict=True):
            bits = (bits << 1) | (sum(plus(vector)) > sum(minus(vector)))
        return bits


def hamming_cutoff(threshold: float, bits: int = SIGNATURE_BITS) -> int:
    """The largest signature distance a vector at cosine ``threshold`` or more may show,
    with a margin of :data:`_MARGIN_SIGMAS` standard deviations."""
    p = math.acos(max(-1.0, min(1.0, threshold))) / math.pi
    return min(bits, math.ceil(bits * p + _MARGIN_SIGMAS * math.sqrt(bits * p * (1 - p)) + 1))


_NUMPY: list[Any] = []  # [module or None] once looked for


def numpy_or_none() -> Any:
    """The numpy module (the ``semantic`` extra), or None when it is not installed; looked
    for once."""
    if not _NUMPY:
        try:
            _NUMPY.append(importlib.import_module("numpy"))
        except ImportError:
            _NUMPY.append(None)
    return _NUMPY[0]


@attrs.define(eq=False)
class _Matrix:
    """One scope's unit vectors of one dimension as the rows of a float32 matrix (grown by
    doubling; a removed row is filled by the last one), with each row's entry id and expiry.
    """

    np: Any
    dim: int
    _rows: Any = attrs.field(init=False)
    _expires: Any = attrs.field(init=False)
    _idents: list[int] = attrs.field(factory=list, init=False)
    _where: dict[int, int] = attrs.field(factory=dict, init=False)

    def __attrs_post_init__(self) -> None:
        self._rows = self.np.empty((8, self.dim), dtype=self.np.float32)
        self._expires = self.np.empty(8, dtype=self.np.float64)

    def __len__(self) -> int:
        return len(self._idents)

    def add(self, ident: int, vector: Sequence[float], expires: float) -> None:
        n = len(self._idents)
        if n == len(self._rows):
            self._rows = self.np.concatenate([self._rows, self.np.empty_like(self._rows)])
            self._expires = self.np.concatenate([self._expires, self._expires])
        self._rows[n] = vector
        self._expires[n] = expires
        self._idents.append(ident)
        self._where[ident] = n

    def remove(self, ident: int) -> None:
        row, last = self._where.pop(ident), len(self._idents) - 1
        moved = self._idents.pop()
        if row != last:
            self._rows[row] = self._rows[last]
            self._expires[row] = self._expires[last]
            self._idents[row] = moved
            self._where[moved] = row

    def nearest(self, vector: Sequence[float], now: float) -> tuple[float, int, list[int]]:
        """The best similarity among live rows and its entry id (-1: none), and the ids of
        the expired rows."""
        n = len(self._idents)
        similarities = self._rows[:n] @ self.np.asarray(vector, dtype=self.np.float32)
        dead = self._expires[:n] <= now
        expired = [self._idents[i] for i in self.np.flatnonzero(dead).tolist()]
        if expired:
            similarities[dead] = -2.0
        best = int(self.np.argmax(similarities)) if n else -1
        if best < 0 or similarities[best] < -1.5:
            return 0.0, -1, expired
        return float(similarities[best]), self._idents[best], expired


@attrs.define(eq=False)
class SemanticIndex:
    """Stored answers with their unit vectors, by scope; LRU over all scopes, with a TTL.

    Args:
        max_entries: the bound over all scopes; beyond it the least recently used goes.
        ttl: seconds an entry lives after it was put.
        kernel: how a lookup compares: ``"numpy"`` (a matrix per scope), ``"python"`` (the
            signature prefilter and a pure-Python scan), or ``"auto"``: numpy when it is
            installed.

    Raises:
        RuntimeError: ``kernel="numpy"`` and numpy is not installed.
    """

    max_entries: int
    ttl: float
    kernel: str = attrs.field(default="auto", kw_only=True)
    _np: Any = attrs.field(init=False)
    _matrices: dict[tuple[str, int], _Matrix] = attrs.field(factory=dict, init=False)
    _lru: OrderedDict[int, _Entry] = attrs.field(factory=OrderedDict, init=False)
    _scopes: dict[str, dict[int, _Entry]] = attrs.field(factory=dict, init=False)
    _projections: dict[int, _Projection] = attrs.field(factory=dict, init=False)
    _next: int = attrs.field(default=0, init=False)
    evictions: int = attrs.field(default=0, init=False)
    expirations: int = attrs.field(default=0, init=False)
    compared: int = attrs.field(default=0, init=False)

    def __attrs_post_init__(self) -> None:
        self._np = None if self.kernel == "python" else numpy_or_none()
        if self._np is None and self.kernel == "numpy":
            raise RuntimeError(
                "the semantic cache's numpy index needs numpy: "
                "pip install 'trio-orchestrator[semantic]'"
            )
        self.kernel = "python" if self._np is None else "numpy"

    def __len__(self) -> int:
        return len(self._lru)

    def resize(self, max_entries: int, ttl: float) -> None:
        """Change the bound and the TTL, evicting least recently used entries beyond it."""
        self.max_entries, self.ttl = max_entries, ttl
        self._evict()

    def signature(self, vector: Sequence[float]) -> int:
        """``vector``'s signature (0 for short vectors, which are always compared exactly)."""
        dim = len(vector)
        if dim < _MIN_PREFILTER_DIM:
            return 0
        projection = self._projections.get(dim)
        if projection is None:
            projection = self._projections[dim] = _Projection.for_dimension(dim)
        return projection.signature(vector)

    def search(
        self, scope: str, vector: tuple[float, ...], now: float, *, threshold: float = -1.0
    ) -> tuple[float, int]:
        """The best similarity in ``scope`` and that entry's id (``-1`` when the scope holds
        no live entry worth comparing). ``vector`` must be unit length.

        Entries whose signature is too far from ``vector``'s to reach ``threshold`` are
        skipped without computing their similarity (see :func:`hamming_cutoff`); expired
        entries met on the way are dropped. Searching does not touch the LRU order:
        :meth:`take` does, on a hit.
        """
        if self._np is not None:
            return self._search_matrix(scope, vector, now)
        entries = self._scopes.get(scope)
        if not entries:
            return 0.0, -1
        signature = self.signature(vector)
        cutoff = hamming_cutoff(threshold) if threshold > -1.0 else SIGNATURE_BITS
        best, best_id = -2.0, -1
        expired: list[int] = []
        dim = len(vector)
        for ident, entry in entries.items():
            if now >= entry.expires:
                expired.append(ident)
            elif len(entry.vector) != dim:
                # Another dimension: another model answered for embedding_model (the
                # router fell back to another deployment). zip would compare a prefix of
                # it; numpy's per-dimension matrices never compare it either.
                continue
            elif (signature ^ entry.signature).bit_count() <= cutoff:
                self.compared += 1
                similarity = sum(map(operator.mul, vector, entry.vector))
                if similarity > best:
                    best, best_id = similarity, ident
        for ident in expired:
            self._drop(ident)
            self.expirations += 1
        return (best, best_id) if best_id >= 0 else (0.0, -1)

    def _search_matrix(
        self, scope: str, vector: tuple[float, ...], now: float
    ) -> tuple[float, int]:
        """:meth:`search` with numpy: one product of the scope's matrix and ``vector``."""
        matrix = self._matrices.get((scope, len(vector)))
        if matrix is None:
            return 0.0, -1
        self.compared += len(matrix)
        similarity, ident, expired = matrix.nearest(vector, now)
        for dead in expired:
            self._drop(dead)
            self.expirations += 1
        return similarity, ident

    def take(self, ident: int) -> tuple[StreamEvent, ...]:
        """The events of entry ``ident`` (from :meth:`search`), now the most recently used."""
        self._lru.move_to_end(ident)
        return self._lru[ident].events

    def put(
        self,
        scope: str,
        vector: tuple[float, ...],
        events: tuple[StreamEvent, ...],
        now: float,
        *,
        expires: float | None = None,
    ) -> None:
        """Store an answer under ``scope`` as the most recently used entry, until ``expires``
        (default: ``now`` plus the TTL; an entry from another process keeps what it had
        left)."""
        ident, self._next = self._next, self._next + 1
        until = now + self.ttl if expires is None else min(expires, now + self.ttl)
        # The signature serves the pure-Python scan only (it costs more than the lookup).
        signature = 0 if self._np is not None else self.signature(vector)
        entry = _Entry(scope, vector, signature, events, until)
        self._lru[ident] = entry
        self._scopes.setdefault(scope, {})[ident] = entry
        if self._np is not None:
            key = (scope, len(vector))
            matrix = self._matrices.get(key)
            if matrix is None:
                matrix = self._matrices[key] = _Matrix(self._np, len(vector))
            matrix.add(ident, vector, until)
        self._evict()

    def _evict(self) -> None:
        while len(self._lru) > self.max_entries:
            ident = next(iter(self._lru))
            self._drop(ident)
            self.evictions += 1

    def _drop(self, ident: int) -> None:
        entry = self._lru.pop(ident)
        scoped = self._scopes[entry.scope]
        del scoped[ident]
        if not scoped:
            del self._scopes[entry.scope]
        key = (entry.scope, len(entry.vector))
        matrix = self._matrices.get(key)
        if matrix is not None:
            matrix.remove(ident)
            if not matrix:
                del self._matrices[key]


@attrs.frozen
class SemanticCacheStatistics:
    """A snapshot of the semantic cache."""

    lookups: int
    """Eligible requests looked up (each one embedding call and one scan)."""
    hits: int
    """Lookups answered from a stored answer at or above the threshold."""
    misses: int
    """Lookups that found nothing close enough and went to the inner worker."""
    stored: int
    """Answers stored."""
    bypassed: int
    """Requests not eligible (see the module docstring), passed straight through."""
    embed_errors: int
    """Lookups whose embedding failed; the request went on uncached."""
    evictions: int
    """Entries dropped because the index was full (least recently used first)."""
    expirations: int
    """Entries dropped because their TTL had passed."""
    lookup_seconds: float
    """Total time spent embedding and scanning (the latency the cache adds to a miss)."""
    lookup_seconds_max: float
    """The longest single embed + scan."""
    size: int
    """Entries held now."""
    max_entries: int
    """The LRU bound."""


@attrs.define(eq=False)
class SemanticCacheLayer:
    """A worker layer answering a question from the stored answer to a close paraphrase.

    Args:
        inner: the worker that answers misses.
        config: ``[resilience.cache.semantic]``.
        embedder: turns the question into a vector (with ``config.embedding_model``); a
            :class:`CallerEmbedder` asks on behalf of the request's caller.
        shared: the entries shared with other processes through Redis, or None.
    """

    _inner: ModelWorker
    _config: SemanticCacheConfig
    _embedder: Embedder | CallerEmbedder
    _shared: SharedSemanticIndex | None = None
    _index: SemanticIndex = attrs.field(init=False)
    _lookups: int = attrs.field(default=0, init=False)
    _hits: int = attrs.field(default=0, init=False)
    _stored: int = attrs.field(default=0, init=False)
    _bypassed: int = attrs.field(default=0, init=False)
    _embed_errors: int = attrs.field(default=0, init=False)
    _lookup_seconds: float = attrs.field(default=0.0, init=False)
    _lookup_seconds_max: float = attrs.field(default=0.0, init=False)

    def __attrs_post_init__(self) -> None:
        self._index = SemanticIndex(self._config.max_entries, self._config.ttl)

    @property
    def inner(self) -> ModelWorker:
        """The worker this layer wraps."""
        return self._inner

    def reconfigure(self, section: SemanticCacheConfig, /) -> list[str]:
        """Apply a reloaded ``[resilience.cache.semantic]``: threshold, bound, TTL, scope
        and eligibility; switching it on or off, or another embedding model or provider,
        needs a restart."""
        refused = refuse_toggle("cache.semantic", self._config.enabled, section.enabled)
        for name in ("embedding_model", "embedding_provider"):
            old, new = getattr(self._config, name), getattr(section, name)
            if old != new:
                refused.append(
                    f"resilience.cache.semantic.{name}: stored vectors belong to the old "
                    f"one; restart to apply {old!r} → {new!r}"
                )
        if not refused:
            self._config = section
            self._index.resize(section.max_entries, section.ttl)
        return refused

    def _eligible(self, request: PromptRequest) -> str | None:
        if not (self._config.cache_sampled or is_deterministic(request)):
            return None
        return question_of(request)

    async def generate(self, request: PromptRequest, emit: EventSink) -> None:
        """Replay the stored answer to a close enough question, or ask ``inner`` and keep a
        complete answer.

        Raises:
            WorkerError: whatever ``inner`` raised on a miss (never cached).
        """
        question = self._eligible(request)
        if question is None:
            self._bypassed += 1
            await self._inner.generate(request, emit)
            return
        config = self._config
        scope = scope_of(request, per_key=config.scope == "api_key")
        started = time.perf_counter()
        try:
            raw = await self._embed(request, question)
        except WorkerError:
            # Losing the cache never fails a request.
            self._embed_errors += 1
            mark_cache(request, "miss")
            await self._inner.generate(request, emit)
            return
        # Marked after the embedding call, which shares the request's timing: a cache below
        # that answered the *embedding* (the shared answers in Redis) must not say "hit" for
        # the chat; a cache below that answers the chat itself still may.
        mark_cache(request, "miss", replace=True)
        vector = normalise(raw)
        ident = await self._search(scope, vector)
        self._count_lookup(time.perf_counter() - started)
        if ident >= 0:
            self._hits += 1
            mark_cache(request, "semantic-hit", replace=True)
            if (notes := request_notes()) is not None:
                notes.cache_hit = True
            events = self._index.take(ident)
            await trio.lowlevel.checkpoint()
            for event in events:
                await emit(event)
            return
        await self._answer_and_store(scope, vector, request, emit)

    async def _embed(self, request: PromptRequest, question: str) -> Sequence[float]:
        model = self._config.embedding_model
        if isinstance(self._embedder, CallerEmbedder):
            return await self._embedder.embed_for(request, question, model=model)
        (raw,) = await self._embedder.embed([question], model=model)
        return raw

    async def _search(self, scope: str, vector: tuple[float, ...]) -> int:
        """The id of the entry close enough to ``vector`` in ``scope``, or -1: this
        process's index first, then (on a miss) with what other processes stored since."""
        threshold = self._config.threshold
        now = trio.current_time()
        similarity, ident = self._index.search(scope, vector, now, threshold=threshold)
        if ident >= 0 and similarity >= threshold:
            return ident
        if self._shared is None or not await self._shared.pull(scope, self._index, now):
            return -1
        similarity, ident = self._index.search(scope, vector, now, threshold=threshold)
        return ident if ident >= 0 and similarity >= threshold else -1

    def _count_lookup(self, seconds: float) -> None:
        self._lookups += 1
        self._lookup_seconds += seconds
        self._lookup_seconds_max = max(self._lookup_seconds_max, seconds)

    async def _answer_and_store(
        self, scope: str, vector: tuple[float, ...], request: PromptRequest, emit: EventSink
    ) -> None:
        recorded: list[StreamEvent] = []
        shared, config = self._shared, self._config

        async def record(event: StreamEvent) -> None:
            recorded.append(event)
            if shared is not None and isinstance(event, Done) and _first_done(recorded):
                # Shared before the caller has the whole answer, so that whatever it asks
                # next, of any process, finds it.
                await shared.push(
                    scope, vector, tuple(recorded), ttl=config.ttl, max_entries=config.max_entries
                )
            await emit(event)

        await self._inner.generate(request, record)
        # Only a whole answer: it ends with its one ``Done`` (as the exact cache keeps).
        dones = sum(isinstance(e, Done) for e in recorded)
        if recorded and isinstance(recorded[-1], Done) and dones == 1:
            self._index.put(scope, vector, tuple(recorded), trio.current_time())
            self._stored += 1

    metric_kind: ClassVar[str] = "semantic_cache"
    metric_counters: ClassVar[tuple[str, ...]] = (
        "lookups",
        "hits",
        "misses",
        "stored",
        "bypassed",
        "embed_errors",
        "evictions",
        "expirations",
        "lookup_seconds",
    )

    def statistics(self) -> SemanticCacheStatistics:
        """Return a snapshot of the semantic cache's counters."""
        index = self._index
        return SemanticCacheStatistics(
            lookups=self._lookups,
            hits=self._hits,
            misses=self._lookups - self._hits,
            stored=self._stored,
            bypassed=self._bypassed,
            embed_errors=self._embed_errors,
            evictions=index.evictions,
            expirations=index.expirations,
            lookup_seconds=self._lookup_seconds,
            lookup_seconds_max=self._lookup_seconds_max,
            size=len(index),
            max_entries=index.max_entries,
        )
