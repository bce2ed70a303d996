"""Behaviour of the small pipeline modules (prompt assembly, output sinks, statistics) that
their mutation session showed unpinned."""

from __future__ import annotations

import pytest

from trio_orchestrator.events import Completion
from trio_orchestrator.pipeline import (
    CallbackSink,
    DefaultAssembler,
    MemorySink,
    OutputSink,
    PipelineStatistics,
    StageStatistics,
    open_pipeline,
)
from trio_orchestrator.types import Document, Message, PromptRequest
from trio_orchestrator.workers import EchoWorker

DOCS = (Document("a", "alpha text"), Document("b", "beta text"))
HEADER = "Answer using the following context where it is relevant."

# --- assembly ----------------------------------------------------------------------------


def test_nothing_to_add_returns_the_request_itself() -> None:
    """Without a system prompt or documents the request goes on unchanged (the same object)."""
    request = PromptRequest(input="hi")
    assert DefaultAssembler().assemble(request, ()) is request


def test_a_system_prompt_alone_comes_first_and_takes_the_input_in() -> None:
    """The system prompt is the first message, exactly; the input becomes the last user
    turn, and no context is recorded."""
    request = PromptRequest(messages=[Message("user", "earlier")], input="now")
    out = DefaultAssembler(system_prompt="Be brief.").assemble(request, ())
    assert out.messages == (
        Message("system", "Be brief."),
        Message("user", "earlier"),
        Message("user", "now"),
    )
    assert (out.input, out.context) == (None, ())


def test_documents_alone_are_introduced_by_the_default_header() -> None:
    """Without a system prompt, the system message is the header, then each document as
    ``[id]`` and its text, separated by blank lines."""
    out = DefaultAssembler().assemble(PromptRequest(input="q"), DOCS)
    assert out.messages[0] == Message("system", f"{HEADER}\n\n[a]\nalpha text\n\n[b]\nbeta text")
    assert out.messages[1:] == (Message("user", "q"),)
    assert (out.input, out.context) == (None, DOCS)


def test_the_system_prompt_then_the_context_in_one_message() -> None:
    """Both: the system prompt, a blank line, the (custom) header and the documents."""
    assembler = DefaultAssembler(system_prompt="Be brief.", context_header="Use:")
    out = assembler.assemble(PromptRequest(input="q"), DOCS[:1])
    assert out.messages[0] == Message("system", "Be brief.\n\nUse:\n\n[a]\nalpha text")
    assert out.context == DOCS[:1]


def test_an_empty_system_prompt_adds_no_system_message() -> None:
    """system_prompt="" (not None) and no documents: no empty system message is sent."""
    out = DefaultAssembler(system_prompt="").assemble(PromptRequest(input="q"), ())
    assert out.messages == (Message("user", "q"),)


# --- sinks -------------------------------------------------------------------------------


def _completion(i: int) -> Completion:
    return Completion(request_id=str(i), text=f"answer {i}")


def test_a_memory_sink_keeps_the_last_thousand_by_default() -> None:
    """The default bound is 1000: the 1001st completion pushes the first out."""
    sink = MemorySink()
    for i in range(1001):
        sink.deliver(PromptRequest(input="q"), _completion(i))
    assert len(sink.completions) == 1000
    assert (sink.completions[0], sink.completions[-1]) == (_completion(1), _completion(1000))


def test_a_memory_sink_keeps_the_last_maxlen() -> None:
    """With maxlen 2, the two most recent completions are kept, oldest first."""
    sink = MemorySink(maxlen=2)
    for i in range(3):
        sink.deliver(PromptRequest(input="q"), _completion(i))
    assert list(sink.completions) == [_completion(1), _completion(2)]


def test_a_callback_sink_passes_the_request_and_its_completion() -> None:
    """The callback gets exactly what was delivered."""
    seen: list[tuple[PromptRequest, Completion]] = []
    sink = CallbackSink(lambda request, completion: seen.append((request, completion)))
    request = PromptRequest(input="q")
    sink.deliver(request, _completion(1))
    assert seen == [(request, _completion(1))]
    assert isinstance(sink, OutputSink)
    assert isinstance(MemorySink(), OutputSink)


# --- statistics --------------------------------------------------------------------------


async def test_stage_finds_each_stage_by_name() -> None:
    """statistics().stage(name) is that stage's row; an unknown name has none."""
    async with open_pipeline(EchoWorker()) as pipeline:
        await pipeline.submit(PromptRequest(input="q"))
        stats: PipelineStatistics = pipeline.statistics()
    names = ("rag", "assemble", "inference", "post", "stream")
    assert [stats.stage(name).name for name in names] == list(names)
    assert all(stats.stage(name).processed == 1 for name in names)
    with pytest.raises(StopIteration):
        stats.stage("nope")


def test_a_stage_holds_nothing_unless_it_says_so() -> None:
    """held defaults to 0 (only the inference stage's priority queue holds requests)."""
    stage = StageStatistics("rag", capacity=1, queue_depth=0, peak_depth=0, processed=0, shed=0)
    assert stage.held == 0
