"""What ``service/chat.py`` reads from a Chat Completions body and writes back, member by
member: the behaviour the mutation session (scripts/mutation.py) found unpinned."""

from __future__ import annotations

import json
import time
from typing import Any

import attrs
import pytest

from trio_orchestrator.events import (
    Completion,
    Done,
    Passthrough,
    TextDelta,
    ToolCallDelta,
    ToolCallStart,
    Usage,
)
from trio_orchestrator.service import chat
from trio_orchestrator.service.chat import (
    ChunkWriter,
    completion_body,
    completions_body,
    messages_of,
    parse_chat_request,
    stop_of,
    total_usage,
    usage_body,
)
from trio_orchestrator.service.errors import ApiError
from trio_orchestrator.service.validate import Fields
from trio_orchestrator.types import GenerationParams, Message, Priority, ToolCall

USER = {"role": "user", "content": "hi"}
FUNCTION = {"name": "lookup", "description": "Look up.", "parameters": {"type": "object"}}


def parse(members: dict[str, Any], models: tuple[str, ...] = (), **meta: str) -> chat.ChatRequest:
    """Parse a body of ``model``, ``messages`` and ``members``."""
    body = {"model": "echo", "messages": [USER]} | members
    return parse_chat_request(Fields(body), models, meta)


def params_of(members: dict[str, Any]) -> dict[str, Any]:
    """The generation parameters of such a body, as a dict (they compare by identity)."""
    params: GenerationParams = parse(members).prompt.params
    values = attrs.asdict(params, recurse=False)
    values["tools"] = [attrs.asdict(t) for t in params.tools]
    return values


def read(*messages: Any) -> tuple[Message, ...]:
    """The typed messages of a body with ``messages``."""
    return messages_of(Fields({"messages": list(messages)}))


# ----------------------------------------------------------------- requests


def test_a_model_not_served_is_a_404_naming_it() -> None:
    """With models listed, another one is a 404 model_not_found; without, any model goes."""
    with pytest.raises(ApiError) as caught:
        parse({"model": "gpt-x"}, models=("echo", "other"))
    error = caught.value
    assert (error.status, error.code, error.param) == (404, "model_not_found", "model")
    assert "'gpt-x'" in str(error.message)
    assert "GET /v1/models" in str(error.message)
    assert parse({"model": "other"}, models=("echo", "other")).prompt.params.model == "other"
    assert parse({"model": "gpt-x"}).prompt.params.model == "gpt-x"


def test_the_user_member_joins_the_labels_without_changing_the_callers() -> None:
    """``user`` is added to the request's labels; the caller's mapping stays as it was."""
    meta = {"key": "k1"}
    request = parse_chat_request(
        Fields({"model": "echo", "messages": [USER], "user": "u7"}), (), meta
    )
    assert request.prompt.meta == {"key": "k1", "user": "u7"}
    assert meta == {"key": "k1"}
    assert parse({"user": ""}, key="k1").prompt.meta == {"key": "k1"}
    assert parse({}, key="k1").prompt.meta == {"key": "k1"}


@pytest.mark.parametrize(
    ("members", "stream", "usage"),
    [
        ({}, False, False),
        ({"stream": False}, False, False),
        ({"stream": True}, True, False),
        ({"stream": True, "stream_options": None}, True, False),
        ({"stream": True, "stream_options": {}}, True, False),
        ({"stream": True, "stream_options": {"include_usage": False}}, True, False),
        ({"stream": True, "stream_options": {"include_usage": True}}, True, True),
    ],
)
def test_stream_and_include_usage(members: dict[str, Any], stream: bool, usage: bool) -> None:
    """``stream: true`` streams (and marks the prompt streaming); include_usage only when true."""
    request = parse(members)
    assert (request.stream, request.prompt.streaming, request.include_usage) == (
        stream,
        stream,
        usage,
    )


