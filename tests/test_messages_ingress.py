"""The Anthropic ingress's translations: Messages bodies into the gateway's request, and the
gateway's events back into Anthropic's message, stream and error shapes."""

from __future__ import annotations

import json
from typing import Any

import pytest

from trio_orchestrator.events import (
    Completion,
    Passthrough,
    StreamEvent,
    TextDelta,
    ToolCallDelta,
    ToolCallStart,
    Usage,
)
from trio_orchestrator.service.errors import ApiError
from trio_orchestrator.service.messages_answer import (
    AnthropicApiError,
    MessageStreamWriter,
    anthropic_error_body,
    message_body,
    usage_body,
)
from trio_orchestrator.service.messages_request import MessagesRequest, parse_messages_request
from trio_orchestrator.service.validate import Fields
from trio_orchestrator.types import Message, ToolCall


def _parse(**body: Any) -> MessagesRequest:
    body.setdefault("model", "m")
    body.setdefault("max_tokens", 100)
    body.setdefault("messages", [{"role": "user", "content": "Hi"}])
    return parse_messages_request(Fields(body), (), {})


def _error(**body: Any) -> ApiError:
    with pytest.raises(ApiError) as caught:
        _parse(**body)
    assert caught.value.status == 400
    return caught.value


# ----------------------------------------------------------------------- requests


def test_a_plain_request_becomes_messages_and_typed_params() -> None:
    """model, max_tokens, sampling, stop sequences and system reach the typed fields."""
    parsed = _parse(
        system="Be brief.",
        temperature=0.5,
        top_p=0.9,
        stop_sequences=["END"],
        stream=True,
    )
    p = parsed.prompt.params
    assert (p.model, p.max_tokens, p.temperature, p.top_p, p.stop) == ("m", 100, 0.5, 0.9, ("END",))
    assert p.extra == {}
    assert parsed.stream
    assert parsed.prompt.messages == (Message("system", "Be brief."), Message("user", "Hi"))


def test_content_blocks_become_openai_content_parts() -> None:
    """Text, base64 and URL images, a PDF and a text document become OpenAI-shaped parts."""
    b64 = {"type": "base64", "media_type": "image/png", "data": "AAAA"}
    pdf = {"type": "base64", "media_type": "application/pdf", "data": "JVBE"}
    content = [
        {"type": "text", "text": "Look: "},
        {"type": "image", "source": b64},
        {"type": "image", "source": {"type": "url", "url": "https://x.test/a.jpg"}},
        {"type": "document", "source": pdf, "title": "report.pdf"},
        {"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": "T"}},
    ]
    parsed = _parse(messages=[{"role": "user", "content": content}])
    (message,) = parsed.prompt.messages
    assert message.parts == (
        {"type": "text", "text": "Look: "},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
        {"type": "image_url", "image_url": {"url": "https://x.test/a.jpg"}},
        {
            "type": "file",
            "file": {"file_data": "data:application/pdf;base64,JVBE", "filename": "report.pdf"},
        },
        {"type": "text", "text": "T"},
    )
    assert message.content == "Look: T"
    assert message.wire is None
    assert parsed.prompt.meta["vision"] == "1"


def test_tool_use_and_tool_result_become_a_call_and_a_tool_message() -> None:
    """An assistant tool_use is a ToolCall; the user's tool_results come first as tool
    messages, an error marked in the text, then the turn's other content."""
    use = {"type": "tool_use", "id": "t1", "name": "f", "input": {"a": 1}}
    ok = {"type": "tool_result", "tool_use_id": "t1", "content": [{"type": "text", "text": "1"}]}
    bad = {"type": "tool_result", "tool_use_id": "t2", "content": "boom", "is_error": True}
    parsed = _parse(
        messages=[
            {"role": "user", "content": "go"},
            {"role": "assistant", "content": [{"type": "thinking", "thinking": "…"}, use]},
            {"role": "user", "content": [ok, bad, {"type": "text", "text": "and?"}]},
        ]
    )
    assert parsed.prompt.messages[1:] == (
        Message("assistant", "", tool_calls=(ToolCall("t1", "f", '{"a":1}'),)),
        Message("tool", "1", tool_call_id="t1"),
        Message("tool", "Error: boom", tool_call_id="t2"),
        Message("user", "and?"),
    )


