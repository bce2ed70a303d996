"""``POST /v1/completions`` through the gateway, driven by the official ``openai`` SDK against
both upstream kinds: answers and chunks parse, the upstream receives the translation, and
what cannot be served is a 400 naming it."""

from __future__ import annotations

from collections.abc import Iterator

import openai
import pytest

from trio_orchestrator.testing.fake_provider import Behaviour

from .conftest import GOOGLE_KINDS, Gateway, sampling


@pytest.fixture
def client(gw: Gateway) -> Iterator[openai.OpenAI]:
    """The official SDK's client for the gateway, closed after the test."""
    with gw.openai() as sdk:
        yield sdk


def _user_text(gw: Gateway) -> str:
    """The text of the last user message the upstream received, in any wire format."""
    if gw.kind in GOOGLE_KINDS:
        return "".join(part["text"] for part in gw.last().body["contents"][-1]["parts"])
    content = gw.last().body["messages"][-1]["content"]
    if isinstance(content, str):
        return content
    # Anthropic's blocks say their type; Bedrock's text block is {"text": ...}.
    return "".join(block["text"] for block in content if block.get("type", "text") == "text")


def test_a_text_completion_parses_and_reaches_the_upstream_as_a_prompt(
    gw: Gateway, client: openai.OpenAI
) -> None:
    """The prompt reaches the upstream as the user's message, with the reference's default
    max_tokens of 16, and the answer parses as a text_completion."""
    gw.script(Behaviour(text="Paris is the capital."))
    answer = client.completions.create(model="fake-model", prompt="The capital of France:")
    assert answer.object == "text_completion"
    assert answer.id.startswith("cmpl-")
    assert answer.choices[0].text == "Paris is the capital."
    assert answer.choices[0].finish_reason == "stop"
    assert answer.usage is not None
    assert answer.usage.total_tokens == answer.usage.prompt_tokens + answer.usage.completion_tokens
    assert _user_text(gw) == "The capital of France:"
    assert sampling(gw.kind, gw.last().body, "max_tokens") == 16


def test_sampling_members_reach_the_upstream(gw: Gateway, client: openai.OpenAI) -> None:
    """max_tokens, temperature, top_p and stop travel, translated for the upstream's format."""
    gw.script(Behaviour(text="ok"))
    client.completions.create(
        model="fake-model",
        prompt=["Count:"],
        max_tokens=5,
        temperature=0.5,
        top_p=0.9,
        stop=["\n"],
    )
    body = gw.last().body
    members = ("max_tokens", "temperature", "top_p", "stop_sequences")
    assert [sampling(gw.kind, body, name) for name in members] == [5, 0.5, 0.9, ["\n"]]


def test_a_streamed_text_completion_parses_chunk_by_chunk(
    gw: Gateway, client: openai.OpenAI
) -> None:
    """Streamed text_completion chunks parse in the SDK, join to the answer, and end with the
    usage chunk when include_usage is asked for."""
    gw.script(Behaviour(text="one two three"))
    chunks = list(
        client.completions.create(
            model="fake-model",
            prompt="Say three words",
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    assert text == "one two three"
    assert all(c.object == "text_completion" for c in chunks)
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == "stop"
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens > 0


def test_echo_puts_the_prompt_before_the_answer(gw: Gateway, client: openai.OpenAI) -> None:
    """echo: true answers with the prompt followed by the completion, streamed or not."""
    gw.script(Behaviour(text=" world"), Behaviour(text=" world"))
    answer = client.completions.create(model="fake-model", prompt="Hello", echo=True)
    assert answer.choices[0].text == "Hello world"
    chunks = client.completions.create(model="fake-model", prompt="Hello", echo=True, stream=True)
    assert "".join(c.choices[0].text for c in chunks if c.choices) == "Hello world"


def test_unknown_members_travel_to_an_openai_compatible_upstream(
    gw: Gateway, client: openai.OpenAI
) -> None:
    """A member the gateway does not know (a vLLM option) reaches an OpenAI-compatible
    upstream as sent."""
    if gw.kind != "openai":
        pytest.skip("unknown members travel to OpenAI-compatible upstreams")
    gw.script(Behaviour(text="ok"))
    client.completions.create(
        model="fake-model", prompt="Hi", user="u-1", extra_body={"repetition_penalty": 1.1}
    )
    body = gw.last().body
    assert body["repetition_penalty"] == 1.1
    assert body["user"] == "u-1"


@pytest.mark.parametrize(
    ("members", "param"),
    [
        ({"n": 2}, "n"),
        ({"best_of": 3}, "best_of"),
        ({"suffix": "the end"}, "suffix"),
        ({"logprobs": 2}, "logprobs"),
        ({"prompt": ["one", "two"]}, "prompt"),
        ({"prompt": [1, 2, 3]}, "prompt"),
    ],
)
def test_what_cannot_be_served_is_a_400_naming_it(
    gw: Gateway, client: openai.OpenAI, members: dict[str, object], param: str
) -> None:
    """Several prompts, token ids, suffix, legacy logprobs, n/best_of > 1: a 400 naming the
    member, and the upstream is never called."""
    arguments = {"model": "fake-model", "prompt": "Hi"} | members
    with pytest.raises(openai.BadRequestError) as caught:
        client.completions.create(**arguments)  # type: ignore[call-overload]
    assert caught.value.status_code == 400
    assert isinstance(caught.value.body, dict)
    assert caught.value.body["param"] == param
    assert gw.received() == []


def test_an_upstream_429_before_the_first_token_is_a_rate_limit_error(
    gw: Gateway, client: openai.OpenAI
) -> None:
    """A streamed completion whose upstream answers 429 raises openai.RateLimitError (the
    real status, not a 200 with an error inside)."""
    gw.script(Behaviour(status=429, retry_after=3))
    with pytest.raises(openai.RateLimitError) as caught:
        client.completions.create(model="fake-model", prompt="Hi", stream=True)
    assert caught.value.status_code == 429
