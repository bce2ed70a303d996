"""Answers carry everything the upstream sent: usage details, logprobs, refusals, annotations,
system_fingerprint, service_tier, reasoning; and ``n`` choices, streamed or not.

Each test replays an answer recorded from the provider's documentation (``fixtures/``, see its
README) through the served gateway and reads it with the official ``openai`` SDK.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
from openai.types import CompletionUsage
from openai.types.chat import ChatCompletionMessageParam

from trio_orchestrator.testing.fake_provider import Behaviour

from .conftest import Gateway, single_provider, start_gateway

FIXTURES = Path(__file__).parent / "fixtures"
HELLO: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Hello!"}]


def recorded(name: str) -> Any:
    """A recorded answer from ``fixtures/``."""
    return json.loads((FIXTURES / name).read_text())


def _gateway(kind: str, *, stream: bool) -> Iterator[Gateway]:
    running = start_gateway(kind, single_provider(kind, stream=stream))
    try:
        yield running.gateway
    finally:
        running.stop()


@pytest.fixture(scope="module")
def openai_json() -> Iterator[Gateway]:
    """The gateway in front of an OpenAI-compatible upstream that it asks for JSON answers."""
    yield from _gateway("openai", stream=False)


@pytest.fixture(scope="module")
def openai_sse() -> Iterator[Gateway]:
    """The gateway in front of an OpenAI-compatible upstream that it asks to stream."""
    yield from _gateway("openai", stream=True)


@pytest.fixture(scope="module")
def anthropic_json() -> Iterator[Gateway]:
    """The gateway in front of an Anthropic upstream that it asks for JSON answers."""
    yield from _gateway("anthropic", stream=False)


@pytest.fixture(scope="module")
def anthropic_sse() -> Iterator[Gateway]:
    """The gateway in front of an Anthropic upstream that it asks to stream."""
    yield from _gateway("anthropic", stream=True)


@pytest.fixture(scope="module")
def bedrock_json() -> Iterator[Gateway]:
    """The gateway in front of a Bedrock upstream that it asks with Converse (JSON)."""
    yield from _gateway("bedrock", stream=False)


@pytest.fixture(scope="module")
def bedrock_sse() -> Iterator[Gateway]:
    """The gateway in front of a Bedrock upstream that it asks with ConverseStream."""
    yield from _gateway("bedrock", stream=True)


@pytest.fixture(params=["openai", "anthropic", "bedrock"])
def either(request: pytest.FixtureRequest) -> Gateway:
    """Each streaming gateway, its upstream's record cleared."""
    gateway: Gateway = request.getfixturevalue(f"{request.param}_sse")
    gateway.clear()
    return gateway


# ----------------------------------------------------------------- OpenAI upstream, JSON


def test_the_reference_answer_keeps_its_usage_details_and_service_tier(
    openai_json: Gateway,
) -> None:
    """The API reference's default answer reaches the client with every member it had."""
    openai_json.script(Behaviour(body=recorded("openai_chat_default.json")))
    answer = openai_json.openai().chat.completions.create(model="gpt-4.1", messages=HELLO)
    assert answer.service_tier == "default"
    message = answer.choices[0].message
    assert (message.content, message.refusal, message.annotations) == (
        "Hello! How can I assist you today?",
        None,
        [],
    )
    assert answer.usage is not None
    assert (
        answer.usage.model_dump(exclude_none=True) == recorded("openai_chat_default.json")["usage"]
    )


