"""``POST /v1/responses`` (stateless) through the gateway, driven by the official ``openai``
SDK against both upstream kinds: the response object and every streamed event parse in the
SDK's typed models, the upstream receives the translation, function calls make the round
trip, and what needs stored state or a built-in tool is a 400 naming it."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import openai
import pytest

from trio_orchestrator.testing.fake_provider import Behaviour

from .conftest import GOOGLE_KINDS, Gateway, sampling


@pytest.fixture
def client(gw: Gateway) -> Iterator[openai.OpenAI]:
    """The official SDK's client for the gateway, closed after the test."""
    with gw.openai() as sdk:
        yield sdk


WEATHER_TOOL: Any = {
    "type": "function",
    "name": "get_weather",
    "description": "The weather in a city",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
        "additionalProperties": False,
    },
    "strict": True,
}


def _system(body: dict[str, Any]) -> str:
    """The system prompt the upstream received, in either wire format."""
    if isinstance(body.get("system"), list):  # Bedrock: text blocks
        return "\n\n".join(block["text"] for block in body["system"])
    if "system" in body:  # Anthropic
        return str(body["system"])
    if "contents" in body:  # Google
        return str(body["systemInstruction"]["parts"][0]["text"])
    return str(body["messages"][0]["content"]) if body["messages"][0]["role"] == "system" else ""


def test_a_response_parses_and_instructions_become_the_system_prompt(
    gw: Gateway, client: openai.OpenAI
) -> None:
    """Text input and instructions reach the upstream as a user message and the system
    prompt; the answer parses as a Response with an output_text message and usage."""
    gw.script(Behaviour(text="Hello there"))
    response = client.responses.create(
        model="fake-model", instructions="Be brief.", input="Hi", temperature=0.3
    )
    assert response.object == "response"
    assert response.id.startswith("resp_")
    assert response.status == "completed"
    assert response.output_text == "Hello there"
    message = response.output[0]
    assert message.type == "message"
    assert message.role == "assistant"
    assert response.instructions == "Be brief."
    assert response.temperature == 0.3
    assert response.usage is not None
    assert response.usage.total_tokens == response.usage.input_tokens + response.usage.output_tokens
    assert response.usage.input_tokens_details.cached_tokens == 0
    body = gw.last().body
    assert _system(body) == "Be brief."
    if gw.kind in GOOGLE_KINDS:
        assert body["contents"][-1]["role"] == "user"
        assert body["generationConfig"]["temperature"] == 0.3
        return
    assert body["messages"][-1]["role"] == "user"
    assert sampling(gw.kind, body, "temperature") == 0.3


def test_a_streamed_response_sends_the_documented_events_in_order(
    gw: Gateway, client: openai.OpenAI
) -> None:
    """The SDK's stream helper accumulates every event (it checks their order and indices)
    and the events are the documented ones, numbered in sequence."""
    gw.script(Behaviour(text="one two three"))
    with client.responses.stream(model="fake-model", input="Count") as stream:
        events = list(stream)
        final = stream.get_final_response()
    kinds = [e.type for e in events]
    assert kinds == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        *["response.output_text.delta"] * kinds.count("response.output_text.delta"),
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert kinds.count("response.output_text.delta") >= 2
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert final.output_text == "one two three"
    assert final.status == "completed"
    assert final.usage is not None


def test_create_with_stream_true_yields_typed_events(gw: Gateway, client: openai.OpenAI) -> None:
    """responses.create(stream=True) yields the SDK's typed event models."""
    gw.script(Behaviour(text="Hi there"))
    events = list(client.responses.create(model="fake-model", input="Hi", stream=True))
    assert isinstance(events[0], openai.types.responses.ResponseCreatedEvent)
    assert isinstance(events[-1], openai.types.responses.ResponseCompletedEvent)
    deltas = [e for e in events if isinstance(e, openai.types.responses.ResponseTextDeltaEvent)]
    assert "".join(e.delta for e in deltas) == "Hi there"
    assert events[-1].response.output_text == "Hi there"


def test_function_tools_reach_the_upstream_and_calls_come_back(
    gw: Gateway, client: openai.OpenAI
) -> None:
    """A flat function tool reaches the upstream in its own format (strict kept for an
    OpenAI-compatible one); the model's call comes back as a function_call item."""
    gw.script(Behaviour(text="", tool_calls=(("get_weather", '{"city":"Paris"}'),)))
    response = client.responses.create(
        model="fake-model", input="Weather in Paris?", tools=[WEATHER_TOOL], tool_choice="auto"
    )
    calls = [item for item in response.output if item.type == "function_call"]
    assert len(calls) == 1
    assert calls[0].name == "get_weather"
    assert json.loads(calls[0].arguments) == {"city": "Paris"}
    assert calls[0].call_id
    assert response.tools[0].type == "function"
    assert response.tools[0].name == "get_weather"
    if gw.kind == "bedrock":
        ((_, spec),) = gw.last().body["toolConfig"]["tools"][0].items()
        assert (spec["name"], spec["strict"]) == ("get_weather", True)
        assert spec["inputSchema"] == {"json": WEATHER_TOOL["parameters"]}
        return
    (tool,) = gw.last().body["tools"]
    if gw.kind == "openai":
        function = tool["function"]
        assert (tool["type"], function["name"]) == ("function", "get_weather")
        assert function["strict"] is True
        assert function["parameters"] == WEATHER_TOOL["parameters"]
    elif gw.kind == "anthropic":
        assert tool["name"] == "get_weather"
        assert tool["input_schema"] == WEATHER_TOOL["parameters"]
    else:  # additionalProperties is beyond Gemini's Schema subset: sent as JSON Schema
        (function,) = tool["functionDeclarations"]
        assert function["name"] == "get_weather"
        assert function["parametersJsonSchema"] == WEATHER_TOOL["parameters"]