def test_further_request_fields_reach_the_prompt() -> None:
    """The keyword arguments become the PromptRequest's fields; the messages are read."""
    body = {"model": "echo", "messages": [USER]}
    request = parse_chat_request(
        Fields(body), (), {}, request_id="r-1", priority=Priority.HIGH, timeout=3.0
    )
    prompt = request.prompt
    assert (prompt.request_id, prompt.priority, prompt.timeout) == ("r-1", Priority.HIGH, 3.0)
    assert prompt.messages == (Message("user", "hi"),)


def test_a_usual_body_has_the_default_parameters() -> None:
    """``{model, messages}`` gives the defaults with that model and nothing extra."""
    assert params_of({}) == {
        "model": "echo",
        "max_tokens": None,
        "temperature": None,
        "top_p": None,
        "stop": (),
        "tools": [],
        "tool_choice": None,
        "seed": None,
        "extra": {},
    }


def test_every_member_but_the_transport_ones_travels_in_extra() -> None:
    """model, messages, stream and stream_options stay out of extra; the rest, unknown or
    not, go in exactly as sent."""
    sent = {"n": 2, "user": "u", "vendor_option": {"a": 1}}
    members = sent | {"stream": True, "stream_options": {"include_usage": True}}
    assert params_of(members)["extra"] == sent
    assert params_of({"vendor_option": 1})["extra"] == {"vendor_option": 1}
    assert params_of({"temperature": 1})["extra"] == {"temperature": 1}


def test_the_members_are_checked_before_the_messages() -> None:
    """With a bad member and a bad message, the member's 400 is the one reported: the
    messages are left to their reader, which runs once, after the members."""
    body = {"model": "echo", "messages": [{"role": "wizard"}], "temperature": "hot"}
    with pytest.raises(ApiError) as caught:
        parse_chat_request(Fields(body), (), {})
    assert (caught.value.status, caught.value.param) == (400, "temperature")


def test_the_parameters_name_the_requested_model() -> None:
    """Read or defaulted, the parameters carry the model the body names."""
    for members in ({}, {"n": 1}, {"temperature": 1}):
        assert params_of({"model": "other"} | members)["model"] == "other"


def test_a_single_parameter_is_read() -> None:
    """One member besides model and messages is enough to be read (not the shortcut's)."""
    assert params_of({"temperature": 1})["temperature"] == 1.0
    assert params_of({"seed": 7})["seed"] == 7


def test_the_typed_parameters_are_read() -> None:
    """Each typed member lands in its field, numbers as floats, stop as a tuple."""
    params = params_of(
        {"max_tokens": 9, "temperature": 1, "top_p": 0, "stop": "END", "seed": 3, "n": 1}
    )
    assert params["max_tokens"] == 9
    assert params["temperature"] == 1.0
    assert type(params["temperature"]) is float
    assert params["top_p"] == 0.0
    assert type(params["top_p"]) is float
    assert (params["stop"], params["seed"]) == (("END",), 3)
    assert params_of({"stop": ["a", "b"]})["stop"] == ("a", "b")
    assert params_of({"top_p": 0.5})["temperature"] is None
    assert params_of({"temperature": 0.5})["top_p"] is None
    assert params_of({"temperature": 0.5})["max_tokens"] is None


def test_max_completion_tokens_wins_over_max_tokens() -> None:
    """The newer member is the limit when both are sent; the older one counts alone."""
    assert params_of({"max_completion_tokens": 5, "max_tokens": 9})["max_tokens"] == 5
    assert params_of({"max_completion_tokens": 5})["max_tokens"] == 5
    assert params_of({"max_tokens": 9})["max_tokens"] == 9


