"""``POST /v1/messages``: the official ``anthropic`` SDK pointed at the gateway, served by
either upstream kind, answers parsed in the SDK's own typed models."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import pytest
from anthropic.types import Message, TextBlock, ToolParam, ToolUseBlock

from trio_orchestrator.config import Config
from trio_orchestrator.config.secret import Secret
from trio_orchestrator.config.service import ApiKeyConfig, ServiceConfig
from trio_orchestrator.testing.fake_provider import Behaviour, FakeProvider

from .conftest import GOOGLE_KINDS, Gateway, sampling, single_provider, start_gateway

FIXTURES = Path(__file__).parent / "fixtures"
MODEL = "fake-model"
PIXEL = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJ"  # the start of a PNG, base64
WEATHER: ToolParam = {
    "name": "get_weather",
    "description": "The weather in a city",
    "input_schema": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
    },
}


def _ask(gw: Gateway, **request: Any) -> Message:
    """messages.create's answer (the client closed after it)."""
    request.setdefault("messages", [{"role": "user", "content": "Hi"}])
    request.setdefault("max_tokens", 256)
    with gw.anthropic() as client:
        answer: Message = client.messages.create(model=MODEL, **request)
    return answer


def _final(gw: Gateway, **request: Any) -> Message:
    """The final message of a messages.stream call."""
    request.setdefault("messages", [{"role": "user", "content": "Hi"}])
    request.setdefault("max_tokens", 64)
    with gw.anthropic() as client, client.messages.stream(model=MODEL, **request) as stream:
        return stream.get_final_message()


def _upstream_messages(gw: Gateway) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = gw.last().body["messages"]
    return messages


# ----------------------------------------------------------------------- answers


def test_a_text_answer_parses_in_the_sdks_message_model(gw: Gateway) -> None:
    """messages.create gets an Anthropic Message: id, role, text block, stop reason, usage."""
    gw.script(Behaviour(text="Hello there"))
    answer = _ask(gw)
    assert isinstance(answer, Message)
    assert answer.id.startswith("msg_")
    assert answer.type == "message"
    assert answer.role == "assistant"
    assert answer.model == MODEL
    assert [type(b) for b in answer.content] == [TextBlock]
    assert answer.content[0].text == "Hello there"  # type: ignore[union-attr]
    assert answer.stop_reason == "end_turn"
    assert answer.stop_sequence is None
    assert answer.usage.output_tokens > 0
    assert answer._request_id is not None
    assert answer._request_id.startswith("req_")


def test_max_tokens_reached_is_the_max_tokens_stop_reason(gw: Gateway) -> None:
    """An answer cut at max_tokens says stop_reason max_tokens."""
    gw.script(Behaviour(tokens=20))
    answer = _ask(gw, max_tokens=3)
    assert answer.stop_reason == "max_tokens"
    assert sampling(gw.kind, gw.last().body, "max_tokens") == 3


def test_system_and_turns_reach_the_upstream_translated(gw: Gateway) -> None:
    """System text blocks, user and assistant turns arrive in the upstream's own format."""
    gw.script(Behaviour(text="fine"))
    _ask(
        gw,
        system=[{"type": "text", "text": "Be brief."}, {"type": "text", "text": "Be kind."}],
        messages=[
            {"role": "user", "content": "Hello"},
            {"role": "assistant", "content": [{"type": "text", "text": "Hi! How can I help?"}]},
            {"role": "user", "content": "How are you?"},
        ],
    )
    body = gw.last().body
    if gw.kind == "openai":
        assert body["messages"][:2] == [
            {"role": "system", "content": "Be brief."},
            {"role": "system", "content": "Be kind."},
        ]
        turns = body["messages"][2:]
        assert [m["role"] for m in turns] == ["user", "assistant", "user"]
        assert [m["content"] for m in turns] == ["Hello", "Hi! How can I help?", "How are you?"]
    elif gw.kind == "bedrock":
        assert body["system"] == [{"text": "Be brief."}, {"text": "Be kind."}]
        assert [m["role"] for m in body["messages"]] == ["user", "assistant", "user"]
        assert body["messages"][2]["content"] == [{"text": "How are you?"}]
    elif gw.kind in GOOGLE_KINDS:
        assert body["systemInstruction"] == {"parts": [{"text": "Be brief.\n\nBe kind."}]}
        assert [c["role"] for c in body["contents"]] == ["user", "model", "user"]
        assert body["contents"][2]["parts"] == [{"text": "How are you?"}]
    else:
        assert body["system"] == "Be brief.\n\nBe kind."
        assert [m["role"] for m in body["messages"]] == ["user", "assistant", "user"]
        assert body["messages"][2]["content"] == [{"type": "text", "text": "How are you?"}]