def test_a_streamed_function_call_sends_its_argument_events(
    gw: Gateway, client: openai.OpenAI
) -> None:
    """A streamed call is a function_call item with arguments deltas, then .done carrying
    the whole arguments."""
    gw.script(Behaviour(text="", tool_calls=(("get_weather", '{"city":"Paris"}'),)))
    with client.responses.stream(
        model="fake-model", input="Weather?", tools=[WEATHER_TOOL]
    ) as stream:
        events = list(stream)
        final = stream.get_final_response()
    kinds = [e.type for e in events]
    assert "response.function_call_arguments.delta" in kinds
    done = [e for e in events if e.type == "response.function_call_arguments.done"]
    assert json.loads(done[0].arguments) == {"city": "Paris"}
    (call,) = [item for item in final.output if item.type == "function_call"]
    assert call.name == "get_weather"
    assert json.loads(call.arguments) == {"city": "Paris"}


def test_a_function_call_output_goes_back_to_the_upstream(
    gw: Gateway, client: openai.OpenAI
) -> None:
    """The round trip: the call item and its output sent back as input reach the upstream
    as the assistant's tool call and the tool's result."""
    gw.script(
        Behaviour(text="", tool_calls=(("get_weather", '{"city":"Paris"}'),)),
        Behaviour(text="It is sunny in Paris."),
    )
    first = client.responses.create(model="fake-model", input="Weather?", tools=[WEATHER_TOOL])
    (call,) = [item for item in first.output if item.type == "function_call"]
    conversation: list[Any] = [{"role": "user", "content": "Weather?"}, call.model_dump()]
    output = {"type": "function_call_output", "call_id": call.call_id, "output": "sunny"}
    conversation.append(output)
    second = client.responses.create(model="fake-model", input=conversation, tools=[WEATHER_TOOL])
    assert second.output_text == "It is sunny in Paris."
    if gw.kind in GOOGLE_KINDS:  # no ids on Google's side: the result names its function
        assistant, result = gw.last().body["contents"][-2:]
        call_part = {"functionCall": {"name": "get_weather", "args": {"city": "Paris"}}}
        assert (assistant["role"], assistant["parts"]) == ("model", [call_part])
        response = {"name": "get_weather", "response": {"content": "sunny"}}
        assert (result["role"], result["parts"]) == ("user", [{"functionResponse": response}])
        return
    messages = gw.last().body["messages"]
    if gw.kind == "openai":
        assistant, result = messages[-2], messages[-1]
        assert assistant["tool_calls"][0]["id"] == call.call_id
        assert assistant["tool_calls"][0]["function"]["name"] == "get_weather"
        assert (result["role"], result["tool_call_id"], result["content"]) == (
            "tool",
            call.call_id,
            "sunny",
        )
    elif gw.kind == "bedrock":
        assistant, result = messages[-2], messages[-1]
        (use,) = [b["toolUse"] for b in assistant["content"] if "toolUse" in b]
        assert (use["toolUseId"], use["input"]) == (call.call_id, {"city": "Paris"})
        (tool_result,) = [b["toolResult"] for b in result["content"]]
        assert (tool_result["toolUseId"], tool_result["content"]) == (
            call.call_id,
            [{"text": "sunny"}],
        )
    else:
        assistant, result = messages[-2], messages[-1]
        (use,) = [b for b in assistant["content"] if b["type"] == "tool_use"]
        assert (use["id"], use["input"]) == (call.call_id, {"city": "Paris"})
        assert result["content"][0]["tool_use_id"] == call.call_id


