"""The semantic cache's parts: the index (prefilter, LRU, TTL), eligibility, failures, reload."""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from typing import Any

import attrs
import pytest
import trio
import trio.testing
from test_contract import contract

from trio_orchestrator.config import Config
from trio_orchestrator.config.load import parse_config
from trio_orchestrator.errors import ConfigError, ServerError
from trio_orchestrator.events import StreamEvent, TextDelta
from trio_orchestrator.gateway import open_gateway
from trio_orchestrator.resilience.config import (
    CacheConfig,
    ResilienceConfig,
    SemanticCacheConfig,
)
from trio_orchestrator.resilience.semantic_cache import (
    SemanticCacheLayer,
    SemanticIndex,
    hamming_cutoff,
    normalise,
    question_of,
)
from trio_orchestrator.types import GenerationParams, Message, PromptRequest
from trio_orchestrator.workers import EchoWorker

CONFIG = SemanticCacheConfig(enabled=True, embedding_model="toy", max_entries=4, ttl=10.0)


@attrs.define
class WordEmbedder:
    """Each distinct word is its own axis (32 of them); counts calls."""

    calls: int = 0
    fail: bool = False

    async def embed(self, inputs: Sequence[str], *, model: str) -> list[list[float]]:
        """A count vector per input, or a typed failure when ``fail``."""
        await trio.lowlevel.checkpoint()
        self.calls += 1
        if self.fail:
            raise ServerError("embedding model down")
        vectors = []
        for text in inputs:
            vector = [0.0] * 32
            for word in text.lower().split():
                vector[sum(map(ord, word)) % 32] += 1.0
            vectors.append(vector)
        return vectors


# The worker contract (event grammar, typed errors, cancellation, deadlines, concurrency)
# over the layer, sampled requests included so that hits and misses are both exercised.
TestSemanticCacheLayer = contract(
    lambda: SemanticCacheLayer(
        EchoWorker(), attrs.evolve(CONFIG, cache_sampled=True, max_entries=64), WordEmbedder()
    ),
    deterministic=True,
)


def greedy(text: str, **params: object) -> PromptRequest:
    """A temperature-0 chat request asking ``text``."""
    return PromptRequest(input=text, params=GenerationParams(temperature=0, **params))  # type: ignore[arg-type]


async def ask(layer: SemanticCacheLayer, request: PromptRequest) -> str:
    """The text of the layer's answer."""
    texts: list[str] = []

    async def emit(event: StreamEvent) -> None:
        if isinstance(event, TextDelta):
            texts.append(event.text)

    await layer.generate(request, emit)
    return "".join(texts)


def _unit(rng: random.Random, dim: int) -> tuple[float, ...]:
    return normalise([rng.gauss(0.0, 1.0) for _ in range(dim)])


@pytest.mark.parametrize("dim", [64, 384, 1536])
def test_the_prefilter_keeps_every_vector_at_the_threshold(dim: int) -> None:
    """Pairs at cosine exactly 0.95 all pass the signature cutoff (no missed hit in 300)."""
    rng = random.Random(dim)
    index = SemanticIndex(max_entries=10, ttl=math.inf)
    cutoff = hamming_cutoff(0.95)
    for _ in range(300):
        base, noise = _unit(rng, dim), _unit(rng, dim)
        # Orthogonalise the noise, so the pair's cosine is 0.95 exactly.
        dot = sum(b * n for b, n in zip(base, noise, strict=True))
        noise = normalise([n - dot * b for b, n in zip(base, noise, strict=True)])
        side = math.sqrt(1 - 0.95**2)
        near = normalise([0.95 * b + side * n for b, n in zip(base, noise, strict=True)])
        distance = (index.signature(base) ^ index.signature(near)).bit_count()
        assert distance <= cutoff


def test_the_prefilter_skips_unrelated_vectors() -> None:
    """Random vectors (cosine near 0) are skipped without an exact comparison (the
    pure-Python kernel's prefilter)."""
    rng = random.Random(7)
    index = SemanticIndex(max_entries=500, ttl=math.inf, kernel="python")
    for _ in range(500):
        index.put("s", _unit(rng, 768), (), 0.0)
    _, ident = index.search("s", _unit(rng, 768), 1.0, threshold=0.95)
    assert (ident, index.compared) == (-1, 0)


@pytest.mark.parametrize("kernel", ["python", "numpy"])
def test_both_kernels_find_the_same_nearest_live_entry(kernel: str) -> None:
    """numpy's matrix and the pure-Python scan agree on the best entry and its similarity,
    through puts, LRU evictions (rows removed mid-matrix), expiries and other dimensions."""
    if kernel == "numpy":
        pytest.importorskip("numpy")
    rng = random.Random(3)
    index = SemanticIndex(max_entries=40, ttl=10.0, kernel=kernel)
    reference = SemanticIndex(max_entries=40, ttl=10.0, kernel="python")
    for step in range(60):  # 20 evicted; entries put before time 5 expire at 15
        vector = _unit(rng, 64)
        for each in (index, reference):
            each.put("s", vector, (TextDelta(str(step)),), step / 10)
    other = _unit(rng, 32)  # another dimension: never compared with 64
    for each in (index, reference):
        each.put("s", other, (), 10.0)  # (live at 15.5: expiry is seen per dimension)
    for now in (1.0, 15.5):
        for _ in range(10):
            query = _unit(rng, 64)
            got, expected = index.search("s", query, now), reference.search("s", query, now)
            assert got[0] == pytest.approx(expected[0], abs=1e-5)
            assert index.take(got[1]) == reference.take(expected[1])
    assert index.expirations == reference.expirations > 0


