"""Anthropic's Messages format, the request side: ``POST /v1/messages`` bodies in, a
:class:`~trio_orchestrator.types.PromptRequest` out.

The request is translated into the gateway's own model, which any worker serves:

* ``system`` (a string or text blocks) becomes system messages, one per block;
* a user turn's ``tool_result`` blocks become ``tool`` messages (first, as Anthropic requires
  them to come first), its other blocks one user message whose ``parts`` are in OpenAI's
  Chat Completions shape: ``text`` → text parts, ``image`` → ``image_url`` parts (a base64
  source as a ``data:`` URL, a URL source as it is), a base64 PDF ``document`` → a ``file``
  part, a plain-text ``document`` → a text part;
* a block's ``cache_control`` (a prompt-cache breakpoint) goes on its part (a system block
  or a ``tool_result`` with one gets a text part to carry it), a tool's on the
  :class:`~trio_orchestrator.types.Tool`; the workers turn them into their upstream's
  breakpoints;
* an assistant turn's ``tool_use`` blocks become tool calls (their ``input`` as JSON text);
  its ``thinking`` / ``redacted_thinking`` blocks are not sent on (``docs/anthropic-ingress.md``
  says why);
* ``max_tokens``, ``temperature``, ``top_p``, ``stop_sequences``, ``tools`` and
  ``tool_choice`` become the typed :class:`~trio_orchestrator.types.GenerationParams`;
  ``tool_choice.disable_parallel_tool_use`` becomes ``parallel_tool_calls: false``;
* members with a Chat Completions equivalent that the Anthropic worker turns back into
  exactly what was sent go to ``params.extra`` by their OpenAI names, so that an
  OpenAI-compatible upstream understands them too: ``metadata.user_id`` → ``user``,
  ``service_tier`` ``standard_only`` → ``default`` (``auto`` stays),
  ``tool_choice.disable_parallel_tool_use`` → ``parallel_tool_calls: false``;
* every other member (``top_k``, ``thinking``, ``output_config`` and members this parser
  does not know) goes to ``params.extra`` by its Anthropic name, exactly as sent: an
  Anthropic upstream receives it, an OpenAI-compatible one receives it as it is (vLLM takes
  ``top_k``). ``thinking: {"type": "disabled"}``, the default, is not sent at all.

What the gateway cannot carry is refused with a 400 naming it: server tools, file-id and URL
document sources, images inside tool results, a ``cache_control`` on a ``tool_use`` block.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import attrs

from ..types import GenerationParams, Message, PromptRequest, Tool, ToolCall
from .errors import ApiError
from .validate import Fields, invalid

__all__ = ["MessagesRequest", "parse_count_tokens_request", "parse_messages_request"]

#: The members read into typed fields (or read and dropped: ``stream``); the rest of a body
#: travels in ``params.extra``.
TYPED = frozenset(
    [
        "model",
        "messages",
        "system",
        "max_tokens",
        "stream",
        "temperature",
        "top_p",
        "stop_sequences",
        "tools",
        "tool_choice",
    ]
)

_TOOL_CHOICES = {"auto": "auto", "any": "required", "none": "none"}
_IMAGE_TYPES = ("image/jpeg", "image/png", "image/gif", "image/webp")


@attrs.frozen
class MessagesRequest:
    """A parsed ``/v1/messages`` request.

    Attributes:
        prompt: the request for the pipeline.
        stream: answer with Anthropic's server-sent events.
    """

    prompt: PromptRequest
    stream: bool


def parse_messages_request(
    body: Fields, models: Sequence[str], meta: Mapping[str, str], **request: Any
) -> MessagesRequest:
    """Validate an Anthropic Messages body and translate it (see the module docstring).

    Args:
        body: the JSON body.
        models: the models served; any other ``model`` is a 404 (empty: any model).
        meta: labels for the request (API key id, trace context).
        request: further :class:`PromptRequest` fields (priority).

    Returns:
        The request, in the gateway's model.

    Raises:
        ApiError: 400 naming the bad member, or 404 for an unknown model.
    """
    max_tokens = body.integer("max_tokens", minimum=1)
    if max_tokens is None:
        raise invalid("max_tokens", "an integer of at least 1", missing=True)
    messages = _conversation(body)
    params = _params(body, models, max_tokens)
    labels = dict(meta)
    if any(part.get("type") == "image_url" for m in messages for part in m.parts):
        labels["vision"] = "1"  # routing sends it only to deployments that can see
    user = _user_id(body)
    if user:
        labels["user"] = user
    stream = body.flag("stream")
    prompt = PromptRequest(
        messages=messages, params=params, meta=labels, streaming=stream, **request
    )
    return MessagesRequest(prompt, stream)


def parse_count_tokens_request(body: Fields, models: Sequence[str]) -> PromptRequest:
    """Validate a ``/v1/messages/count_tokens`` body (a Messages body without
    ``max_tokens``) and translate it, for a token estimate.

    Raises:
        ApiError: 400 naming the bad member, or 404 for an unknown model.
    """
    # Every member checked as /v1/messages checks it: a body one refuses the other refuses.
    body.flag("stream")
    body.integer("max_tokens", minimum=1)  # not needed for a count, but held to its rule
    return PromptRequest(messages=_conversation(body), params=_params(body, models))


def _params(body: Fields, models: Sequence[str], max_tokens: int | None = None) -> GenerationParams:
    """Every member of a Messages body but ``messages``, checked (``max_tokens`` given)."""
    return GenerationParams(
        model=_model(body, models),
        max_tokens=max_tokens,
        temperature=body.number("temperature", minimum=0, maximum=1),
        top_p=body.number("top_p", minimum=0, maximum=1),
        stop=_stop_sequences(body),
        tools=_tools(body),
        tool_choice=_tool_choice(body),
        extra=_extra(body),
    )


def _model(body: Fields, models: Sequence[str]) -> str:
    model = body.text("model", required=True, max_length=256)
    assert model is not None
    if models and model not in models:
        message = f"the model {model!r} does not exist; GET /v1/models lists the models served"
        raise ApiError(404, message, code="model_not_found", param="model")
    return model


def _conversation(body: Fields) -> tuple[Message, ...]:
    items = body.array("messages", required=True, max_items=100_000)
    if not items:
        raise invalid("messages", "a non-empty array of messages", items)
    out = list(_system(body))
    for i, item in enumerate(items):
        out += _turn(body.item("messages", i, item))
    return tuple(out)


def _system(body: Fields) -> list[Message]:
    value = body.data.get("system")
    if value is None or value == "":
        return []
    if isinstance(value, str):
        return [Message("system", value)]
    if not isinstance(value, list):
        raise invalid("system", "a string or an array of text blocks", value)
    out = []
    for i, item in enumerate(value):
        block = body.item("system", i, item)
        if block.text("type", required=True) != "text":
            raise invalid(block.path_of("type"), '"text"', block.data.get("type"))
        text = _text(block)
        part = _cached({"type": "text", "text": text}, block)
        out.append(Message("system", text, parts=(part,) if "cache_control" in part else ()))
    return out


def _cached(part: dict[str, Any], block: Fields) -> dict[str, Any]:
    """``part`` with the block's ``cache_control`` (a prompt-cache breakpoint), if it has one."""
    mark = block.object("cache_control")
    if mark is not None:
        part["cache_control"] = mark.data
    return part


