"""The official ``openai`` SDK, through the gateway, to an AWS Bedrock (Converse) upstream:
what a Chat Completions client sends arrives in Converse's shape, or is refused with a 400
naming the member."""

from __future__ import annotations

import json
from typing import Any

import openai
import pydantic
import pytest

from trio_orchestrator.testing.fake_provider import Behaviour

from .conftest import Gateway

PNG = "iVBORw0KGgo="  # the PNG signature, base64
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}


@pytest.fixture(scope="module")
def upstream_kind() -> str:
    """Only the Bedrock upstream."""
    return "bedrock"


def ask(gw: Gateway, content: Any = "Hi", **options: Any) -> Any:
    """One chat completion through the gateway with the official SDK."""
    messages: list[Any] = [{"role": "user", "content": content}]
    return gw.openai().chat.completions.create(model="fake-model", messages=messages, **options)


def test_the_model_is_in_the_path_and_the_body_is_converse(gw: Gateway) -> None:
    """The request goes to /model/{id}/converse (the client takes its answer whole; a
    streaming one's goes to converse-stream: the next test) with system, messages and
    inferenceConfig, and nothing of Chat Completions' own names."""
    gw.script(Behaviour(text="ok"))
    gw.openai().chat.completions.create(
        model="anthropic.claude-3-haiku-20240307-v1:0",
        messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
        max_tokens=50,
        temperature=0.2,
        top_p=0.9,
        stop=["END"],
    )
    request = gw.last()
    assert request.path == "/model/anthropic.claude-3-haiku-20240307-v1:0/converse"
    assert request.body == {
        "messages": [{"role": "user", "content": [{"text": "Hi"}]}],
        "system": [{"text": "Be brief."}],
        "inferenceConfig": {
            "maxTokens": 50,
            "temperature": 0.2,
            "topP": 0.9,
            "stopSequences": ["END"],
        },
    }


def test_a_streaming_client_is_streamed_from_converse_stream(gw: Gateway) -> None:
    """A client that streams gets the text as Bedrock streams it: /converse-stream."""
    gw.script(Behaviour(text="ok"))
    chunks = gw.openai().chat.completions.create(
        model="anthropic.claude-3-haiku-20240307-v1:0",
        messages=[{"role": "user", "content": "Hi"}],
        stream=True,
    )
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "ok"
    assert gw.last().path == "/model/anthropic.claude-3-haiku-20240307-v1:0/converse-stream"


def test_an_image_part_arrives_as_image_bytes(gw: Gateway) -> None:
    """A data: URL image part reaches Converse as an image block with its format and bytes."""
    gw.script(Behaviour(text="a cat"))
    content = [
        {"type": "text", "text": "What is this?"},
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
    ]
    assert ask(gw, content).choices[0].message.content == "a cat"
    assert gw.last().body["messages"][0]["content"] == [
        {"text": "What is this?"},
        {"image": {"format": "png", "source": {"bytes": PNG}}},
    ]