def test_cached_and_reasoning_tokens_and_annotations_reach_the_client(
    openai_json: Gateway,
) -> None:
    """prompt_tokens_details.cached_tokens, reasoning_tokens and url_citation annotations."""
    sent = recorded("openai_chat_search_cached.json")
    openai_json.script(Behaviour(body=sent))
    answer = openai_json.openai().chat.completions.create(model="gpt-4o", messages=HELLO)
    usage = answer.usage
    assert usage is not None
    assert usage.prompt_tokens_details is not None
    assert usage.prompt_tokens_details.cached_tokens == 1920
    assert usage.completion_tokens_details is not None
    assert usage.completion_tokens_details.reasoning_tokens == 192
    assert usage.model_dump(exclude_none=True) == sent["usage"]
    annotations = answer.choices[0].message.annotations
    assert annotations is not None
    assert annotations[0].url_citation.start_index == 764
    assert (answer.system_fingerprint, answer.service_tier) == ("fp_44709d6fcb", "default")


def test_logprobs_reach_the_client(openai_json: Gateway) -> None:
    """The reference's logprobs answer: every token's logprobs, as the upstream sent them."""
    sent = recorded("openai_chat_logprobs.json")
    openai_json.script(Behaviour(body=sent))
    raw = openai_json.openai().chat.completions.with_raw_response.create(
        model="gpt-4o", messages=HELLO, logprobs=True, top_logprobs=2
    )
    assert raw.http_response.json()["choices"][0]["logprobs"] == sent["choices"][0]["logprobs"]
    answer = raw.parse()
    logprobs = answer.choices[0].logprobs
    assert logprobs is not None
    assert logprobs.content is not None
    assert [t.token for t in logprobs.content] == [
        "Hello", "!", " How", " can", " I", " assist", " you", " today", "?",
    ]  # fmt: skip
    assert logprobs.content[2].top_logprobs[1].bytes is None
    assert answer.system_fingerprint is None


def test_a_refusal_reaches_the_client_with_null_content(openai_json: Gateway) -> None:
    """The Structured Outputs refusal: message.refusal set, content null, as sent."""
    openai_json.script(Behaviour(body=recorded("openai_chat_refusal.json")))
    answer = openai_json.openai().chat.completions.create(model="gpt-4o", messages=HELLO)
    message = answer.choices[0].message
    assert message.refusal == "I'm sorry, I cannot assist with that request."
    assert message.content is None
    assert answer.system_fingerprint == "fp_3407719c7f"


# ----------------------------------------------------------------- OpenAI upstream, streamed


def test_a_streamed_answer_keeps_logprobs_fingerprint_tier_and_usage_details(
    openai_sse: Gateway,
) -> None:
    """Each chunk carries the fingerprint and tier, each token its logprobs; the usage chunk
    its details; the SDK's own accumulator folds it into the whole answer."""
    events = recorded("openai_chat_stream.json")
    openai_sse.script(Behaviour(events=tuple(events)))
    client = openai_sse.openai()
    chunks = list(
        client.chat.completions.create(
            model="gpt-4o",
            messages=HELLO,
            stream=True,
            stream_options={"include_usage": True},
            logprobs=True,
            top_logprobs=2,
        )
    )
    assert all(c.system_fingerprint == "fp_44709d6fcb" for c in chunks[1:])
    assert all(c.service_tier == "default" for c in chunks[1:])
    tokens = [
        (c.choices[0].delta.content, [t.token for t in c.choices[0].logprobs.content or ()])
        for c in chunks
        if c.choices and c.choices[0].logprobs is not None
    ]
    assert tokens == [("Hello", ["Hello"]), ("!", ["!"])]
    usage = chunks[-1].usage
    assert usage is not None
    assert not chunks[-1].choices
    assert usage.model_dump(exclude_none=True) == events[-1]["usage"]

    openai_sse.script(Behaviour(events=tuple(events)))
    with client.chat.completions.stream(
        model="gpt-4o", messages=HELLO, logprobs=True, top_logprobs=2
    ) as stream:
        final = stream.get_final_completion()
    choice = final.choices[0]
    assert choice.message.content == "Hello!"
    assert choice.logprobs is not None
    assert choice.logprobs.content is not None
    assert [t.logprob for t in choice.logprobs.content] == [-0.31725305, -0.02380986]
    assert final.system_fingerprint == "fp_44709d6fcb"