def test_an_image_block_reaches_the_upstream_as_its_image_format(gw: Gateway) -> None:
    """A base64 image block arrives as an image_url data: URL (OpenAI) or an image block
    (Anthropic). Needs the workers to send message parts (chat-request and
    anthropic-translation branches)."""
    gw.script(Behaviour(text="a pixel"))
    image = {"type": "base64", "media_type": "image/png", "data": PIXEL}
    content = [{"type": "text", "text": "What is this?"}, {"type": "image", "source": image}]
    _ask(gw, messages=[{"role": "user", "content": content}])
    if gw.kind in GOOGLE_KINDS:
        inline = {"inlineData": {"mimeType": "image/png", "data": PIXEL}}
        assert gw.last().body["contents"][-1]["parts"] == [{"text": "What is this?"}, inline]
        return
    user = _upstream_messages(gw)[-1]
    if gw.kind == "openai":
        url = {"url": f"data:image/png;base64,{PIXEL}"}
        assert user["content"] == [
            {"type": "text", "text": "What is this?"},
            {"type": "image_url", "image_url": url},
        ]
    elif gw.kind == "bedrock":
        image_block = {"image": {"format": "png", "source": {"bytes": PIXEL}}}
        assert user["content"] == [{"text": "What is this?"}, image_block]
    else:
        assert {"type": "image", "source": image} in user["content"]


# ----------------------------------------------------------------------- tools


def test_a_tool_use_answer_has_its_input_parsed(gw: Gateway) -> None:
    """A tool call comes back as a tool_use block whose input is the parsed arguments."""
    gw.script(Behaviour(text="", tool_calls=(("get_weather", '{"city": "Paris"}'),)))
    answer = _ask(gw, tools=[WEATHER], tool_choice={"type": "auto"})
    assert answer.stop_reason == "tool_use"
    (call,) = [b for b in answer.content if isinstance(b, ToolUseBlock)]
    assert call.name == "get_weather"
    assert call.input == {"city": "Paris"}
    if gw.kind == "bedrock":
        config = gw.last().body["toolConfig"]
        spec = config["tools"][0]["toolSpec"]
        assert (spec["name"], spec["inputSchema"]) == (
            "get_weather",
            {"json": WEATHER["input_schema"]},
        )
        assert config["toolChoice"] == {"auto": {}}
        return
    tools = gw.last().body["tools"]
    if gw.kind == "openai":
        assert tools[0]["function"]["name"] == "get_weather"
        assert tools[0]["function"]["parameters"] == WEATHER["input_schema"]
        assert gw.last().body["tool_choice"] == "auto"
    elif gw.kind in GOOGLE_KINDS:
        (function,) = tools[0]["functionDeclarations"]
        assert function["parameters"] == WEATHER["input_schema"]
        assert gw.last().body["toolConfig"] == {"functionCallingConfig": {"mode": "AUTO"}}
    else:
        assert tools[0]["input_schema"] == WEATHER["input_schema"]
        assert gw.last().body["tool_choice"] == {"type": "auto"}


