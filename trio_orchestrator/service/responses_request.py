"""The request side of ``POST /v1/responses`` (stateless): OpenAI's Responses API,
translated to a chat request.

The request becomes a :class:`~trio_orchestrator.types.PromptRequest` as a Chat Completions
request would (so limits, budgets, routing, fallbacks, coalescing and metrics apply):

- ``instructions`` → a leading system message; ``input`` text → a user message; message
  items → messages whose content parts are in Chat's shape (``input_text``/``output_text``
  → ``text``, ``input_image`` → ``image_url``, ``input_file`` → ``file``, ``refusal``);
  ``function_call`` items → the assistant's tool calls; ``function_call_output`` items →
  tool messages;
- the Chat Completions members the request implies go into
  :attr:`~trio_orchestrator.types.GenerationParams.extra` by their Chat names, as a chat
  client's would: ``max_completion_tokens``, ``temperature``, ``top_p``, ``tools`` (Chat's
  nested shape, ``strict`` kept), ``tool_choice``, ``parallel_tool_calls``,
  ``response_format`` (from ``text.format``), ``verbosity``, ``reasoning_effort``,
  ``metadata``, ``user``, ``service_tier``, ``safety_identifier``, ``prompt_cache_key``;
  unknown members travel as they came.

The request also keeps the client's body verbatim
(:attr:`~trio_orchestrator.types.PromptRequest.responses_body`): a provider with
``responses_api = true`` receives that body itself (see
:mod:`trio_orchestrator.workers.openai_responses`), every other one the translation.

Nothing is stored by the gateway. Unless every configured provider speaks the Responses API
natively (``native``), what needs a stored response or conversation
(``previous_response_id``, ``conversation``, ``item_reference`` items, ``background``) is
refused with a 400 naming it, as is what a chat upstream cannot carry (built-in tools and
their items, ``reasoning`` input items, ``include``, ``reasoning.summary``, ``top_logprobs``,
``max_tool_calls``, ``truncation: "auto"``, prompt templates): a router or fallback could
send the request to a translating provider. When every provider is native, all of it is
forwarded (the upstream stores responses as it does for its own clients), and the
translation, used then only for limits, budgets and logs, leaves out what it cannot carry.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from functools import partial
from typing import Any, TypeVar

import attrs

from ..types import GenerationParams, Message, PromptRequest, Tool, ToolCall
from .chat_schema import CHAT_SCHEMA
from .completions import check_model
from .errors import ApiError
from .validate import Fields, invalid

__all__ = ["ResponsesRequest", "parse_responses_request"]

T = TypeVar("T")

# Members that change the chat request in ways handled below (never forwarded as sent).
_OWN = frozenset(
    [
        "model",
        "input",
        "instructions",
        "stream",
        "stream_options",
        "store",
        "max_output_tokens",
        "tools",
        "tool_choice",
        "text",
        "reasoning",
        "truncation",
        "include",
    ]
)
# Members refused unless null (or false, for the flags), with why.
_REFUSED = {
    "previous_response_id": "this gateway stores no responses; send the whole conversation "
    "in `input` (the output items of the previous response, then the new input)",
    "conversation": "this gateway stores no conversations; send the whole conversation in `input`",
    "background": "background responses need stored responses, which this gateway does not keep",
    "prompt": "prompt templates live at OpenAI; send the prompt's text as `instructions`/`input`",
    "top_logprobs": "log probabilities are not carried by this endpoint",
    "max_tool_calls": "only function tools are supported, which the caller runs",
}
# Members a Chat Completions request has under the same name, forwarded as sent.
_SAME_NAME = ("temperature", "top_p", "parallel_tool_calls", "metadata", "user")
_SAME_NAME_TOO = ("service_tier", "safety_identifier", "prompt_cache_key")
_MESSAGE_ROLES = {"user": "user", "system": "system", "developer": "system"}
_MESSAGE_ROLES["assistant"] = "assistant"
_TOOL_CHOICES = ("none", "auto", "required")


@attrs.frozen
class ResponsesRequest:
    """A parsed ``/v1/responses`` request.

    Attributes:
        prompt: the request for the pipeline.
        stream: answer with the ``response.*`` server-sent events.
        echo: the request's members the ``response`` object repeats (instructions, tools,
            tool_choice, temperature…), by their Responses names.
    """

    prompt: PromptRequest
    stream: bool
    echo: Mapping[str, Any]


def parse_responses_request(
    body: Fields,
    models: Sequence[str],
    meta: Mapping[str, str],
    *,
    native: bool = False,
    **request: Any,
) -> ResponsesRequest:
    """Validate a ``/v1/responses`` body and turn it into a :class:`ResponsesRequest`.

    Args:
        body: the JSON body.
        models: the models served; any other ``model`` is a 404 (empty: any model).
        meta: labels for the request (API key id).
        native: every provider speaks the Responses API: forward what a translation cannot
            carry rather than refuse it (see the module docstring).
        request: further :class:`PromptRequest` fields (priority).

    Raises:
        ApiError: 400 naming the bad or unsupported member, or 404 for an unknown model.
    """
    model = check_model(body, models)
    if not native:
        _refuse_unsupported(body)
    instructions = body.text("instructions")
    messages = _input_messages(body, native)
    if instructions:
        messages = (Message("system", instructions), *messages)
    if not messages and not (native and body.data.get("input") is not None):
        raise invalid("input", "text or a non-empty array of input items", body.data.get("input"))
    extra, echo = _chat_members(body, native)
    params = GenerationParams(
        model=model,
        max_tokens=body.integer("max_output_tokens", minimum=1),
        temperature=body.number("temperature", minimum=0, maximum=2),
        top_p=body.number("top_p", minimum=0, maximum=1),
        tools=tuple(_tool(t) for t in extra.get("tools", ())),
        tool_choice=extra.get("tool_choice"),
        extra=extra,
    )
    user = body.text("user", max_length=256)
    labels = dict(meta) | ({"user": user} if user else {})
    prompt = PromptRequest(
        messages=messages,
        input=None if messages else "",  # all of it was stored upstream, or untranslatable
        params=params,
        meta=labels,
        responses_body=body.data,
        streaming=body.flag("stream"),
        **request,
    )
    echo |= {"instructions": instructions, "model": model}
    return ResponsesRequest(prompt, prompt.streaming, echo)


def _unsupported(path: str, why: str, value: str | None = None) -> ApiError:
    named = f"`{path}`" if value is None else f"`{path}` {value!r}"
    message = f"{named} is not supported on /v1/responses: {why}"
    return ApiError(400, message, code="unsupported_parameter", param=path)


def _or_skip(native: bool, make: Callable[[], T]) -> T | None:
    """``make()``; for a native request, ``None`` where it cannot be translated."""
    try:
        return make()
    except ApiError as exc:
        if native and exc.code == "unsupported_parameter":
            return None
        raise


def _refuse_unsupported(body: Fields) -> None:
    for name, why in _REFUSED.items():
        if body.data.get(name) not in (None, False):
            raise _unsupported(name, why)
    if body.array("include"):
        why = "extra output (encrypted reasoning, logprobs, search results) is not carried"
        raise _unsupported("include", why)
    if body.data.get("truncation") not in (None, "disabled"):
        raise _unsupported("truncation", 'only "disabled" (the default) is supported')
    body.flag("store")  # accepted either way: nothing is stored


# ----------------------------------------------------------------- input items


def _input_messages(body: Fields, native: bool) -> tuple[Message, ...]:
    value = body.data.get("input")
    if isinstance(value, str):
        return (Message("user", value),)
    if value is None:
        return ()
    items = body.array("input", max_items=4096)
    messages: list[Message] = []
    for i, item in enumerate(items):
        fields = body.item("input", i, item)
        kind = fields.data.get("type", "message")
        if kind == "function_call":
            _add_call(messages, _function_call(fields))
        elif (message := _or_skip(native, partial(_input_item, fields, kind, native))) is not None:
            messages.append(message)
    return tuple(messages)


def _input_item(fields: Fields, kind: Any, native: bool) -> Message:
    if kind == "message":
        return _message(fields, native)
    if kind == "function_call_output":
        return _function_output(fields)
    why = "only message, function_call and function_call_output items are supported"
    if kind == "item_reference":
        why = "item references need stored responses; send the item itself"
    raise _unsupported(fields.path_of("type"), why, str(kind))


def _add_call(messages: list[Message], call: ToolCall) -> None:
    """Chat puts an assistant turn's calls on its message: join the previous one when it is
    the assistant's (its text, or earlier calls of the same turn)."""
    last = messages[-1] if messages else None
    if last is not None and last.role == "assistant":
        messages[-1] = attrs.evolve(last, tool_calls=(*last.tool_calls, call), wire=None)
    else:
        messages.append(Message("assistant", tool_calls=(call,)))