def test_a_streamed_refusal_reaches_the_client(openai_sse: Gateway) -> None:
    """delta.refusal pieces stream through; the SDK folds them into message.refusal."""
    openai_sse.script(Behaviour(events=tuple(recorded("openai_chat_stream_refusal.json"))))
    with openai_sse.openai().chat.completions.stream(model="gpt-4o", messages=HELLO) as stream:
        final = stream.get_final_completion()
    assert final.choices[0].message.refusal == "I'm sorry, I cannot assist with that request."
    assert not final.choices[0].message.content


# ----------------------------------------------------------------- Anthropic upstream


def test_anthropic_cache_tokens_and_thinking_in_openai_terms(anthropic_json: Gateway) -> None:
    """Cache creation counts in prompt_tokens; the thinking block is reasoning_content."""
    anthropic_json.script(Behaviour(body=recorded("anthropic_message_thinking.json")))
    answer = anthropic_json.openai().chat.completions.create(model="claude", messages=HELLO)
    usage = answer.usage
    assert usage is not None
    assert (usage.prompt_tokens, usage.completion_tokens) == (21 + 188086, 393)
    assert usage.total_tokens == 21 + 188086 + 393
    message = answer.choices[0].message
    assert message.content == "Yes, there are infinitely many prime numbers such that..."
    extra = message.model_extra or {}
    assert extra["reasoning_content"] == (
        "To approach this, let's think about what we know about prime numbers..."
    )


def test_anthropic_cache_reads_are_cached_tokens_when_streamed(anthropic_sse: Gateway) -> None:
    """Streamed: cache reads are prompt_tokens_details.cached_tokens, thinking deltas are
    delta.reasoning_content chunks."""
    anthropic_sse.script(Behaviour(events=tuple(recorded("anthropic_stream_thinking.json"))))
    chunks = list(
        anthropic_sse.openai().chat.completions.create(
            model="claude", messages=HELLO, stream=True, stream_options={"include_usage": True}
        )
    )
    thoughts = [
        (c.choices[0].delta.model_extra or {}).get("reasoning_content") for c in chunks if c.choices
    ]
    assert "".join(t for t in thoughts if t) == (
        "Let me solve this step by step:\n\n1. First break down 27 * 453\n2. 453 = 400 + 50 + 3"
    )
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == (
        "27 * 453 = 12,231"
    )
    usage = chunks[-1].usage
    assert usage is not None
    assert usage.prompt_tokens == 21 + 188086
    assert usage.prompt_tokens_details is not None
    assert usage.prompt_tokens_details.cached_tokens == 188086


# ----------------------------------------------------------------- n


def _one_usage(gateway: Gateway) -> CompletionUsage:
    """The usage of one choice of the answers the n tests script (same prompt, same length)."""
    gateway.script(Behaviour(text="answer x"))
    answer = gateway.openai().chat.completions.create(model="fake-model", messages=HELLO)
    gateway.clear()
    assert answer.usage is not None
    return answer.usage


# ----------------------------------------------------------------- Bedrock upstream


def test_bedrock_cache_tokens_and_reasoning_in_openai_terms(bedrock_json: Gateway) -> None:
    """Converse's cache reads and writes count in prompt_tokens (reads as cached_tokens);
    the reasoningContent block is reasoning_content."""
    bedrock_json.script(Behaviour(body=recorded("bedrock_converse_reasoning.json")))
    answer = bedrock_json.openai().chat.completions.create(model="claude", messages=HELLO)
    usage = answer.usage
    assert usage is not None
    assert (usage.prompt_tokens, usage.completion_tokens) == (21 + 188086 + 21, 393)
    assert usage.prompt_tokens_details is not None
    assert usage.prompt_tokens_details.cached_tokens == 188086
    message = answer.choices[0].message
    assert message.content == "Yes, there are infinitely many prime numbers such that..."
    assert (message.model_extra or {})["reasoning_content"] == (
        "To approach this, let's think about what we know about prime numbers..."
    )
    assert answer.choices[0].finish_reason == "stop"