def test_a_tool_result_turn_reaches_the_upstream(gw: Gateway) -> None:
    """The assistant's tool_use and the user's tool_result arrive as the upstream's call and
    result, linked by the call's id."""
    gw.script(Behaviour(text="It is 18C in Paris."))
    call = {"type": "tool_use", "id": "toolu_01", "name": "get_weather", "input": {"city": "Paris"}}
    result = {"type": "tool_result", "tool_use_id": "toolu_01", "content": "18C"}
    call_part = {"name": "get_weather", "args": {"city": "Paris"}}
    answer = _ask(
        gw,
        tools=[WEATHER],
        messages=[
            {"role": "user", "content": "Weather in Paris?"},
            {"role": "assistant", "content": [call]},
            {"role": "user", "content": [result]},
        ],
    )
    assert answer.content[0].text == "It is 18C in Paris."  # type: ignore[union-attr]
    if gw.kind in GOOGLE_KINDS:  # linked by the function's name: Google's calls have no ids
        contents = gw.last().body["contents"]
        assert contents[1] == {"role": "model", "parts": [{"functionCall": call_part}]}
        response = {"name": "get_weather", "response": {"content": "18C"}}
        assert contents[2] == {"role": "user", "parts": [{"functionResponse": response}]}
        return
    messages = _upstream_messages(gw)
    if gw.kind == "openai":
        (sent,) = messages[1]["tool_calls"]
        assert sent["id"] == "toolu_01"
        assert sent["function"]["name"] == "get_weather"
        assert sent["function"]["arguments"] == '{"city":"Paris"}'
        assert messages[2] == {"role": "tool", "content": "18C", "tool_call_id": "toolu_01"}
    elif gw.kind == "bedrock":
        use = {"toolUseId": "toolu_01", "name": "get_weather", "input": {"city": "Paris"}}
        assert messages[1]["content"] == [{"toolUse": use}]
        result_block = {"toolUseId": "toolu_01", "content": [{"text": "18C"}]}
        assert messages[2]["content"] == [{"toolResult": result_block}]
    else:
        assert messages[1]["content"] == [call]
        assert messages[2]["content"][0]["tool_use_id"] == "toolu_01"
        assert messages[2]["content"][0]["content"] == "18C"


EPHEMERAL = {"type": "ephemeral"}


def test_cache_breakpoints_reach_the_upstream_where_it_takes_them(gw: Gateway) -> None:
    """cache_control on system, tool, user, assistant and tool_result blocks arrives as the
    upstream's own breakpoints (Anthropic: as sent; Bedrock: cachePoint blocks after them;
    OpenAI-compatible: on the content parts, as OpenRouter reads them), never dropped."""
    gw.script(Behaviour(text="It is 18C in Paris."))
    call = {"type": "tool_use", "id": "toolu_01", "name": "get_weather", "input": {"city": "Paris"}}
    result = {
        "type": "tool_result",
        "tool_use_id": "toolu_01",
        "content": "18C",
        "cache_control": EPHEMERAL,
    }
    said = {"type": "text", "text": "Let me look.", "cache_control": EPHEMERAL}
    asked = {"type": "text", "text": "Weather in Paris?", "cache_control": EPHEMERAL}
    _ask(
        gw,
        system=[{"type": "text", "text": "Long rules.", "cache_control": EPHEMERAL}],
        tools=[{**WEATHER, "cache_control": EPHEMERAL}],
        messages=[
            {"role": "user", "content": [asked]},
            {"role": "assistant", "content": [said, call]},
            {"role": "user", "content": [result]},
        ],
    )
    body = gw.last().body
    if gw.kind in GOOGLE_KINDS:  # Gemini caches prompt prefixes by itself
        assert body["systemInstruction"] == {"parts": [{"text": "Long rules."}]}
        return
    if gw.kind == "bedrock":
        point = {"cachePoint": {"type": "default"}}
        assert body["system"] == [{"text": "Long rules."}, point]
        assert body["toolConfig"]["tools"][1] == point
        user, assistant, results = body["messages"]
        assert user["content"] == [{"text": "Weather in Paris?"}, point]
        assert assistant["content"][:2] == [{"text": "Let me look."}, point]
        result_block = {"toolUseId": "toolu_01", "content": [{"text": "18C"}]}
        assert results["content"] == [{"toolResult": result_block}, point]
        return
    if gw.kind == "anthropic":
        assert body["system"] == [
            {"type": "text", "text": "Long rules.", "cache_control": EPHEMERAL}
        ]
        assert body["tools"][0]["cache_control"] == EPHEMERAL
        user, assistant, results = body["messages"]
        assert user["content"] == [asked]
        assert assistant["content"] == [said, call]
        marked = {"type": "text", "text": "18C", "cache_control": EPHEMERAL}
        assert results["content"][0]["content"] == [marked]
        return
    system, user, assistant, tool = body["messages"]  # OpenAI's shape, marks on the parts
    assert system["content"] == [
        {"type": "text", "text": "Long rules.", "cache_control": EPHEMERAL}
    ]
    assert user["content"] == [asked]
    assert assistant["content"] == [said]
    assert tool["content"] == [{"type": "text", "text": "18C", "cache_control": EPHEMERAL}]


