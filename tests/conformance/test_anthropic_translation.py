"""The official ``openai`` SDK, through the gateway, to an Anthropic upstream: what a Chat
Completions client sends arrives translated, or is refused with a 400 naming the member."""

from __future__ import annotations

from typing import Any

import openai
import pydantic
import pytest

from trio_orchestrator.testing.fake_provider import Behaviour

from .conftest import Gateway

PNG = "iVBORw0KGgo="  # the PNG signature, base64


@pytest.fixture(scope="module")
def upstream_kind() -> str:
    """Only the Anthropic upstream: an OpenAI-compatible one receives every member as sent."""
    return "anthropic"


def ask(gw: Gateway, content: Any = "Hi", **options: Any) -> Any:
    """One chat completion through the gateway with the official SDK."""
    messages: list[Any] = [{"role": "user", "content": content}]
    return gw.openai().chat.completions.create(model="fake-model", messages=messages, **options)


def test_an_image_part_arrives_as_an_image_block(gw: Gateway) -> None:
    """A data: URL image part reaches Anthropic as a base64 image block."""
    gw.script(Behaviour(text="a cat"))
    content = [
        {"type": "text", "text": "What is this?"},
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
    ]
    answer = ask(gw, content)
    assert answer.choices[0].message.content == "a cat"
    assert gw.last().body["messages"][0]["content"] == [
        {"type": "text", "text": "What is this?"},
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}},
    ]


class Person(pydantic.BaseModel):
    """The structured answer the client asks for."""

    name: str
    age: int


def test_a_json_schema_arrives_as_structured_output(gw: Gateway) -> None:
    """response_format json_schema → output_config.format, and the SDK parses the answer."""
    gw.script(Behaviour(text='{"name": "Ada", "age": 36}'))
    answer = gw.openai().chat.completions.parse(
        model="fake-model",
        messages=[{"role": "user", "content": "Who?"}],
        response_format=Person,
    )
    assert answer.choices[0].message.parsed == Person(name="Ada", age=36)
    output = gw.last().body["output_config"]["format"]
    assert output["type"] == "json_schema"
    assert output["schema"]["properties"].keys() == {"name", "age"}
    assert "response_format" not in gw.last().body


def test_reasoning_effort_arrives_as_a_thinking_budget(gw: Gateway) -> None:
    """reasoning_effort → thinking with a budget, max_tokens above it."""
    ask(gw, reasoning_effort="low", max_completion_tokens=3000)
    body = gw.last().body
    assert body["thinking"] == {"type": "enabled", "budget_tokens": 2048}
    assert body["max_tokens"] == 3000
    assert "reasoning_effort" not in body


def test_user_arrives_as_metadata_user_id(gw: Gateway) -> None:
    """user → metadata.user_id; parallel_tool_calls false → disable_parallel_tool_use."""
    tool = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}
    ask(gw, user="u-1", tools=[tool], parallel_tool_calls=False)
    body = gw.last().body
    assert body["metadata"] == {"user_id": "u-1"}
    assert body["tool_choice"] == {"type": "auto", "disable_parallel_tool_use": True}


def test_a_member_with_no_equivalent_is_a_400_naming_it(gw: Gateway) -> None:
    """logit_bias → openai.BadRequestError, param logit_bias; the upstream saw nothing."""
    with pytest.raises(openai.BadRequestError) as info:
        ask(gw, logit_bias={"50256": -100})
    assert info.value.status_code == 400
    assert info.value.param == "logit_bias"
    assert info.value.code == "unsupported_parameter"
    assert gw.received() == []


def test_a_refused_content_part_is_named_by_its_path(gw: Gateway) -> None:
    """An audio part is refused with param naming messages[0].content[1]."""
    content = [
        {"type": "text", "text": "Listen"},
        {"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}},
    ]
    with pytest.raises(openai.BadRequestError) as info:
        ask(gw, content)
    assert info.value.param == "messages[0].content[1]"
    assert gw.received() == []


def test_a_streamed_request_is_refused_with_its_status(gw: Gateway) -> None:
    """Streaming too, the refusal comes before any event: a 400, not an in-stream error."""
    with pytest.raises(openai.BadRequestError) as info:
        list(ask(gw, stream=True, presence_penalty=1.0))
    assert info.value.param == "presence_penalty"
    assert gw.received() == []


def test_no_op_defaults_are_accepted(gw: Gateway) -> None:
    """n 1, logprobs false and presence_penalty 0 ask for nothing: answered, not sent."""
    gw.script(Behaviour(text="ok"))
    answer = ask(gw, n=1, logprobs=False, presence_penalty=0)
    assert answer.choices[0].message.content == "ok"
    assert {"n", "logprobs", "presence_penalty"}.isdisjoint(gw.last().body)
