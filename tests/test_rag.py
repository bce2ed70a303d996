"""Retrieval and prompt assembly, alone and through the pipeline."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import attrs
import pytest
import trio

from trio_orchestrator import (
    DefaultAssembler,
    Document,
    EchoWorker,
    Embedder,
    EmbeddingRetriever,
    EventSink,
    LexicalRetriever,
    Message,
    NoRetriever,
    PromptRequest,
    WorkerEmbedder,
    open_gateway,
    open_pipeline,
)

CORPUS = [
    Document("trio", "Trio is a library for structured concurrency in Python."),
    Document("httpx", "HTTPX is an HTTP client for Python with async support."),
    Document("bees", "Bees make honey and live in hives."),
]


async def test_no_retriever_adds_no_context() -> None:
    """The default retriever retrieves nothing: it never fabricates context."""
    assert await NoRetriever().retrieve(PromptRequest(input="anything")) == ()


def test_lexical_retriever_ranks_the_matching_document_first() -> None:
    """BM25 ranks the document sharing the query's rare words first, and drops non-matches."""
    ranked = LexicalRetriever(CORPUS).rank("what is structured concurrency?")
    assert ranked[0].id == "trio"
    assert "bees" not in [d.id for d in ranked]


def test_lexical_retriever_reads_paragraphs_from_a_directory(tmp_path: Path) -> None:
    """from_directory makes one document per paragraph, named file#index."""
    (tmp_path / "notes.md").write_text("Honey comes from bees.\n\nHives hold bees.\n")
    retriever = LexicalRetriever.from_directory(tmp_path)
    assert [d.id for d in retriever.documents] == ["notes.md#0", "notes.md#1"]
    assert retriever.rank("hives")[0].id == "notes.md#1"


def test_assembler_puts_system_prompt_and_context_before_the_chat() -> None:
    """The assembled chat is: system prompt with context, then history, then the input."""
    request = PromptRequest(messages=[Message("user", "earlier")], input="now")
    out = DefaultAssembler(system_prompt="Be brief.").assemble(request, CORPUS[:1])
    assert [m.role for m in out.messages] == ["system", "user", "user"]
    assert out.messages[0].content.startswith("Be brief.")
    assert "[trio]" in out.messages[0].content
    assert [m.content for m in out.messages[1:]] == ["earlier", "now"]
    assert out.context == (CORPUS[0],)


@attrs.define
class Capture:
    """Records the request the worker receives, and echoes."""

    seen: list[PromptRequest] = attrs.field(factory=list)

    async def generate(self, request: PromptRequest, emit: EventSink) -> None:
        self.seen.append(request)
        await EchoWorker().generate(request, emit)


async def test_the_worker_sees_the_retrieved_context_through_the_pipeline() -> None:
    """Retrieval and assembly run in their stages: the worker gets the context in its chat."""
    worker = Capture()
    async with open_pipeline(
        worker,
        retriever=LexicalRetriever(CORPUS),
        assembler=DefaultAssembler(system_prompt="Use the context."),
    ) as pipeline:
        completion = await pipeline.submit(PromptRequest(input="tell me about hives"))
    assert completion.text == "tell me about hives"
    (request,) = worker.seen
    assert "Bees make honey" in request.messages[0].content
    assert request.context[0].id == "bees"


@attrs.define
class WordEmbedder:
    """Vectors that count three topic words: close texts share topic words. Records calls."""

    calls: list[list[str]] = attrs.field(factory=list)

    async def embed(self, inputs: Sequence[str], *, model: str) -> list[list[float]]:
        self.calls.append(list(inputs))
        topics = ("concurrency", "http", "honey")
        return [[float(text.lower().count(t)) + 0.01 for t in topics] for text in inputs]


async def test_embedding_retriever_ranks_by_cosine_and_embeds_the_corpus_once() -> None:
    """The closest vector ranks first, below min_score is dropped, and concurrent first
    retrievals embed the corpus once (then only each query)."""
    docs = [*CORPUS, Document("more-bees", "honey honey honey from hives")]
    embedder = WordEmbedder()
    retriever = EmbeddingRetriever(embedder, docs, model="m", top_k=2, min_score=0.5)
    results: list[Sequence[Document]] = []

    async def ask() -> None:
        results.append(await retriever.retrieve(PromptRequest(input="where does honey come from")))

    async with trio.open_nursery() as nursery:
        for _ in range(3):
            nursery.start_soon(ask)
    for ranked in results:
        assert [d.id for d in ranked] == ["bees", "more-bees"]
        assert ranked[0].score >= ranked[1].score > 0.99
    corpus_calls = [c for c in embedder.calls if len(c) == len(docs)]
    assert len(corpus_calls) == 1
    assert len(embedder.calls) == 1 + 3
    assert isinstance(embedder, Embedder)


async def test_embedding_retriever_feeds_the_gateway_pipeline_through_a_worker_embedder() -> None:
    """A dense retriever over the echo provider's vectors (a WorkerEmbedder) puts the matching
    document in the chat the gateway's worker receives."""
    worker = Capture()
    embedder = WorkerEmbedder(EchoWorker())
    assert isinstance(embedder, Embedder)
    retriever = EmbeddingRetriever(embedder, CORPUS, model="echo", top_k=1, min_score=0.99)
    async with open_gateway(worker=worker, retriever=retriever) as gateway:
        question = "Bees make honey and live in hives."
        await gateway.pipeline.submit(PromptRequest(input=question))
    (request,) = worker.seen
    assert [d.id for d in request.context] == ["bees"]
    assert "[bees]" in request.messages[0].content