def _text(block: Fields) -> str:
    text = block.text("text", required=True)
    assert text is not None
    return text


def _blocks(turn: Fields) -> list[Fields]:
    """The content blocks of a message; string content is one text block."""
    value = turn.data.get("content")
    path = turn.path_of("content")
    if isinstance(value, str):
        return [Fields({"type": "text", "text": value}, path)]
    if not isinstance(value, list) or not value:
        raise invalid(path, "a string or a non-empty array of content blocks", value)
    return [turn.item("content", i, block) for i, block in enumerate(value)]


def _turn(turn: Fields) -> list[Message]:
    role = turn.text("role", required=True)
    if role == "user":
        return _user_turn(_blocks(turn))
    if role == "assistant":
        return _assistant_turn(_blocks(turn))
    expected = '"user" or "assistant" (system text goes in `system`)'
    raise invalid(turn.path_of("role"), expected, role)


def _user_turn(blocks: list[Fields]) -> list[Message]:
    results = [_tool_result(b) for b in blocks if b.data.get("type") == "tool_result"]
    parts = [_user_part(b) for b in blocks if b.data.get("type") != "tool_result"]
    if not parts:
        return results
    text = "".join(p["text"] for p in parts if p["type"] == "text")
    plain = len(parts) == 1 and parts[0]["type"] == "text" and "cache_control" not in parts[0]
    return [*results, Message("user", text, parts=() if plain else tuple(parts))]