def _message(fields: Fields, native: bool) -> Message:
    role = fields.text("role", required=True)
    if role not in _MESSAGE_ROLES:
        raise invalid(fields.path_of("role"), f"one of {sorted(_MESSAGE_ROLES)}", role)
    content = fields.data.get("content")
    if isinstance(content, str):
        return Message(_MESSAGE_ROLES[role], content)
    if not isinstance(content, list):
        raise invalid(fields.path_of("content"), "a string or an array of content parts", content)
    given = enumerate(content)
    read = (_or_skip(native, partial(_part, fields.item("content", i, p))) for i, p in given)
    parts = tuple(part for part in read if part is not None)
    text = "".join(str(p["text"]) for p in parts if p["type"] == "text")
    return Message(_MESSAGE_ROLES[role], text, parts=parts)


def _part(fields: Fields) -> dict[str, Any]:
    """One content part, in Chat Completions' shape."""
    kind = fields.text("type", required=True)
    if kind in ("input_text", "output_text"):
        return {"type": "text", "text": fields.text("text", required=True)}
    if kind == "refusal":
        return {"type": "refusal", "refusal": fields.text("refusal", required=True)}
    if kind == "input_image":
        return _image(fields)
    if kind == "input_file":
        return _file(fields)
    expected = "input_text, output_text, refusal, input_image or input_file"
    raise invalid(fields.path_of("type"), expected, kind)