# Tests that kill mutants the mutation session (scripts/mutation.py) found surviving.

BM25_CORPUS = [
    Document("a", "apples and pears and apples"),
    Document("b", "pears grow on trees in the orchard near the river bank"),
    Document("c", "rivers"),
]


def bm25(query: str, corpus: list[Document], k1: float = 1.5, b: float = 0.75) -> dict[str, float]:
    """Okapi BM25 with the +1 idf (Lucene's), written out from its textbook form."""
    docs = [d.text.lower().split() for d in corpus]
    avgdl = sum(map(len, docs)) / len(docs)
    scores = {}
    for document, words in zip(corpus, docs, strict=True):
        total = 0.0
        for term in set(query.lower().split()):
            f = words.count(term)
            if not f:
                continue
            df = sum(term in d for d in docs)
            idf = math.log((len(docs) - df + 0.5) / (df + 0.5) + 1)
            total += idf * f * (k1 + 1) / (f + k1 * (1 - b + b * len(words) / avgdl))
        if total > 0:
            scores[document.id] = total
    return scores


def test_lexical_scores_are_bm25() -> None:
    """Each returned document carries its BM25 score for the query, best first."""
    retriever = LexicalRetriever(BM25_CORPUS, top_k=5)
    ranked = retriever.rank("Apples pears river")
    expected = bm25("apples pears river", BM25_CORPUS)
    assert [d.id for d in ranked] == sorted(expected, key=lambda i: -expected[i])
    assert {d.id: d.score for d in ranked} == pytest.approx(expected)
    other = LexicalRetriever(BM25_CORPUS, top_k=5, k1=1.2, b=0.5).rank("apples pears river")
    assert {d.id: d.score for d in other} == pytest.approx(
        bm25("apples pears river", BM25_CORPUS, k1=1.2, b=0.5)
    )


def test_an_empty_query_finds_nothing_whatever_the_threshold() -> None:
    """No query terms, no documents, even with a negative min_score."""
    assert LexicalRetriever(BM25_CORPUS, min_score=-1.0).rank("  ") == []
    assert LexicalRetriever([], min_score=-1.0).rank("apples") == []


def test_from_directory_passes_its_settings_on(tmp_path: Path) -> None:
    """from_directory's keyword settings reach the retriever."""
    (tmp_path / "a.md").write_text("apples\n\napples again\n\nmore apples", encoding="utf-8")
    retriever = LexicalRetriever.from_directory(tmp_path, top_k=1)
    assert len(retriever.rank("apples")) == 1


@attrs.define(eq=False)
class FixedEmbedder:
    """Vectors looked up by text; records each call's inputs and model."""

    vectors: dict[str, list[float]]
    calls: list[tuple[list[str], str]] = attrs.field(factory=list)

    async def embed(self, inputs: Sequence[str], *, model: str) -> list[list[float]]:
        self.calls.append((list(inputs), model))
        return [self.vectors[text] for text in inputs]


def ask(text: str) -> PromptRequest:
    return PromptRequest(input=text)


async def test_embedding_scores_are_cosines_above_the_threshold() -> None:
    """Scores are cosine similarities; orthogonal (0) and zero vectors are not returned."""
    docs = [
        Document("same", "s"),
        Document("half", "h"),
        Document("ortho", "o"),
        Document("zero", "z"),
    ]
    embedder = FixedEmbedder(
        {"q": [1.0, 0.0], "s": [2.0, 0.0], "h": [1.0, 1.0], "o": [0.0, 3.0], "z": [0.0, 0.0]}
    )
    retriever = EmbeddingRetriever(embedder, docs, model="emb-1", top_k=5)
    found = await retriever.retrieve(ask("q"))
    assert [d.id for d in found] == ["same", "half"]
    assert [d.score for d in found] == pytest.approx([1.0, math.sqrt(0.5)])
    assert embedder.calls == [(["s", "h", "o", "z"], "emb-1"), (["q"], "emb-1")]


async def test_embedding_vectors_of_another_length_are_an_error() -> None:
    """A vector of the wrong dimension, or a missing one, raises instead of truncating."""
    short = FixedEmbedder({"q": [1.0, 0.0], "s": [1.0]})
    with pytest.raises(ValueError, match="zip"):
        await EmbeddingRetriever(short, [Document("s", "s")], model="m").retrieve(ask("q"))

    @attrs.define(eq=False)
    class Lossy(FixedEmbedder):
        async def embed(self, inputs: Sequence[str], *, model: str) -> list[list[float]]:
            return (await super().embed(inputs, model=model))[:1]

    lossy = Lossy({"q": [1.0], "s": [1.0], "t": [1.0]})
    docs = [Document("s", "s"), Document("t", "t")]
    with pytest.raises(ValueError, match="zip"):
        await EmbeddingRetriever(lossy, docs, model="m").retrieve(ask("q"))


async def test_embedding_needs_a_user_message_and_documents() -> None:
    """Without a user message, or without documents, nothing is embedded or returned."""
    embedder = FixedEmbedder({"q": [1.0]})
    system_only = PromptRequest(messages=(Message("system", "be brief"),))
    with_docs = EmbeddingRetriever(embedder, [Document("s", "s")], model="m")
    assert await with_docs.retrieve(system_only) == []
    assert await EmbeddingRetriever(embedder, [], model="m").retrieve(ask("q")) == []
    assert embedder.calls == []
    assert await LexicalRetriever(CORPUS, min_score=-1.0).retrieve(system_only) == []