def test_a_cache_breakpoint_on_a_tool_use_block_is_refused_naming_it(gw: Gateway) -> None:
    """A tool_use block's cache_control has no place to go: a 400 naming it, nothing sent."""
    call = {
        "type": "tool_use",
        "id": "toolu_01",
        "name": "get_weather",
        "input": {"city": "Paris"},
        "cache_control": EPHEMERAL,
    }
    result = {"type": "tool_result", "tool_use_id": "toolu_01", "content": "18C"}
    messages = [
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": [call]},
        {"role": "user", "content": [result]},
    ]
    with pytest.raises(
        anthropic.BadRequestError, match=r"messages\[1\]\.content\[0\]\.cache_control"
    ):
        _ask(gw, tools=[WEATHER], messages=messages)
    assert gw.received() == []


def test_tool_choice_any_without_parallel_calls_reaches_the_upstream(gw: Gateway) -> None:
    """tool_choice any with disable_parallel_tool_use is required + parallel_tool_calls false
    (OpenAI), or as sent (Anthropic; needs the anthropic-translation branch's worker)."""
    gw.script(Behaviour(text="", tool_calls=(("get_weather", '{"city": "Oslo"}'),)))
    choice: Any = {"type": "any", "disable_parallel_tool_use": True}
    if gw.kind == "bedrock":
        # Converse has no switch for parallel calls: refused, never silently dropped.
        with pytest.raises(anthropic.BadRequestError, match="parallel_tool_calls"):
            _ask(gw, tools=[WEATHER], tool_choice=choice)
        assert gw.received() == []
        return
    if gw.kind in GOOGLE_KINDS:  # Gemini cannot be stopped from calling in parallel
        with pytest.raises(anthropic.BadRequestError, match="parallel_tool_calls"):
            _ask(gw, tools=[WEATHER], tool_choice=choice)
        _ask(gw, tools=[WEATHER], tool_choice={"type": "any"})
        config = {"functionCallingConfig": {"mode": "ANY"}}
        assert gw.last().body["toolConfig"] == config
        return
    _ask(gw, tools=[WEATHER], tool_choice=choice)
    body = gw.last().body
    if gw.kind == "openai":
        assert body["tool_choice"] == "required"
        assert body["parallel_tool_calls"] is False
    else:
        assert body["tool_choice"] == {"type": "any", "disable_parallel_tool_use": True}


def test_anthropic_only_members_travel_by_their_names(gw: Gateway) -> None:
    """top_k and thinking reach the upstream as the client sent them."""
    gw.script(Behaviour(text="ok"))
    thinking = {"type": "enabled", "budget_tokens": 2048}
    _ask(gw, thinking=thinking, extra_body={"top_k": 5})
    body = gw.last().body
    if gw.kind == "bedrock":  # Claude's own members, where Converse carries them
        body = body["additionalModelRequestFields"]
    if gw.kind in GOOGLE_KINDS:  # in Gemini's words
        assert body["generationConfig"]["topK"] == 5
        assert body["generationConfig"]["thinkingConfig"] == {"thinkingBudget": 2048}
        return
    assert body["top_k"] == 5
    assert body["thinking"] == thinking


