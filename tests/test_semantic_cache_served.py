"""The semantic cache through the served path: the real service over HTTP, the openai SDK."""

from __future__ import annotations

import hashlib
import re
from collections.abc import AsyncIterator
from typing import Any

import attrs
import httpx
import openai
import pytest
import trio
from service_helpers import make_config, running_service

from trio_orchestrator.config import Config
from trio_orchestrator.config.secret import Secret
from trio_orchestrator.config.service import ApiKeyConfig
from trio_orchestrator.events import Done, Embeddings, Usage
from trio_orchestrator.resilience.config import (
    CacheConfig,
    ResilienceConfig,
    SemanticCacheConfig,
)
from trio_orchestrator.resilience.semantic_cache import cosine
from trio_orchestrator.types import PromptRequest
from trio_orchestrator.workers import EchoWorker, EventSink

# The SDK's HTTP stack (httpx2, httpcore2) leaves async generators of a streamed response to
# the garbage collector (trio warns); the client's doing, as in test_service_openai.py.
pytestmark = pytest.mark.filterwarnings(
    "ignore:Exception ignored in. <async_generator object:pytest.PytestUnraisableExceptionWarning"
)

ALICE, BOB = "sk-alice-0123456789", "sk-bob-0123456789"
DIM = 256
# Filler words a real embedding model weighs little; the toy embedder drops them.
_FILLER = frozenset(
    (
        "a",
        "an",
        "the",
        "of",
        "in",
        "on",
        "to",
        "for",
        "is",
        "are",
        "what",
        "s",
        "how",
        "do",
        "does",
        "i",
        "me",
        "my",
        "can",
        "could",
        "you",
        "please",
        "tell",
        "give",
        "would",
        "like",
        "know",
        "it",
    )
)

# Paraphrases: the same question asked another way.
PARAPHRASES = [
    ("What is the capital of France?", "Tell me the capital of France, please."),
    ("How do I reverse a list in Python?", "How can I reverse a Python list?"),
    ("What is the boiling point of water?", "What's the boiling point of water?"),
    ("Explain photosynthesis briefly.", "Briefly explain photosynthesis."),
    ("Who wrote Hamlet?", "Hamlet: who wrote it?"),
]
# Different questions that share most of their words with the first: the false hits to avoid.
DIFFERENT = [
    ("What is the capital of France?", "What is the capital of Germany?"),
    ("How do I reverse a list in Python?", "How do I sort a list in Python?"),
    ("What is the boiling point of water?", "What is the freezing point of water?"),
    ("Explain photosynthesis briefly.", "Explain photosynthesis in detail."),
    ("Who wrote Hamlet?", "Who directed Hamlet?"),
]


def bag_of_words(text: str, dim: int = DIM) -> list[float]:
    """A deterministic hashed bag-of-words vector: each content word adds ±1 to one bucket."""
    vector = [0.0] * dim
    for word in re.findall(r"[a-z]+", text.lower()):
        if word in _FILLER:
            continue
        digest = hashlib.sha256(word.encode()).digest()
        bucket = int.from_bytes(digest[:4], "big") % dim
        vector[bucket] += 1.0 if digest[4] & 1 else -1.0
    return vector


@attrs.define(eq=False)
class SemanticWorker:
    """Echoes chats (counting them) and embeds with :func:`bag_of_words`."""

    model: str = "echo"
    chats: list[str] = attrs.field(factory=list)
    embedded: list[str] = attrs.field(factory=list)
    embed_meta: list[dict[str, str]] = attrs.field(factory=list)

    async def generate(self, request: PromptRequest, emit: EventSink) -> None:
        """Embed an embedding request; echo (and count) a chat."""
        if request.embed is None:
            self.chats.append(request.chat()[-1].content)
            await EchoWorker().generate(request, emit)
            return
        await trio.lowlevel.checkpoint()
        texts = [str(t) for t in request.embed]
        self.embedded += texts
        self.embed_meta.append(dict(request.meta))
        await emit(Embeddings(tuple(tuple(bag_of_words(t)) for t in texts)))
        usage = Usage(input_tokens=sum(len(t.split()) for t in texts))
        await emit(usage)
        await emit(Done("stop", "", usage, (), request.params.model))


def semantic_config(**semantic: Any) -> Config:
    """Served config: two API keys, the semantic cache on (sampled requests too)."""
    settings: dict[str, Any] = {
        "enabled": True,
        "embedding_model": "bow-256",
        "cache_sampled": True,
    } | semantic
    base = make_config(
        api_keys=(
            ApiKeyConfig("alice", key=Secret(ALICE)),
            ApiKeyConfig("bob", key=Secret(BOB)),
        )
    )
    cache = CacheConfig(semantic=SemanticCacheConfig(**settings))
    return attrs.evolve(base, resilience=ResilienceConfig(cache=cache))