def _user_part(block: Fields) -> dict[str, Any]:
    kind = block.text("type", required=True)
    if kind == "text":
        return _cached({"type": "text", "text": _text(block)}, block)
    if kind == "image":
        return _cached({"type": "image_url", "image_url": {"url": _image_url(block)}}, block)
    if kind == "document":
        return _cached(_document(block), block)
    expected = '"text", "image", "document" or "tool_result" in a user turn'
    raise invalid(block.path_of("type"), expected, kind)


def _source(block: Fields) -> Fields:
    source = block.object("source", required=True)
    assert source is not None
    return source


def _image_url(block: Fields) -> str:
    source = _source(block)
    kind = source.text("type", required=True)
    if kind == "url":
        url = source.text("url", required=True)
        assert url is not None
        return url
    if kind != "base64":
        expected = (
            '"base64" or "url" (file ids need Anthropic\'s Files API, which the gateway lacks)'
        )
        raise invalid(source.path_of("type"), expected, kind)
    media = source.text("media_type", required=True)
    if media not in _IMAGE_TYPES:
        raise invalid(source.path_of("media_type"), f"one of {list(_IMAGE_TYPES)}", media)
    return f"data:{media};base64,{_base64(source)}"


def _base64(source: Fields) -> str:
    data = source.text("data", required=True, max_length=1 << 30)
    assert data is not None
    return data


def _document(block: Fields) -> dict[str, Any]:
    source = _source(block)
    kind = source.text("type", required=True)
    if kind == "text":
        return {"type": "text", "text": _base64(source)}
    if kind == "base64":
        media = source.text("media_type", required=True)
        if media != "application/pdf":
            raise invalid(source.path_of("media_type"), '"application/pdf"', media)
        file = {"file_data": f"data:application/pdf;base64,{_base64(source)}"}
        title = block.text("title")
        if title:
            file["filename"] = title
        return {"type": "file", "file": file}
    expected = '"base64" (a PDF) or "text"; URL, file and content sources are not supported'
    raise invalid(source.path_of("type"), expected, kind)


def _tool_result(block: Fields) -> Message:
    call_id = block.text("tool_use_id", required=True, max_length=256)
    value = block.data.get("content")
    if value is None or isinstance(value, str):
        text = value or ""
    elif isinstance(value, list):
        text = "".join(_result_text(block.item("content", i, item)) for i, item in enumerate(value))
    else:
        raise invalid(block.path_of("content"), "a string or an array of text blocks", value)
    if block.flag("is_error"):
        # Chat Completions has no error flag on a tool message; say it in the text.
        text = f"Error: {text}"
    # A breakpoint on the result goes on its text: the same end of the same prefix.
    part = _cached({"type": "text", "text": text}, block)
    parts = (part,) if "cache_control" in part else ()
    return Message("tool", text, tool_call_id=call_id, parts=parts)


def _result_text(block: Fields) -> str:
    kind = block.text("type", required=True)
    if kind != "text":
        expected = '"text" (tool messages carry text only through the gateway)'
        raise invalid(block.path_of("type"), expected, kind)
    return _text(block)


def _assistant_turn(blocks: list[Fields]) -> list[Message]:
    parts: list[dict[str, Any]] = []
    calls: list[ToolCall] = []
    for block in blocks:
        kind = block.text("type", required=True)
        if kind == "text":
            parts.append(_cached({"type": "text", "text": _text(block)}, block))
        elif kind == "tool_use":
            if block.object("cache_control") is not None:
                why = (
                    "a cache breakpoint on a `tool_use` block has no place in the gateway's "
                    "messages; put it on the `tool_result` that answers it"
                )
                raise invalid(block.path_of("cache_control"), why, block.data["cache_control"])
            calls.append(_tool_use(block))
        elif kind not in ("thinking", "redacted_thinking"):
            expected = '"text", "tool_use", "thinking" or "redacted_thinking" in an assistant turn'
            raise invalid(block.path_of("type"), expected, kind)
    text = "".join(p["text"] for p in parts)
    marked = any("cache_control" in p for p in parts)
    kept = tuple(parts) if marked else ()
    return [Message("assistant", text, tool_calls=tuple(calls), parts=kept)]


