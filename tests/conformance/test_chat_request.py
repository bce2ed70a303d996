"""Chat Completions requests, as the official ``openai`` SDK sends them, through the gateway.

Against an OpenAI-compatible upstream, every documented member (and any unknown one) reaches
the upstream exactly as the client sent it; against either upstream, a member outside its
documented type or range is a 400 in OpenAI's shape naming the member's path, and the
upstream is never called.
"""

from __future__ import annotations

import copy
from typing import Any

import openai
import pytest

from trio_orchestrator.service.chat import CHAT_MEMBERS
from trio_orchestrator.testing.fake_provider import Behaviour

from .conftest import Gateway

HI = [{"role": "user", "content": "Hi"}]
IMAGE = "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk"
SCHEMA = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
    "required": ["name", "age"],
    "additionalProperties": False,
}
FUNCTION = {"name": "lookup", "description": "Look a word up", "parameters": SCHEMA}

#: One documented value of each member (a test checks every member of CHAT_MEMBERS has one).
MEMBER_EXAMPLES: dict[str, Any] = {
    "model": "fake-model",
    "messages": [
        {"role": "developer", "content": "Answer in French.", "name": "rules"},
        {"role": "system", "content": [{"type": "text", "text": "Be brief."}]},
        {"role": "user", "content": "What is 2+2?", "name": "ada"},
        {
            "role": "assistant",
            "content": None,
            "refusal": None,
            "tool_calls": [
                {"id": "call_1", "type": "function", "function": FUNCTION | {"arguments": "{}"}}
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": [{"type": "text", "text": "4"}]},
        {"role": "assistant", "content": [{"type": "refusal", "refusal": "No."}]},
    ],
    "audio": {"format": "wav", "voice": "alloy"},
    "frequency_penalty": -1.5,
    "function_call": {"name": "lookup"},
    "functions": [FUNCTION],
    "logit_bias": {"50256": -100, "1234": 7},
    "logprobs": True,
    "max_completion_tokens": 64,
    "max_tokens": 32,
    "metadata": {"team": "search", "run": "7"},
    "modalities": ["text", "audio"],
    "moderation": {"model": "omni-moderation-latest"},
    "n": 1,
    "parallel_tool_calls": False,
    "prediction": {"type": "content", "content": "The answer is 4."},
    "presence_penalty": 0.5,
    "prompt_cache_key": "user-42",
    "prompt_cache_options": {"mode": "implicit", "ttl": "30m"},
    "prompt_cache_retention": "24h",
    "reasoning_effort": "minimal",
    "response_format": {
        "type": "json_schema",
        "json_schema": {"name": "person", "schema": SCHEMA, "strict": True, "description": "p"},
    },
    "safety_identifier": "hash-of-user",
    "seed": -9223372036854775808,
    "service_tier": "flex",
    "stop": ["\n\n", "END"],
    "store": False,
    "stream": False,
    "stream_options": {"include_usage": True},
    "temperature": 0.3,
    "tool_choice": {
        "type": "allowed_tools",
        "allowed_tools": {
            "mode": "required",
            "tools": [{"type": "function", "function": {"name": "lookup"}}],
        },
    },
    "tools": [
        {"type": "function", "function": FUNCTION | {"strict": True}},
        {"type": "custom", "custom": {"name": "sql", "format": {"type": "text"}}},
    ],
    "top_logprobs": 20,
    "top_p": 0.9,
    "user": "user-42",
    "verbosity": "low",
    "web_search_options": {
        "search_context_size": "high",
        "user_location": {"type": "approximate", "approximate": {"country": "FR"}},
    },
}

#: The members that are the gateway's own business with its client, never forwarded.
TRANSPORT = ("stream", "stream_options")


def openai_only(gw: Gateway) -> None:
    """Forwarding is asserted against an OpenAI-compatible upstream only (another upstream
    translates; that is not this module's business)."""
    if gw.kind != "openai":
        pytest.skip("exact forwarding applies to OpenAI-compatible upstreams")


def forwarded(gw: Gateway) -> dict[str, Any]:
    """The body the upstream received, less the documented ``stream`` rewrite (checked)."""
    body: dict[str, Any] = dict(gw.last().body)
    if body.pop("stream", None) is True:  # the gateway streams from its upstream
        assert body.pop("stream_options") == {"include_usage": True}
    assert "stream_options" not in body
    return body


def sent(**members: Any) -> dict[str, Any]:
    """What a client sends, less the members the gateway keeps to itself."""
    return {k: v for k, v in members.items() if k not in TRANSPORT}


def create(gw: Gateway, body: dict[str, Any]) -> Any:
    """``client.chat.completions.create(**body)`` with the official SDK, through the gateway."""
    return gw.openai().chat.completions.create(**body)


def forwards(gw: Gateway, body: dict[str, Any]) -> None:
    """Send ``body``: the upstream gets it as sent (members named as it names them), or, if
    its preset refuses a member, the client gets a 400 naming it and the upstream nothing."""
    refused = gw.refused(body)
    if refused is None:
        create(gw, body)
        assert forwarded(gw) == gw.as_received(sent(**body))
        return
    with pytest.raises(openai.BadRequestError) as caught:
        create(gw, body)
    assert (caught.value.code, caught.value.param) == ("unsupported_parameter", refused)
    assert gw.received() == []


def test_every_member_the_gateway_checks_has_an_example() -> None:
    """A member added to the parser must be added to this module's examples (and tested)."""
    assert set(MEMBER_EXAMPLES) == set(CHAT_MEMBERS)


def test_every_documented_member_reaches_the_upstream_as_sent(gw: Gateway) -> None:
    """All documented members at once: the upstream gets exactly the client's body."""
    openai_only(gw)
    forwards(gw, copy.deepcopy(MEMBER_EXAMPLES))


@pytest.mark.parametrize("member", sorted(set(MEMBER_EXAMPLES) - {"model", "messages"}))
def test_each_member_reaches_the_upstream_as_sent(gw: Gateway, member: str) -> None:
    """Each documented member on its own reaches an OpenAI-compatible upstream unchanged."""
    openai_only(gw)
    body = {"model": "fake-model", "messages": HI, member: MEMBER_EXAMPLES[member]}
    if member == "top_logprobs":
        body["logprobs"] = True
    forwards(gw, body)


def test_provider_options_in_extra_body_reach_the_upstream(gw: Gateway) -> None:
    """vLLM-style options sent with the SDK's ``extra_body`` travel to the upstream."""
    openai_only(gw)
    extra = {"top_k": 5, "repetition_penalty": 1.1, "chat_template_kwargs": {"think": False}}
    create(gw, {"model": "fake-model", "messages": HI, "extra_body": extra})
    assert forwarded(gw) == {"model": "fake-model", "messages": HI, **extra}


def test_images_audio_and_files_reach_the_upstream_unchanged(gw: Gateway) -> None:
    """Content parts other than text are accepted and sent as the client sent them."""
    openai_only(gw)
    content = [
        {"type": "text", "text": "Compare these."},
        {"type": "image_url", "image_url": {"url": IMAGE, "detail": "low"}},
        {"type": "input_audio", "input_audio": {"data": "UklGRg==", "format": "wav"}},
        {"type": "file", "file": {"filename": "a.pdf", "file_data": "data:application/pdf;x"}},
        {"type": "file", "file": {"file_id": "file-abc"}},
    ]
    messages = [{"role": "user", "content": content}]
    create(gw, {"model": "fake-model", "messages": messages})
    assert forwarded(gw)["messages"] == messages


def test_a_streamed_request_is_forwarded_alike(gw: Gateway) -> None:
    """``stream: true`` changes how the client is answered, not what the upstream is asked."""
    openai_only(gw)
    body = {"model": "fake-model", "messages": HI, "logprobs": True, "top_logprobs": 2}
    if gw.refused(body) is not None:  # a refused member is refused before any stream
        forwards(gw, body | {"stream": True})
        return
    chunks = create(gw, body | {"stream": True, "stream_options": {"include_usage": True}})
    assert list(chunks)
    assert forwarded(gw) == body


def message(**members: Any) -> dict[str, Any]:
    """A body's ``messages`` holding one message."""
    return {"messages": [members]}


def part(role: str = "user", **members: Any) -> dict[str, Any]:
    """A body's ``messages`` holding one message with one content part."""
    return message(role=role, content=[members])


JSON_SCHEMA = {"type": "json_schema"}
ALLOWED = {"type": "allowed_tools", "allowed_tools": {"mode": "x", "tools": []}}
EXACT = {"type": "exact"}
PART = "messages[0].content[0]"
CALL = {"id": "c", "type": "function", "function": {"name": "f"}}

#: Bodies outside the documented types and ranges: (members added to a valid body, param).
INVALID = [
    ({"response_format": {"type": "bogus"}}, "response_format.type"),
    ({"response_format": JSON_SCHEMA}, "response_format.json_schema"),
    ({"response_format": JSON_SCHEMA | {"json_schema": {}}}, "response_format.json_schema.name"),
    ({"top_logprobs": 3}, "top_logprobs"),
    ({"top_logprobs": 21, "logprobs": True}, "top_logprobs"),
    ({"logprobs": "yes"}, "logprobs"),
    ({"temperature": 2.5}, "temperature"),
    ({"top_p": -0.1}, "top_p"),
    ({"frequency_penalty": 3}, "frequency_penalty"),
    ({"presence_penalty": -2.5}, "presence_penalty"),
    ({"logit_bias": {"50256": 101}}, "logit_bias.50256"),
    ({"metadata": {str(i): "v" for i in range(17)}}, "metadata"),
    ({"metadata": {"k": 1}}, "metadata.k"),
    ({"n": 0}, "n"),
    ({"n": 1.5}, "n"),
    ({"max_tokens": 0}, "max_tokens"),
    ({"max_completion_tokens": "10"}, "max_completion_tokens"),
    ({"seed": 1 << 63}, "seed"),
    ({"modalities": ["video"]}, "modalities[0]"),
    ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
    ({"parallel_tool_calls": "no"}, "parallel_tool_calls"),
    ({"prediction": {"type": "diff", "content": "x"}}, "prediction.type"),
    ({"audio": {"format": "wav"}}, "audio.voice"),
    ({"tools": [{"type": "browser"}]}, "tools[0].type"),
    ({"tools": [{"type": "function", "function": {}}]}, "tools[0].function.name"),
    ({"tools": [{"type": "custom", "custom": {}}]}, "tools[0].custom.name"),
    ({"tool_choice": "sometimes"}, "tool_choice"),
    ({"tool_choice": {"type": "function"}}, "tool_choice.function"),
    ({"tool_choice": ALLOWED}, "tool_choice.allowed_tools.mode"),
    ({"function_call": "required"}, "function_call"),
    ({"web_search_options": {"user_location": EXACT}}, "web_search_options.user_location.type"),
    ({"user": 42}, "user"),
    ({"safety_identifier": "x" * 129}, "safety_identifier"),
    ({"stream_options": {"include_usage": "yes"}}, "stream_options.include_usage"),
    (message(role="user"), "messages[0].content"),
    (message(role="system", content=None), "messages[0].content"),
    (message(role="developer", content=[]), "messages[0].content"),
    (message(role="narrator", content="x"), "messages[0].role"),
    (message(role="user", content=["hello"]), "messages[0].content[0]"),
    (part(type="video"), "messages[0].content[0].type"),
    (part("system", type="image_url", image_url={"url": "u"}), "messages[0].content[0].type"),
    (part(type="image_url"), "messages[0].content[0].image_url"),
    (part(type="input_audio", input_audio={"data": "x"}), PART + ".input_audio.format"),
    (message(role="tool", content="4"), "messages[0].tool_call_id"),
    (message(role="assistant", tool_calls=[CALL]), "messages[0].tool_calls[0].function.arguments"),
    (message(role="function", content="4"), "messages[0].name"),
]  # fmt: skip


@pytest.mark.parametrize(("members", "param"), INVALID, ids=[p for _, p in INVALID])
def test_a_member_outside_its_documented_type_is_a_400_naming_it(
    gw: Gateway, members: dict[str, Any], param: str
) -> None:
    """The SDK raises BadRequestError with the member's path as ``param``; no upstream call."""
    body = {"model": "fake-model", "messages": HI} | members
    with pytest.raises(openai.BadRequestError) as caught:
        create(gw, body)
    error = caught.value.body
    assert isinstance(error, dict)
    assert error["param"] == param, error
    assert error["type"] == "invalid_request_error"
    assert caught.value.status_code == 400
    assert gw.received() == []


def test_a_content_part_of_an_unknown_type_is_described_by_its_type(gw: Gateway) -> None:
    """The error for a part ``{"type": "video"}`` quotes the string "video", not "an object"."""
    body = {"model": "fake-model", "messages": [{"role": "user", "content": [{"type": "video"}]}]}
    with pytest.raises(openai.BadRequestError) as caught:
        create(gw, body)
    assert "got the string 'video'" in caught.value.message
    assert '"image_url"' in caught.value.message


def test_the_refused_value_is_quoted_in_the_message(gw: Gateway) -> None:
    """The message names the member, the accepted values, and the value that was sent."""
    body = {"model": "fake-model", "messages": HI, "response_format": {"type": "bogus"}}
    with pytest.raises(openai.BadRequestError) as caught:
        create(gw, body)
    message = caught.value.message
    assert "response_format.type" in message
    assert '"json_schema"' in message
    assert "'bogus'" in message


def test_a_developer_message_is_answered_on_either_upstream(gw: Gateway) -> None:
    """A developer message is accepted (read as system) whatever the upstream speaks."""
    gw.script(Behaviour(text="Bonjour"))
    messages = [{"role": "developer", "content": "Answer in French."}, *HI]
    answer = create(gw, {"model": "fake-model", "messages": messages})
    assert answer.choices[0].message.content == "Bonjour"
