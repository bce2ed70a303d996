"""Retrieval and prompt assembly, alone and through the pipeline."""

from __future__ import annotations

from pathlib import Path

import attrs

from trio_orchestrator import (
    DefaultAssembler,
    Document,
    EchoWorker,
    EventSink,
    LexicalRetriever,
    Message,
    NoRetriever,
    PromptRequest,
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
