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
from trio_orchestrator.events import Done, Embeddings
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

    async def generate(self, request: PromptRequest, emit: EventSink) -> None:
        """Embed an embedding request; echo (and count) a chat."""
        if request.embed is None:
            self.chats.append(request.chat()[-1].content)
            await EchoWorker().generate(request, emit)
            return
        await trio.lowlevel.checkpoint()
        texts = [str(t) for t in request.embed]
        self.embedded += texts
        await emit(Embeddings(tuple(tuple(bag_of_words(t)) for t in texts)))
        await emit(Done("stop", "", None, (), request.params.model))


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

    async def semantic_stats(self) -> dict[str, Any]:
        """The semantic cache's counters as ``/metrics`` exports them."""
        headers = {"authorization": f"Bearer {ALICE}"}
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