@attrs.define
class Served:
    url: str
    worker: SemanticWorker
    alice: openai.AsyncOpenAI
    bob: openai.AsyncOpenAI

    async def ask(self, question: str, *, who: str = "alice", **options: Any) -> str:
        """Ask ``question`` as ``who`` without streaming; return the answer's text."""
        client = self.alice if who == "alice" else self.bob
        options = {"temperature": 0} | options
        response = await client.chat.completions.create(
            model="echo", messages=[{"role": "user", "content": question}], **options
        )
        return response.choices[0].message.content or ""

    async def semantic_stats(self, key: str = ALICE) -> dict[str, Any]:
        """The semantic cache's counters as ``/metrics`` exports them."""
        headers = {"authorization": f"Bearer {key}"}
        async with httpx.AsyncClient(base_url=self.url, headers=headers) as http:
            response = await http.get("/metrics")
        response.raise_for_status()
        text = response.text
        found = re.findall(r"^trio_orchestrator_semantic_cache_(\w+?)(?:_total)?\{[^}]*\} (\S+)$",
                           text, re.M)  # fmt: skip
        return {name: float(value) for name, value in found}


@pytest.fixture
async def served(request: pytest.FixtureRequest) -> AsyncIterator[Served]:
    """The service with the semantic cache and a :class:`SemanticWorker` behind it."""
    overrides = getattr(request, "param", {})
    worker = SemanticWorker()
    async with running_service(semantic_config(**overrides), worker) as url:
        alice = openai.AsyncOpenAI(base_url=url + "/v1", api_key=ALICE, max_retries=0)
        bob = openai.AsyncOpenAI(base_url=url + "/v1", api_key=BOB, max_retries=0)
        yield Served(url, worker, alice, bob)
        await alice.close()
        await bob.close()


async def test_a_paraphrase_hits_and_the_upstream_is_not_called_again(served: Served) -> None:
    """A paraphrase gets the first question's stored answer; the upstream answered once."""
    first = await served.ask("What is the capital of France?")
    again = await served.ask("Tell me the capital of France, please.")
    assert again == first == "What is the capital of France?"
    assert served.worker.chats == ["What is the capital of France?"]
    stats = await served.semantic_stats()
    assert (stats["lookups"], stats["hits"], stats["misses"], stats["stored"]) == (2, 1, 1, 1)


async def test_a_different_question_misses(served: Served) -> None:
    """A question sharing most words but asking something else reaches the upstream."""
    await served.ask("What is the capital of France?")
    answer = await served.ask("What is the capital of Germany?")
    assert answer == "What is the capital of Germany?"
    assert len(served.worker.chats) == 2


async def test_another_api_key_never_gets_the_first_keys_answer(served: Served) -> None:
    """The same question from another API key misses; each key then hits its own entry."""
    await served.ask("Who wrote Hamlet?", who="alice")
    await served.ask("Who wrote Hamlet?", who="bob")
    assert served.worker.chats == ["Who wrote Hamlet?"] * 2
    await served.ask("Hamlet: who wrote it?", who="bob")
    assert len(served.worker.chats) == 2


async def test_a_different_temperature_misses(served: Served) -> None:
    """The same question with another temperature is another scope: it reaches the upstream."""
    await served.ask("Who wrote Hamlet?", temperature=0)
    await served.ask("Who wrote Hamlet?", temperature=0.7)
    await served.ask("Who wrote Hamlet?", max_tokens=5)
    assert len(served.worker.chats) == 3


async def test_a_streamed_request_gets_the_cached_answer_as_a_stream(served: Served) -> None:
    """After a non-streamed answer, a streamed paraphrase is answered from it in chunks."""
    first = await served.ask("How do I reverse a list in Python?")
    stream = await served.alice.chat.completions.create(
        model="echo",
        messages=[{"role": "user", "content": "How can I reverse a Python list?"}],
        temperature=0,
        stream=True,
    )
    async with stream:
        chunks = [chunk async for chunk in stream]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == first
    assert sum(1 for c in chunks if c.choices and c.choices[0].delta.content) > 1
    assert chunks[-1].choices == [] or chunks[-1].choices[0].finish_reason == "stop"
    assert len(served.worker.chats) == 1


async def test_the_system_prompt_and_earlier_turns_must_match_exactly(served: Served) -> None:
    """A different system prompt is another scope, even for the same question."""

    async def ask(system: str) -> None:
        await served.alice.chat.completions.create(
            model="echo",
            messages=[
                {"role": "system", "content": system},
                {"role": "user", "content": "Who wrote Hamlet?"},
            ],
            temperature=0,
        )

    await ask("Answer in English.")
    await ask("Answer in French.")
    await ask("Answer in English.")
    assert len(served.worker.chats) == 2


