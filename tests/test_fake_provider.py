"""The fake provider: faithful to the official SDKs, and its scripted faults."""

from __future__ import annotations

from typing import Any

import anthropic
import httpx
import openai
import pytest
import trio
import trio.testing

from trio_orchestrator.errors import (
    Overloaded,
    ProviderConnectionError,
    ProviderTimeout,
    ServerError,
)
from trio_orchestrator.testing.fake_provider import (
    Behaviour,
    FakeProvider,
    FaultMix,
    open_fake_provider,
)
from trio_orchestrator.types import GenerationParams, PromptRequest
from trio_orchestrator.workers import AnthropicWorker, OpenAIWorker, Timeouts, collect

TOOLS: Any = [
    {"type": "function", "function": {"name": n, "parameters": {"type": "object"}}}
    for n in ("f", "g")
]
REQUEST = PromptRequest(input="hi", params=GenerationParams(model="fake-model"))


def openai_stream(base_url: str, **kwargs: Any) -> tuple[str, Any, list[Any]]:
    with openai.OpenAI(base_url=base_url, api_key="sk-fake", max_retries=0) as client:
        stream = client.chat.completions.create(
            model="fake-model",
            messages=[{"role": "user", "content": "hi"}],
            stream=True,
            stream_options={"include_usage": True},
            **kwargs,
        )
        chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    return text, chunks[-1].usage, chunks


async def test_openai_sdk_reads_the_stream_and_usage() -> None:
    """The openai SDK streams the fake's text and reads the include_usage chunk."""
    async with open_fake_provider(Behaviour(text="Hello fake world")) as fake:
        text, usage, chunks = await trio.to_thread.run_sync(openai_stream, fake.openai_base_url)
    assert text == "Hello fake world"
    assert usage.completion_tokens == 3
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"


def openai_tool_stream(base_url: str) -> Any:
    client = openai.OpenAI(base_url=base_url, api_key="sk-fake", max_retries=0)
    with (
        client,
        client.chat.completions.stream(
            model="fake-model", messages=[{"role": "user", "content": "hi"}], tools=TOOLS
        ) as stream,
    ):
        return stream.get_final_completion()


async def test_openai_sdk_assembles_parallel_tool_calls() -> None:
    """The SDK's stream helper assembles the fake's interleaved tool calls by index."""
    calls = (("f", '{"city": "Paris"}'), ("g", '{"n": 12345}'))
    async with open_fake_provider(Behaviour(text="", tool_calls=calls)) as fake:
        final = await trio.to_thread.run_sync(openai_tool_stream, fake.openai_base_url)
    message = final.choices[0].message
    assert [(c.function.name, c.function.arguments) for c in message.tool_calls] == list(calls)
    assert final.choices[0].finish_reason == "tool_calls"


def openai_misc(base_url: str) -> tuple[Any, Any, Any]:
    with openai.OpenAI(base_url=base_url, api_key="sk-fake", max_retries=0) as client:
        answer = client.chat.completions.create(
            model="fake-model", messages=[{"role": "user", "content": "hi"}], max_tokens=2
        )
        models = client.models.list()
        vectors = client.embeddings.create(model="e", input=["a", "b"])
    return answer, models, vectors


async def test_openai_sdk_reads_answers_models_and_embeddings() -> None:
    """Non-streaming answers (max_tokens honoured), /v1/models and /v1/embeddings parse."""
    async with open_fake_provider(Behaviour(text="one two three")) as fake:
        answer, models, vectors = await trio.to_thread.run_sync(openai_misc, fake.openai_base_url)
    assert (answer.choices[0].message.content, answer.choices[0].finish_reason) == (
        "one two ",
        "length",
    )
    assert [m.id for m in models.data] == ["fake-model"]
    assert len(vectors.data) == 2


def anthropic_stream(base_url: str) -> Any:
    client = anthropic.Anthropic(base_url=base_url, api_key="k", max_retries=0)
    with (
        client,
        client.messages.stream(
            model="fake-model", max_tokens=100, messages=[{"role": "user", "content": "hi"}]
        ) as stream,
    ):
        return stream.get_final_message()


async def test_anthropic_sdk_reads_text_and_tool_use() -> None:
    """The anthropic SDK assembles the fake's text block, tool_use input and usage."""
    behaviour = Behaviour(text="Sure.", tool_calls=(("f", '{"x": [1, 2]}'),))
    async with open_fake_provider(behaviour) as fake:
        message = await trio.to_thread.run_sync(anthropic_stream, fake.base_url)
    assert message.content[0].text == "Sure."
    assert (message.content[1].name, message.content[1].input) == ("f", {"x": [1, 2]})
    assert message.stop_reason == "tool_use"
    assert message.usage.output_tokens == 2


def anthropic_call(base_url: str) -> Exception:
    with anthropic.Anthropic(base_url=base_url, api_key="k", max_retries=0) as client:
        try:
            client.messages.create(
                model="fake-model", max_tokens=10, messages=[{"role": "user", "content": "hi"}]
            )
        except anthropic.APIStatusError as exc:
            return exc
    raise AssertionError("expected an error")


async def test_anthropic_sdk_sees_scripted_529() -> None:
    """A scripted 529 reaches the SDK as an overloaded error with its Retry-After."""
    async with open_fake_provider(Behaviour(status=529, retry_after=4)) as fake:
        error = await trio.to_thread.run_sync(anthropic_call, fake.base_url)
    assert isinstance(error, anthropic.APIStatusError)
    assert error.status_code == 529
    assert error.response.headers["retry-after"] == "4"