def test_an_image_url_is_refused_naming_its_path(gw: Gateway) -> None:
    """Converse takes image bytes only: an https image URL is a 400 naming the part."""
    content = [{"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}]
    with pytest.raises(openai.BadRequestError) as info:
        ask(gw, content)
    assert info.value.param == "messages[0].content[0].image_url.url"
    assert gw.received() == []


class Person(pydantic.BaseModel):
    """The structured answer the client asks for."""

    name: str
    age: int


def test_a_json_schema_arrives_as_converse_structured_output(gw: Gateway) -> None:
    """response_format json_schema → outputConfig.textFormat (the schema as a JSON string),
    and the SDK parses the answer."""
    gw.script(Behaviour(text='{"name": "Ada", "age": 36}'))
    answer = gw.openai().chat.completions.parse(
        model="fake-model", messages=[{"role": "user", "content": "Who?"}], response_format=Person
    )
    assert answer.choices[0].message.parsed == Person(name="Ada", age=36)
    text_format = gw.last().body["outputConfig"]["textFormat"]
    assert text_format["type"] == "json_schema"
    schema = text_format["structure"]["jsonSchema"]
    assert schema["name"] == "Person"
    assert json.loads(schema["schema"])["properties"].keys() == {"name", "age"}


def test_json_object_without_a_schema_is_refused(gw: Gateway) -> None:
    """Converse's structured output needs a schema: json_object is a 400."""
    with pytest.raises(openai.BadRequestError) as info:
        ask(gw, response_format={"type": "json_object"})
    assert info.value.param == "response_format"
    assert gw.received() == []


@pytest.mark.parametrize(
    ("choice", "expected"),
    [
        ("auto", {"auto": {}}),
        ("required", {"any": {}}),
        (
            {"type": "function", "function": {"name": "get_weather"}},
            {"tool": {"name": "get_weather"}},
        ),
    ],
)
def test_tools_and_tool_choice_arrive_as_tool_config(
    gw: Gateway, choice: Any, expected: Any
) -> None:
    """tools → toolConfig.tools[].toolSpec with inputSchema.json; tool_choice → toolChoice."""
    gw.script(Behaviour(text="", tool_calls=(("get_weather", '{"city": "Oslo"}'),)))
    answer = ask(gw, tools=[WEATHER], tool_choice=choice)
    (call,) = answer.choices[0].message.tool_calls
    assert (call.function.name, json.loads(call.function.arguments)) == (
        "get_weather",
        {"city": "Oslo"},
    )
    assert answer.choices[0].finish_reason == "tool_calls"
    config = gw.last().body["toolConfig"]
    function = WEATHER["function"]
    assert config["tools"] == [
        {
            "toolSpec": {
                "name": "get_weather",
                "description": function["description"],  # type: ignore[index]
                "inputSchema": {"json": function["parameters"]},  # type: ignore[index]
            }
        }
    ]
    assert config["toolChoice"] == expected


def test_tool_choice_none_sends_no_tools(gw: Gateway) -> None:
    """Converse has no "none": a model offered no tools calls none."""
    gw.script(Behaviour(text="ok"))
    ask(gw, tools=[WEATHER], tool_choice="none")
    assert "toolConfig" not in gw.last().body


@pytest.mark.parametrize(
    ("member", "value"),
    [
        ("logit_bias", {"50256": -100}),
        ("seed", 7),
        ("parallel_tool_calls", False),
        ("presence_penalty", 1.0),
    ],
)
def test_a_member_with_no_equivalent_is_a_400_naming_it(
    gw: Gateway, member: str, value: Any
) -> None:
    """A member Converse cannot carry is an openai.BadRequestError naming it; the upstream
    saw nothing."""
    options: dict[str, Any] = {member: value}
    if member == "parallel_tool_calls":
        options["tools"] = [WEATHER]
    with pytest.raises(openai.BadRequestError) as info:
        ask(gw, **options)
    assert info.value.status_code == 400
    assert info.value.param == member
    assert gw.received() == []


def test_bedrock_native_members_travel_by_their_names(gw: Gateway) -> None:
    """Converse's own members (guardrailConfig, additionalModelRequestFields) sent in
    extra_body arrive unchanged."""
    gw.script(Behaviour(text="ok"))
    guardrail = {"guardrailIdentifier": "gr-1", "guardrailVersion": "1"}
    ask(gw, extra_body={"guardrailConfig": guardrail, "additionalModelRequestFields": {"top_k": 5}})
    body = gw.last().body
    assert body["guardrailConfig"] == guardrail
    assert body["additionalModelRequestFields"] == {"top_k": 5}


def test_a_cache_breakpoint_is_a_cache_point(gw: Gateway) -> None:
    """A content part's cache_control (how clients of Anthropic-fronting gateways mark
    a cache breakpoint) becomes Converse's cachePoint right after it, never dropped."""
    gw.script(Behaviour(text="ok"))
    content: Any = [
        {"type": "text", "text": "A long document.", "cache_control": {"type": "ephemeral"}},
        {"type": "text", "text": "What does it say?"},
    ]
    ask(gw, content)
    assert gw.last().body["messages"][0]["content"] == [
        {"text": "A long document."},
        {"cachePoint": {"type": "default"}},
        {"text": "What does it say?"},
    ]