def test_function_tools_are_typed_and_custom_tools_are_not() -> None:
    """Function tools become Tools (description and parameters defaulted); custom ones
    travel only in extra."""
    tools = [
        {"type": "function", "function": FUNCTION},
        {"type": "custom", "custom": {"name": "shell"}},
        {"type": "function", "function": {"name": "bare"}},
    ]
    params = params_of({"tools": tools, "tool_choice": "required"})
    assert [t["name"] for t in params["tools"]] == ["lookup", "bare"]
    assert params["tools"][0]["description"] == "Look up."
    assert params["tools"][0]["parameters"] == {"type": "object"}
    assert (params["tools"][1]["description"], params["tools"][1]["parameters"]) == ("", {})
    assert params["tool_choice"] == "required"
    assert params["extra"]["tools"] == tools


def test_the_deprecated_functions_are_tools() -> None:
    """``functions`` and ``function_call`` read as tools and a tool choice."""
    params = params_of({"functions": [FUNCTION], "function_call": {"name": "lookup"}})
    assert [t["name"] for t in params["tools"]] == ["lookup"]
    assert params["tool_choice"] == {"type": "function", "function": {"name": "lookup"}}
    assert params_of({"functions": [FUNCTION], "function_call": "auto"})["tool_choice"] == "auto"
    assert params_of({"functions": [FUNCTION]})["tool_choice"] is None
    both = {"tools": [{"type": "function", "function": {"name": "new"}}], "functions": [FUNCTION]}
    assert [t["name"] for t in params_of(both)["tools"]] == ["new"]
    choice = {"tool_choice": "none", "function_call": "auto", "functions": [FUNCTION]}
    assert params_of(choice)["tool_choice"] == "none"


def test_stop_of_reads_a_string_or_a_list_and_rejects_anything_else() -> None:
    """``stop`` as a tuple; a bad one is a 400 at its path."""
    assert stop_of(Fields({})) == ()
    assert stop_of(Fields({"stop": "x"})) == ("x",)
    assert stop_of(Fields({"stop": ["a", "b"]})) == ("a", "b")
    with pytest.raises(ApiError) as caught:
        stop_of(Fields({"stop": 5}, "body"))
    assert (caught.value.status, caught.value.param) == (400, "body.stop")


# ----------------------------------------------------------------- messages


def test_roles_are_mapped_to_the_gateways() -> None:
    """developer is system, function is tool; the others stay."""
    got = read(
        {"role": "system", "content": "s"},
        {"role": "developer", "content": "d"},
        {"role": "user", "content": "u"},
        {"role": "assistant", "content": "a"},
        {"role": "tool", "content": "t", "tool_call_id": "c1"},
        {"role": "function", "content": "f", "name": "lookup"},
    )
    assert [m.role for m in got] == ["system", "system", "user", "assistant", "tool", "tool"]
    assert [m.content for m in got] == ["s", "d", "u", "a", "t", "f"]


def test_plain_messages_keep_the_clients_object() -> None:
    """The usual message, shortcut or not, has the client's object as its wire form."""
    plain = {"role": "assistant", "content": "a"}
    named = {"role": "user", "content": "u", "name": "ann"}
    got = read(plain, named)
    assert got[0].wire is plain
    assert got[1].wire is named
    assert (got[1].name, got[1].content) == ("ann", "u")


def test_content_parts_are_kept_and_their_text_joined() -> None:
    """A list content keeps its parts; the text is the text parts' in order."""
    parts = [
        {"type": "text", "text": "look "},
        {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}},
        {"type": "text", "text": "here"},
    ]
    (message,) = read({"role": "user", "content": parts})
    assert message.content == "look here"
    assert message.parts == tuple(parts)
    (plain,) = read({"role": "user", "content": "x", "name": "n"})
    assert plain.parts == ()
    (empty,) = read({"role": "assistant", "content": None, "refusal": "no"})
    assert empty.content == ""


