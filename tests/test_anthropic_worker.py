"""The Anthropic Messages worker: wire format, stream events, errors."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trio_orchestrator.config.secret import Secret
from trio_orchestrator.errors import (
    ContextLengthExceeded,
    MalformedResponse,
    Overloaded,
    ProviderConnectionError,
    ProviderError,
    RateLimited,
)
from trio_orchestrator.events import (
    Done,
    StreamEvent,
    TextDelta,
    ToolCallDelta,
    ToolCallStart,
    Usage,
)
from trio_orchestrator.types import GenerationParams, Message, PromptRequest, Tool, ToolCall
from trio_orchestrator.workers import AnthropicWorker, KeyPool, collect
from trio_orchestrator.workers.anthropic import messages_body

REQUEST = PromptRequest(input="hi", params=GenerationParams(model="claude"))


def event(name: str, **data: Any) -> bytes:
    return f"event: {name}\ndata: {json.dumps({'type': name, **data})}\n\n".encode()


def worker(
    body: bytes, status: int = 200, headers: dict[str, str] | None = None, **kw: Any
) -> AnthropicWorker:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(status, content=body, headers=headers or {})

    client = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    return AnthropicWorker(client, "http://anthropic.test", **kw)


START = event("message_start", message={"model": "claude", "usage": {"input_tokens": 5}})
TEXT_BLOCK = event("content_block_start", index=0, content_block={"type": "text", "text": ""})


def text(index: int, t: str) -> bytes:
    return event("content_block_delta", index=index, delta={"type": "text_delta", "text": t})


def stop(reason: str, output_tokens: int = 3) -> bytes:
    delta = {"stop_reason": reason, "stop_sequence": None}
    return event("message_delta", delta=delta, usage={"output_tokens": output_tokens})


def test_system_messages_become_the_system_prompt() -> None:
    """System messages leave the message list and join into ``system``."""
    chat = (Message("system", "be brief"), Message("system", "be kind"), Message("user", "q"))
    body = messages_body(PromptRequest(messages=chat), stream=False, max_tokens=99)
    assert body["system"] == "be brief\n\nbe kind"
    assert body["messages"] == [{"role": "user", "content": [{"type": "text", "text": "q"}]}]
    assert body["max_tokens"] == 99


def test_tools_and_tool_turns_are_mapped() -> None:
    """Tools get input_schema; tool calls become tool_use, answers tool_result user turns."""
    chat = (
        Message("user", "q"),
        Message("assistant", "", tool_calls=(ToolCall("t1", "f", '{"x": 1}'),)),
        Message("tool", "42", tool_call_id="t1"),
    )
    params = GenerationParams(
        model="c", tools=(Tool("f", "d", {"type": "object"}),), tool_choice="required", stop=("X",)
    )
    body = messages_body(PromptRequest(messages=chat, params=params), stream=True, max_tokens=9)
    assert body["tools"] == [{"name": "f", "description": "d", "input_schema": {"type": "object"}}]
    assert body["tool_choice"] == {"type": "any"}
    assert body["stop_sequences"] == ["X"]
    assert body["messages"][1]["content"] == [
        {"type": "tool_use", "id": "t1", "name": "f", "input": {"x": 1}}
    ]
    assert body["messages"][2] == {
        "role": "user",
        "content": [{"type": "tool_result", "tool_use_id": "t1", "content": "42"}],
    }


async def test_sends_version_and_key_headers() -> None:
    """Each call carries anthropic-version and the key in x-api-key, to /v1/messages."""
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, content=START + stop("end_turn") + event("message_stop"))

    client = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    w = AnthropicWorker(client, "http://a.test", keys=KeyPool([Secret("k-1")]))
    await collect(w, REQUEST)
    assert seen[0].headers["anthropic-version"] == "2023-06-01"
    assert seen[0].headers["x-api-key"] == "k-1"
    assert seen[0].url.path == "/v1/messages"


async def test_stream_of_text_and_tool_use() -> None:
    """Text deltas, a tool_use block with input_json_delta, usage and stop_reason map over."""
    tool = {"type": "tool_use", "id": "toolu_1", "name": "f", "input": {}}
    body = b"".join(
        [
            START,
            TEXT_BLOCK,
            event("ping"),
            text(0, "Hi"),
            event("content_block_stop", index=0),
            event("content_block_start", index=1, content_block=tool),
            event(
                "content_block_delta",
                index=1,
                delta={"type": "input_json_delta", "partial_json": '{"a"'},
            ),
            event(
                "content_block_delta",
                index=1,
                delta={"type": "input_json_delta", "partial_json": ": 1}"},
            ),
            event("content_block_stop", index=1),
            stop("tool_use", 7),
            event("message_stop"),
        ]
    )
    events: list[StreamEvent] = []

    async def emit(e: StreamEvent) -> None:
        events.append(e)

    await worker(body).generate(REQUEST, emit)
    assert events[:4] == [
        TextDelta("Hi"),
        ToolCallStart(0, "toolu_1", "f"),
        ToolCallDelta(0, '{"a"'),
        ToolCallDelta(0, ": 1}"),
    ]
    assert events[4] == Usage(5, 7)
    done = events[-1]
    assert isinstance(done, Done)
    assert done.finish_reason == "tool_calls"
    assert done.tool_calls == (ToolCall("toolu_1", "f", '{"a": 1}'),)


@pytest.mark.parametrize(
    ("reason", "mapped"),
    [("end_turn", "stop"), ("max_tokens", "length"), ("stop_sequence", "stop")],
)
async def test_stop_reasons_map_to_finish_reasons(reason: str, mapped: str) -> None:
    """Anthropic's stop_reason becomes the OpenAI-style finish reason."""
    body = START + TEXT_BLOCK + text(0, "x") + stop(reason) + event("message_stop")
    assert (await collect(worker(body), REQUEST)).finish_reason == mapped


