"""The OpenAI Chat Completions request body, member by member, as the gateway checks it.

Written from OpenAI's API reference (``POST /v1/chat/completions``, as the official ``openai``
SDK's ``CompletionCreateParams`` types it). The door checks each member's type and documented
range; it does not second-guess vocabularies that providers extend (``reasoning_effort``,
``service_tier``, ``verbosity``, voices, formats, image detail levels): those are strings, and
the upstream judges the value. Roles and ``type`` discriminators are closed.

:data:`CHAT_MEMBERS` is the list of members, for the compatibility table (a test compares the
two, so a member added here without a row in docs/compatibility.md fails).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .errors import ApiError
from .schema import (
    Array,
    Boolean,
    Integer,
    Map,
    Number,
    Object,
    OneOf,
    Schema,
    String,
    Tagged,
    Unchecked,
)
from .validate import invalid

__all__ = ["CHAT_MEMBERS", "CHAT_SCHEMA", "MESSAGE", "MESSAGES", "check_members"]

_STR = String()
_BOOL = Boolean()
_JSON_SCHEMA = Unchecked((dict,), "a JSON Schema object")

# Every content part may carry an explicit prompt-cache breakpoint.
_BREAKPOINT = Object({"mode": _STR, "ttl": _STR}, frozenset({"mode"}))


def _part(name: str, schema: Schema) -> Object:
    """A content part: ``{"type": name, name: ...}``."""
    return Object({name: schema, "prompt_cache_breakpoint": _BREAKPOINT}, frozenset({name}))


def _fields(names: str, required: str = "", nullable: str = "") -> Object:
    """An object of string members (space-separated names)."""
    members = dict.fromkeys(names.split(), _STR)
    return Object(members, frozenset(required.split()), frozenset(nullable.split()))


_TEXT = _part("text", _STR)
_IMAGE = _part("image_url", _fields("url detail", "url"))
_AUDIO = _part("input_audio", _fields("data format", "data format"))
_FILE = _part("file", _fields("file_data file_id filename"))
_REFUSAL = Object({"refusal": _STR}, frozenset({"refusal"}))


def _content(**parts: Object) -> OneOf:
    return OneOf({str: _STR, list: Array(Tagged(parts), min_items=1)})


_TEXT_CONTENT = _content(text=_TEXT)
_NAME = String(max_length=256)

_FUNCTION_CALL = _fields("name arguments", "name arguments")
_TOOL_CALL = Tagged(
    {
        "function": Object({"id": _STR, "function": _FUNCTION_CALL}, frozenset({"id", "function"})),
        "custom": Object(
            {"id": _STR, "custom": _fields("name input", "name input")},
            frozenset({"id", "custom"}),
        ),
    }
)


def _message(content: OneOf, *, required: str = "content", **members: Schema) -> Object:
    schemas: dict[str, Schema] = {"content": content, "name": _NAME, **members}
    return Object(schemas, frozenset(required.split()))


#: One message of ``messages``, by role.
MESSAGE = Tagged(
    {
        "system": _message(_TEXT_CONTENT),
        "developer": _message(_TEXT_CONTENT),
        "user": _message(_content(text=_TEXT, image_url=_IMAGE, input_audio=_AUDIO, file=_FILE)),
        "assistant": Object(
            {
                "content": _content(text=_TEXT, refusal=_REFUSAL),
                "name": _NAME,
                "refusal": _STR,
                "audio": _fields("id", "id"),
                "tool_calls": Array(_TOOL_CALL),
                "function_call": _FUNCTION_CALL,
            },
            nullable=frozenset({"content", "refusal", "audio", "function_call"}),
        ),
        "tool": _message(_TEXT_CONTENT, required="content tool_call_id", tool_call_id=_STR),
        "function": Object(
            {"content": _STR, "name": _NAME}, frozenset({"name"}), frozenset({"content"})
        ),
    },
    tag="role",
)

_FUNCTION = Object(
    {
        "name": String(max_length=64),
        "description": _STR,
        "parameters": _JSON_SCHEMA,
        "strict": _BOOL,
    },
    frozenset({"name"}),
    frozenset({"strict"}),
)
_NAMED = _fields("name", "name")
_CUSTOM_FORMAT = Tagged(
    {
        "text": Object(),
        "grammar": Object(
            {"grammar": _fields("definition syntax", "definition syntax")},
            frozenset({"grammar"}),
        ),
    }
)
_TOOL = Tagged(
    {
        "function": Object({"function": _FUNCTION}, frozenset({"function"})),
        "custom": Object(
            {
                "custom": Object(
                    {"name": String(max_length=64), "description": _STR, "format": _CUSTOM_FORMAT},
                    frozenset({"name"}),
                )
            },
            frozenset({"custom"}),
        ),
    }
)
_ALLOWED_TOOLS = Object(
    {
        "mode": String(choices=("auto", "required")),
        "tools": Array(Unchecked((dict,), "a tool reference object")),
    },
    frozenset({"mode", "tools"}),
)
_TOOL_CHOICE = OneOf(
    {
        str: String(choices=("none", "auto", "required")),
        dict: Tagged(
            {
                "function": Object({"function": _NAMED}, frozenset({"function"})),
                "custom": Object({"custom": _NAMED}, frozenset({"custom"})),
                "allowed_tools": Object(
                    {"allowed_tools": _ALLOWED_TOOLS}, frozenset({"allowed_tools"})
                ),
            }
        ),
    }
)
_RESPONSE_FORMAT = Tagged(
    {
        "text": Object(),
        "json_object": Object(),
        "json_schema": Object(
            {
                "json_schema": Object(
                    {
                        "name": String(max_length=64),
                        "description": _STR,
                        "schema": _JSON_SCHEMA,
                        "strict": _BOOL,
                    },
                    frozenset({"name"}),
                    frozenset({"strict"}),
                )
            },
            frozenset({"json_schema"}),
        ),
    }
)
_WEB_SEARCH = Object(
    {
        "search_context_size": _STR,
        "user_location": Tagged(
            {
                "approximate": Object(
                    {"approximate": _fields("city country region timezone")},
                    frozenset({"approximate"}),
                )
            }
        ),
    },
    nullable=frozenset({"user_location"}),
)
_VOICE = OneOf({str: _STR, dict: _fields("id", "id")})

#: The ``messages`` member.
MESSAGES = Array(MESSAGE, min_items=1, max_items=4096)

#: Every member of a Chat Completions request body the gateway knows, with its schema.
#: Members not named here are forwarded unchecked to OpenAI-compatible upstreams.
CHAT_SCHEMA: Mapping[str, Schema] = {
    "model": String(max_length=256),
    "messages": MESSAGES,
    "audio": Object({"format": _STR, "voice": _VOICE}, frozenset({"format", "voice"})),
    "frequency_penalty": Number(-2.0, 2.0),
    "function_call": OneOf({str: String(choices=("none", "auto")), dict: _NAMED}),
    "functions": Array(_FUNCTION, min_items=1, max_items=128),
    "logit_bias": Map(Integer(-100, 100)),
    "logprobs": _BOOL,
    "max_completion_tokens": Integer(minimum=1),
    "max_tokens": Integer(minimum=1),
    "metadata": Map(String(max_length=512), max_items=16, max_key_length=64),
    "modalities": Array(String(choices=("text", "audio"))),
    "moderation": Object({"model": _STR, "policy": Object()}, frozenset({"model"})),
    "n": Integer(1, 16),  # service.choices.MAX_CHOICES: the gateway fans n > 1 out
    "parallel_tool_calls": _BOOL,
    "prediction": Tagged({"content": Object({"content": _TEXT_CONTENT}, frozenset({"content"}))}),
    "presence_penalty": Number(-2.0, 2.0),
    "prompt_cache_key": _STR,
    "prompt_cache_options": _fields("mode ttl"),
    "prompt_cache_retention": _STR,
    "reasoning_effort": _STR,
    "response_format": _RESPONSE_FORMAT,
    "safety_identifier": String(max_length=128),
    "seed": Integer(-(1 << 63), (1 << 63) - 1),
    "service_tier": _STR,
    "stop": OneOf({str: _STR, list: Array(_STR, max_items=4)}),
    "store": _BOOL,
    "stream": _BOOL,
    "stream_options": Object({"include_usage": _BOOL, "include_obfuscation": _BOOL}),
    "temperature": Number(0.0, 2.0),
    "tool_choice": _TOOL_CHOICE,
    "tools": Array(_TOOL, max_items=128),
    "top_logprobs": Integer(0, 20),
    "top_p": Number(0.0, 1.0),
    "user": String(max_length=256),
    "verbosity": _STR,
    "web_search_options": _WEB_SEARCH,
}

# The members whose description would be a paragraph; the table names their shape instead.
_SHORT = {
    "messages": "a non-empty array of messages (roles system, developer, user, assistant, "
    "tool, function)",
    "tools": "an array of up to 128 tools (function or custom)",
    "tool_choice": '"none", "auto", "required", or a function, custom or allowed_tools choice',
    "response_format": 'an object whose `type` is "text", "json_object" or "json_schema"',
    "functions": "an array of up to 128 function definitions (deprecated)",
}

#: Each Chat Completions member the gateway checks, with a short description of its type.
CHAT_MEMBERS: Mapping[str, str] = {
    name: _SHORT.get(name) or schema.describe() for name, schema in CHAT_SCHEMA.items()
}

_REQUIRED = ("model", "messages")


def check_members(body: Mapping[str, Any], *, skip: tuple[str, ...] = ()) -> None:
    """Check every known member of a Chat Completions body; unknown ones pass unchecked.

    A null member counts as absent (as the SDKs send it), except ``model`` and ``messages``,
    which are required.

    Args:
        body: the request body.
        skip: members the caller checks itself (present or not, they are still required).

    Raises:
        ApiError: 400 naming the first bad value's path.
    """
    for name in _REQUIRED:
        if body.get(name) is None:
            raise invalid(name, CHAT_MEMBERS[name], missing=True)
    for name, value in body.items():
        schema = CHAT_SCHEMA.get(name)
        if schema is not None and value is not None and name not in skip:
            schema.check(value, name)
    if body.get("top_logprobs") is not None and body.get("logprobs") is not True:
        message = "`top_logprobs` is used only with `logprobs: true`; set `logprobs` too"
        raise ApiError(400, message, code="invalid_value", param="top_logprobs")
