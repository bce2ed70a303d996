"""Behaviour of the semantic cache that its mutation session showed unpinned: the index's two
kernels on the same inputs, scoping, thresholds, expiry, eligibility, counters.

Written for the mutation session (scripts/mutation.py). The index runs with numpy when it is
installed and in pure Python otherwise: every index test runs on both kernels (``KERNELS``),
and the layer's tests run with numpy hidden too (``kernel`` fixture), so the fallback is
pinned to the same answers. The Redis-backed sharing (tests/test_semantic_cache_shared.py)
needs a server, so the layer's side of it is pinned here against an in-memory fake.
"""

from __future__ import annotations

import decimal
import importlib
import math
import random
import time
from collections.abc import Sequence
from typing import Any

import attrs
import pytest
import trio
from _scripted import Recorder

from trio_orchestrator.errors import ServerError
from trio_orchestrator.events import Done, Embeddings, StreamEvent, TextDelta, Usage
from trio_orchestrator.resilience import semantic_cache
from trio_orchestrator.resilience.config import SemanticCacheConfig
from trio_orchestrator.resilience.semantic_cache import (
    SIGNATURE_BITS,
    CallerEmbedder,
    SemanticCacheLayer,
    SemanticIndex,
    _Projection,
    cosine,
    hamming_cutoff,
    normalise,
    numpy_or_none,
    question_of,
    scope_of,
)
from trio_orchestrator.types import (
    Document,
    GenerationParams,
    Message,
    Priority,
    PromptRequest,
    RequestNotes,
    RequestTiming,
    ToolCall,
    reset_request_notes,
    set_request_notes,
)
from trio_orchestrator.workers.base import EventSink

KERNELS = ["python", "numpy"]


def _index(kernel: str, max_entries: int = 10, ttl: float = 10.0) -> SemanticIndex:
    if kernel == "numpy":
        pytest.importorskip("numpy")
    return SemanticIndex(max_entries=max_entries, ttl=ttl, kernel=kernel)


def _unit(rng: random.Random, dim: int) -> tuple[float, ...]:
    return normalise([rng.gauss(0.0, 1.0) for _ in range(dim)])


def _negated(vector: Sequence[float]) -> tuple[float, ...]:
    return tuple(-x for x in vector)


def _answer(text: str) -> tuple[StreamEvent, ...]:
    return (TextDelta(text), Done("stop", text, None, (), "m"))


# --- the vector arithmetic ---------------------------------------------------------------


def test_normalise_scales_to_unit_length_and_leaves_zero_at_zero() -> None:
    """(3, 4) becomes (0.6, 0.8); a zero vector stays a zero vector of the same length."""
    assert normalise([3.0, 4.0]) == pytest.approx((0.6, 0.8))
    assert normalise([0.0, 0.0, 0.0]) == (0.0, 0.0, 0.0)


def test_cosine_is_scale_free_and_zero_for_mismatched_or_zero_vectors() -> None:
    """cosine ignores length, is 0.0 for vectors of different lengths or a zero vector."""
    assert cosine([1.0, 0.0], [1.0, 1.0]) == pytest.approx(1 / math.sqrt(2))
    assert cosine([2.0, 0.0], [5.0, 0.0]) == pytest.approx(1.0)
    assert cosine([1.0, 0.0], [1.0, 0.0, 0.0]) == 0.0
    assert cosine([0.0, 0.0], [1.0, 0.0]) == 0.0


@pytest.mark.parametrize(
    ("threshold", "bits", "cutoff"),
    [
        (1.0, 256, 1),  # identical: p = 0, only the +1
        (2.0, 256, 1),  # clamped to 1.0
        (0.0, 256, 177),  # p = 1/2: 128 + 6 * 8 + 1
        (0.0, 64, 57),  # p = 1/2: 32 + 6 * 4 + 1
        (0.95, 256, 56),  # 25.9 + 6 * 4.82 + 1, rounded up
        (-1.0, 256, 256),  # opposite: everything, capped at the bits
        (-3.0, 256, 256),  # clamped to -1.0
    ],
)
def test_hamming_cutoff_is_the_expected_distance_plus_six_sigmas(
    threshold: float, bits: int, cutoff: int
) -> None:
    """The cutoff is ceil(bits*p + 6*sqrt(bits*p*(1-p)) + 1), p = acos(threshold)/pi,
    threshold clamped to [-1, 1] and the result to ``bits``."""
    assert hamming_cutoff(threshold, bits) == cutoff


@pytest.mark.parametrize(("dim", "per_side"), [(32, 2), (35, 2), (64, 4), (400, 10), (1536, 19)])
def test_a_projection_bit_sums_isqrt_half_coordinates_against_as_many_others(
    dim: int, per_side: int
) -> None:
    """Each of the 256 bits compares isqrt(dim)//2 coordinates (at least 2) with as many
    others, all distinct; the same dimension gets the same projection every time."""
    projection = _Projection.for_dimension(dim)
    again = _Projection.for_dimension(dim)
    assert len(projection.plus) == len(projection.minus) == SIGNATURE_BITS
    coordinates = list(range(dim))
    for plus, minus, plus2, minus2 in zip(
        projection.plus, projection.minus, again.plus, again.minus, strict=True
    ):
        chosen = [*plus(coordinates), *minus(coordinates)]
        assert len(plus(coordinates)) == len(minus(coordinates)) == per_side
        assert len(set(chosen)) == 2 * per_side
        assert (plus2(coordinates), minus2(coordinates)) == (
            plus(coordinates),
            minus(coordinates),
        )


def test_a_signature_has_one_bit_per_projection_flipped_by_negation() -> None:
    """A vector and its negation differ in every one of the 256 signature bits, and two
    indexes give the same vector the same signature."""
    vector = _unit(random.Random(5), 64)
    index = SemanticIndex(max_entries=1, ttl=1.0, kernel="python")
    other = SemanticIndex(max_entries=1, ttl=1.0, kernel="python")
    assert index.signature(vector) ^ index.signature(_negated(vector)) == 2**SIGNATURE_BITS - 1
    assert index.signature(vector) == other.signature(vector) != 0