def test_a_bedrock_stream_gives_reasoning_text_and_a_tool_call(bedrock_sse: Gateway) -> None:
    """ConverseStream's reasoning deltas, text and streamed toolUse input reach the client
    as reasoning_content, content and one tool call; the cache reads as cached_tokens."""
    events = tuple(recorded("bedrock_converse_stream_tool_use.json"))
    bedrock_sse.script(Behaviour(events=events))
    chunks = list(
        bedrock_sse.openai().chat.completions.create(
            model="claude", messages=HELLO, stream=True, stream_options={"include_usage": True}
        )
    )
    deltas = [c.choices[0].delta for c in chunks if c.choices]
    thoughts = "".join((d.model_extra or {}).get("reasoning_content") or "" for d in deltas)
    assert thoughts == "The user wants the most popular song. I should call top_song."
    assert "".join(d.content or "" for d in deltas) == (
        "I'll look up the most popular song on WZPZ."
    )
    calls = [call for d in deltas for call in d.tool_calls or ()]
    assert calls[0].id == "tooluse_kZJMlvQmRJ6eAyJE5GIl7Q"
    assert calls[0].function is not None
    assert calls[0].function.name == "top_song"
    arguments = "".join(c.function.arguments or "" for c in calls if c.function)
    assert arguments == '{"sign": "WZPZ"}'
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == "tool_calls"
    usage = chunks[-1].usage
    assert usage is not None
    assert (usage.prompt_tokens, usage.completion_tokens) == (375 + 2000, 95)
    assert usage.prompt_tokens_details is not None
    assert usage.prompt_tokens_details.cached_tokens == 2000


def test_n_gives_n_choices(either: Gateway) -> None:
    """n=3: three upstream calls, each asking for one choice; three choices, usage summed."""
    one = _one_usage(either)
    either.script(*(Behaviour(text=f"answer {i}") for i in range(3)))
    answer = either.openai().chat.completions.create(model="fake-model", messages=HELLO, n=3)
    assert [c.index for c in answer.choices] == [0, 1, 2]
    assert sorted(c.message.content or "" for c in answer.choices) == [
        "answer 0",
        "answer 1",
        "answer 2",
    ]
    received = either.received()
    assert len(received) == 3
    assert all("n" not in r.body for r in received)
    assert answer.usage is not None
    assert (answer.usage.prompt_tokens, answer.usage.completion_tokens) == (
        3 * one.prompt_tokens,
        3 * one.completion_tokens,
    )


def test_n_streams_n_choices_with_one_done(either: Gateway) -> None:
    """Streamed, n=3: each choice's chunks carry its index; one usage chunk sums them."""
    one = _one_usage(either)
    either.script(*(Behaviour(text=f"answer {i}") for i in range(3)))
    chunks = list(
        either.openai().chat.completions.create(
            model="fake-model",
            messages=HELLO,
            n=3,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    texts: dict[int, str] = {}
    finished = []
    for chunk in chunks:
        for choice in chunk.choices:
            texts[choice.index] = texts.get(choice.index, "") + (choice.delta.content or "")
            if choice.finish_reason:
                finished.append(choice.index)
    assert sorted(texts.values()) == ["answer 0", "answer 1", "answer 2"]
    assert sorted(finished) == [0, 1, 2]
    assert len({c.id for c in chunks}) == 1
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.prompt_tokens == 3 * one.prompt_tokens


def test_n_beyond_the_bound_is_refused_naming_n(either: Gateway) -> None:
    """n=17 is a 400 naming n, and the upstream is not called."""
    with pytest.raises(openai.BadRequestError) as raised:
        either.openai().chat.completions.create(model="fake-model", messages=HELLO, n=17)
    assert raised.value.body is not None
    assert raised.value.body["param"] == "n"  # type: ignore[index]
    assert either.received() == []