def test_tool_calls_are_read_function_and_custom() -> None:
    """An assistant's tool calls (function or custom) and deprecated function_call."""
    calls = [
        {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}},
        {"id": "c2", "type": "custom", "custom": {"name": "shell", "input": "ls"}},
    ]
    (message,) = read({"role": "assistant", "content": None, "tool_calls": calls})
    assert message.tool_calls == (ToolCall("c1", "f", "{}"), ToolCall("c2", "shell", "ls"))
    old = {"role": "assistant", "content": None, "function_call": {"name": "g", "arguments": "1"}}
    assert read(old)[0].tool_calls == (ToolCall("g", "g", "1"),)
    assert read({"role": "assistant", "content": "x", "name": "n"})[0].tool_calls == ()
    both = old | {"tool_calls": calls[:1]}
    assert read(both)[0].tool_calls == (ToolCall("c1", "f", "{}"), ToolCall("g", "g", "1"))


def test_tool_answers_name_their_call() -> None:
    """A tool message's id is its tool_call_id; a function message's is its name (and it
    has no name of its own)."""
    (tool,) = read({"role": "tool", "content": "42", "tool_call_id": "c1"})
    assert (tool.tool_call_id, tool.name) == ("c1", None)
    (function,) = read({"role": "function", "content": "42", "name": "lookup"})
    assert (function.tool_call_id, function.name) == ("lookup", None)
    (user,) = read({"role": "user", "content": "x", "name": "ann"})
    assert (user.tool_call_id, user.name) == (None, "ann")


def test_a_bad_message_is_a_400_at_its_path() -> None:
    """The error names the message's index and member."""
    with pytest.raises(ApiError) as caught:
        read(USER, {"role": "wizard", "content": "x"})
    assert (caught.value.status, caught.value.param) == (400, "messages[1].role")
    with pytest.raises(ApiError) as missing:
        messages_of(Fields({}))
    assert missing.value.param == "messages"


@pytest.mark.parametrize(
    "item",
    [
        {"role": "user", "content": "x", "name": "n"},
        {"role": "user"},
        {"role": 1, "content": "x"},
        {"role": "user", "content": ["x"]},
        {"role": "tool", "content": "x"},
        {"role": "function", "content": "x"},
        [("role", "user"), ("content", "x")],
    ],
)
def test_the_shortcut_stands_aside_for_anything_unusual(item: Any) -> None:
    """Only a dict of exactly a known plain role and a string content takes the shortcut."""
    assert chat._plain_message(item) is None


def test_the_shortcut_reads_every_plain_role() -> None:
    """The plain roles, developer as system, with the object as the wire form."""
    for role, expected in [("system", "system"), ("developer", "system"), ("user", "user")]:
        item = {"role": role, "content": "x"}
        message = chat._plain_message(item)
        assert message == Message(expected, "x")
        assert message is not None
        assert message.wire is item
    assert chat._plain_message({"role": "assistant", "content": ""}) == Message("assistant", "")


# ----------------------------------------------------------------- usage


def test_usage_body_of_nothing_is_null() -> None:
    """No usage, no usage object."""
    assert usage_body(None) is None


@pytest.mark.parametrize(
    ("usage", "extra"),
    [
        (Usage(3, 4, cached_input_tokens=2), {"prompt_tokens_details": {"cached_tokens": 2}}),
        (Usage(3, 4, cache_write_tokens=1), {"prompt_tokens_details": {"cache_write_tokens": 1}}),
        (Usage(3, 4, reasoning_tokens=2), {"completion_tokens_details": {"reasoning_tokens": 2}}),
        (Usage(3, 4, details={"cost": 1}), {"cost": 1}),
    ],
)
def test_usage_body_adds_only_the_counts_there_are(usage: Usage, extra: dict[str, Any]) -> None:
    """Each count read sets its detail alone; no zero details are invented."""
    counts = {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}
    assert usage_body(usage) == counts | extra