def _tool_use(block: Fields) -> ToolCall:
    call_id = block.text("id", required=True, max_length=256)
    name = block.text("name", required=True, max_length=256)
    arguments = block.object("input", required=True)
    assert call_id is not None
    assert name is not None
    assert arguments is not None
    return ToolCall(call_id, name, json.dumps(arguments.data, separators=(",", ":")))


def _stop_sequences(body: Fields) -> tuple[str, ...]:
    items = body.array("stop_sequences", max_items=1024)
    if not all(isinstance(s, str) for s in items):
        raise invalid("stop_sequences", "an array of strings", items)
    return tuple(items)


def _tools(body: Fields) -> tuple[Tool, ...]:
    tools = []
    for i, item in enumerate(body.array("tools", max_items=1024)):
        fields = body.item("tools", i, item)
        kind = fields.text("type")
        if kind not in (None, "custom"):
            message = (
                f"`{fields.path_of('type')}`: the server tool {kind!r} runs on Anthropic's "
                "servers, which the gateway is not; offer a client tool (name, description, "
                "input_schema) instead"
            )
            raise ApiError(400, message, code="unsupported_tool", param=fields.path_of("type"))
        name = fields.text("name", required=True, max_length=128)
        schema = fields.object("input_schema", required=True)
        assert name is not None
        assert schema is not None
        mark = fields.object("cache_control")
        cache_control = None if mark is None else mark.data
        tools.append(Tool(name, fields.text("description") or "", schema.data, cache_control))
    return tuple(tools)


def _tool_choice(body: Fields) -> str | Mapping[str, Any] | None:
    choice = body.object("tool_choice")
    if choice is None:
        return None
    kind = choice.text("type", required=True)
    if kind in _TOOL_CHOICES:
        return _TOOL_CHOICES[kind]
    if kind == "tool":
        name = choice.text("name", required=True)
        return {"type": "function", "function": {"name": name}}
    raise invalid(choice.path_of("type"), '"auto", "any", "tool" or "none"', kind)


#: Anthropic's ``service_tier`` values in OpenAI's words.
_SERVICE_TIERS = {"auto": "auto", "standard_only": "default"}


def _extra(body: Fields) -> dict[str, Any]:
    # A null member is an absent one, as everywhere at the door (the SDKs send nulls).
    extra = {k: v for k, v in body.data.items() if k not in TYPED and v is not None}
    if "metadata" in extra:
        del extra["metadata"]
        user = _user_id(body)
        if user:
            extra["user"] = user
    if "service_tier" in extra:
        tier = body.text("service_tier")
        if tier not in _SERVICE_TIERS:
            raise invalid("service_tier", '"auto" or "standard_only"', tier)
        extra["service_tier"] = _SERVICE_TIERS[tier]
    if "top_k" in extra:
        body.integer("top_k", minimum=0)
    if "thinking" in extra:
        thinking = body.object("thinking", required=True)
        assert thinking is not None
        kind = thinking.text("type", required=True)
        if kind == "disabled":
            del extra["thinking"]  # the default: nothing to ask of any upstream
        elif kind == "enabled":
            thinking.integer("budget_tokens", minimum=1)
        elif kind != "adaptive":
            raise invalid(thinking.path_of("type"), '"enabled", "adaptive" or "disabled"', kind)
    choice = body.object("tool_choice")
    if choice is not None:
        choice.text("name", max_length=128)
    if choice is not None and choice.flag("disable_parallel_tool_use"):
        extra["parallel_tool_calls"] = False  # OpenAI's name; Anthropic's worker maps it back
    return extra


def _user_id(body: Fields) -> str | None:
    metadata = body.object("metadata")
    return None if metadata is None else metadata.text("user_id", max_length=256)
