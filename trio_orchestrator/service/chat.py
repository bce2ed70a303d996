"""The OpenAI chat-completions wire format: requests in, completions and chunks out."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from typing import Any

import attrs

from ..events import (
    Completion,
    Passthrough,
    StreamEvent,
    TextDelta,
    ToolCallDelta,
    ToolCallStart,
    Usage,
    merge_passthrough,
)
from ..types import GenerationParams, Message, PromptRequest, Tool, ToolCall
from .errors import ApiError
from .validate import Fields, invalid

__all__ = [
    "ChatRequest",
    "ChunkWriter",
    "completion_body",
    "completions_body",
    "json_bytes",
    "parse_chat_request",
    "total_usage",
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
#
# An answer carries what the upstream sent: the usage details (cached, cache-write and
# reasoning token counts over the upstream's own usage members), and the members the
# workers pass through uninterpreted (Passthrough: logprobs, refusal, annotations,
# reasoning_content, system_fingerprint, service_tier…), each in its place. Several
# completions make one answer of several choices (``n``).


# One encoder for every call: json.dumps builds a new one per call when given separators.
_ENCODER = json.JSONEncoder(separators=(",", ":"))


def json_bytes(data: Any) -> bytes:
    """``data`` as compact JSON, non-ASCII escaped (a lone surrogate in a prompt must not
    become a 500 when echoed back)."""
    return _ENCODER.encode(data).encode()


def _details(body: dict[str, Any], name: str, **counts: int) -> None:
    """Set the non-zero ``counts`` in ``body[name]``, over what the upstream sent there;
    zeros too when the upstream sent that object."""
    sent = body.get(name)
    if isinstance(sent, Mapping):
        body[name] = {**sent, **{k: v for k, v in counts.items() if v or k in sent}}
    elif any(counts.values()):
        body[name] = {k: v for k, v in counts.items() if v}


def usage_body(usage: Usage | None) -> dict[str, Any] | None:
    """OpenAI's ``usage`` object: the counts, then the upstream's further members as it
    sent them, with ``prompt_tokens_details.cached_tokens`` (and ``cache_write_tokens``,
    OpenRouter's name for Anthropic's cache creation) and
    ``completion_tokens_details.reasoning_tokens`` set from the counts the gateway read."""
    if usage is None:
        return None
    body: dict[str, Any] = {
        "prompt_tokens": usage.input_tokens,
        "completion_tokens": usage.output_tokens,
        "total_tokens": usage.input_tokens + usage.output_tokens,
    }
    cached, written, reasoning = (
        usage.cached_input_tokens,
        usage.cache_write_tokens,
        usage.reasoning_tokens,
    )
    if not (usage.details or cached or written or reasoning):
        return body  # the usual answer
    body.update(usage.details)
    _details(body, "prompt_tokens_details", cached_tokens=cached, cache_write_tokens=written)
    _details(body, "completion_tokens_details", reasoning_tokens=reasoning)
    return body


def _add(old: Any, new: Any) -> Any:
    """Usage details added member by member (counts summed, other values kept)."""
    if isinstance(old, Mapping) and isinstance(new, Mapping):
        return {**new, **{k: _add(v, new[k]) if k in new else v for k, v in old.items()}}
    if type(old) is int and type(new) is int:
        return old + new
    return old


def total_usage(usages: Sequence[Usage | None]) -> Usage | None:
    """The usage of several completions answered as one (``n`` choices): summed."""
    known = [u for u in usages if u is not None]
    if not known:
        return None
    details: Any = {}
    for usage in known:
        details = _add(details, usage.details)
    return Usage(
        sum(u.input_tokens for u in known),
        sum(u.output_tokens for u in known),
        cached_input_tokens=sum(u.cached_input_tokens for u in known),
        cache_write_tokens=sum(u.cache_write_tokens for u in known),
        reasoning_tokens=sum(u.reasoning_tokens for u in known),
        details=details,
    )


def _tool_calls_body(calls: Sequence[ToolCall]) -> list[dict[str, Any]]:
    return [
        {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
        for c in calls
    ]


def _choice_body(completion: Completion, index: int) -> dict[str, Any]:
    passed = completion.passthrough
    message: dict[str, Any] = {"role": "assistant", "content": completion.text or None}
    if completion.tool_calls:
        message["tool_calls"] = _tool_calls_body(completion.tool_calls)
    elif message["content"] is None and not (passed and passed.message.get("refusal")):
        message["content"] = ""  # a refusal comes with null content, as OpenAI sends it
    choice = {
        "index": index,
        "message": message,
        "logprobs": None,
        "finish_reason": completion.finish_reason,
    }
    if passed is not None:
        message.update(passed.message)
        choice.update(passed.choice)
    return choice


def completion_body(completion: Completion, model: str) -> dict[str, Any]:
    """A ``chat.completion`` object for a finished request."""
    return completions_body([completion], model)


def completions_body(completions: Sequence[Completion], model: str) -> dict[str, Any]:
    """A ``chat.completion`` object whose choices are ``completions``, in order (``n``):
    the first one's id, model and top-level members, the usage summed."""
    first = completions[0]
    body = {
        "id": "chatcmpl-" + first.request_id,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": first.model or model,
        "choices": [_choice_body(c, i) for i, c in enumerate(completions)],
        "usage": usage_body(
            first.usage if len(completions) == 1 else total_usage([c.usage for c in completions])
        ),
    }
    if first.passthrough is not None:
        body.update(first.passthrough.response)
    return body


