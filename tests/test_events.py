"""The event grammar and its accumulator."""

from __future__ import annotations

import pytest

from trio_orchestrator import (
    Accumulator,
    Done,
    EventGrammarError,
    StreamEvent,
    TextDelta,
    ToolCall,
    ToolCallDelta,
    ToolCallStart,
    Usage,
)


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