async def test_scripted_behaviours_apply_in_order_then_default() -> None:
    """Queued behaviours answer the next requests one each; then per-model; then default."""
    async with open_fake_provider(Behaviour(text="default")) as fake, httpx.AsyncClient() as client:
        fake.script(Behaviour(text="first"), Behaviour(text="second"))
        fake.set_model("special", Behaviour(text="special"))
        w = OpenAIWorker(client, fake.openai_base_url)
        texts = [(await collect(w, REQUEST)).text for _ in range(3)]
        special = PromptRequest(input="x", params=GenerationParams(model="special"))
        texts.append((await collect(w, special)).text)
    assert texts == ["first", "second", "default", "special"]
    assert fake.statistics().requests == 4


async def test_slow_drip_parses_whole() -> None:
    """A stream sent a few bytes at a time still parses into the same answer."""
    fake_cm = open_fake_provider(Behaviour(text="drip drip drop", drip=3))
    async with fake_cm as fake, httpx.AsyncClient() as client:
        completion = await collect(AnthropicWorker(client, fake.base_url), REQUEST)
    assert completion.text == "drip drip drop"


async def test_mid_stream_disconnect() -> None:
    """disconnect_after drops the connection after that many tokens."""
    async with open_fake_provider(Behaviour(disconnect_after=2)) as fake, httpx.AsyncClient() as c:
        with pytest.raises(ProviderConnectionError):
            await collect(OpenAIWorker(c, fake.openai_base_url), REQUEST)


async def test_anthropic_version_header_is_required() -> None:
    """Like Anthropic, the fake refuses /v1/messages without anthropic-version."""
    async with open_fake_provider() as fake, httpx.AsyncClient() as client:
        response = await client.post(fake.base_url + "/v1/messages", json={"model": "m"})
    assert response.status_code == 400


async def test_started_with_nursery_start() -> None:
    """A FakeProvider can be started with nursery.start and records what it received."""
    async with trio.open_nursery() as nursery:
        fake: FakeProvider = await nursery.start(FakeProvider().serve)
        async with httpx.AsyncClient() as client:
            await collect(OpenAIWorker(client, fake.openai_base_url), REQUEST)
        nursery.cancel_scope.cancel()
    assert [r.path for r in fake.requests] == ["/v1/chat/completions"]
    assert fake.requests[0].body["model"] == "fake-model"


async def test_a_fake_that_does_not_record_still_counts() -> None:
    """With record=False the fake keeps no request log but still counts what it saw."""
    async with open_fake_provider(record=False) as fake, httpx.AsyncClient() as client:
        for _ in range(3):
            await collect(OpenAIWorker(client, fake.openai_base_url), REQUEST)
    assert fake.requests == []
    assert fake.statistics().requests == 3


async def test_hang_is_cut_by_the_first_token_timeout(mock_clock: trio.testing.MockClock) -> None:
    """A fake that never answers trips the worker's first-token timeout, not a hang."""
    mock_clock.autojump_threshold = 0.05  # real network: jump only once all is quiet
    async with open_fake_provider(Behaviour(hang=True)) as fake, httpx.AsyncClient() as c:
        w = OpenAIWorker(c, fake.openai_base_url, timeouts=Timeouts(first_token=30))
        with pytest.raises(ProviderTimeout, match="first token"):
            await collect(w, REQUEST)


async def test_error_object_mid_stream_in_both_formats() -> None:
    """error_after sends each format's mid-stream error object, typed by the workers."""
    async with open_fake_provider(Behaviour(error_after=2)) as fake, httpx.AsyncClient() as c:
        with pytest.raises(ServerError):
            await collect(OpenAIWorker(c, fake.openai_base_url), REQUEST)
        with pytest.raises(Overloaded):
            await collect(AnthropicWorker(c, fake.base_url), REQUEST)


async def test_omitted_done_still_completes() -> None:
    """Without [DONE] / message_stop but with a finish reason, both workers complete."""
    behaviour = Behaviour(text="a b", omit_done=True)
    async with open_fake_provider(behaviour) as fake, httpx.AsyncClient() as c:
        first = await collect(OpenAIWorker(c, fake.openai_base_url), REQUEST)
        second = await collect(AnthropicWorker(c, fake.base_url), REQUEST)
    assert (first.text, second.text) == ("a b", "a b")


async def test_a_fault_mix_fails_a_seeded_share_of_requests_the_same_way_each_time() -> None:
    """With a FaultMix the fake fails about its rate of requests, identically for one seed."""

    async def statuses(seed: int) -> tuple[list[int], dict[str, int]]:
        mix = FaultMix(0.5, ("500", "429"), seed, retry_after=3.0)
        async with open_fake_provider(faults=mix) as fake, httpx.AsyncClient() as client:
            url = fake.openai_base_url + "/chat/completions"
            body = {"model": "fake-model", "messages": [{"role": "user", "content": "hi"}]}
            seen = []
            for _ in range(40):
                response = await client.post(url, json=body)
                assert response.status_code != 429 or response.headers["retry-after"] == "3.0"
                seen.append(response.status_code)
            return seen, dict(fake.statistics().faults)

    first, faults = await statuses(7)
    assert first == (await statuses(7))[0]
    assert 5 <= sum(status != 200 for status in first) <= 35
    assert sum(faults.values()) == sum(status != 200 for status in first)
    assert set(faults) == {"500", "429"}
