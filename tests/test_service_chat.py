"""Reading chat-completions bodies: the shortcuts for the usual body agree with the readers."""

from __future__ import annotations

from typing import Any

import attrs
from hypothesis import given
from hypothesis import strategies as st

from trio_orchestrator.service.chat import _message, _params, _plain_message, _read_params
from trio_orchestrator.service.errors import ApiError
from trio_orchestrator.service.validate import Fields
from trio_orchestrator.types import GenerationParams

roles = st.sampled_from(["system", "developer", "user", "assistant", "tool", "wizard", ""])
contents = st.none() | st.text(max_size=5) | st.integers() | st.just([{"type": "text"}])
extras = st.dictionaries(st.sampled_from(["name", "tool_call_id", "tool_calls"]), st.text())
messages = st.builds(
    lambda role, content, extra, keep: {
        k: v
        for k, v in ({"role": role, "content": content} | extra).items()
        if k in keep or k not in ("role", "content")
    },
    roles | st.integers(),
    contents,
    extras,
    st.sets(st.sampled_from(["role", "content"])),
)


def _read(item: Any) -> object:
    """What the general reader makes of one message: the Message, or the error's param."""
    try:
        return _message(Fields(item, "messages[0]"))
    except ApiError as exc:
        return ("error", exc.param)


@given(messages)
def test_the_plain_message_shortcut_agrees_with_the_reader(item: dict[str, Any]) -> None:
    """For any message, the shortcut gives the reader's Message or stands aside."""
    plain = _plain_message(item)
    if plain is not None:
        assert plain == _read(item)


def test_the_usual_message_takes_the_shortcut() -> None:
    """A message with just a known role and text content is read by the shortcut."""
    assert _plain_message({"role": "developer", "content": "hi"}) == _read(
        {"role": "developer", "content": "hi"}
    )
    assert _plain_message({"role": "tool", "content": "42"}) is None  # needs tool_call_id


@given(st.dictionaries(st.sampled_from(["user", "n", "stream", "other"]), st.text(max_size=3)))
def test_without_parameters_the_shortcut_gives_the_readers_defaults(extra: dict[str, Any]) -> None:
    """A body with no generation parameter gets exactly what the readers would give it."""
    body = {"model": "echo", "messages": []} | extra
    forwarded = {k: v for k, v in body.items() if k not in ("model", "messages", "stream")}
    assert _fields_of(_params(body, "echo")) == _fields_of(_read_params(body, "echo", forwarded))


def _fields_of(params: GenerationParams) -> dict[str, object]:
    """The parameters' values (GenerationParams compares by identity)."""
    return attrs.asdict(params)