def test_the_user_id_and_service_tier_reach_the_upstream_in_its_words(gw: Gateway) -> None:
    """metadata.user_id and service_tier arrive as user / service_tier default (OpenAI) or as
    sent (Anthropic; needs the anthropic-translation branch's worker)."""
    gw.script(Behaviour(text="ok"))
    if gw.kind in GOOGLE_KINDS:  # no end-user field at Google: refused, never dropped
        with pytest.raises(anthropic.BadRequestError, match="`user`"):
            _ask(gw, metadata={"user_id": "u-42"})
        _ask(gw, service_tier="standard_only")  # Gemini's one tier
        assert "service_tier" not in gw.last().body
        return
    _ask(gw, metadata={"user_id": "u-42"}, service_tier="standard_only")
    body = gw.last().body
    if gw.kind == "openai":
        assert body["user"] == "u-42"
        assert body["service_tier"] == "default"
    elif gw.kind == "bedrock":
        assert body["requestMetadata"] == {"user": "u-42"}
        assert body["serviceTier"] == {"type": "default"}
    else:
        assert body["metadata"] == {"user_id": "u-42"}
        assert body["service_tier"] == "standard_only"


# ----------------------------------------------------------------------- streaming


def test_a_streamed_answer_has_anthropics_event_names_and_order(gw: Gateway) -> None:
    """stream=True gives message_start, block start/deltas/stop, message_delta, message_stop."""
    gw.script(Behaviour(text="one two three"))
    with gw.anthropic() as client:
        messages: Any = [{"role": "user", "content": "Hi"}]
        events = list(
            client.messages.create(model=MODEL, max_tokens=64, messages=messages, stream=True)
        )
    kinds = [e.type for e in events]
    assert kinds[:2] == ["message_start", "content_block_start"]
    assert kinds[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    assert set(kinds[2:-3]) == {"content_block_delta"}
    text = "".join(e.delta.text for e in events if e.type == "content_block_delta")  # type: ignore[union-attr]
    assert text == "one two three"
    assert events[-2].delta.stop_reason == "end_turn"  # type: ignore[union-attr]


def test_messages_stream_gives_text_and_the_final_message(gw: Gateway) -> None:
    """messages.stream's text_stream and get_final_message work through the gateway."""
    gw.script(Behaviour(text="Hello from the stream"))
    messages: Any = [{"role": "user", "content": "Hi"}]
    with (
        gw.anthropic() as client,
        client.messages.stream(model=MODEL, max_tokens=64, messages=messages) as stream,
    ):
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == "Hello from the stream"
    assert final.content[0].text == text  # type: ignore[union-attr]
    assert final.stop_reason == "end_turn"
    assert final.usage.output_tokens > 0


def test_a_streamed_tool_use_accumulates_in_the_final_message(gw: Gateway) -> None:
    """Text then two tool calls stream as one text block and two tool_use blocks, each
    input complete (the OpenAI upstream interleaves the calls' arguments)."""
    calls = (("get_weather", '{"city": "Paris"}'), ("get_weather", '{"city": "Rome"}'))
    gw.script(Behaviour(text="Checking.", tool_calls=calls))
    final = _final(gw, tools=[WEATHER])
    assert [b.type for b in final.content] == ["text", "tool_use", "tool_use"]
    assert final.content[0].text == "Checking."  # type: ignore[union-attr]
    inputs = [b.input for b in final.content if isinstance(b, ToolUseBlock)]
    assert inputs == [{"city": "Paris"}, {"city": "Rome"}]
    assert final.stop_reason == "tool_use"


# ----------------------------------------------------------------------- usage

_OPENAI_CACHED = [
    {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": MODEL,
        "choices": [{"index": 0, "delta": {"role": "assistant", "content": "Hi"}}],
    },
    {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": MODEL,
        "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
    },
    {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": MODEL,
        "choices": [],
        "usage": {
            "prompt_tokens": 2006,
            "completion_tokens": 300,
            "total_tokens": 2306,
            "prompt_tokens_details": {"cached_tokens": 1920, "audio_tokens": 0},
        },
    },
]
_ANTHROPIC_CACHED = [
    {
        "type": "message_start",
        "message": {
            "id": "msg_1",
            "type": "message",
            "role": "assistant",
            "model": MODEL,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {
                "input_tokens": 86,
                "cache_creation_input_tokens": 100,
                "cache_read_input_tokens": 1820,
                "output_tokens": 1,
            },
        },
    },
    {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
    {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hi"}},
    {"type": "content_block_stop", "index": 0},
    {
        "type": "message_delta",
        "delta": {"stop_reason": "end_turn", "stop_sequence": None},
        "usage": {"output_tokens": 300},
    },
    {"type": "message_stop"},
]


#: ConverseStream's events for the same answer, as boto3 yields them (fixtures/README.md).
_BEDROCK_CACHED = json.loads((FIXTURES / "bedrock_converse_stream_cached.json").read_text())
# Gemini counts cached tokens inside promptTokenCount (the usage of the OpenAI answer above).
_GOOGLE_CACHED: list[dict[str, Any]] = [
    {
        "candidates": [{"content": {"parts": [{"text": "Hi"}], "role": "model"}, "index": 0}],
        "usageMetadata": {"promptTokenCount": 2006, "cachedContentTokenCount": 1920},
        "modelVersion": MODEL,
    },
    {
        "candidates": [
            {"content": {"parts": [{"text": ""}], "role": "model"}, "finishReason": "STOP"}
        ],
        "usageMetadata": {
            "promptTokenCount": 2006,
            "cachedContentTokenCount": 1920,
            "candidatesTokenCount": 300,
            "totalTokenCount": 2306,
        },
        "modelVersion": MODEL,
    },
]


# The same answer whole: a client that does not stream is answered from one JSON answer.
_OPENAI_CACHED_WHOLE = {
    "id": "chatcmpl-1",
    "object": "chat.completion",
    "created": 1,
    "model": MODEL,
    "choices": [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "Hi"},
            "finish_reason": "stop",
        }
    ],
    "usage": _OPENAI_CACHED[-1]["usage"],
}
_ANTHROPIC_CACHED_WHOLE = {
    "id": "msg_1",
    "type": "message",
    "role": "assistant",
    "model": MODEL,
    "content": [{"type": "text", "text": "Hi"}],
    "stop_reason": "end_turn",
    "stop_sequence": None,
    "usage": {
        "input_tokens": 86,
        "cache_creation_input_tokens": 100,
        "cache_read_input_tokens": 1820,
        "output_tokens": 300,
    },
}
_BEDROCK_CACHED_WHOLE = {
    "output": {"message": {"role": "assistant", "content": [{"text": "Hi"}]}},
    "stopReason": "end_turn",
    "usage": _BEDROCK_CACHED[-1]["metadata"]["usage"],
    "metrics": {"latencyMs": 1372},
}
_GOOGLE_CACHED_WHOLE = {
    "candidates": [
        {
            "content": {"parts": [{"text": "Hi"}], "role": "model"},
            "finishReason": "STOP",
            "index": 0,
        }
    ],
    "usageMetadata": _GOOGLE_CACHED[-1]["usageMetadata"],
    "modelVersion": MODEL,
}


def test_usage_reports_cache_reads_and_writes_as_anthropic_counts_them(gw: Gateway) -> None:
    """Cached prompt tokens come back as cache_read_input_tokens, and input_tokens excludes
    them. Needs the workers to report cache tokens (chat-answer branch)."""
    by_kind: dict[str, Any] = {
        "openai": (_OPENAI_CACHED, _OPENAI_CACHED_WHOLE),
        "anthropic": (_ANTHROPIC_CACHED, _ANTHROPIC_CACHED_WHOLE),
        "bedrock": (_BEDROCK_CACHED, _BEDROCK_CACHED_WHOLE),
    }
    # A client that streams is answered from the upstream's stream, one that does not from
    # its whole answer: both carry the same counts.
    recorded, whole = by_kind.get(gw.kind, (_GOOGLE_CACHED, _GOOGLE_CACHED_WHOLE))
    for stream in (False, True):
        gw.script(Behaviour(events=tuple(recorded), body=whole))
        usage = (_final(gw) if stream else _ask(gw)).usage
        if gw.kind not in ("anthropic", "bedrock"):
            assert (usage.input_tokens, usage.cache_read_input_tokens) == (86, 1920)
            assert usage.cache_creation_input_tokens == 0
        else:  # Anthropic's counts, and Bedrock's (the same three)
            assert (usage.input_tokens, usage.cache_read_input_tokens) == (86, 1820)
            assert usage.cache_creation_input_tokens == 100
        assert usage.output_tokens == 300


# ----------------------------------------------------------------------- errors


def test_an_upstream_429_is_the_sdks_rate_limit_error(gw: Gateway) -> None:
    """An upstream 429 before the first token is a real 429 in Anthropic's error shape, with
    Retry-After, streamed or not."""
    for stream in (False, True):
        gw.script(Behaviour(status=429, retry_after=7))
        with pytest.raises(anthropic.RateLimitError) as caught:
            _final(gw) if stream else _ask(gw)
        assert caught.value.status_code == 429
        assert 1 <= int(caught.value.response.headers["retry-after"]) <= 7
        assert caught.value.body["type"] == "error"  # type: ignore[index]
        assert caught.value.body["error"]["type"] == "rate_limit_error"  # type: ignore[index]


def test_an_upstream_failure_after_the_first_token_is_an_error_event(gw: Gateway) -> None:
    """A failure mid-stream arrives as Anthropic's in-stream error event."""
    gw.script(Behaviour(tokens=6, error_after=2))
    with pytest.raises(anthropic.APIStatusError) as caught:
        _final(gw)
    assert caught.value.body["type"] == "error"  # type: ignore[index]


@pytest.mark.parametrize(
    "request_",
    [
        {"messages": [{"role": "system", "content": "no"}]},
        {"messages": []},
        {"messages": [{"role": "user", "content": 5}]},
        {"extra_body": {"temperature": 1.5}},
        {"tool_choice": {"type": "sometimes"}},
        {"tools": [{"type": "web_search_20250305", "name": "web_search"}]},
        {"messages": [{"role": "user", "content": [{"type": "audio", "data": "x"}]}]},
    ],
    ids=[
        "system-role",
        "no-messages",
        "number-content",
        "temperature",
        "tool-choice",
        "server-tool",
        "block-type",
    ],
)
def test_bad_input_is_the_sdks_bad_request_error(gw: Gateway, request_: dict[str, Any]) -> None:
    """Invalid requests are 400 invalid_request_error in Anthropic's shape, never sent on."""
    with pytest.raises(anthropic.BadRequestError) as caught:
        _ask(gw, **request_)
    body = caught.value.body
    assert body["type"] == "error"  # type: ignore[index]
    assert body["error"]["type"] == "invalid_request_error"  # type: ignore[index]
    assert gw.received() == []


def test_an_unknown_model_is_the_sdks_not_found_error() -> None:
    """A model the service does not serve is 404 not_found_error."""
    with _gateway(models=["only-this"]) as gw, pytest.raises(anthropic.NotFoundError) as caught:
        _ask(gw)
    assert caught.value.body["error"]["type"] == "not_found_error"  # type: ignore[index]


# ----------------------------------------------------------------------- count_tokens


def test_count_tokens_answers_an_estimate_without_calling_the_upstream(gw: Gateway) -> None:
    """count_tokens gives input_tokens, more for a longer prompt, and calls no upstream."""
    with gw.anthropic() as client:
        short = client.messages.count_tokens(
            model=MODEL, messages=[{"role": "user", "content": "Hi"}]
        )
        long = client.messages.count_tokens(
            model=MODEL,
            system="You answer questions about the weather.",
            tools=[WEATHER],
            messages=[{"role": "user", "content": "What is the weather in Paris today? " * 20}],
        )
    assert 0 < short.input_tokens < long.input_tokens
    assert gw.received() == []


# ----------------------------------------------------------------------- API keys

KEY = "sk-gateway-client"


def _keyed(fake: FakeProvider, models: list[str] | None = None) -> Config:
    config = single_provider("openai")(fake)
    keys = (ApiKeyConfig(name="client", key=Secret(KEY)),)
    service = ServiceConfig(
        port=0, api_keys=keys if models is None else (), models=tuple(models or ())
    )
    return Config(providers=config.providers, service=service)


class _gateway:
    """A gateway of its own (an OpenAI upstream), for tests that need another configuration."""

    def __init__(self, models: list[str] | None = None) -> None:
        self._models = models

    def __enter__(self) -> Gateway:
        self._running = start_gateway("openai", lambda fake: _keyed(fake, self._models))
        return self._running.gateway

    def __exit__(self, *_exc: object) -> None:
        self._running.stop()


def _anthropic(gw: Gateway, key: str) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=gw.url, api_key=key, max_retries=0)