def test_usage_body_keeps_the_upstreams_zero_details() -> None:
    """A detail object the upstream sent keeps its zeros and gets the counts read."""
    details = {"completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0}}
    body = usage_body(Usage(1, 1, cached_input_tokens=1, details=details))
    assert body is not None
    assert body["completion_tokens_details"] == {"reasoning_tokens": 0, "audio_tokens": 0}
    assert body["prompt_tokens_details"] == {"cached_tokens": 1}


def test_total_usage_sums_every_count() -> None:
    """Each count of n choices is summed; details add int by int and keep the rest."""
    one = Usage(1, 2, 3, 4, 5, {"a": 1, "only_old": 2, "text": "x", "flag": True, "n": {"k": 1}})
    two = Usage(10, 20, 30, 40, 50, {"a": 2, "only_new": 3, "text": "y", "flag": True, "n": {}})
    total = total_usage([one, two])
    assert total == Usage(11, 22, 33, 44, 55)
    assert total is not None
    assert total.details == {
        "a": 3,
        "only_old": 2,
        "only_new": 3,
        "text": "x",
        "flag": True,
        "n": {"k": 1},
    }
    assert total_usage([]) is None
    first = {"a": 1, "n": {"k": 1}, "m": 2}
    mixed = total_usage(
        [Usage(1, 1, details=first), Usage(1, 1, details={"a": "x", "n": 5, "m": {}})]
    )
    assert mixed is not None
    assert mixed.details == first


# ----------------------------------------------------------------- answers


def test_a_completion_body_in_full(monkeypatch: pytest.MonkeyPatch) -> None:
    """Id, object, created (whole seconds), model, the choice and the usage."""
    monkeypatch.setattr(time, "time", lambda: 1700.9)
    body = completions_body([Completion("r1", "hi", "length", Usage(2, 1))], "asked")
    assert body == {
        "id": "chatcmpl-r1",
        "object": "chat.completion",
        "created": 1700,
        "model": "asked",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "hi"},
                "logprobs": None,
                "finish_reason": "length",
            }
        ],
        "usage": {"prompt_tokens": 2, "completion_tokens": 1, "total_tokens": 3},
    }
    assert completions_body([Completion("r", "x", model="served")], "asked")["model"] == "served"
    assert completions_body([Completion("r", "x")], "asked")["usage"] is None


def test_one_completions_body_names_the_requested_model() -> None:
    """Without a model from the upstream, the answer names the model asked for."""
    assert completion_body(Completion("r", "x"), "asked")["model"] == "asked"
    assert completion_body(Completion("r", "x", model="served"), "asked")["model"] == "served"


def test_a_tool_call_answer_has_null_content() -> None:
    """Tool calls in OpenAI's shape; the content is null, not empty."""
    calls = (ToolCall("c1", "f", "{}"), ToolCall("c2", "g", '{"a":1}'))
    body = completions_body([Completion("r", "", "tool_calls", tool_calls=calls)], "m")
    assert body["choices"][0]["message"] == {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}},
            {"id": "c2", "type": "function", "function": {"name": "g", "arguments": '{"a":1}'}},
        ],
    }
    empty = completions_body([Completion("r", "")], "m")["choices"][0]["message"]
    assert empty == {"role": "assistant", "content": ""}
    said = Passthrough(message={"annotations": []})
    body = completions_body([Completion("r", "", passthrough=said)], "m")
    assert body["choices"][0]["message"] == {"role": "assistant", "content": "", "annotations": []}


def test_several_choices_sum_usage_and_take_the_firsts_members() -> None:
    """n choices: the usage summed; top-level members and model from the first."""
    first = Completion("r", "a", usage=Usage(1, 2), passthrough=Passthrough({"fp": 1}))
    second = Completion("r-1", "b", usage=Usage(1, 3), passthrough=Passthrough({"fp": 2}))
    body = completions_body([first, second], "m")
    assert body["usage"] == {"prompt_tokens": 2, "completion_tokens": 5, "total_tokens": 7}
    assert body["fp"] == 1
    assert [c["index"] for c in body["choices"]] == [0, 1]
    one = completions_body([Completion("r", "a", usage=Usage(1, 2, details={"x": "y"}))], "m")
    assert one["usage"]["x"] == "y"


# ----------------------------------------------------------------- chunks