def test_short_vectors_have_no_signature() -> None:
    """Below 32 dimensions the signature is 0 (always compared exactly); from 32 it is not."""
    index = SemanticIndex(max_entries=1, ttl=1.0, kernel="python")
    rng = random.Random(2)
    assert index.signature(_unit(rng, 31)) == 0
    assert index.signature(_unit(rng, 32)) != 0


# --- numpy or not ------------------------------------------------------------------------


@pytest.fixture
def no_numpy(monkeypatch: pytest.MonkeyPatch) -> None:
    """numpy looked for and not found (the ``semantic`` extra not installed)."""
    monkeypatch.setattr(semantic_cache, "_NUMPY", [None])


@pytest.fixture(params=KERNELS)
def kernel(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """The layer's index on each kernel: numpy (when installed), or numpy hidden."""
    if request.param == "numpy":
        pytest.importorskip("numpy")
    else:
        monkeypatch.setattr(semantic_cache, "_NUMPY", [None])
    return str(request.param)


def test_numpy_is_looked_for_once_and_its_absence_remembered(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Without numpy, numpy_or_none() is None and does not try the import a second time."""
    tries: list[str] = []

    def missing(name: str) -> Any:
        tries.append(name)
        raise ImportError(name)

    monkeypatch.setattr(semantic_cache, "_NUMPY", [])
    monkeypatch.setattr(importlib, "import_module", missing)
    assert numpy_or_none() is None
    assert numpy_or_none() is None
    assert tries == ["numpy"]


def test_numpy_when_installed_is_the_module() -> None:
    """With numpy installed, numpy_or_none() is that module, and "auto" picks it."""
    np = pytest.importorskip("numpy")
    assert numpy_or_none() is np
    assert SemanticIndex(max_entries=1, ttl=1.0).kernel == "numpy"
    assert SemanticIndex(max_entries=1, ttl=1.0, kernel="python").kernel == "python"


@pytest.mark.usefixtures("no_numpy")
def test_without_numpy_auto_is_python_and_numpy_is_refused() -> None:
    """Without numpy "auto" scans in pure Python and "numpy" says which extra to install."""
    assert SemanticIndex(max_entries=1, ttl=1.0).kernel == "python"
    with pytest.raises(RuntimeError) as raised:
        SemanticIndex(max_entries=1, ttl=1.0, kernel="numpy")
    assert str(raised.value) == (
        "the semantic cache's numpy index needs numpy: pip install 'trio-orchestrator[semantic]'"
    )


# --- the index, on both kernels ----------------------------------------------------------


@pytest.mark.parametrize("kernel", KERNELS)
def test_an_empty_or_unknown_scope_finds_nothing(kernel: str) -> None:
    """A scope with no entries (or entries of another dimension) answers (0.0, -1)."""
    index = _index(kernel)
    assert index.search("s", normalise([1.0, 0.0]), 0.0) == (0.0, -1)
    index.put("s", normalise([1.0, 0.0, 0.0]), _answer("a"), 0.0)
    assert index.search("other", normalise([1.0, 0.0, 0.0]), 0.0) == (0.0, -1)
    assert index.search("s", normalise([1.0, 0.0]), 0.0) == (0.0, -1)


@pytest.mark.parametrize("kernel", KERNELS)
def test_entries_of_another_dimension_are_passed_over(kernel: str) -> None:
    """Behind an entry of another dimension, the scope's entries of the question's own
    dimension are still compared (and expired ones still dropped)."""
    index = _index(kernel, ttl=10.0)
    index.put("s", normalise([1.0, 0.0, 0.0]), _answer("3d"), 5.0)
    index.put("s", normalise([0.0, 1.0]), _answer("old"), 0.0)
    index.put("s", normalise([1.0, 0.0]), _answer("2d"), 5.0)
    similarity, ident = index.search("s", normalise([1.0, 0.0]), 12.0)
    assert similarity == pytest.approx(1.0)
    assert index.take(ident) == _answer("2d")
    assert (index.expirations, len(index)) == (1, 2)


@pytest.mark.parametrize("kernel", KERNELS)
def test_the_first_entry_is_found_even_when_opposite(kernel: str) -> None:
    """The first entry stored (id 0) is found, and the best similarity is reported even
    when it is negative (the layer compares it with the threshold)."""
    index = _index(kernel)
    index.put("s", normalise([1.0, 0.0]), _answer("a"), 0.0)
    similarity, ident = index.search("s", normalise([1.0, 0.0]), 0.0)
    assert similarity == pytest.approx(1.0)
    assert ident == 0
    similarity, ident = index.search("s", normalise([-1.0, 0.0]), 0.0)
    assert similarity == pytest.approx(-1.0)
    assert ident == 0
    assert index.take(ident) == _answer("a")


@pytest.mark.parametrize("kernel", KERNELS)
def test_the_nearest_of_several_wins_and_a_tie_goes_to_the_first(kernel: str) -> None:
    """Of several entries the most similar answers; of equal ones, the first stored."""
    index = _index(kernel)
    index.put("s", normalise([0.0, 1.0]), _answer("far"), 0.0)
    index.put("s", normalise([1.0, 0.2]), _answer("near"), 0.0)
    index.put("s", normalise([1.0, 0.2]), _answer("same"), 0.0)
    index.put("s", normalise([1.0, -1.0]), _answer("farther"), 0.0)
    _, ident = index.search("s", normalise([1.0, 0.0]), 0.0)
    assert index.take(ident) == _answer("near")


@pytest.mark.parametrize("kernel", KERNELS)
def test_an_entry_lives_until_exactly_its_ttl(kernel: str) -> None:
    """An entry put at 0 with ttl 10 is found at 9.5 and gone at 10.0, counted once."""
    index = _index(kernel, ttl=10.0)
    vector = normalise([1.0, 0.0])
    index.put("s", vector, _answer("a"), 0.0)
    assert index.search("s", vector, 9.5)[1] == 0
    assert index.search("s", vector, 10.0) == (0.0, -1)
    assert (len(index), index.expirations) == (0, 1)
    assert index.search("s", vector, 11.0) == (0.0, -1)
    assert index.expirations == 1


@pytest.mark.parametrize("kernel", KERNELS)
def test_an_expired_entry_does_not_hide_a_live_one(kernel: str) -> None:
    """An expired entry closer to the question is dropped; the live one answers."""
    index = _index(kernel, ttl=10.0)
    index.put("s", normalise([1.0, 0.0]), _answer("old"), 0.0)
    index.put("s", normalise([1.0, 1.0]), _answer("new"), 5.0)
    similarity, ident = index.search("s", normalise([1.0, 0.0]), 12.0)
    assert similarity == pytest.approx(1 / math.sqrt(2))
    assert index.take(ident) == _answer("new")
    assert (len(index), index.expirations) == (1, 1)


@pytest.mark.parametrize("kernel", KERNELS)
def test_a_shared_entry_keeps_the_lifetime_it_had_left_capped_by_the_ttl(kernel: str) -> None:
    """put(expires=...) keeps an earlier expiry, and never outlives now + ttl."""
    index = _index(kernel, ttl=10.0)
    short, long = normalise([1.0, 0.0]), normalise([0.0, 1.0])
    index.put("s", short, _answer("short"), 0.0, expires=3.0)
    index.put("t", long, _answer("long"), 0.0, expires=50.0)
    assert index.search("s", short, 2.9)[1] >= 0
    assert index.search("s", short, 3.0) == (0.0, -1)
    assert index.search("t", long, 9.9)[1] >= 0
    assert index.search("t", long, 10.0) == (0.0, -1)


@pytest.mark.parametrize("kernel", KERNELS)
def test_the_bound_holds_exactly_max_entries(kernel: str) -> None:
    """max_entries entries are all kept; one more evicts the least recently used."""
    index = _index(kernel, max_entries=2)
    a, b, c = normalise([1.0, 0.0]), normalise([0.0, 1.0]), normalise([-1.0, 0.0])
    index.put("s", a, _answer("a"), 0.0)
    index.put("s", b, _answer("b"), 0.0)
    assert (len(index), index.evictions) == (2, 0)
    index.put("s", c, _answer("c"), 0.0)
    assert (len(index), index.evictions) == (2, 1)
    # "a" went; the other two of the scope are still found.
    assert index.take(index.search("s", b, 0.0)[1]) == _answer("b")
    assert index.take(index.search("s", c, 0.0)[1]) == _answer("c")
    assert index.search("s", a, 0.0)[0] == pytest.approx(0.0)


@pytest.mark.parametrize("kernel", KERNELS)
def test_resize_evicts_down_to_the_new_bound_and_applies_the_new_ttl(kernel: str) -> None:
    """resize() keeps the most recent entries within the new bound; later puts live for
    the new ttl."""
    index = _index(kernel, max_entries=5, ttl=100.0)
    vectors = [normalise([1.0, float(i)]) for i in range(3)]
    for i, vector in enumerate(vectors):
        index.put("s", vector, _answer(str(i)), 0.0)
    index.resize(1, 5.0)
    assert (len(index), index.evictions, index.max_entries, index.ttl) == (1, 2, 1, 5.0)
    assert index.take(index.search("s", vectors[2], 0.0)[1]) == _answer("2")
    index.put("t", vectors[0], _answer("t"), 10.0)
    assert index.search("t", vectors[0], 14.9)[1] >= 0
    assert index.search("t", vectors[0], 15.0) == (0.0, -1)


@pytest.mark.parametrize("kernel", KERNELS)
def test_entries_of_one_scope_survive_the_eviction_of_another_of_it(kernel: str) -> None:
    """Evicting one entry of a scope leaves the scope's other entries findable, and a scope
    emptied and filled again works."""
    index = _index(kernel, max_entries=2)
    a, b = normalise([1.0, 0.0]), normalise([0.0, 1.0])
    index.put("s", a, _answer("a"), 0.0)
    index.put("s", b, _answer("b"), 0.0)
    index.put("t", a, _answer("t"), 0.0)  # evicts s's "a"
    assert index.search("s", b, 0.0)[1] == 1  # (search keeps the LRU order)
    index.put("t", b, _answer("t2"), 0.0)  # evicts s's "b": scope s is empty
    assert index.search("s", b, 0.0) == (0.0, -1)
    index.put("s", a, _answer("again"), 0.0)
    assert index.take(index.search("s", a, 0.0)[1]) == _answer("again")


@pytest.mark.parametrize("kernel", KERNELS)
def test_many_rows_removed_from_the_middle_keep_every_answer_in_place(kernel: str) -> None:
    """Past the first 8 rows, with entries evicted and expired from the middle, each stored
    vector still finds its own answer."""
    rng = random.Random(11)
    index = _index(kernel, max_entries=20, ttl=10.0)
    stored: dict[int, tuple[float, ...]] = {}
    for step in range(30):
        stored[step] = vector = _unit(rng, 8)
        index.put("s", vector, _answer(str(step)), float(step % 7))
        if step % 4 == 0:  # a hit: this one becomes the most recently used
            index.take(index.search("s", vector, 0.0)[1])
    now = 9.5  # entries put at 0..6 live until 10..16
    for step, vector in stored.items():
        similarity, ident = index.search("s", vector, now)
        if ident >= 0 and similarity > 0.999:
            assert index.take(ident) == _answer(str(step))
    assert len(index) == 20


def test_the_python_prefilter_skips_what_cannot_reach_the_threshold() -> None:
    """With a threshold, the pure-Python scan compares only entries whose signature is near
    enough (the opposite vector is skipped); without one it compares every entry."""
    rng = random.Random(9)
    index = _index("python")
    vector = _unit(rng, 64)
    index.put("s", vector, _answer("v"), 0.0)
    index.put("s", _negated(vector), _answer("-v"), 0.0)
    similarity, ident = index.search("s", vector, 0.0, threshold=0.9)
    assert similarity == pytest.approx(1.0)
    assert (index.take(ident), index.compared) == (_answer("v"), 1)
    index.search("s", vector, 0.0)
    assert index.compared == 3


@pytest.mark.parametrize(("dim", "compared"), [(31, 2), (32, 1)])
def test_the_prefilter_starts_at_32_dimensions(dim: int, compared: int) -> None:
    """From 32 dimensions up the opposite vector is skipped; below, both are compared."""
    vector = _unit(random.Random(dim), dim)
    index = _index("python")
    index.put("s", vector, _answer("v"), 0.0)
    index.put("s", _negated(vector), _answer("-v"), 0.0)
    assert index.search("s", vector, 0.0, threshold=0.9)[1] == 0
    assert index.compared == compared


def test_the_prefilter_never_drops_the_nearest_when_nothing_is_skipped() -> None:
    """At threshold -1 (no threshold) the opposite of the question is still compared."""
    vector = _unit(random.Random(4), 64)
    index = _index("python")
    index.put("s", _negated(vector), _answer("-v"), 0.0)
    similarity, ident = index.search("s", vector, 0.0, threshold=-1.0)
    assert (round(similarity, 6), ident) == (-1.0, 0)
    assert index.search("s", vector, 0.0, threshold=-0.5)[1] == -1


def test_the_numpy_kernel_compares_every_row_of_the_scope() -> None:
    """numpy's product compares each entry of the scope and dimension, counted."""
    index = _index("numpy")
    vector = _unit(random.Random(4), 64)
    index.put("s", vector, _answer("v"), 0.0)
    index.put("s", _negated(vector), _answer("-v"), 0.0)
    index.put("t", vector, _answer("t"), 0.0)
    index.search("s", vector, 0.0, threshold=0.9)
    assert index.compared == 2
    index.search("s", vector, 0.0)
    assert index.compared == 4


@pytest.mark.parametrize("dim", [8, 64])
def test_both_kernels_agree_on_a_random_workload(dim: int) -> None:
    """Same puts, hits, expiries and evictions, same answers and counters, numpy or not."""
    pytest.importorskip("numpy")
    rng = random.Random(dim)
    indexes = [SemanticIndex(max_entries=12, ttl=5.0, kernel=k) for k in KERNELS]
    for step in range(80):
        now = step / 4
        scope = rng.choice("ab")
        vector = _unit(rng, dim)
        results = [index.search(scope, vector, now, threshold=-1.0) for index in indexes]
        (s1, i1), (s2, i2) = results
        assert s1 == pytest.approx(s2, abs=1e-5)
        assert (i1 >= 0) == (i2 >= 0)
        if i1 >= 0 and rng.random() < 0.5:
            assert indexes[0].take(i1) == indexes[1].take(i2)
        for index in indexes:
            index.put(scope, vector, _answer(str(step)), now)
    python, numpy = indexes
    assert (len(python), python.evictions, python.expirations) == (
        len(numpy),
        numpy.evictions,
        numpy.expirations,
    )


# --- which requests, and which scope -----------------------------------------------------


def _chat(*messages: Message, **params: Any) -> PromptRequest:
    settings: dict[str, Any] = {"temperature": 0, **params}
    return PromptRequest(messages=messages, params=GenerationParams(**settings))


def test_a_question_is_the_last_user_turns_plain_text() -> None:
    """The last user turn's text is the question, with or without its client's object."""
    plain = Message("user", "why")
    assert question_of(_chat(plain)) == "why"
    named = {"role": "user", "content": "why", "name": "ann"}
    assert question_of(_chat(Message("user", "why", name="ann", wire=named))) == "why"
    bare = {"role": "user", "content": "why"}
    assert question_of(_chat(Message("system", "x"), Message("user", "why", wire=bare))) == "why"


@pytest.mark.parametrize(
    "request_",
    [
        PromptRequest(input="x", responses_body={"input": "x"}),
        PromptRequest(embed=("x",)),
        _chat(Message("user", "why"), Message("assistant", "because")),
        _chat(Message("user", "")),
        _chat(Message("user", "why", tool_calls=(ToolCall("c", "f", "{}"),))),
        _chat(Message("user", "why", parts=({"type": "text", "text": "why"},))),
        _chat(Message("user", "why", wire={"role": "user", "content": "why", "audio": {}})),
        _chat(Message("user", "why", wire={"role": "user", "content": [{"type": "text"}]})),
    ],
    ids=[
        "responses",
        "embedding",
        "assistant-last",
        "no-text",
        "tool-calls",
        "parts",
        "more-on-the-wire",
        "wire-content-not-the-text",
    ],
)
def test_what_is_not_a_question(request_: PromptRequest) -> None:
    """No question: nothing to embed, the request passes the cache by."""
    assert question_of(request_) is None


def test_the_scope_is_a_stable_sha256_digest() -> None:
    """The scope is 64 hex digits, the same for equal requests built separately."""
    scope = scope_of(_chat(Message("user", "why")), per_key=True)
    assert len(scope) == 64
    assert int(scope, 16) >= 0
    assert scope == scope_of(_chat(Message("user", "why")), per_key=True)
    assert scope == scope_of(_chat(Message("user", "how")), per_key=True)  # only the last turn


def test_the_scope_digest_is_the_same_in_every_release() -> None:
    """The scope is part of the Redis keys of a scope's shared entries, which processes
    of an older and a newer release share during a rolling deploy: it is the
    SHA-256 of the canonical JSON (sorted keys, no spaces) of earlier turns, context,
    parameters, the last turn's name and (per key) the API key id."""
    request = PromptRequest(
        messages=(Message("system", "be brief"), Message("user", "why", name="ann")),
        params=GenerationParams(model="m", temperature=0, extra={"b": 1, "a": {"y": 2, "x": 3}}),
        meta={"api_key_id": "alice"},
        context=(Document("d", "text"),),
    )
    assert scope_of(request, per_key=True) == (
        "f9581c2d99f9613d09ffc4f4be9c4c0f6454e712ce1626bc74ca4f0793a4c3b3"
    )
    assert scope_of(request, per_key=False) == (
        "76d141db9401820867dfb5ed03d14486ddd2ec18f43ccb19c7b4088067e6c822"
    )


def test_a_parameter_json_cannot_encode_still_scopes_by_its_value() -> None:
    """A library caller's extra parameter of a type JSON cannot encode (a Decimal) gets a
    scope, by its repr: another value, another scope."""

    def scope(value: decimal.Decimal) -> str:
        params = GenerationParams(temperature=0, extra={"w": value})
        return scope_of(PromptRequest(input="why", params=params), per_key=False)

    assert scope(decimal.Decimal("0.5")) != scope(decimal.Decimal("0.6"))


@pytest.mark.parametrize(
    "other",
    [
        _chat(Message("system", "be brief"), Message("user", "why")),
        _chat(Message("user", "why"), temperature=0.5),
        _chat(Message("user", "why"), model="other"),
        _chat(Message("user", "why", name="bob")),
        attrs.evolve(_chat(Message("user", "why")), context=(Document("d1", "text"),)),
    ],
    ids=["earlier-turn", "temperature", "model", "name", "context"],
)
def test_everything_but_the_last_turn_is_in_the_scope(other: PromptRequest) -> None:
    """Earlier turns, parameters, the last turn's name and the context change the scope."""
    assert scope_of(other, per_key=True) != scope_of(_chat(Message("user", "why")), per_key=True)


def test_the_context_documents_id_and_text_are_in_the_scope() -> None:
    """Another document id or another document text is another scope."""
    base = _chat(Message("user", "why"))

    def scope(*documents: Document) -> str:
        return scope_of(attrs.evolve(base, context=documents), per_key=False)

    assert (
        len({scope(Document("a", "x")), scope(Document("b", "x")), scope(Document("a", "y"))}) == 3
    )


def test_the_api_key_is_in_the_scope_only_per_key() -> None:
    """Two keys' requests share a global scope, not a per-key one."""
    alice = attrs.evolve(_chat(Message("user", "why")), meta={"api_key_id": "alice"})
    bob = attrs.evolve(alice, meta={"api_key_id": "bob"})
    assert scope_of(alice, per_key=True) != scope_of(bob, per_key=True)
    assert scope_of(alice, per_key=False) == scope_of(bob, per_key=False)
    assert scope_of(alice, per_key=False) != scope_of(alice, per_key=True)


# --- the embedding, as the caller --------------------------------------------------------


@attrs.define(eq=False)
class EmbeddingWorker:
    """Answers an embedding request with [1, 2, 3] per input; keeps the requests."""

    requests: list[PromptRequest] = attrs.field(factory=list)

    async def generate(self, request: PromptRequest, emit: EventSink) -> None:
        """One vector per input, usage, Done."""
        self.requests.append(request)
        assert request.embed is not None
        await emit(Embeddings(tuple((1.0, 2.0, 3.0) for _ in request.embed)))
        await emit(Usage(len(request.embed), 0))
        await emit(Done("stop", "", Usage(len(request.embed), 0), (), request.params.model))


async def test_the_embedding_request_carries_the_callers_identity_and_limits() -> None:
    """CallerEmbedder asks for the text alone, of the model, with the caller's meta,
    deadline, timeout, priority and timing, not streamed; it returns the vector."""
    worker = EmbeddingWorker()
    timing = RequestTiming(arrived=0.0)
    caller = PromptRequest(
        input="why",
        meta={"api_key_id": "alice", "user": "u1"},
        deadline=100.0,
        timeout=30.0,
        priority=Priority.HIGH,
        streaming=True,
        timing=timing,
    )
    vector = await CallerEmbedder(worker).embed_for(caller, "why", model="emb")
    assert vector == [1.0, 2.0, 3.0]
    assert isinstance(vector, list)
    (sent,) = worker.requests
    assert (sent.embed, sent.params.model, dict(sent.meta)) == (
        ("why",),
        "emb",
        {"api_key_id": "alice", "user": "u1"},
    )
    assert (sent.deadline, sent.timeout, sent.priority, sent.streaming) == (
        100.0,
        30.0,
        Priority.HIGH,
        False,
    )
    assert sent.timing is timing
    assert sent.input is None
    assert sent.messages == ()


# --- the layer ---------------------------------------------------------------------------


@attrs.define(eq=False)
class TableEmbedder:
    """Embeds each known question as the vector given for it; counts calls; may fail;
    may advance a fake performance clock by ``cost`` seconds per call."""

    table: dict[str, Sequence[float]]
    calls: int = 0
    fail: bool = False
    clock: list[float] | None = None
    costs: list[float] = attrs.field(factory=list)
    models: list[str] = attrs.field(factory=list)
    mark: str | None = None  # what a cache below marks on the embedding's timing

    async def embed(self, inputs: Sequence[str], *, model: str) -> list[list[float]]:
        """The table's vector per input, or a typed failure when ``fail``."""
        await trio.lowlevel.checkpoint()
        self.calls += 1
        self.models.append(model)
        if self.clock is not None and self.costs:
            self.clock[0] += self.costs.pop(0)
        if self.fail:
            raise ServerError("embedding model down")
        return [list(self.table[text]) for text in inputs]


@attrs.define(eq=False)
class Answering:
    """Answers "<question> answer" in two deltas, usage and one Done; counts calls. With
    ``dones`` other than 1, a broken stream: that many Done events, or ``raises``."""

    calls: int = 0
    dones: int = 1
    raises: bool = False

    async def generate(self, request: PromptRequest, emit: EventSink) -> None:
        """The scripted answer."""
        self.calls += 1
        await trio.lowlevel.checkpoint()
        text = f"{request.chat()[-1].content} answer"
        await emit(TextDelta(text))
        await emit(TextDelta("!"))
        if self.raises:
            raise ServerError("cut off")
        await emit(Usage(1, 2))
        for _ in range(self.dones):
            await emit(Done("stop", text + "!", Usage(1, 2), (), "m"))


# Questions by direction: "why" and "why?" at cosine 1, "near" at exactly 0.5 of "why"
# (float32 and float64 alike), "below" just under 0.5, "other" at 0.
VECTORS: dict[str, Sequence[float]] = {
    "why": (1.0, 0.0, 0.0, 0.0),
    "why?": (2.0, 0.0, 0.0, 0.0),
    "near": (0.5, 0.5, 0.5, 0.5),
    "below": (0.49, 0.5, 0.5, 0.51),
    "other": (0.0, 1.0, 0.0, 0.0),
    "minus": (-1.0, 0.0, 0.0, 0.0),
}
CONFIG = SemanticCacheConfig(
    enabled=True, embedding_model="emb", threshold=0.5, max_entries=8, ttl=10.0
)


def _layer(
    inner: Answering | None = None,
    embedder: TableEmbedder | None = None,
    shared: Any = None,
    **config: Any,
) -> SemanticCacheLayer:
    return SemanticCacheLayer(
        inner or Answering(),
        attrs.evolve(CONFIG, **config),
        embedder or TableEmbedder(VECTORS),
        shared,
    )


def _ask(text: str, *, key: str = "alice", timing: RequestTiming | None = None) -> PromptRequest:
    return PromptRequest(
        input=text,
        params=GenerationParams(temperature=0),
        meta={"api_key_id": key},
        timing=timing,
    )


async def _events(layer: SemanticCacheLayer, request: PromptRequest) -> list[StreamEvent]:
    recorder = Recorder()
    await layer.generate(request, recorder)
    return recorder.events


def _counts(layer: SemanticCacheLayer) -> tuple[int, ...]:
    s = layer.statistics()
    return (s.lookups, s.hits, s.misses, s.stored, s.bypassed, s.embed_errors, s.size)


async def test_a_paraphrase_replays_every_event_of_the_stored_answer(kernel: str) -> None:
    """The second question at cosine 1 gets the first answer's events, all of them, in order,
    without the inner worker; the counters say one miss, one hit, one stored."""
    inner = Answering()
    layer = _layer(inner)
    first = await _events(layer, _ask("why"))
    assert await _events(layer, _ask("why?")) == first
    assert len(first) == 4
    assert inner.calls == 1
    assert _counts(layer) == (2, 1, 1, 1, 0, 0, 1)


async def test_a_similarity_of_exactly_the_threshold_hits(kernel: str) -> None:
    """Cosine 0.5 at threshold 0.5 is a hit; just under it is a miss, answered and stored."""
    inner = Answering()
    layer = _layer(inner)
    await _events(layer, _ask("why"))
    assert await _events(layer, _ask("near")) == await _events(layer, _ask("why"))
    assert inner.calls == 1
    await _events(layer, _ask("below"))
    assert inner.calls == 2
    assert _counts(layer) == (4, 2, 2, 2, 0, 0, 2)


async def test_a_negative_similarity_never_hits(kernel: str) -> None:
    """The opposite question (cosine -1) misses even at a threshold near 0."""
    inner = Answering()
    layer = _layer(inner, threshold=0.01)
    await _events(layer, _ask("why"))
    await _events(layer, _ask("minus"))
    assert inner.calls == 2


async def test_the_caller_sees_the_answer_while_it_is_stored(kernel: str) -> None:
    """A miss passes the inner worker's events through unchanged."""
    layer = _layer()
    events = await _events(layer, _ask("other"))
    assert [type(e) for e in events] == [TextDelta, TextDelta, Usage, Done]
    assert events[0] == TextDelta("other answer")


@pytest.mark.parametrize(("dones", "raises"), [(0, False), (2, False), (1, True)])
async def test_only_an_answer_ending_in_its_one_done_is_stored(
    kernel: str, dones: int, raises: bool
) -> None:
    """No Done, two Dones, or a failure mid-stream: nothing is stored, the next asks again."""
    inner = Answering(dones=dones, raises=raises)
    layer = _layer(inner)
    for _ in range(2):
        if raises:
            with pytest.raises(ServerError):
                await _events(layer, _ask("why"))
        else:
            await _events(layer, _ask("why"))
    assert inner.calls == 2
    assert layer.statistics().stored == layer.statistics().size == 0


async def test_another_key_misses_per_key_and_hits_globally(kernel: str) -> None:
    """scope "api_key": bob does not get alice's answer; scope "global": he does."""
    inner = Answering()
    layer = _layer(inner)
    await _events(layer, _ask("why", key="alice"))
    await _events(layer, _ask("why", key="bob"))
    assert inner.calls == 2
    inner = Answering()
    layer = _layer(inner, scope="global")
    await _events(layer, _ask("why", key="alice"))
    await _events(layer, _ask("why", key="bob"))
    assert inner.calls == 1


async def test_sampled_requests_are_cached_only_with_cache_sampled(kernel: str) -> None:
    """A request without temperature 0 passes by unless cache_sampled; then it is cached."""
    sampled = PromptRequest(input="why")
    inner, embedder = Answering(), TableEmbedder(VECTORS)
    layer = _layer(inner, embedder)
    await _events(layer, sampled)
    await _events(layer, sampled)
    assert (inner.calls, embedder.calls, layer.statistics().bypassed) == (2, 0, 2)
    inner, embedder = Answering(), TableEmbedder(VECTORS)
    layer = _layer(inner, embedder, cache_sampled=True)
    await _events(layer, sampled)
    await _events(layer, sampled)
    assert (inner.calls, embedder.calls, layer.statistics().bypassed) == (1, 2, 0)


async def test_an_ineligible_deterministic_request_passes_by(kernel: str) -> None:
    """A temperature-0 request whose last turn is not a user's text is bypassed."""
    inner, embedder = Answering(), TableEmbedder(VECTORS)
    layer = _layer(inner, embedder, cache_sampled=True)
    request = _chat(Message("user", "why"), Message("assistant", "why"))
    await _events(layer, request)
    assert (inner.calls, embedder.calls, layer.statistics().bypassed) == (1, 0, 1)


async def test_the_question_is_embedded_with_the_configured_model(kernel: str) -> None:
    """The embedder is asked for the question with embedding_model."""
    embedder = TableEmbedder(VECTORS)
    await _events(_layer(embedder=embedder, embedding_model="emb-2"), _ask("why"))
    assert embedder.models == ["emb-2"]


async def test_through_a_caller_embedder_the_question_goes_as_the_caller(kernel: str) -> None:
    """With a CallerEmbedder, the embedding request is the caller's, of embedding_model."""
    worker = EmbeddingWorker()
    layer = SemanticCacheLayer(Answering(), CONFIG, CallerEmbedder(worker))
    await _events(layer, _ask("why"))
    await _events(layer, _ask("why"))
    assert [(r.embed, r.params.model, r.meta["api_key_id"]) for r in worker.requests] == [
        (("why",), "emb", "alice")
    ] * 2
    assert layer.statistics().hits == 1


async def test_an_embedding_failure_marks_a_miss_and_answers(kernel: str) -> None:
    """The embedder failing: the answer comes from the inner worker, x-cache says miss,
    the failure is counted and no lookup is."""
    timing = RequestTiming(arrived=0.0)
    inner = Answering()
    layer = _layer(inner, TableEmbedder(VECTORS, fail=True))
    events = await _events(layer, _ask("why", timing=timing))
    assert events[0] == TextDelta("why answer")
    assert inner.calls == 1
    assert timing.cache == "miss"
    assert _counts(layer) == (0, 0, 0, 0, 0, 1, 0)
    await _events(layer, _ask("why"))
    assert _counts(layer) == (0, 0, 0, 0, 0, 2, 0)


async def test_an_embedding_failure_keeps_an_outer_caches_mark(kernel: str) -> None:
    """After a failed embedding the mark an outer cache made stays (only a lookup replaces it)."""
    timing = RequestTiming(arrived=0.0, cache="hit")
    await _events(_layer(embedder=TableEmbedder(VECTORS, fail=True)), _ask("why", timing=timing))
    assert timing.cache == "hit"


@attrs.define(eq=False)
class MarkingEmbedder(TableEmbedder):
    """An embedder with a cache below it that answered the embedding: marks "hit"."""

    caller: PromptRequest | None = None

    async def embed(self, inputs: Sequence[str], *, model: str) -> list[list[float]]:
        """Marks the caller's timing as a cache below would, then embeds."""
        assert self.caller is not None
        assert self.caller.timing is not None
        self.caller.timing.cache = "hit"
        return await super().embed(inputs, model=model)


async def test_x_cache_says_miss_then_semantic_hit(kernel: str) -> None:
    """A miss replaces the mark the embedding left ("hit" from a cache below); a hit says
    "semantic-hit" and notes a cache hit on the request's notes."""
    embedder = MarkingEmbedder(VECTORS)
    layer = _layer(embedder=embedder)
    first = _ask("why", timing=RequestTiming(arrived=0.0))
    embedder.caller = first
    await _events(layer, first)
    assert first.timing is not None
    assert first.timing.cache == "miss"
    second = _ask("why?", timing=RequestTiming(arrived=0.0))
    embedder.caller = second
    notes = RequestNotes()
    token = set_request_notes(notes)
    try:
        await _events(layer, second)
    finally:
        reset_request_notes(token)
    assert second.timing is not None
    assert second.timing.cache == "semantic-hit"
    assert notes.cache_hit is True


async def test_a_miss_leaves_the_notes_alone(kernel: str) -> None:
    """A miss does not note a cache hit."""
    notes = RequestNotes()
    token = set_request_notes(notes)
    try:
        await _events(_layer(), _ask("why"))
    finally:
        reset_request_notes(token)
    assert notes.cache_hit is False


async def test_a_stored_answer_expires_after_the_ttl(
    kernel: str, autojump_clock: trio.testing.MockClock
) -> None:
    """At exactly ttl seconds after it was stored the answer is gone and counted expired."""
    inner = Answering()
    layer = _layer(inner)
    await _events(layer, _ask("why"))
    await trio.sleep(CONFIG.ttl - 0.5)
    await _events(layer, _ask("why"))
    assert inner.calls == 1
    await trio.sleep(0.5)
    await _events(layer, _ask("why"))
    assert inner.calls == 2
    assert layer.statistics().expirations == 1


async def test_lookup_time_is_summed_and_its_maximum_kept(
    kernel: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """lookup_seconds adds each lookup's embed + scan time, lookup_seconds_max keeps the
    longest (on a fake performance clock the embedder advances: 2 s then 1 s)."""
    clock = [1000.0]
    monkeypatch.setattr(time, "perf_counter", lambda: clock[0])
    embedder = TableEmbedder(VECTORS, clock=clock, costs=[2.0, 1.0])
    layer = _layer(embedder=embedder)
    await _events(layer, _ask("why"))
    await _events(layer, _ask("why"))
    stats = layer.statistics()
    assert (stats.lookup_seconds, stats.lookup_seconds_max) == (3.0, 2.0)


async def test_statistics_report_evictions_and_the_bound(kernel: str) -> None:
    """Past max_entries the oldest answer is evicted; statistics give the bound and size."""
    layer = _layer(max_entries=1)
    await _events(layer, _ask("why"))
    await _events(layer, _ask("other"))
    stats = layer.statistics()
    assert (stats.evictions, stats.size, stats.max_entries, stats.stored) == (1, 1, 1, 2)


def test_the_layer_exposes_its_inner_worker() -> None:
    """inner is the wrapped worker."""
    inner = Answering()
    assert _layer(inner).inner is inner


# --- reload ------------------------------------------------------------------------------


async def test_a_reload_resizes_the_index_and_changes_the_threshold(kernel: str) -> None:
    """A reload applies a smaller bound (evicting at once), a new ttl and threshold."""
    inner = Answering()
    layer = _layer(inner)
    await _events(layer, _ask("why"))
    await _events(layer, _ask("other"))
    assert layer.reconfigure(attrs.evolve(CONFIG, max_entries=1, ttl=5.0, threshold=0.9)) == []
    stats = layer.statistics()
    assert (stats.size, stats.evictions, stats.max_entries) == (1, 1, 1)
    await _events(layer, _ask("other"))  # kept: the most recent
    assert inner.calls == 2
    await _events(layer, _ask("why"))  # evicted
    await _events(layer, _ask("near"))  # 0.5 of "why": no longer a hit at 0.9
    assert inner.calls == 4


@pytest.mark.parametrize("name", ["embedding_model", "embedding_provider"])
def test_a_reload_of_the_embedding_model_or_provider_is_refused(name: str) -> None:
    """Another embedding model or provider is refused with the setting, both values and
    the need to restart; nothing else of that reload is applied."""
    layer = _layer()
    changes: dict[str, Any] = {name: "new", "max_entries": 1, "threshold": 0.9}
    new = attrs.evolve(CONFIG, **changes)
    old = getattr(CONFIG, name)
    (line,) = layer.reconfigure(new)
    assert line == (
        f"resilience.cache.semantic.{name}: stored vectors belong to the old one; "
        f"restart to apply {old!r} → 'new'"
    )
    assert layer.statistics().max_entries == CONFIG.max_entries
    assert layer._config is not new


def test_a_reload_switching_the_cache_off_is_refused() -> None:
    """enabled cannot change on a reload."""
    layer = _layer()
    refused = layer.reconfigure(attrs.evolve(CONFIG, enabled=False, max_entries=1))
    assert refused == [
        "resilience.cache.semantic.enabled: adding or removing a layer needs a restart True → False"
    ]
    assert layer.statistics().max_entries == CONFIG.max_entries


# --- sharing with other processes (a fake of the Redis side) -----------------------------


@attrs.define(eq=False)
class FakeShared:
    """Other processes' entries: ``pending`` are put into the index by the next pull (each
    with its vector); pushes are recorded with what the caller had seen by then."""

    pending: list[tuple[Sequence[float], tuple[StreamEvent, ...]]] = attrs.field(factory=list)
    pulls: list[tuple[str, float]] = attrs.field(factory=list)
    pushes: list[dict[str, Any]] = attrs.field(factory=list)
    seen: Recorder | None = None
    index: SemanticIndex | None = None

    async def pull(self, scope: str, index: SemanticIndex, now: float) -> int:
        """Put the pending entries into ``index`` under ``scope``."""
        await trio.lowlevel.checkpoint()
        self.pulls.append((scope, now))
        self.index = index
        added = len(self.pending)
        for vector, events in self.pending:
            index.put(scope, normalise(vector), events, now)
        self.pending.clear()
        return added

    async def push(
        self,
        scope: str,
        vector: tuple[float, ...],
        events: tuple[StreamEvent, ...],
        *,
        ttl: float,
        max_entries: int,
    ) -> None:
        """Record the push and how many events the caller had by then."""
        await trio.lowlevel.checkpoint()
        self.pushes.append(
            {
                "scope": scope,
                "vector": vector,
                "events": events,
                "ttl": ttl,
                "max_entries": max_entries,
                "caller_had": len(self.seen.events) if self.seen else None,
            }
        )


@pytest.fixture
def shared() -> FakeShared:
    """A fake of the entries shared through Redis."""
    return FakeShared()


async def test_a_local_miss_pulls_the_others_entries_and_hits_on_them(
    kernel: str, shared: FakeShared, autojump_clock: trio.testing.MockClock
) -> None:
    """On a miss the layer pulls the scope's shared entries into its own index at Trio's
    time, and one close enough answers without the inner worker."""
    await trio.sleep(7.0)
    inner = Answering()
    layer = _layer(inner, shared=shared)
    shared.pending.append((VECTORS["why"], _answer("from another process")))
    request = _ask("why?")
    recorder = Recorder()
    await layer.generate(request, recorder)
    assert recorder.events == list(_answer("from another process"))
    assert inner.calls == 0
    assert shared.pulls == [(scope_of(request, per_key=True), 7.0)]
    assert shared.index is layer._index
    assert _counts(layer) == (1, 1, 0, 0, 0, 0, 1)


async def test_a_pulled_entry_at_exactly_the_threshold_hits(
    kernel: str, shared: FakeShared
) -> None:
    """An entry pulled from the others at cosine 0.5, the threshold, answers."""
    inner = Answering()
    layer = _layer(inner, shared=shared)
    shared.pending.append((VECTORS["why"], _answer("shared")))
    assert await _events(layer, _ask("near")) == list(_answer("shared"))
    assert inner.calls == 0


async def test_the_layer_scans_with_its_threshold(no_numpy: None) -> None:
    """Without numpy the layer's lookups use the signature prefilter at its threshold: an
    entry opposite to the question is not compared."""
    vector = _unit(random.Random(8), 64)
    embedder = TableEmbedder({"q": vector, "minus q": _negated(vector)})
    layer = _layer(embedder=embedder, threshold=0.9)
    await _events(layer, _ask("minus q"))
    await _events(layer, _ask("q"))
    assert layer._index.compared == 0


async def test_a_local_hit_does_not_pull(kernel: str, shared: FakeShared) -> None:
    """A question answered from the local index asks Redis nothing."""
    layer = _layer(shared=shared)
    await _events(layer, _ask("why"))
    shared.pulls.clear()
    await _events(layer, _ask("why?"))
    assert shared.pulls == []


async def test_a_pull_of_nothing_close_enough_is_a_miss(kernel: str, shared: FakeShared) -> None:
    """Pulled entries below the threshold, or none at all, leave a miss the inner answers."""
    inner = Answering()
    layer = _layer(inner, shared=shared)
    shared.pending.append((VECTORS["other"], _answer("unrelated")))
    events = await _events(layer, _ask("why"))
    assert events[0] == TextDelta("why answer")
    events = await _events(layer, _ask("minus"))  # nothing new pulled
    assert events[0] == TextDelta("minus answer")
    assert inner.calls == 2
    assert len(shared.pulls) == 2


async def test_a_complete_answer_is_pushed_once_before_the_caller_has_its_done(
    kernel: str, shared: FakeShared
) -> None:
    """At the answer's Done (before the caller gets it) the layer pushes its scope, unit
    vector, events and the configured ttl and bound, once."""
    layer = _layer(shared=shared, ttl=30.0, max_entries=5)
    recorder = Recorder()
    shared.seen = recorder
    request = _ask("why?")
    await layer.generate(request, recorder)
    (push,) = shared.pushes
    assert push == {
        "scope": scope_of(request, per_key=True),
        "vector": (1.0, 0.0, 0.0, 0.0),
        "events": tuple(recorder.events),
        "ttl": 30.0,
        "max_entries": 5,
        "caller_had": 3,
    }


async def test_a_second_done_is_not_pushed_again(kernel: str, shared: FakeShared) -> None:
    """A broken stream with two Dones is pushed once, at the first."""
    layer = _layer(Answering(dones=2), shared=shared)
    await _events(layer, _ask("why"))
    (push,) = shared.pushes
    assert isinstance(push["events"][-1], Done)
    assert len(push["events"]) == 4


async def test_an_answer_cut_off_is_not_pushed(kernel: str, shared: FakeShared) -> None:
    """A failure before the Done pushes nothing."""
    layer = _layer(Answering(raises=True), shared=shared)
    with pytest.raises(ServerError):
        await _events(layer, _ask("why"))
    assert shared.pushes == []


async def test_the_search_after_a_pull_scans_with_the_threshold(
    no_numpy: None, shared: FakeShared
) -> None:
    """Without numpy, the lookup after a pull also uses the signature prefilter: a pulled
    entry opposite to the question is not compared."""
    vector = _unit(random.Random(8), 64)
    layer = _layer(embedder=TableEmbedder({"q": vector}), shared=shared, threshold=0.9)
    shared.pending.append((_negated(vector), _answer("-q")))
    await _events(layer, _ask("q"))
    assert len(shared.pulls) == 1
    assert layer._index.compared == 0