def _image(fields: Fields) -> dict[str, Any]:
    url = fields.text("image_url")
    if url is None:
        if fields.text("file_id"):
            why = "images by file id need OpenAI's file store; send `image_url` (a URL or data URL)"
            raise _unsupported(fields.path_of("file_id"), why)
        raise invalid(fields.path_of("image_url"), "a URL or a data URL", missing=True)
    image = {"url": url}
    detail = fields.text("detail")
    if detail is not None:
        image["detail"] = detail
    return {"type": "image_url", "image_url": image}


def _file(fields: Fields) -> dict[str, Any]:
    if fields.text("file_url"):
        why = "Chat Completions takes files as `file_data` or `file_id`, not by URL"
        raise _unsupported(fields.path_of("file_url"), why)
    file = {
        name: fields.text(name)
        for name in ("file_data", "file_id", "filename")
        if fields.data.get(name) is not None
    }
    if "file_data" not in file and "file_id" not in file:
        raise invalid(fields.path_of("file_data"), "the file's data or file id", missing=True)
    return {"type": "file", "file": file}


def _function_call(fields: Fields) -> ToolCall:
    call_id = fields.text("call_id", required=True, max_length=256)
    name = fields.text("name", required=True, max_length=256)
    assert call_id is not None
    assert name is not None
    return ToolCall(call_id, name, fields.text("arguments", required=True) or "")


def _function_output(fields: Fields) -> Message:
    call_id = fields.text("call_id", required=True, max_length=256)
    output = fields.data.get("output")
    if isinstance(output, list):
        parts = [_part(fields.item("output", i, p)) for i, p in enumerate(output)]
        if any(p["type"] != "text" for p in parts):
            why = "a chat upstream takes only text as a tool's output"
            raise _unsupported(fields.path_of("output"), why)
        output = "".join(str(p["text"]) for p in parts)
    if not isinstance(output, str):
        raise invalid(fields.path_of("output"), "a string or an array of input_text", output)
    return Message("tool", output, tool_call_id=call_id)


# ----------------------------------------------------------------- parameters