def test_tools_and_tool_choice_become_the_typed_ones() -> None:
    """Client tools and each tool_choice become the gateway's; disable_parallel_tool_use is
    parallel_tool_calls false."""
    tool = {"name": "f", "description": "d", "input_schema": {"type": "object"}}
    choices = {
        "auto": "auto",
        "any": "required",
        "none": "none",
    }
    for kind, expected in choices.items():
        params = _parse(tools=[tool], tool_choice={"type": kind}).prompt.params
        assert params.tool_choice == expected
        assert params.tools[0].name == "f"
        assert params.tools[0].parameters == {"type": "object"}
    params = _parse(
        tools=[tool], tool_choice={"type": "tool", "name": "f", "disable_parallel_tool_use": True}
    ).prompt.params
    assert params.tool_choice == {"type": "function", "function": {"name": "f"}}
    assert params.extra == {"parallel_tool_calls": False}


def test_other_members_go_to_extra() -> None:
    """top_k, thinking and unknown members travel by name; metadata.user_id as user (and a
    label); service_tier in OpenAI's words; disabled thinking not at all."""
    thinking = {"type": "enabled", "budget_tokens": 2048}
    parsed = _parse(
        top_k=5,
        thinking=thinking,
        metadata={"user_id": "u1"},
        service_tier="standard_only",
        speed="fast",
    )
    assert parsed.prompt.params.extra == {
        "top_k": 5,
        "thinking": thinking,
        "user": "u1",
        "service_tier": "default",
        "speed": "fast",
    }
    assert parsed.prompt.meta["user"] == "u1"
    assert _parse(thinking={"type": "disabled"}).prompt.params.extra == {}


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"max_tokens": None}, "max_tokens"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"temperature": 1.5}, "temperature"),
        ({"top_k": -1}, "top_k"),
        ({"messages": [{"role": "system", "content": "x"}]}, "messages[0].role"),
        ({"messages": [{"role": "user", "content": 3}]}, "messages[0].content"),
        ({"messages": [{"role": "user", "content": []}]}, "messages[0].content"),
        ({"system": [{"type": "image"}]}, "system[0].type"),
        ({"tools": [{"type": "bash_20250124", "name": "bash"}]}, "tools[0].type"),
        ({"tools": [{"name": "f"}]}, "tools[0].input_schema"),
        ({"tool_choice": {"type": "maybe"}}, "tool_choice.type"),
        ({"thinking": {"type": "on"}}, "thinking.type"),
        ({"service_tier": "premium"}, "service_tier"),
        (
            {"messages": [{"role": "user", "content": [{"type": "image", "source": {}}]}]},
            "messages[0].content[0].source.type",
        ),
        (
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [
                            {
                                "type": "document",
                                "source": {"type": "url", "url": "https://x.test/a.pdf"},
                            }
                        ],
                    }
                ]
            },
            "messages[0].content[0].source.type",
        ),
    ],
)
def test_invalid_members_are_400s_naming_them(body: dict[str, Any], param: str) -> None:
    """Each invalid member is refused with a 400 whose param is its path."""
    assert _error(**body).param == param


# ----------------------------------------------------------------------- answers


def test_usage_counts_input_tokens_as_anthropic_does() -> None:
    """input_tokens excludes cache reads and writes; they are reported apart."""
    usage = Usage(2006, 300, cached_input_tokens=1820, cache_write_tokens=100)
    assert usage_body(usage) == {
        "input_tokens": 86,
        "output_tokens": 300,
        "cache_creation_input_tokens": 100,
        "cache_read_input_tokens": 1820,
    }


def test_a_completion_becomes_a_message() -> None:
    """Reasoning, text and tool calls become thinking, text and tool_use blocks."""
    completion = Completion(
        "req_abc",
        "Let me look.",
        "tool_calls",
        Usage(10, 5),
        (ToolCall("call_1", "f", '{"a": 1}'),),
        "served-model",
        Passthrough(message={"reasoning_content": "hmm"}),
    )
    body = message_body(completion, "asked")
    assert body["id"] == "msg_abc"
    assert body["model"] == "served-model"
    assert body["content"] == [
        {"type": "thinking", "thinking": "hmm", "signature": ""},
        {"type": "text", "text": "Let me look."},
        {"type": "tool_use", "id": "call_1", "name": "f", "input": {"a": 1}},
    ]
    assert body["stop_reason"] == "tool_use"


@pytest.mark.parametrize(
    ("finish", "stop"),
    [
        ("stop", "end_turn"),
        ("length", "max_tokens"),
        ("tool_calls", "tool_use"),
        ("content_filter", "refusal"),
        ("pause_turn", "pause_turn"),
        ("something_else", "end_turn"),
    ],
)
def test_finish_reasons_become_stop_reasons(finish: str, stop: str) -> None:
    """Each finish reason has its Anthropic stop reason."""
    assert message_body(Completion("req_1", "", finish), "m")["stop_reason"] == stop