def _openai(gw: Gateway, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.url + "/v1", api_key=key, max_retries=0)


@pytest.fixture(scope="module")
def keyed() -> Iterator[Gateway]:
    """A gateway that requires an API key."""
    with _gateway() as gw:
        yield gw


def test_the_api_key_is_accepted_as_x_api_key_and_as_bearer(keyed: Gateway) -> None:
    """x-api-key (Anthropic's documented header: its curl examples, older SDKs and tools
    built on them) and Authorization: Bearer (this anthropic SDK, the openai SDK) both work."""
    request = {"model": MODEL, "max_tokens": 16, "messages": [{"role": "user", "content": "Hi"}]}
    headers = {"x-api-key": KEY, "anthropic-version": "2023-06-01"}
    response = httpx.post(keyed.url + "/v1/messages", headers=headers, json=request)
    assert response.status_code == 200
    assert Message.model_validate(response.json()).content
    with _anthropic(keyed, KEY) as client:
        answer = client.messages.create(
            model=MODEL, max_tokens=16, messages=[{"role": "user", "content": "Hi"}]
        )
    assert answer.content
    with _openai(keyed, KEY) as chat_client:
        chat = chat_client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "Hi"}]
        )
    assert chat.choices[0].message.content
    assert httpx.get(keyed.url + "/v1/models", headers={"x-api-key": KEY}).status_code == 200


def test_a_wrong_key_is_refused_in_each_sdks_shape(keyed: Gateway) -> None:
    """A wrong key is Anthropic's authentication_error on /v1/messages (x-api-key or Bearer),
    OpenAI's 401 on the OpenAI endpoints."""
    keyed.clear()
    response = httpx.post(
        keyed.url + "/v1/messages", headers={"x-api-key": "sk-wrong"}, json={"model": MODEL}
    )
    assert response.status_code == 401
    assert response.json()["error"]["type"] == "authentication_error"
    with (
        _anthropic(keyed, "sk-wrong") as client,
        pytest.raises(anthropic.AuthenticationError) as caught,
    ):
        client.messages.create(
            model=MODEL, max_tokens=16, messages=[{"role": "user", "content": "Hi"}]
        )
    assert caught.value.body["error"]["type"] == "authentication_error"  # type: ignore[index]
    with _openai(keyed, "sk-wrong") as chat_client, pytest.raises(openai.AuthenticationError):
        chat_client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "Hi"}]
        )
    assert keyed.received() == []