def _chat_members(body: Fields, native: bool) -> tuple[dict[str, Any], dict[str, Any]]:
    """The Chat Completions members the request implies (``extra``), and what the response
    object echoes."""
    data = body.data
    extra = {k: v for k, v in data.items() if k not in _OWN and k not in _REFUSED}
    given = enumerate(body.array("tools"))
    read = (_or_skip(native, partial(_chat_tool, body.item("tools", i, t))) for i, t in given)
    tools = [tool for tool in read if tool is not None]
    echo: dict[str, Any] = {"tools": list(data.get("tools") or [])}
    chat = {
        "max_completion_tokens": body.integer("max_output_tokens", minimum=1),
        "tools": tools or None,
        "tool_choice": None if native else _tool_choice(body),
    }
    for name in _SAME_NAME + _SAME_NAME_TOO:  # held to the rules chat holds them to
        if name in CHAT_SCHEMA and (value := data.get(name)) is not None:
            CHAT_SCHEMA[name].check(value, name)
    if native:  # what a chat upstream cannot carry is not needed: only the body is sent
        chat |= _or_skip(native, lambda: _text_members(body)) or {}
        return extra | {k: v for k, v in chat.items() if v is not None}, echo
    chat |= _text_members(body) | _reasoning_members(body)
    extra |= {k: v for k, v in chat.items() if v is not None}
    for name in _SAME_NAME + _SAME_NAME_TOO:
        echo[name] = data.get(name)
    for name in ("max_output_tokens", "tool_choice", "text", "reasoning", "truncation"):
        echo[name] = data.get(name)
    return extra, echo


def _chat_tool(fields: Fields) -> dict[str, Any]:
    kind = fields.text("type", required=True)
    if kind != "function":
        why = "only function tools are supported (built-in tools run at OpenAI)"
        raise _unsupported(fields.path_of("type"), why, str(kind))
    name = fields.text("name", required=True, max_length=64)
    function: dict[str, Any] = {"name": name}
    description = fields.text("description")
    if description is not None:
        function["description"] = description
    parameters = fields.object("parameters")
    if parameters is not None:
        function["parameters"] = parameters.data
    strict = fields.data.get("strict")
    if strict is not None:
        function["strict"] = fields.flag("strict")
    return {"type": "function", "function": function}


def _tool(chat_tool: Mapping[str, Any]) -> Tool:
    function = chat_tool["function"]
    return Tool(function["name"], function.get("description", ""), function.get("parameters", {}))


def _tool_choice(body: Fields) -> str | dict[str, Any] | None:
    value = body.data.get("tool_choice")
    if value is None or value in _TOOL_CHOICES:
        return value
    choice = body.object("tool_choice") if isinstance(value, dict) else None
    if choice is not None and choice.data.get("type") == "function":
        name = choice.text("name", required=True, max_length=64)
        return {"type": "function", "function": {"name": name}}
    expected = 'one of "none", "auto", "required" or {"type": "function", "name": ...}'
    raise invalid("tool_choice", expected, value)


def _text_members(body: Fields) -> dict[str, Any]:
    text = body.object("text")
    if text is None:
        return {}
    out: dict[str, Any] = {"verbosity": text.text("verbosity")}
    fmt = text.object("format")
    if fmt is None:
        return out
    kind = fmt.text("type", required=True)
    checks: tuple[tuple[str, Callable[[str], object]], ...] = (
        ("name", fmt.text),
        ("description", fmt.text),
        ("strict", fmt.flag),
        ("schema", fmt.object),
    )
    for name, read in checks:
        if fmt.data.get(name) is not None:
            read(name)  # the type each kind documents, even where the kind ignores it
    if kind == "text":
        return out
    if kind == "json_object":
        return out | {"response_format": {"type": "json_object"}}
    if kind != "json_schema":
        raise invalid(fmt.path_of("type"), '"text", "json_object" or "json_schema"', kind)
    schema_object = fmt.object("schema", required=True)
    assert schema_object is not None
    schema: dict[str, Any] = {"name": fmt.text("name", required=True, max_length=64)}
    schema["schema"] = schema_object.data
    if fmt.data.get("description") is not None:
        schema["description"] = fmt.text("description")
    if fmt.data.get("strict") is not None:
        schema["strict"] = fmt.flag("strict")
    return out | {"response_format": {"type": "json_schema", "json_schema": schema}}


def _reasoning_members(body: Fields) -> dict[str, Any]:
    reasoning = body.object("reasoning")
    if reasoning is None:
        return {}
    if reasoning.data.get("summary") is not None or reasoning.data.get("generate_summary"):
        why = "reasoning summaries are not carried by a chat upstream"
        raise _unsupported("reasoning.summary", why)
    return {"reasoning_effort": reasoning.text("effort")}
