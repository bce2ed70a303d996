"""The OpenAI chat-completions wire format: requests in, completions and chunks out."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from typing import Any

import attrs

from ..events import Completion, StreamEvent, TextDelta, ToolCallDelta, ToolCallStart, Usage
from ..types import GenerationParams, Message, PromptRequest, Tool, ToolCall
from .errors import ApiError
from .validate import Fields, invalid

__all__ = [
    "ChatRequest",
    "ChunkWriter",
    "completion_body",
    "json_bytes",
    "parse_chat_request",
    "usage_body",
]

_ROLES = {"system": "system", "developer": "system", "user": "user"}
_ROLES |= {"assistant": "assistant", "tool": "tool"}
_TOOL_CHOICES = ("none", "auto", "required")


@attrs.frozen
class ChatRequest:
    """A parsed ``/v1/chat/completions`` request.

    Attributes:
        prompt: the request for the pipeline.
        stream: answer as server-sent events.
        include_usage: with ``stream``, end with a chunk carrying usage.
    """

    prompt: PromptRequest
    stream: bool
    include_usage: bool


def parse_chat_request(
    body: Fields, models: Sequence[str], meta: Mapping[str, str], **request: Any
) -> ChatRequest:
    """Validate an OpenAI chat-completions body and turn it into a :class:`ChatRequest`.

    Args:
        body: the JSON body.
        models: the models served; any other ``model`` is a 404 (empty: any model).
        meta: labels for the request (API key id, user).
        request: further :class:`PromptRequest` fields (priority, request_id).

    Raises:
        ApiError: 400 naming the bad field, or 404 for an unknown model.
    """
    model = body.text("model", required=True, max_length=256)
    assert model is not None
    if models and model not in models:
        message = f"the model {model!r} does not exist; GET /v1/models lists the models served"
        raise ApiError(404, message, code="model_not_found", param="model")
    n = body.integer("n", minimum=1, maximum=1)
    del n  # only n=1 is supported; the bound check above says so
    user = body.text("user", max_length=256)
    stream_options = body.object("stream_options")
    params = _params(body, model)
    labels = dict(meta)
    if user:
        labels["user"] = user
    prompt = PromptRequest(messages=_messages(body), params=params, meta=labels, **request)
    include_usage = stream_options is not None and stream_options.flag("include_usage")
    return ChatRequest(prompt, body.flag("stream"), include_usage)


# The members _params reads; a body with none of them has the default parameters.
_PARAMETERS = frozenset(
    [
        "max_completion_tokens",
        "max_tokens",
        "temperature",
        "top_p",
        "stop",
        "tools",
        "tool_choice",
        "seed",
    ]
)


def _params(body: Fields, model: str) -> GenerationParams:
    if _PARAMETERS.isdisjoint(body.data):  # the usual request: no reader has work to do
        return GenerationParams(model=model)
    return _read_params(body, model)


def _read_params(body: Fields, model: str) -> GenerationParams:
    return GenerationParams(
        model=model,
        max_tokens=_max_tokens(body),
        temperature=body.number("temperature", minimum=0, maximum=2),
        top_p=body.number("top_p", minimum=0, maximum=1),
        stop=_stop(body),
        tools=_tools(body),
        tool_choice=_tool_choice(body),
        seed=body.integer("seed"),
    )


def _max_tokens(body: Fields) -> int | None:
    value: int | None = body.integer("max_completion_tokens", minimum=1)
    return value if value is not None else body.integer("max_tokens", minimum=1)


def _stop(body: Fields) -> tuple[str, ...]:
    value = body.data.get("stop")
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    if isinstance(value, list) and len(value) <= 4 and all(isinstance(s, str) for s in value):
        return tuple(value)
    raise invalid("stop", "a string or an array of up to 4 strings", value)


def _messages(body: Fields) -> tuple[Message, ...]:
    items = body.array("messages", required=True, max_items=4096)
    if not items:
        raise invalid("messages", "a non-empty array of messages", items)
    return tuple(
        _plain_message(item) or _message(body.item("messages", i, item))
        for i, item in enumerate(items)
    )


_PLAIN_ROLES = {role: value for role, value in _ROLES.items() if role != "tool"}


def _plain_message(item: Any) -> Message | None:
    """The usual message, ``{"role": ..., "content": "..."}``, without the general reader;
    ``None`` for anything else (which the general reader then validates)."""
    if type(item) is not dict or len(item) != 2:
        return None
    role, content = item.get("role"), item.get("content")
    if type(role) is not str or type(content) is not str or role not in _PLAIN_ROLES:
        return None
    return Message(_PLAIN_ROLES[role], content)


def _message(fields: Fields) -> Message:
    role = fields.text("role", required=True)
    if role not in _ROLES:
        raise invalid(fields._path("role"), f"one of {sorted(_ROLES)}", role)
    tool_call_id = fields.text("tool_call_id")
    if role == "tool" and tool_call_id is None:
        raise invalid(fields._path("tool_call_id"), "the id of the call answered", missing=True)
    calls = fields.array("tool_calls")
    return Message(
        role=_ROLES[role],
        content=_content(fields),
        name=fields.text("name", max_length=256),
        tool_calls=tuple(_tool_call(fields.item("tool_calls", i, c)) for i, c in enumerate(calls)),
        tool_call_id=tool_call_id,
    )


def _content(fields: Fields) -> str:
    value = fields.data.get("content")
    path = fields._path("content")
    if value is None or isinstance(value, str):
        return value or ""
    if not isinstance(value, list):
        raise invalid(path, "a string, null, or an array of text parts", value)
    parts = []
    for i, part in enumerate(value):
        item = fields.item("content", i, part)
        if item.text("type", required=True) != "text":
            raise invalid(f"{path}[{i}].type", '"text" (only text parts are supported)', part)
        parts.append(item.text("text", required=True) or "")
    return "".join(parts)


def _tool_call(fields: Fields) -> ToolCall:
    function = fields.object("function", required=True)
    assert function is not None
    name = function.text("name", required=True, max_length=256)
    assert name is not None
    call_id = fields.text("id", required=True, max_length=256)
    assert call_id is not None
    return ToolCall(call_id, name, function.text("arguments") or "")


def _tools(body: Fields) -> tuple[Tool, ...]:
    tools = []
    for i, item in enumerate(body.array("tools", max_items=128)):
        fields = body.item("tools", i, item)
        if fields.text("type", required=True) != "function":
            raise invalid(fields._path("type"), '"function"', fields.data.get("type"))
        function = fields.object("function", required=True)
        assert function is not None
        name = function.text("name", required=True, max_length=64)
        assert name is not None
        parameters = function.object("parameters")
        description = function.text("description") or ""
        tools.append(Tool(name, description, parameters.data if parameters else {}))
    return tuple(tools)


def _tool_choice(body: Fields) -> str | Mapping[str, Any] | None:
    value = body.data.get("tool_choice")
    if value is None or value in _TOOL_CHOICES:
        return value
    expected = 'one of "none", "auto", "required" or {"type": "function", "function": {...}}'
    choice = body.object("tool_choice") if isinstance(value, dict) else None
    function = choice.object("function") if choice is not None else None
    if function is None or function.text("name", required=True) is None:
        raise invalid("tool_choice", expected, value)
    return {"type": "function", "function": {"name": function.data["name"]}}


# ----------------------------------------------------------------- responses


# One encoder for every call: json.dumps builds a new one per call when given separators.
_ENCODER = json.JSONEncoder(separators=(",", ":"))


def json_bytes(data: Any) -> bytes:
    """``data`` as compact JSON, non-ASCII escaped (a lone surrogate in a prompt must not
    become a 500 when echoed back)."""
    return _ENCODER.encode(data).encode()


def usage_body(usage: Usage | None) -> dict[str, int] | None:
    """OpenAI's ``usage`` object."""
    if usage is None:
        return None
    total = usage.input_tokens + usage.output_tokens
    return {
        "prompt_tokens": usage.input_tokens,
        "completion_tokens": usage.output_tokens,
        "total_tokens": total,
    }