async def test_non_streaming_message() -> None:
    """stream=False reads one message object."""
    answer = {
        "type": "message",
        "model": "claude",
        "content": [{"type": "text", "text": "hello"}],
        "stop_reason": "end_turn",
        "usage": {"input_tokens": 2, "output_tokens": 1},
    }
    completion = await collect(worker(json.dumps(answer).encode(), stream=False), REQUEST)
    assert (completion.text, completion.finish_reason) == ("hello", "stop")


async def test_529_is_overloaded() -> None:
    """Anthropic's 529 is Overloaded."""
    body = json.dumps(
        {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
    )
    with pytest.raises(Overloaded):
        await collect(worker(body.encode(), 529), REQUEST)


async def test_error_event_mid_stream() -> None:
    """An ``event: error`` in the stream raises its typed error."""
    error = event("error", error={"type": "overloaded_error", "message": "Overloaded"})
    with pytest.raises(Overloaded):
        await collect(worker(START + TEXT_BLOCK + text(0, "a") + error), REQUEST)


async def test_prompt_too_long_is_context_length() -> None:
    """Anthropic's 'prompt is too long' 400 is ContextLengthExceeded."""
    error = {
        "type": "invalid_request_error",
        "message": "prompt is too long: 210000 tokens > 200000 maximum",
    }
    body = json.dumps({"type": "error", "error": error}).encode()
    with pytest.raises(ContextLengthExceeded):
        await collect(worker(body, 400), REQUEST)


async def test_rate_limit_reset_header() -> None:
    """A 429 with only anthropic-ratelimit-*-reset gets retry_after from it."""
    body = json.dumps({"type": "error", "error": {"type": "rate_limit_error", "message": "slow"}})
    headers = {"anthropic-ratelimit-requests-reset": "2000-01-01T00:00:00Z"}
    with pytest.raises(RateLimited) as info:
        await collect(worker(body.encode(), 429, headers), REQUEST)
    assert info.value.retry_after == 0.0


async def test_stream_cut_before_stop_reason() -> None:
    """A stream that ends before message_delta's stop_reason is ProviderConnectionError."""
    with pytest.raises(ProviderConnectionError):
        await collect(worker(START + TEXT_BLOCK + text(0, "a")), REQUEST)


async def test_json_delta_for_a_text_block_is_malformed() -> None:
    """input_json_delta for a block that is not tool_use is MalformedResponse."""
    bad = event(
        "content_block_delta", index=0, delta={"type": "input_json_delta", "partial_json": "{"}
    )
    with pytest.raises(MalformedResponse):
        await collect(worker(START + TEXT_BLOCK + bad), REQUEST)


_json = st.recursive(
    st.none() | st.integers() | st.text(max_size=5),
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(
            st.sampled_from(
                ["type", "index", "delta", "content_block", "message", "usage", "text"]
            ),
            inner,
            max_size=4,
        )
    ),
    max_leaves=12,
)
_types = st.sampled_from(
    ["message_start", "content_block_start", "content_block_delta", "message_delta", "error"]
)


@settings(max_examples=60)
@given(st.lists(st.tuples(_types, st.dictionaries(st.just("delta"), _json)), max_size=5))
async def test_any_event_stream_ends_typed(events: list[tuple[str, dict[str, Any]]]) -> None:
    """Whatever events a provider streams, the worker completes or raises a ProviderError."""
    body = b"".join(event(name, **data) for name, data in events)
    try:
        await collect(worker(body), REQUEST)
    except ProviderError:
        pass