def test_json_schema_output_and_reasoning_effort_travel_as_chat_members(
    gw: Gateway, client: openai.OpenAI
) -> None:
    """text.format json_schema becomes Chat's response_format and reasoning.effort becomes
    reasoning_effort at an OpenAI-compatible upstream."""
    if gw.kind != "openai":
        pytest.skip("the Anthropic translation of these members is the Anthropic worker's")
    gw.script(Behaviour(text='{"answer": 4}'))
    schema = {"type": "object", "properties": {"answer": {"type": "integer"}}}
    text: Any = {"format": {"type": "json_schema", "name": "sum", "schema": schema, "strict": True}}
    response = client.responses.create(
        model="fake-model",
        input="2+2?",
        text=text,
        reasoning={"effort": "low"},
        max_output_tokens=50,
        parallel_tool_calls=False,
        metadata={"team": "a"},
    )
    assert json.loads(response.output_text) == {"answer": 4}
    body = gw.last().body
    assert body["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "sum", "schema": schema, "strict": True},
    }
    assert body["reasoning_effort"] == "low"
    assert body["max_completion_tokens"] == 50
    assert body["parallel_tool_calls"] is False
    assert body["metadata"] == {"team": "a"}


def test_an_input_image_becomes_an_image_url_part(gw: Gateway, client: openai.OpenAI) -> None:
    """An input_image content part reaches an OpenAI-compatible upstream as Chat's
    image_url part next to the text."""
    if gw.kind != "openai":
        pytest.skip("the Anthropic form is the next test")
    gw.script(Behaviour(text="A cat."))
    url = "data:image/png;base64,iVBORw0KGgo="
    client.responses.create(
        model="fake-model",
        input=[
            {
                "role": "user",
                "content": [
                    {"type": "input_text", "text": "What is this?"},
                    {"type": "input_image", "image_url": url, "detail": "low"},
                ],
            }
        ],
    )
    content = gw.last().body["messages"][-1]["content"]
    assert content == [
        {"type": "text", "text": "What is this?"},
        {"type": "image_url", "image_url": {"url": url, "detail": "low"}},
    ]


def test_an_input_image_reaches_an_anthropic_upstream_as_an_image_block(
    gw: Gateway, client: openai.OpenAI
) -> None:
    """An input_image part with a data: URL reaches an Anthropic upstream as a base64 image
    block, translated through Chat Completions."""
    if gw.kind != "anthropic":
        pytest.skip("the OpenAI-compatible form is the test above")
    gw.script(Behaviour(text="A cat."))
    image = {"type": "input_image", "image_url": "data:image/png;base64,iVBORw0KGgo="}
    items: Any = [
        {"role": "user", "content": [{"type": "input_text", "text": "What is this?"}, image]}
    ]
    client.responses.create(model="fake-model", input=items)
    content = gw.last().body["messages"][-1]["content"]
    source = {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}
    assert content == [
        {"type": "text", "text": "What is this?"},
        {"type": "image", "source": source},
    ]


def test_running_out_of_tokens_leaves_the_response_incomplete(
    gw: Gateway, client: openai.OpenAI
) -> None:
    """A length stop is status incomplete, incomplete_details.reason max_output_tokens."""
    gw.script(Behaviour(text="one two three four five six"))
    response = client.responses.create(model="fake-model", input="Go", max_output_tokens=2)
    assert response.status == "incomplete"
    assert response.incomplete_details is not None
    assert response.incomplete_details.reason == "max_output_tokens"


@pytest.mark.parametrize(
    ("members", "param"),
    [
        ({"previous_response_id": "resp_123"}, "previous_response_id"),
        ({"tools": [{"type": "web_search"}]}, "tools[0].type"),
        ({"input": [{"type": "item_reference", "id": "msg_1"}]}, "input[0].type"),
        ({"include": ["reasoning.encrypted_content"]}, "include"),
    ],
)
def test_what_needs_stored_state_or_a_built_in_tool_is_a_400(
    gw: Gateway, client: openai.OpenAI, members: dict[str, Any], param: str
) -> None:
    """previous_response_id (nothing is stored), built-in tools, item references and
    include: a 400 naming the member; the upstream is never called."""
    arguments = {"model": "fake-model", "input": "Hi"} | members
    with pytest.raises(openai.BadRequestError) as caught:
        client.responses.create(**arguments)
    assert isinstance(caught.value.body, dict)
    assert caught.value.body["param"] == param
    assert gw.received() == []


def test_an_error_after_the_first_event_ends_with_response_failed(
    gw: Gateway, client: openai.OpenAI
) -> None:
    """An upstream failure mid-stream ends the stream with a response.failed event carrying
    the error, after the text already sent."""
    gw.script(Behaviour(text="one two three", error_after=1))
    events = list(client.responses.create(model="fake-model", input="Hi", stream=True))
    assert events[-1].type == "response.failed"
    assert events[-1].response.status == "failed"
    assert events[-1].response.error is not None
    assert events[-1].response.error.message
    assert any(e.type == "response.output_text.delta" for e in events)


def test_an_upstream_429_before_the_first_event_is_a_rate_limit_error(
    gw: Gateway, client: openai.OpenAI
) -> None:
    """A streamed response whose upstream answers 429 raises openai.RateLimitError (last in
    the module: the gateway then rests its key for the wait the upstream asked for)."""
    gw.script(Behaviour(status=429, retry_after=3))
    with pytest.raises(openai.RateLimitError) as caught:
        client.responses.create(model="fake-model", input="Hi", stream=True)
    assert caught.value.status_code == 429
