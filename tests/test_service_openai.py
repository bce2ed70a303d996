"""The service against the official OpenAI SDK, as a real client of a real server."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import openai
import pytest
from service_helpers import RaisingWorker, make_config, running_service

from trio_orchestrator.config.secret import Secret
from trio_orchestrator.config.service import ApiKeyConfig
from trio_orchestrator.errors import RateLimited

# The SDK's HTTP stack (httpx2, httpcore2) leaves async generators of a streamed response to
# the garbage collector (trio warns); that is the client's doing, not the service's.
pytestmark = pytest.mark.filterwarnings(
    "ignore:Exception ignored in. <async_generator object:pytest.PytestUnraisableExceptionWarning"
)

TOOL: Any = {
    "type": "function",
    "function": {
        "name": "lookup",
        "description": "Look something up.",
        "parameters": {"type": "object", "properties": {"input": {"type": "string"}}},
    },
}


@pytest.fixture
async def client() -> AsyncIterator[openai.AsyncOpenAI]:
    async with running_service() as url:
        sdk = openai.AsyncOpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
        yield sdk
        await sdk.close()


async def test_chat_completion_echoes_the_last_user_message(client: openai.AsyncOpenAI) -> None:
    """A non-streaming completion answers with the echo and its finish reason."""
    response = await client.chat.completions.create(
        model="echo", messages=[{"role": "user", "content": "hello there"}]
    )
    choice = response.choices[0]
    assert (choice.message.content, choice.finish_reason) == ("hello there", "stop")


async def test_chat_completion_reports_usage(client: openai.AsyncOpenAI) -> None:
    """A non-streaming completion carries the worker's token counts."""
    response = await client.chat.completions.create(
        model="echo", messages=[{"role": "user", "content": "one two three"}]
    )
    assert response.usage is not None
    usage = response.usage
    assert (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens) == (3, 3, 6)


async def test_streaming_chunks_add_up_to_the_answer(client: openai.AsyncOpenAI) -> None:
    """The streamed content deltas concatenate to the echo, and the last chunk says stop."""
    stream = await client.chat.completions.create(
        model="echo", messages=[{"role": "user", "content": "a b c d"}], stream=True
    )
    async with stream:
        chunks = [chunk async for chunk in stream]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "a b c d"
    assert chunks[-1].choices[0].finish_reason == "stop"


async def test_streaming_with_include_usage_ends_with_a_usage_chunk(
    client: openai.AsyncOpenAI,
) -> None:
    """With stream_options.include_usage, a final chunk with no choices carries usage."""
    stream = await client.chat.completions.create(
        model="echo",
        messages=[{"role": "user", "content": "x y"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    async with stream:
        chunks = [chunk async for chunk in stream]
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 2
    assert all(c.usage is None for c in chunks[:-1])


async def test_required_tool_choice_calls_the_first_tool(client: openai.AsyncOpenAI) -> None:
    """With tool_choice="required", the answer is a call of the first tool with the input."""
    response = await client.chat.completions.create(
        model="echo",
        messages=[{"role": "user", "content": "weather"}],
        tools=[TOOL],
        tool_choice="required",
    )
    choice = response.choices[0]
    assert choice.finish_reason == "tool_calls"
    calls: list[Any] = list(choice.message.tool_calls or [])
    assert [(c.function.name, json.loads(c.function.arguments)) for c in calls] == [
        ("lookup", {"input": "weather"})
    ]


async def test_streamed_tool_call_deltas_assemble_into_the_call(
    client: openai.AsyncOpenAI,
) -> None:
    """Streamed tool-call chunks carry the call's id and name, then its arguments."""
    stream = await client.chat.completions.create(
        model="echo",
        messages=[{"role": "user", "content": "weather"}],
        tools=[TOOL],
        tool_choice="required",
        stream=True,
    )
    name, arguments = "", ""
    async with stream:
        async for chunk in stream:
            for call in (chunk.choices[0].delta.tool_calls or []) if chunk.choices else []:
                assert call.function is not None
                name += call.function.name or ""
                arguments += call.function.arguments or ""
    assert (name, json.loads(arguments)) == ("lookup", {"input": "weather"})


async def test_a_tool_result_conversation_is_accepted(client: openai.AsyncOpenAI) -> None:
    """Assistant tool calls and tool results in the history are valid input."""
    response = await client.chat.completions.create(
        model="echo",
        messages=[
            {"role": "user", "content": "weather"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "c1",
                        "type": "function",
                        "function": {"name": "lookup", "arguments": "{}"},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
            {"role": "user", "content": "thanks"},
        ],
    )
    assert response.choices[0].message.content == "thanks"


async def test_models_lists_the_echo_model(client: openai.AsyncOpenAI) -> None:
    """GET /v1/models lists the worker's model."""
    page = await client.models.list()
    assert [m.id for m in page.data] == ["echo"]


async def test_unknown_model_is_not_found(client: openai.AsyncOpenAI) -> None:
    """A model the service does not serve raises the SDK's NotFoundError (404)."""
    with pytest.raises(openai.NotFoundError) as info:
        await client.chat.completions.create(
            model="gpt-nope", messages=[{"role": "user", "content": "hi"}]
        )
    assert info.value.code == "model_not_found"


async def test_wrong_api_key_is_an_authentication_error() -> None:
    """With keys configured, an unknown key raises the SDK's AuthenticationError (401)."""
    config = make_config(api_keys=(ApiKeyConfig("app", key=Secret("s3cret")),))
    async with running_service(config) as url:
        sdk = openai.AsyncOpenAI(base_url=url + "/v1", api_key="wrong", max_retries=0)
        with pytest.raises(openai.AuthenticationError):
            await sdk.models.list()
        await sdk.close()


async def test_right_api_key_is_accepted() -> None:
    """With keys configured, a configured key is let through."""
    config = make_config(api_keys=(ApiKeyConfig("app", key=Secret("s3cret")),))
    async with running_service(config) as url:
        sdk = openai.AsyncOpenAI(base_url=url + "/v1", api_key="s3cret", max_retries=0)
        page = await sdk.models.list()
        await sdk.close()
    assert [m.id for m in page.data] == ["echo"]


async def test_upstream_rate_limit_is_a_rate_limit_error_with_retry_after() -> None:
    """A worker's RateLimited raises the SDK's RateLimitError, with Retry-After rounded up."""
    worker = RaisingWorker(RateLimited("slow down", provider="fake", retry_after=6.2))
    async with running_service(worker=worker) as url:
        sdk = openai.AsyncOpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
        with pytest.raises(openai.RateLimitError) as info:
            await sdk.chat.completions.create(
                model="echo", messages=[{"role": "user", "content": "hi"}]
            )
        await sdk.close()
    assert info.value.response.headers["retry-after"] == "7"