def _tool_calls_body(calls: Sequence[ToolCall]) -> list[dict[str, Any]]:
    return [
        {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
        for c in calls
    ]


def completion_body(completion: Completion, model: str) -> dict[str, Any]:
    """A ``chat.completion`` object for a finished request."""
    message: dict[str, Any] = {"role": "assistant", "content": completion.text or None}
    if completion.tool_calls:
        message["tool_calls"] = _tool_calls_body(completion.tool_calls)
    elif message["content"] is None:
        message["content"] = ""
    return {
        "id": "chatcmpl-" + completion.request_id,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": completion.model or model,
        "choices": [
            {
                "index": 0,
                "message": message,
                "finish_reason": completion.finish_reason,
                "logprobs": None,
            }
        ],
        "usage": usage_body(completion.usage),
    }


@attrs.define
class ChunkWriter:
    """Turns a request's events into ``chat.completion.chunk`` SSE payloads."""

    request_id: str
    model: str
    include_usage: bool
    _created: int = attrs.field(init=False, factory=lambda: int(time.time()))

    def _chunk(self, delta: dict[str, Any], finish_reason: str | None = None) -> bytes:
        chunk: dict[str, Any] = {
            "id": "chatcmpl-" + self.request_id,
            "object": "chat.completion.chunk",
            "created": self._created,
            "model": self.model,
            "choices": [
                {"index": 0, "delta": delta, "finish_reason": finish_reason, "logprobs": None}
            ],
        }
        if self.include_usage:
            chunk["usage"] = None
        return json_bytes(chunk)

    def first(self) -> bytes:
        """The opening chunk, announcing the assistant's role."""
        return self._chunk({"role": "assistant", "content": ""})

    def event(self, event: StreamEvent) -> bytes | None:
        """The chunk for one stream event, or ``None`` for events sent only at the end."""
        if isinstance(event, TextDelta):
            return self._chunk({"content": event.text}) if event.text else None
        if isinstance(event, ToolCallStart):
            call = {"index": event.index, "id": event.id, "type": "function"}
            call["function"] = {"name": event.name, "arguments": ""}
            return self._chunk({"tool_calls": [call]})
        if isinstance(event, ToolCallDelta):
            call = {"index": event.index, "function": {"arguments": event.arguments}}
            return self._chunk({"tool_calls": [call]})
        return None

    def last(self, completion: Completion) -> list[bytes]:
        """The final chunk (with the finish reason), then the usage chunk when asked for."""
        chunks = [self._chunk({}, completion.finish_reason)]
        if self.include_usage:
            usage = {
                "id": "chatcmpl-" + self.request_id,
                "object": "chat.completion.chunk",
                "created": self._created,
                "model": self.model,
                "choices": [],
                "usage": usage_body(completion.usage),
            }
            chunks.append(json_bytes(usage))
        return chunks
