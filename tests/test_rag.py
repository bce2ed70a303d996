"""Retrieval and prompt assembly, alone and through the pipeline."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import attrs
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
