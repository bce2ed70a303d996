"""The OpenAI chat-completions wire format: requests in, completions and chunks out."""

from __future__ import annotations

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
from ..types import TYPED_MEMBERS, GenerationParams, Message, PromptRequest, Tool, ToolCall
from .chat_schema import CHAT_MEMBERS, CHAT_SCHEMA, MESSAGE, MESSAGES, check_members
from .errors import ApiError
from .jsonenc import json_bytes
from .validate import Fields

__all__ = [
    "CHAT_MEMBERS",
    "ChatRequest",
    "ChunkWriter",
    "completion_body",
    "completions_body",
    "messages_of",
    "parse_chat_request",
    "stop_of",
    "total_usage",
    "usage_body",
]

_ROLES = {"system": "system", "developer": "system", "user": "user"}
_ROLES |= {"assistant": "assistant", "tool": "tool", "function": "tool"}

# The members that describe how the gateway answers its client, not what to generate: they
# stay out of GenerationParams.extra (the worker decides how it talks to its upstream).
_TRANSPORT = frozenset(["model", "messages", "stream", "stream_options"])


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

    Every member OpenAI documents is checked against its documented type and range
    (:data:`CHAT_MEMBERS`); every member but ``model``, ``messages``, ``stream`` and
    ``stream_options`` goes into ``params.extra`` exactly as sent, unknown members included
    (that is how vLLM's, Ollama's and OpenRouter's own options travel). Each message keeps
    the client's object as ``Message.wire`` and its content parts as ``Message.parts``.

    Args:
        body: the JSON body.
        models: the models served; any other ``model`` is a 404 (empty: any model).
        meta: labels for the request (API key id, user).
        request: further :class:`PromptRequest` fields (priority, request_id).

    Raises:
        ApiError: 400 naming the bad field (``param`` is its path), or 404 for an unknown
            model.
    """
    data = body.data
    check_members(data, skip=("messages",))
    model: str = data["model"]
    if models and model not in models:
        message = f"the model {model!r} does not exist; GET /v1/models lists the models served"
        raise ApiError(404, message, code="model_not_found", param="model")
    labels = dict(meta)
    if user := data.get("user"):
        labels["user"] = user
    stream = data.get("stream") is True
    prompt = PromptRequest(
        messages=messages_of(body),
        params=_params(data, model),
        meta=labels,
        streaming=stream,  # a whole answer may be retried after a fault mid-answer
        **request,
    )
    stream_options = data.get("stream_options") or {}
    include_usage = stream_options.get("include_usage") is True
    return ChatRequest(prompt, stream, include_usage)


# The members _params reads; a body with none of them has the default parameters.
_PARAMETERS = TYPED_MEMBERS | {"functions", "function_call"}


def _params(data: Mapping[str, Any], model: str) -> GenerationParams:
    if len(data) == 2:  # the usual request, {model, messages}: nothing else to read
        return GenerationParams(model=model)
    extra = {name: value for name, value in data.items() if name not in _TRANSPORT}
    if _PARAMETERS.isdisjoint(data):
        return GenerationParams(model=model, extra=extra)
    return _read_params(data, model, extra)


def _read_params(data: Mapping[str, Any], model: str, extra: dict[str, Any]) -> GenerationParams:
    """The typed view of an already checked body."""
    max_tokens = data.get("max_completion_tokens")
    tools = _tools(data.get("tools") or ()) or _functions(data.get("functions") or ())
    choice = data.get("tool_choice")
    return GenerationParams(
        model=model,
        max_tokens=max_tokens if max_tokens is not None else data.get("max_tokens"),
        temperature=_float(data.get("temperature")),
        top_p=_float(data.get("top_p")),
        stop=_stop_value(data.get("stop")),
        tools=tools,
        tool_choice=choice if choice is not None else _function_choice(data.get("function_call")),
        seed=data.get("seed"),
        extra=extra,
    )


def _float(value: float | None) -> float | None:
    return None if value is None else float(value)


def _stop_value(value: str | list[str] | None) -> tuple[str, ...]:
    if value is None:
        return ()
    return (value,) if isinstance(value, str) else tuple(value)


def stop_of(body: Fields) -> tuple[str, ...]:
    """The ``stop`` member (a string or up to 4 strings) as a tuple.

    Args:
        body: the request body.

    Returns:
        The stop sequences, ``()`` when there are none.

    Raises:
        ApiError: 400 when it is anything else.
    """
    value = body.data.get("stop")
    if value is not None:
        CHAT_SCHEMA["stop"].check(value, body.path_of("stop"))
    return _stop_value(value)


def _tools(tools: Sequence[Mapping[str, Any]]) -> tuple[Tool, ...]:
    """The function tools (custom tools have no typed form; they travel in ``extra``)."""
    return _functions([t["function"] for t in tools if t["type"] == "function"])


def _functions(functions: Sequence[Mapping[str, Any]]) -> tuple[Tool, ...]:
    return tuple(
        Tool(f["name"], f.get("description") or "", f.get("parameters") or {}) for f in functions
    )


def _function_choice(value: str | Mapping[str, Any] | None) -> str | Mapping[str, Any] | None:
    """The deprecated ``function_call`` as a ``tool_choice``."""
    if value is None or isinstance(value, str):
        return value
    return {"type": "function", "function": {"name": value["name"]}}


def messages_of(body: Fields) -> tuple[Message, ...]:
    """The ``messages`` member of a Chat Completions (or native) body as typed messages.

    Args:
        body: the request body.

    Returns:
        The messages, each with its wire object (``Message.wire``).

    Raises:
        ApiError: 400 naming the path of the first member that is not valid.
    """
    items = MESSAGES.check_shape(body.data.get("messages"), body.path_of("messages"))
    return tuple(
        _plain_message(item) or _message(body.item("messages", i, item))
        for i, item in enumerate(items)
    )


_PLAIN_ROLES = {role: value for role, value in _ROLES.items() if role not in ("tool", "function")}


def _plain_message(item: Any) -> Message | None:
    """The usual message, ``{"role": ..., "content": "..."}``, without the general reader;
    ``None`` for anything else (which the general reader then validates)."""
    if type(item) is not dict or len(item) != 2:
        return None
    role, content = item.get("role"), item.get("content")
    if type(role) is not str or type(content) is not str or role not in _PLAIN_ROLES:
        return None
    return Message(_PLAIN_ROLES[role], content, wire=item)


def _message(fields: Fields) -> Message:
    """One message of any role, checked against OpenAI's schema, with its typed view."""
    data = fields.data
    MESSAGE.check(data, fields.path)
    role = data["role"]
    content = data.get("content")
    parts = tuple(content) if isinstance(content, list) else ()
    calls = tuple(_tool_call(call) for call in data.get("tool_calls") or ())
    if (function_call := data.get("function_call")) is not None:
        calls += (
            ToolCall(function_call["name"], function_call["name"], function_call["arguments"]),
        )
    tool_call_id = data.get("tool_call_id")
    if role == "function":  # answers the deprecated function_call, whose id is its name
        tool_call_id = data["name"]
    return Message(
        role=_ROLES[role],
        content=_text(content),
        name=data.get("name") if role != "function" else None,
        tool_calls=calls,
        tool_call_id=tool_call_id,
        parts=parts,
        wire=data,
    )


def _text(content: str | list[Mapping[str, Any]] | None) -> str:
    """The text of a message's content: the string, or its text parts joined."""
    if content is None or isinstance(content, str):
        return content or ""
    return "".join(part["text"] for part in content if part["type"] == "text")


def _tool_call(call: Mapping[str, Any]) -> ToolCall:
    if call["type"] == "custom":  # a custom tool's input is free text, not JSON arguments
        return ToolCall(call["id"], call["custom"]["name"], call["custom"]["input"])
    function = call["function"]
    return ToolCall(call["id"], function["name"], function["arguments"])


# ----------------------------------------------------------------- responses
#
# An answer carries what the upstream sent: the usage details (cached, cache-write and
# reasoning token counts over the upstream's own usage members), and the members the
# workers pass through uninterpreted (Passthrough: logprobs, refusal, annotations,
# reasoning_content, system_fingerprint, service_tier…), each in its place. Several
# completions make one answer of several choices (``n``).


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
