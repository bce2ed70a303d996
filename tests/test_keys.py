"""The request identity key and the determinism rule."""

from __future__ import annotations

import datetime
import json

import attrs
import pytest

from trio_orchestrator import GenerationParams, Message, PromptRequest, Tool
from trio_orchestrator.resilience.keys import (
    is_deterministic,
    message_key,
    params_key,
    request_key,
)
from trio_orchestrator.types import Document, ToolCall


def make(**params: object) -> PromptRequest:
    return PromptRequest(
        messages=(Message("system", "be brief"),),
        input="hello",
        params=attrs.evolve(GenerationParams(temperature=0), **params),  # type: ignore[arg-type]
    )


def test_key_is_stable_hex() -> None:
    """The key is 64 lowercase hex digits and the same for equal requests made separately."""
    key = request_key(make())
    assert key == request_key(make())
    assert len(key) == 64
    assert int(key, 16) >= 0


def test_integer_and_float_temperature_share_a_key() -> None:
    """temperature 0 and 0.0 are the same request."""
    assert request_key(make(temperature=0)) == request_key(make(temperature=0.0))


def test_extra_key_order_does_not_matter() -> None:
    """Provider extras are compared as mappings, not by insertion order."""
    assert request_key(make(extra={"a": 1, "b": 2})) == request_key(make(extra={"b": 2, "a": 1}))


def test_input_and_the_same_chat_as_messages_share_a_key() -> None:
    """A prompt given as ``input`` keys like the same text given as a final user message."""
    as_messages = PromptRequest(
        messages=(Message("system", "be brief"), Message("user", "hello")),
        params=GenerationParams(temperature=0),
    )
    assert request_key(as_messages) == request_key(make())


@pytest.mark.parametrize(
    "changed",
    [
        {"tools": (Tool("f"),)},
        {"tool_choice": "required"},
        {"tools": (Tool("f", parameters={"type": "object"}),)},
    ],
)
def test_tool_settings_split_the_key(changed: dict[str, object]) -> None:
    """Offering tools or changing their schema or the tool choice changes the key."""
    assert request_key(make(**changed)) != request_key(make())


@pytest.mark.parametrize(
    ("temperature", "expected"), [(0, True), (0.0, True), (None, False), (0.2, False)]
)
def test_only_zero_temperature_is_deterministic(temperature: float | None, expected: bool) -> None:
    """An unset temperature is the provider's sampled default, so not deterministic."""
    assert is_deterministic(make(temperature=temperature)) is expected


def test_seed_alone_is_not_deterministic() -> None:
    """A seed with a sampled temperature does not make a request deterministic."""
    assert not is_deterministic(make(temperature=0.7, seed=1))


def test_messages_alike_in_text_but_not_in_their_parts_do_not_share_a_key() -> None:
    """Two chats with the same text but different images (or roles on the wire) differ."""

    def chat(url: str, role: str = "user") -> PromptRequest:
        parts = (
            {"type": "text", "text": "what is this?"},
            {"type": "image_url", "image_url": {"url": url}},
        )
        wire = {"role": role, "content": list(parts)}
        return PromptRequest(messages=(Message("user", "what is this?", parts=parts, wire=wire),))

    assert request_key(chat("https://a.example/cat.png")) != request_key(
        chat("https://a.example/dog.png")
    )
    assert request_key(chat("https://a.example/cat.png")) == request_key(
        chat("https://a.example/cat.png")
    )
    plain = PromptRequest(
        messages=(Message("system", "hi", wire={"role": "system", "content": "hi"}),)
    )
    developer = PromptRequest(
        messages=(Message("system", "hi", wire={"role": "developer", "content": "hi"}),)
    )
    assert request_key(plain) == request_key(PromptRequest(messages=(Message("system", "hi"),)))
    assert request_key(plain) != request_key(developer)


# The key's exact value is part of its contract: a cache or coalescing key shared through Redis
# must mean the same request to every process and every release reading it, so a change to
# how the key is made must be deliberate (and these values updated with a changelog note).
GOLDEN = PromptRequest(
    messages=(
        Message("system", "be brief"),
        Message("assistant", "", tool_calls=(ToolCall("c1", "f", '{"x": 1}'),)),
        Message("tool", "42", tool_call_id="c1", name="f"),
    ),
    input="hello",
    context=(Document("d1", "a fact"),),
    params=GenerationParams(
        model="m",
        temperature=0.5,
        top_p=1,
        max_tokens=7,
        stop=("x",),
        seed=3,
        extra={"b": {"c": [1, (2,)]}},
        tools=(Tool("f", "d", {"type": "object"}),),
        tool_choice={"type": "function"},
    ),
)


@pytest.mark.parametrize(
    ("request_", "key"),
    [
        (GOLDEN, "ce9f5872417173d78f0d86f75d540fb6fc738d9782a8051d73d7fa8645feb2b2"),
        (
            PromptRequest(embed=("a", "b"), params=GenerationParams(model="e")),
            "5378e42142c8512684b6aef4ad0de1c70eeeaf1758115df5cae013d2aa7dd814",
        ),
        (
            PromptRequest(
                input="hi",
                responses_body={"input": "hi", "z": [1]},
                params=GenerationParams(model="r"),
            ),
            "3670f4e1a42b458fbba1b784b8bf083e843040ba8fd525872a68746b634ac7cf",
        ),
    ],
)
def test_the_key_of_a_known_request_does_not_drift(request_: PromptRequest, key: str) -> None:
    """A chat, an embedding and a Responses request key exactly as they did (shared caches)."""
    assert request_key(request_) == key


def test_content_parts_split_the_key_without_a_wire_object() -> None:
    """Messages alike in text but not in their typed parts (no client object) do not share."""
    image: dict[str, object] = {
        "type": "image_url",
        "image_url": {"url": "https://example.invalid/a.png"},
    }
    other: dict[str, object] = {
        "type": "image_url",
        "image_url": {"url": "https://example.invalid/b.png"},
    }

    def ask(*parts: dict[str, object]) -> PromptRequest:
        return PromptRequest(messages=(Message("user", "what is this?", parts=parts),))

    assert request_key(ask(image)) != request_key(ask(other))
    assert request_key(ask(image)) != request_key(ask())


def test_values_json_cannot_express_still_key_by_value() -> None:
    """An extra JSON cannot encode (a date) keys by its repr instead of failing."""
    first = request_key(make(extra={"when": datetime.date(2024, 1, 1)}))
    assert first == request_key(make(extra={"when": datetime.date(2024, 1, 1)}))
    assert first != request_key(make(extra={"when": datetime.date(2024, 1, 2)}))


def test_message_key_and_params_key_are_what_request_key_keys_on() -> None:
    """A message's and parameters' keys are plain JSON and split exactly where the request
    key does (the semantic cache scopes its entries on them)."""
    message = Message("user", "hi", name="ann")
    assert json.loads(json.dumps(message_key(message))) == message_key(message)
    assert message_key(message) == message_key(Message("user", "hi", name="ann"))
    assert message_key(message) != message_key(Message("user", "hi", name="bob"))
    params = GenerationParams(model="m", temperature=0, stop=("x",), extra={"b": 1, "a": 2})
    assert params_key(params) == {
        "model": "m",
        "max_tokens": None,
        "temperature": 0.0,
        "top_p": None,
        "stop": ["x"],
        "tools": [],
        "tool_choice": None,
        "seed": None,
        "extra": {"a": 2, "b": 1},
    }
    assert params_key(attrs.evolve(params, seed=1)) != params_key(params)