def chunk(data: bytes | None) -> dict[str, Any]:
    """A chunk's JSON."""
    assert data is not None
    decoded: dict[str, Any] = json.loads(data)
    return decoded


def test_chunks_in_full() -> None:
    """The opening, text, tool-call, final and usage chunks in OpenAI's shape."""
    writer = ChunkWriter("r1", "m", include_usage=True, index=1, created=99)
    top = {"id": "chatcmpl-r1", "object": "chat.completion.chunk", "created": 99, "model": "m"}

    def choice(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        entry = {"index": 1, "delta": delta, "finish_reason": finish, "logprobs": None}
        return top | {"choices": [entry], "usage": None}

    assert chunk(writer.first()) == choice({"role": "assistant", "content": ""})
    assert chunk(writer.event(TextDelta("hi"))) == choice({"content": "hi"})
    start = {"index": 0, "id": "c1", "type": "function"}
    start["function"] = {"name": "f", "arguments": ""}
    assert chunk(writer.event(ToolCallStart(0, "c1", "f"))) == choice({"tool_calls": [start]})
    delta = {"index": 0, "function": {"arguments": "{}"}}
    assert chunk(writer.event(ToolCallDelta(0, "{}"))) == choice({"tool_calls": [delta]})
    done = Completion("r1", "hi", "stop", Usage(1, 2))
    final, usage = writer.last(done)
    assert chunk(final) == choice({}, "stop")
    assert chunk(usage) == top | {
        "choices": [],
        "usage": {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3},
    }
    assert chunk(writer.usage_chunk(None))["usage"] is None


def test_without_include_usage_chunks_have_no_usage() -> None:
    """No usage member and no usage chunk at the end."""
    writer = ChunkWriter("r", "m", include_usage=False)
    assert "usage" not in chunk(writer.first())
    (final,) = writer.last(Completion("r", "", "length"))
    assert chunk(final)["choices"][0]["finish_reason"] == "length"
    assert chunk(writer.finish(Completion("r", ""))) == chunk(final) | {
        "choices": [{"index": 0, "delta": {}, "finish_reason": "stop", "logprobs": None}]
    }


def test_events_without_a_chunk_give_none() -> None:
    """Empty text, Done, and members with no delta of their own make no chunk."""
    writer = ChunkWriter("r", "m", include_usage=False)
    assert writer.event(TextDelta("")) is None
    assert writer.event(Done()) is None
    assert writer.event(Passthrough({"fp": "a"})) is None
    assert writer.event(Passthrough(choice={"logprobs": {"content": []}})) is None


def test_the_writer_is_created_now(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without ``created`` the chunks carry the current whole second."""
    monkeypatch.setattr(time, "time", lambda: 42.7)
    assert chunk(ChunkWriter("r", "m", include_usage=False).first())["created"] == 42


def test_waiting_choice_members_merge_and_go_with_the_next_delta() -> None:
    """Two tokens' logprobs with no text between wait together; a delta member's chunk
    takes them (they came with it), and top-level members reach the usage chunk."""
    writer = ChunkWriter("r", "m", include_usage=True)
    first = {"logprobs": {"content": [{"token": "a"}]}}
    second = {"logprobs": {"content": [{"token": "b"}]}}
    assert writer.event(Passthrough({"fp": "x"}, first)) is None
    refusal = chunk(writer.event(Passthrough({"tier": "t"}, second, {"refusal": "No"})))
    assert refusal["choices"][0]["delta"] == {"refusal": "No"}
    assert refusal["choices"][0]["logprobs"] == {"content": [{"token": "a"}, {"token": "b"}]}
    assert (refusal["fp"], refusal["tier"]) == ("x", "t")
    after = chunk(writer.event(TextDelta("!")))
    assert after["choices"][0]["logprobs"] is None
    assert chunk(writer.usage_chunk(Usage()))["fp"] == "x"
    assert chunk(writer.event(Passthrough({"fp": "y"}, message={"refusal": "!"})))["fp"] == "y"