@pytest.mark.parametrize("served", [{"threshold": 0.4}], indirect=True)
async def test_a_lower_threshold_lets_near_questions_hit(served: Served) -> None:
    """The threshold is what separates: at 0.4 the Germany question takes France's answer."""
    await served.ask("What is the capital of France?")
    assert await served.ask("What is the capital of Germany?") == "What is the capital of France?"


@pytest.mark.parametrize(("question", "paraphrase"), PARAPHRASES)
def test_paraphrases_are_at_or_above_the_default_threshold(question: str, paraphrase: str) -> None:
    """False-hit guard: every paraphrase pair reaches the default threshold (0.95)."""
    threshold = SemanticCacheConfig().threshold
    assert cosine(bag_of_words(question), bag_of_words(paraphrase)) >= threshold


@pytest.mark.parametrize(("question", "different"), DIFFERENT)
def test_different_questions_are_below_the_default_threshold(question: str, different: str) -> None:
    """False-hit guard: every different-question pair stays below the default threshold."""
    threshold = SemanticCacheConfig().threshold
    assert cosine(bag_of_words(question), bag_of_words(different)) < threshold


# ------------------------------------------------------------------ x-cache


async def _asked(served: Served, question: str, **options: Any) -> tuple[str, str | None]:
    """Ask as alice without streaming; the answer's text and its ``x-cache`` header."""
    raw = await served.alice.chat.completions.with_raw_response.create(
        model="echo", messages=[{"role": "user", "content": question}], temperature=0, **options
    )
    return raw.parse().choices[0].message.content or "", raw.headers.get("x-cache")


async def test_x_cache_says_miss_then_semantic_hit(served: Served) -> None:
    """The first answer carries ``x-cache: miss``; the paraphrase's, ``semantic-hit``; a
    question the cache does not look at (a tool result is not eligible) carries none."""
    assert await _asked(served, "What is the capital of France?") == (
        "What is the capital of France?",
        "miss",
    )
    _, marker = await _asked(served, "Tell me the capital of France, please.")
    assert marker == "semantic-hit"
    raw = await served.alice.chat.completions.with_raw_response.create(
        model="echo",
        messages=[
            {"role": "user", "content": "hi"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
                ],
            },
            {"role": "tool", "tool_call_id": "c1", "content": "42"},
        ],
        temperature=0,
    )
    assert "x-cache" not in raw.headers


async def test_a_streamed_semantic_hit_says_so_in_its_headers(served: Served) -> None:
    """A streamed paraphrase answered from the cache carries ``x-cache: semantic-hit``."""
    await served.ask("Who wrote Hamlet?")
    headers = {"authorization": f"Bearer {ALICE}"}
    body = {
        "model": "echo",
        "messages": [{"role": "user", "content": "Hamlet: who wrote it?"}],
        "temperature": 0,
        "stream": True,
    }
    async with (
        httpx.AsyncClient(base_url=served.url, headers=headers) as http,
        http.stream("POST", "/v1/chat/completions", json=body) as response,
    ):
        assert response.headers["x-cache"] == "semantic-hit"
        assert (await response.aread()).rstrip().endswith(b"data: [DONE]")


async def test_x_cache_says_hit_for_the_exact_cache() -> None:
    """With the exact cache on too, the same question again is ``x-cache: hit`` (the exact
    cache answers before the semantic one looks), a paraphrase ``semantic-hit``."""
    config = semantic_config()
    semantic = config.resilience.cache.semantic
    cache = CacheConfig(enabled=True, cache_sampled=True, semantic=semantic)
    config = attrs.evolve(config, resilience=ResilienceConfig(cache=cache))
    async with (
        running_service(config, SemanticWorker()) as url,
        openai.AsyncOpenAI(base_url=url + "/v1", api_key=ALICE, max_retries=0) as sdk,
    ):
        served = Served(url, SemanticWorker(), sdk, sdk)
        questions = ("Who wrote Hamlet?", "Who wrote Hamlet?", "Hamlet: who wrote it?")
        markers = [(await _asked(served, question))[1] for question in questions]
    assert markers == ["miss", "hit", "semantic-hit"]


# ------------------------------------------------------------ the embedding call's charge

ADMIN = "sk-admin-0123456789"


async def _virtual_key(url: str, **members: Any) -> dict[str, Any]:
    """Create a virtual key through the admin API; its JSON (with the secret)."""
    headers = {"authorization": f"Bearer {ADMIN}"}
    async with httpx.AsyncClient(base_url=url, headers=headers) as admin:
        response = await admin.post("/v1/admin/keys", json=members)
    assert response.status_code == 201, response.text
    key: dict[str, Any] = response.json()
    return key