@attrs.define
class ChunkWriter:
    """Turns a request's events into ``chat.completion.chunk`` SSE payloads.

    Members passed through go where the upstream had them: a delta's (``refusal``,
    ``reasoning_content``…) in a chunk of their own, with the choice's of the same upstream
    chunk; a choice's alone (``logprobs``) with the next chunk, the text or tool call that
    a worker emits after them (so a token's logprobs stay with it); top-level ones
    (``system_fingerprint``) on every chunk from the one they came with.

    Args:
        request_id: the answer's id is ``chatcmpl-`` and this.
        model: the model named in the chunks.
        include_usage: each chunk has ``usage: null``, and a last one the usage.
        index: the choice's index (several writers write the choices of one answer).
        created: the answer's time (by default now).
    """

    request_id: str
    model: str
    include_usage: bool
    index: int = 0
    created: int = attrs.field(factory=lambda: int(time.time()))
    _top: dict[str, Any] = attrs.field(init=False, factory=dict)
    _pending: Mapping[str, Any] | None = attrs.field(init=False, default=None)

    def _chunk(
        self, delta: dict[str, Any], finish_reason: str | None = None, *, pending: bool = True
    ) -> bytes:
        choice = {"index": self.index, "delta": delta, "finish_reason": finish_reason}
        choice["logprobs"] = None
        if pending and self._pending is not None:
            choice.update(self._pending)
            self._pending = None
        chunk: dict[str, Any] = {
            "id": "chatcmpl-" + self.request_id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [choice],
        }
        if self._top:
            chunk.update(self._top)
        if self.include_usage:
            chunk["usage"] = None
        return json_bytes(chunk)

    def first(self) -> bytes:
        """The opening chunk, announcing the assistant's role (with the top-level members
        of the events written so far, but not their tokens' choice members)."""
        return self._chunk({"role": "assistant", "content": ""}, pending=False)

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
        if isinstance(event, Passthrough):
            return self._passthrough(event)
        return None

    def _passthrough(self, event: Passthrough) -> bytes | None:
        if event.response:
            self._top = {**self._top, **event.response}
        if event.choice:
            pending = self._pending
            if pending is not None:  # no token took them: they wait together
                merged = merge_passthrough(
                    Passthrough(choice=pending), Passthrough(choice=event.choice)
                )
                self._pending = merged.choice
            else:
                self._pending = event.choice
        return self._chunk(dict(event.message)) if event.message else None

    def finish(self, completion: Completion) -> bytes:
        """The final chunk of the choice, with its finish reason."""
        return self._chunk({}, completion.finish_reason)

    def usage_chunk(self, usage: Usage | None) -> bytes:
        """The chunk that ends an answer streamed with ``include_usage``: no choices."""
        chunk: dict[str, Any] = {
            "id": "chatcmpl-" + self.request_id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [],
        }
        chunk.update(self._top)
        chunk["usage"] = usage_body(usage)
        return json_bytes(chunk)

    def last(self, completion: Completion) -> list[bytes]:
        """The final chunk (with the finish reason), then the usage chunk when asked for."""
        chunks = [self.finish(completion)]
        if self.include_usage:
            chunks.append(self.usage_chunk(completion.usage))
        return chunks