def _stream(events: list[StreamEvent], completion: Completion) -> list[tuple[str, Any]]:
    writer = MessageStreamWriter("req_1", "m")
    frames = [f for event in events for f in writer.event(event)]
    return frames + writer.last(completion)


def _fold(frames: list[tuple[str, Any]]) -> list[dict[str, Any]]:
    """What a client accumulates: blocks by index, checking Anthropic's ordering rules."""
    blocks: list[dict[str, Any]] = []
    raw: dict[int, str] = {}
    open_index = None
    for name, data in frames:
        if name == "content_block_start":
            assert open_index is None, "a block started while another was open"
            assert data["index"] == len(blocks)
            blocks.append(dict(data["content_block"]))
            open_index = data["index"]
        elif name == "content_block_delta":
            assert data["index"] == open_index, "a delta for a block that is not open"
            delta = data["delta"]
            block = blocks[data["index"]]
            if delta["type"] == "input_json_delta":
                raw[data["index"]] = raw.get(data["index"], "") + delta["partial_json"]
            else:
                field = delta["type"].removesuffix("_delta")
                block[field] += delta[field]
        elif name == "content_block_stop":
            assert data["index"] == open_index
            open_index = None
    for index, text in raw.items():
        blocks[index]["input"] = json.loads(text)
    return blocks


def test_a_stream_has_anthropics_event_order() -> None:
    """message_start first; blocks open, take deltas and close; message_delta, message_stop."""
    frames = _stream([TextDelta("a"), TextDelta("b")], Completion("req_1", "ab", "stop"))
    assert [name for name, _ in frames] == [
        "message_start",
        "content_block_start",
        "content_block_delta",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    assert frames[-2][1]["delta"]["stop_reason"] == "end_turn"


def test_interleaved_tool_calls_stream_as_blocks_one_after_another() -> None:
    """Calls whose arguments interleave come out as consecutive, complete tool_use blocks."""
    events: list[StreamEvent] = [
        Passthrough(message={"reasoning_content": "think"}),
        TextDelta("Checking."),
        ToolCallStart(0, "c0", "f"),
        ToolCallStart(1, "c1", "g"),
        ToolCallDelta(0, '{"a":'),
        ToolCallDelta(1, '{"b":'),
        TextDelta(" More."),
        ToolCallDelta(0, "1}"),
        ToolCallDelta(1, "2}"),
        TextDelta(" Done."),
    ]
    blocks = _fold(_stream(events, Completion("req_1", "", "tool_calls")))
    assert blocks == [
        {"type": "thinking", "thinking": "think", "signature": ""},
        {"type": "text", "text": "Checking."},
        {"type": "tool_use", "id": "c0", "name": "f", "input": {"a": 1}},
        {"type": "tool_use", "id": "c1", "name": "g", "input": {"b": 2}},
        {"type": "text", "text": " More. Done."},
    ]


def test_an_empty_answer_still_starts_the_message() -> None:
    """A stream with no content is message_start, message_delta, message_stop."""
    frames = _stream([], Completion("req_1", "", "stop", Usage(3, 0)))
    assert [name for name, _ in frames] == ["message_start", "message_delta", "message_stop"]
    assert frames[1][1]["usage"]["input_tokens"] == 3


@pytest.mark.parametrize(
    ("status", "code", "kind", "answered"),
    [
        (400, None, "invalid_request_error", 400),
        (401, None, "authentication_error", 401),
        (404, "model_not_found", "not_found_error", 404),
        (413, None, "request_too_large", 413),
        (429, None, "rate_limit_error", 429),
        (500, None, "api_error", 500),
        (502, "upstream_error", "api_error", 502),
        (503, "overloaded", "overloaded_error", 503),
        (503, "upstream_overloaded", "overloaded_error", 529),
        (504, None, "timeout_error", 504),
    ],
)
def test_errors_take_anthropics_shape_and_type(
    status: int, code: str | None, kind: str, answered: int
) -> None:
    """Each status has its Anthropic error type; an overloaded upstream is 529."""
    error = AnthropicApiError.of(ApiError(status, "what happened", code=code))
    assert error.status == answered
    assert error.body() == {"type": "error", "error": {"type": kind, "message": "what happened"}}


def test_an_error_names_its_param_and_request() -> None:
    """The param at fault is named in the message; the request id is in the body."""
    error = ApiError(400, "must be a number", param="temperature")
    body = anthropic_error_body(error, "req_9")
    assert body["error"]["message"] == "temperature: must be a number"
    assert body["request_id"] == "req_9"