async def _spend(url: str, group_by: str) -> dict[str, dict[str, Any]]:
    headers = {"authorization": f"Bearer {ADMIN}"}
    async with httpx.AsyncClient(base_url=url, headers=headers) as admin:
        response = await admin.get("/v1/admin/spend", params={"group_by": group_by})
    assert response.status_code == 200, response.text
    return {row[group_by]: row for row in response.json()["data"]}


def _keyed_config() -> Config:
    """The semantic cache with storage (SQLite in memory) and an admin key: virtual keys."""
    config = semantic_config()
    return attrs.evolve(
        config,
        service=attrs.evolve(
            config.service, api_keys=(ApiKeyConfig("admin", key=Secret(ADMIN), admin=True),)
        ),
        storage=attrs.evolve(config.storage, backend="sqlite"),
    )


async def test_the_embedding_call_is_spent_by_the_callers_key() -> None:
    """Each lookup's embedding call is a request of the caller's virtual key: it carries the
    key's id, and its usage is recorded as the key's spend under the embedding model."""
    worker = SemanticWorker()
    async with running_service(_keyed_config(), worker) as url:
        key = await _virtual_key(url, label="team")
        async with openai.AsyncOpenAI(base_url=url + "/v1", api_key=key["key"]) as sdk:
            served = Served(url, worker, sdk, sdk)
            await served.ask("What is the capital of France?")
            await served.ask("Tell me the capital of France, please.")
        assert [meta.get("api_key_id") for meta in worker.embed_meta] == [key["id"]] * 2
        by_model = await _spend(url, "model")
        assert by_model["bow-256"]["requests"] == 2
        words = "What is the capital of France? Tell me the capital of France, please."
        assert by_model["bow-256"]["prompt_tokens"] == len(words.split())
        # Two chats (a hit is charged the usage it replays, as an exact hit is) and two
        # embedding calls.
        assert (await _spend(url, "key"))[key["id"]]["requests"] == 4


async def test_the_embedding_call_counts_against_the_keys_rate_limit() -> None:
    """A key allowed 3 requests a minute: the first question takes 2 (its chat and its
    embedding), the paraphrase's chat the 3rd; its embedding call is refused by the key's
    limit, so the cache is skipped (counted) and the upstream answers -- never a failure."""
    worker = SemanticWorker()
    async with running_service(_keyed_config(), worker) as url:
        key = await _virtual_key(url, label="team", rpm=3)
        async with openai.AsyncOpenAI(base_url=url + "/v1", api_key=key["key"]) as sdk:
            served = Served(url, worker, sdk, sdk)
            await served.ask("What is the capital of France?")
            assert await served.ask("Tell me the capital of France, please.") == (
                "Tell me the capital of France, please."
            )
        assert len(worker.chats) == 2
        stats = await served.semantic_stats(ADMIN)
        assert (stats["embed_errors"], stats["hits"]) == (1, 0)


# ------------------------------------------------- vectors of another dimension, no numpy


@attrs.define(eq=False)
class SwitchingWorker(SemanticWorker):
    """Embeds with :func:`bag_of_words` in ``dim`` dimensions: the test changes ``dim`` as
    when ``embedding_model`` comes to be answered by another deployment's model."""

    dim: int = DIM

    async def generate(self, request: PromptRequest, emit: EventSink) -> None:
        """Embed in ``dim`` dimensions; echo (and count) a chat."""
        if request.embed is None:
            await super().generate(request, emit)
            return
        await trio.lowlevel.checkpoint()
        vectors = tuple(tuple(bag_of_words(str(t), self.dim)) for t in request.embed)
        await emit(Embeddings(vectors))
        await emit(Done("stop", "", None, (), request.params.model))


async def test_without_numpy_a_vector_of_another_dimension_is_never_compared(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With the pure-Python index, a question embedded in 8 dimensions is not compared with
    an answer stored under a 16-dimension vector (it compared the first 8 coordinates, and
    answered another question's answer), as numpy's index never does."""
    from trio_orchestrator.resilience import semantic_cache

    monkeypatch.setattr(semantic_cache, "_NUMPY", [None])  # the `semantic` extra absent
    worker = SwitchingWorker(dim=16)
    # Two different questions whose 8-dimension vector is the 16-dimension one's first half.
    stored, asked = "paris rome", "paris sky"
    assert bag_of_words(stored, 16)[:8] == bag_of_words(asked, 8)
    assert not any(bag_of_words(stored, 16)[8:])  # so a prefix's cosine with it is 1
    async with running_service(semantic_config(), worker) as url:
        async with openai.AsyncOpenAI(base_url=url + "/v1", api_key=ALICE, max_retries=0) as sdk:
            served = Served(url, worker, sdk, sdk)
            assert await served.ask(stored) == stored
            worker.dim = 8
            assert await served.ask(asked) == asked
        assert worker.chats == [stored, asked]
