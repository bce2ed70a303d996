"""The event grammar and its accumulator."""

from __future__ import annotations

import tracemalloc

import pytest
from hypothesis import given
from hypothesis import strategies as st

from trio_orchestrator import (
    Accumulator,
    Done,
    EventGrammarError,
    Passthrough,
    StreamEvent,
    TextDelta,
    ToolCall,
    ToolCallDelta,
    ToolCallStart,
    Usage,
)
from trio_orchestrator.events import TextPieces, merge_passthrough


def test_accumulator_joins_text_tool_calls_and_usage() -> None:
    """Deltas, parallel tool-call argument deltas and usage fold into one completion."""
    acc = Accumulator()
    events: list[StreamEvent] = [
        TextDelta("Hi "),
        ToolCallStart(1, "c1", "lookup"),
        ToolCallStart(0, "c0", "search"),
        ToolCallDelta(1, '{"k":'),
        ToolCallDelta(0, '{"q": 1}'),
        ToolCallDelta(1, "2}"),
        TextDelta("there"),
        Usage(5, 7),
        Done("tool_calls", "Hi there"),
    ]
    for event in events:
        acc.add(event)
    completion = acc.completion("r")
    assert completion.text == "Hi there"
    assert completion.tool_calls == (
        ToolCall("c0", "search", '{"q": 1}'),
        ToolCall("c1", "lookup", '{"k":2}'),
    )
    assert completion.usage == Usage(5, 7)
    assert completion.finish_reason == "tool_calls"


@pytest.mark.parametrize(
    ("events", "message"),
    [
        ([Done(), TextDelta("x")], "after Done"),
        ([ToolCallDelta(0, "{")], "before its start"),
        ([ToolCallStart(0, "a", "f"), ToolCallStart(0, "b", "g")], "started twice"),
        ([TextDelta("a"), Done("stop", "b")], "differs"),
    ],
)
def test_accumulator_rejects_broken_grammar(events: list[StreamEvent], message: str) -> None:
    """Each grammar violation is a typed error naming what broke."""
    acc = Accumulator()
    for event in events[:-1]:
        acc.add(event)
    with pytest.raises(EventGrammarError, match=message):
        acc.add(events[-1])


def test_merge_passthrough_concatenates_pieces_and_replaces_top_level_members() -> None:
    """Refusal pieces and logprobs concatenate; objects merge; top-level members are replaced."""
    first = Passthrough(
        {"system_fingerprint": "fp_1", "service_tier": "default"},
        {"logprobs": {"content": [{"token": "I"}], "refusal": None}},
        {"refusal": "I'm", "audio": {"id": "a1", "transcript": "I"}},
    )
    second = Passthrough(
        {"system_fingerprint": "fp_2"},
        {"logprobs": {"content": [{"token": "'m"}]}},
        {"refusal": " sorry", "audio": {"transcript": "'m"}},
    )
    merged = merge_passthrough(merge_passthrough(None, first), second)
    assert merged.response == {"system_fingerprint": "fp_2", "service_tier": "default"}
    assert merged.choice == {
        "logprobs": {"content": [{"token": "I"}, {"token": "'m"}], "refusal": None}
    }
    assert merged.message == {"refusal": "I'm sorry", "audio": {"id": "a1", "transcript": "I'm"}}


def test_accumulator_folds_passthrough_into_the_completion() -> None:
    """Passthrough events between text deltas end up folded on the completion."""
    acc = Accumulator()
    events: list[StreamEvent] = [
        Passthrough({"system_fingerprint": "fp"}, message={"reasoning_content": "Let me "}),
        Passthrough(message={"reasoning_content": "think."}),
        Passthrough(choice={"logprobs": {"content": [{"token": "Hi"}]}}),
        TextDelta("Hi"),
        Done("stop"),
    ]
    for event in events:
        acc.add(event)
    passed = acc.completion("r1").passthrough
    assert passed is not None
    assert passed.response == {"system_fingerprint": "fp"}
    assert passed.message == {"reasoning_content": "Let me think."}
    assert passed.choice == {"logprobs": {"content": [{"token": "Hi"}]}}
    assert Accumulator().completion("r2").passthrough is None


@given(st.lists(st.text(max_size=5), max_size=300))
def test_text_pieces_give_back_the_pieces_joined(pieces: list[str]) -> None:
    """Whatever the pieces and wherever the joins fall, the text is their concatenation."""
    text = TextPieces()
    for piece in pieces:
        text.append(piece)
    assert text.text() == "".join(pieces)


def test_text_pieces_hold_about_the_text_not_a_string_per_piece() -> None:
    """1,000 four-character pieces (a long answer's tokens) cost a few KB kept, not the
    ~60 KB of a list of 1,000 strings: a stream's text is kept for as long as it is open."""
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        text = TextPieces()
        for i in range(1000):
            text.append(f"t{i:03d}")  # a new string each, freed unless kept
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert text.text().startswith("t000t001")
    assert held < 12_000