def test_the_numpy_kernel_asked_for_without_numpy_says_how_to_install_it() -> None:
    """kernel="numpy" without numpy fails at once naming the extra to install."""
    from trio_orchestrator.resilience.semantic_cache import numpy_or_none

    if numpy_or_none() is None:
        with pytest.raises(RuntimeError, match=r"trio-orchestrator\[semantic\]"):
            SemanticIndex(max_entries=1, ttl=1.0, kernel="numpy")
    else:  # with numpy, it is used
        assert SemanticIndex(max_entries=1, ttl=1.0, kernel="numpy").kernel == "numpy"


def test_least_recently_used_entry_is_evicted_across_scopes() -> None:
    """Beyond max_entries the least recently used goes, whatever its scope; a hit refreshes."""
    index = SemanticIndex(max_entries=2, ttl=math.inf)
    a, b, c = (normalise([1.0, 0.0]), normalise([0.0, 1.0]), normalise([1.0, 1.0]))
    index.put("one", a, (TextDelta("a"),), 0.0)
    index.put("two", b, (TextDelta("b"),), 0.0)
    _, ident = index.search("one", a, 0.0)
    index.take(ident)  # "a" is now the most recent
    index.put("one", c, (TextDelta("c"),), 0.0)
    assert index.search("two", b, 0.0) == (0.0, -1)
    assert index.search("one", a, 0.0)[0] == pytest.approx(1.0)
    assert (len(index), index.evictions) == (2, 1)


async def test_an_entry_expires_after_its_ttl(autojump_clock: trio.testing.MockClock) -> None:
    """After ttl seconds the stored answer is gone: the paraphrase reaches the worker."""
    layer = SemanticCacheLayer(EchoWorker(), CONFIG, WordEmbedder())
    assert await ask(layer, greedy("capital of france")) == "capital of france"
    assert await ask(layer, greedy("france capital of")) == "capital of france"
    await trio.sleep(CONFIG.ttl)
    assert await ask(layer, greedy("france capital of")) == "france capital of"
    stats = layer.statistics()
    assert (stats.hits, stats.misses, stats.expirations, stats.stored) == (1, 2, 1, 2)


async def test_an_embedding_failure_answers_uncached() -> None:
    """The embedding model down: the request is still answered, and the failure counted."""
    embedder = WordEmbedder(fail=True)
    layer = SemanticCacheLayer(EchoWorker(), CONFIG, embedder)
    assert await ask(layer, greedy("hello there")) == "hello there"
    stats = layer.statistics()
    assert (stats.embed_errors, stats.lookups, stats.stored) == (1, 0, 0)


@pytest.mark.parametrize(
    "request_",
    [
        PromptRequest(input="sampled"),  # temperature unset: sampled
        PromptRequest(embed=("x",)),
        PromptRequest(
            messages=(
                Message("user", "call it"),
                Message("tool", "42", tool_call_id="call_1"),
            ),
            params=GenerationParams(temperature=0),
        ),
    ],
    ids=["sampled", "embedding", "tool-result"],
)
async def test_ineligible_requests_pass_through_unembedded(request_: PromptRequest) -> None:
    """Sampled chats, embedding requests and tool results are neither embedded nor stored."""
    embedder = WordEmbedder()
    layer = SemanticCacheLayer(EchoWorker(), CONFIG, embedder)

    async def emit(_event: StreamEvent) -> None:
        pass

    await layer.generate(request_, emit)
    assert (embedder.calls, layer.statistics().bypassed, layer.statistics().size) == (0, 1, 0)


def test_only_a_last_user_turn_of_plain_text_is_a_question() -> None:
    """The question is the last user turn's text; images make a request ineligible."""
    chat = (Message("system", "be brief"), Message("user", "why is the sky blue"))
    assert question_of(PromptRequest(messages=chat)) == "why is the sky blue"
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,AA=="}}
    wire = {"role": "user", "content": [{"type": "text", "text": "what is it"}, image]}
    assert question_of(PromptRequest(messages=(Message("user", "what is it", wire=wire),))) is None


async def test_a_reload_applies_the_threshold_and_refuses_another_model() -> None:
    """Through the gateway: a new threshold applies; a new embedding model needs a restart."""

    def config(**semantic: Any) -> Config:
        settings = attrs.evolve(CONFIG, **semantic)
        return Config(resilience=ResilienceConfig(cache=CacheConfig(semantic=settings)))

    async with open_gateway(config()) as gateway:
        (layer,) = [c.part for c in gateway.components if isinstance(c.part, SemanticCacheLayer)]
        report = gateway.reload(config(threshold=0.8))
        assert not report.refused, report
        assert layer._config.threshold == 0.8
        report = gateway.reload(config(threshold=0.8, embedding_model="other"))
        assert any("embedding_model" in line for line in report.refused), report
        assert layer._config.embedding_model == "toy"


async def test_an_unknown_embedding_provider_is_a_config_error() -> None:
    """embedding_provider must name a configured provider."""
    semantic = attrs.evolve(CONFIG, embedding_provider="nope")
    config = Config(resilience=ResilienceConfig(cache=CacheConfig(semantic=semantic)))
    with pytest.raises(ConfigError, match="embedding_provider"):
        async with open_gateway(config):
            pass


def test_enabled_without_an_embedding_model_is_refused_with_its_path() -> None:
    """Switching the semantic cache on without a model names the section in the error."""
    with pytest.raises(ConfigError, match=r"resilience\.cache\.semantic"):
        parse_config({"resilience": {"cache": {"semantic": {"enabled": True}}}})
