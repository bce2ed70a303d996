"""Requests in Anthropic's Messages API shape: the ``/v1/messages`` body for a request.

A request arrives in Chat Completions terms: typed ``GenerationParams`` fields, every member
the client sent in ``extra`` by its wire name, and messages whose ``parts`` are OpenAI
content parts. Each member is translated to its Messages API equivalent,
accepted when its value asks for nothing, sent unchanged when it is one of Anthropic's own,
or refused with :class:`~trio_orchestrator.errors.UnsupportedParameter` naming it — before
any call, so a refusal never reaches the provider, its breaker or a retry. The rules are the
table in :mod:`trio_orchestrator.compatibility`.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Callable, Mapping
from typing import Any

import attrs

from ..compatibility import ANTHROPIC_NATIVE, CHAT_COMPLETIONS, is_no_op
from ..errors import UnsupportedParameter
from ..types import TYPED_MEMBERS, GenerationParams, Message, PromptRequest

__all__ = ["REASONING_BUDGETS", "messages_body"]

#: ``reasoning_effort`` → ``thinking.budget_tokens``. Each budget plus the default answer
#: room (4096 tokens) fits the 32k output limit of the smallest thinking models.
REASONING_BUDGETS: Mapping[str, int] = {
    "minimal": 1024,
    "low": 2048,
    "medium": 8192,
    "high": 16384,
    "xhigh": 24576,
    "max": 27648,
}
_MIN_BUDGET = 1024  # Anthropic's smallest thinking budget

_IMAGE_TYPES = frozenset(["image/jpeg", "image/png", "image/gif", "image/webp"])
_DATA_URL = re.compile(r"data:(?P<type>[^;,]*)(?P<params>(?:;[^;,]*)*),(?P<data>.*)", re.DOTALL)
_FILE_TYPES = {".pdf": "application/pdf", ".txt": "text/plain"}

#: ``service_tier`` values → Anthropic's (``standard_only`` is Anthropic's own).
_SERVICE_TIERS = {
    "auto": "auto",
    "priority": "auto",
    "default": "standard_only",
    "standard_only": "standard_only",
}

# Members that are the request itself: the worker builds them, they are no options.
_REQUEST_ITSELF = frozenset(["model", "messages", "stream", "stream_options"])


@attrs.define(eq=False)
class _Translation:
    """One body being built, and what a refusal needs to name."""

    params: GenerationParams
    provider: str
    default_max_tokens: int
    body: dict[str, Any] = attrs.field(factory=dict)

    def refuse(self, param: str, why: str) -> UnsupportedParameter:
        """The error refusing ``param``, for the caller to raise."""
        where = f"the Anthropic upstream {self.provider!r}" if self.provider else "Anthropic"
        why = why[:1].upper() + why[1:].rstrip(".")
        message = f"`{param}` cannot be sent to {where}. {why}. See docs/compatibility.md."
        return UnsupportedParameter(param, message, provider=self.provider)


def messages_body(
    request: PromptRequest, *, stream: bool, max_tokens: int, provider: str = ""
) -> dict[str, Any]:
    """The ``/v1/messages`` JSON body for ``request``.

    Args:
        request: the request.
        stream: ask for SSE.
        max_tokens: used when the request names none (Anthropic requires it).
        provider: the provider's name, for errors.

    Returns:
        The body, every member translated.

    Raises:
        UnsupportedParameter: a member (or message part) Anthropic cannot carry.
    """
    p = request.params
    t = _Translation(p, provider, max_tokens)
    chat = request.chat()
    t.body.update(model=p.model, max_tokens=p.max_tokens or max_tokens, messages=_messages(chat, t))
    _sampling(t, chat)
    _tools(t)
    _extra(t)
    if stream:
        t.body["stream"] = True
    return t.body


# ----------------------------------------------------------------- messages


def _messages(chat: tuple[Message, ...], t: _Translation) -> list[dict[str, Any]]:
    """Chat messages in Anthropic's shape: tool results are user turns; same roles merge."""
    out: list[dict[str, Any]] = []
    for i, message in enumerate(chat):
        _check_members(message, i, t)
        if message.role == "system":
            continue
        role = "assistant" if message.role == "assistant" else "user"
        blocks = _blocks(message, i, t)
        if out and out[-1]["role"] == role:
            out[-1]["content"].extend(blocks)
        else:
            out.append({"role": role, "content": blocks})
    return out


def _check_members(message: Message, i: int, t: _Translation) -> None:
    if message.name:
        raise t.refuse(f"messages[{i}].name", "the Messages API has no participant names")
    if (message.wire or {}).get("audio") is not None:
        raise t.refuse(f"messages[{i}].audio", "Claude does not answer in audio")


def _system(chat: tuple[Message, ...], t: _Translation) -> str | list[dict[str, Any]] | None:
    """The system prompt: one string, or text blocks when one carries a cache breakpoint."""
    blocks: list[dict[str, Any]] = []
    for i, message in enumerate(chat):
        if message.role != "system":
            continue
        for j, part in enumerate(message.parts):
            if part.get("type") != "text":
                raise t.refuse(f"messages[{i}].content[{j}]", "a system prompt carries text only")
        block: dict[str, Any] = {"type": "text", "text": message.content}
        marks = [p["cache_control"] for p in message.parts if p.get("cache_control") is not None]
        if marks:
            block["cache_control"] = marks[-1]
        blocks.append(block)
    if any("cache_control" in block for block in blocks):
        return [block for block in blocks if block["text"] or "cache_control" in block]
    return "\n\n".join(block["text"] for block in blocks) or None


def _blocks(message: Message, i: int, t: _Translation) -> list[dict[str, Any]]:
    content = _content(message, i, t)
    if message.role == "tool":
        result = content if message.parts else message.content
        return [{"type": "tool_result", "tool_use_id": message.tool_call_id, "content": result}]
    refusal = (message.wire or {}).get("refusal")
    if message.role == "assistant" and isinstance(refusal, str) and refusal:
        content.append({"type": "text", "text": refusal})
    for call in message.tool_calls:
        try:
            arguments = json.loads(call.arguments or "{}")
        except ValueError:
            arguments = {"arguments": call.arguments}
        content.append({"type": "tool_use", "id": call.id, "name": call.name, "input": arguments})
    return content


def _content(message: Message, i: int, t: _Translation) -> list[dict[str, Any]]:
    if not message.parts:
        return [{"type": "text", "text": message.content}] if message.content else []
    blocks = (_part(part, f"messages[{i}].content[{j}]", t) for j, part in enumerate(message.parts))
    return [block for block in blocks if block is not None]


def _part(part: Mapping[str, Any], path: str, t: _Translation) -> dict[str, Any] | None:
    kind = part.get("type")
    block: dict[str, Any] | None
    if kind in ("text", "refusal"):
        text = part.get(str(kind))
        block = {"type": "text", "text": text} if isinstance(text, str) and text else None
    elif kind == "image_url":
        block = _image(part.get("image_url") or {}, path, t)
    elif kind == "file":
        block = _document(part.get("file") or {}, path, t)
    elif kind == "input_audio":
        raise t.refuse(path, "Claude does not read audio; transcribe it first")
    else:
        raise t.refuse(path, f"the content part type {kind!r} has no Anthropic equivalent")
    if block is not None and part.get("cache_control") is not None:
        # Not OpenAI's, but how clients of Anthropic-fronting gateways mark cache breakpoints.
        block["cache_control"] = part["cache_control"]
    return block


def _image(image: Mapping[str, Any], path: str, t: _Translation) -> dict[str, Any]:
    url = image.get("url")
    detail = image.get("detail")
    if detail not in (None, "auto", "high"):
        why = "Claude reads images at full resolution; send `auto` or `high`"
        raise t.refuse(f"{path}.image_url.detail", why)
    if isinstance(url, str) and url.startswith("data:"):
        media_type, data = _data_url(url, f"{path}.image_url.url", t)
        if media_type not in _IMAGE_TYPES:
            why = f"Anthropic reads JPEG, PNG, GIF and WebP images, not {media_type or 'this'}"
            raise t.refuse(f"{path}.image_url.url", why)
        source = {"type": "base64", "media_type": media_type, "data": data}
        return {"type": "image", "source": source}
    if isinstance(url, str) and url.startswith(("https://", "http://")):
        return {"type": "image", "source": {"type": "url", "url": url}}
    raise t.refuse(f"{path}.image_url.url", "an image is a base64 `data:` URL or an http(s) URL")


def _data_url(url: str, path: str, t: _Translation) -> tuple[str, str]:
    """The media type and base64 payload of a ``data:`` URL."""
    match = _DATA_URL.fullmatch(url)
    if match is None or ";base64" not in match["params"].lower():
        raise t.refuse(path, "a `data:` URL must be base64 (`data:<type>;base64,<data>`)")
    return match["type"].strip().lower(), match["data"]


def _document(file: Mapping[str, Any], path: str, t: _Translation) -> dict[str, Any]:
    if file.get("file_id") is not None:
        why = "OpenAI file ids mean nothing to Anthropic; send the file itself in `file_data`"
        raise t.refuse(f"{path}.file.file_id", why)
    data, filename = file.get("file_data"), file.get("filename")
    if not isinstance(data, str) or not data:
        raise t.refuse(f"{path}.file.file_data", "a file part needs its data")
    if data.startswith("data:"):
        media_type, data = _data_url(data, f"{path}.file.file_data", t)
    else:  # bare base64: the file name says what it is
        suffix = str(filename or "").lower().rpartition(".")[2]
        media_type = _FILE_TYPES.get(f".{suffix}", "")
    if media_type == "application/pdf":
        source = {"type": "base64", "media_type": media_type, "data": data}
    elif media_type == "text/plain":
        text = _text(data, f"{path}.file.file_data", t)
        source = {"type": "text", "media_type": media_type, "data": text}
    else:
        why = f"Anthropic reads PDF and plain-text files, not {media_type or 'this type'!r}"
        raise t.refuse(f"{path}.file", why)
    block: dict[str, Any] = {"type": "document", "source": source}
    if filename:
        block["title"] = filename
    return block


def _text(data: str, path: str, t: _Translation) -> str:
    try:
        return base64.b64decode(data, validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError) as exc:
        raise t.refuse(path, "a plain-text file must be base64 of UTF-8 text") from exc


# --------------------------------------------------------- typed parameters


def _sampling(t: _Translation, chat: tuple[Message, ...]) -> None:
    p = t.params
    if p.temperature is not None and p.temperature > 1:
        raise t.refuse("temperature", "Anthropic's temperature runs from 0 to 1; send 1 or less")
    if not is_no_op(CHAT_COMPLETIONS["seed"], p.seed):
        raise t.refuse("seed", CHAT_COMPLETIONS["seed"].note)
    optional = {
        "system": _system(chat, t),
        "temperature": p.temperature,
        "top_p": p.top_p,
        "stop_sequences": list(p.stop) or None,
    }
    t.body.update({k: v for k, v in optional.items() if v is not None})


def _tools(t: _Translation) -> None:
    p = t.params
    strict = _strict_tools(p.extra.get("tools"), t)
    if p.tools:
        t.body["tools"] = [
            {
                "name": tool.name,
                "description": tool.description,
                "input_schema": dict(tool.parameters) or {"type": "object", "properties": {}},
                **({"strict": True} if tool.name in strict else {}),
                **({} if tool.cache_control is None else {"cache_control": tool.cache_control}),
            }
            for tool in p.tools
        ]
    if p.tool_choice is not None:
        t.body["tool_choice"] = _tool_choice(p.tool_choice, t)


def _strict_tools(tools: Any, t: _Translation) -> frozenset[str]:
    """The names of the client's strict function tools; other tool types are refused."""
    strict = set()
    for i, tool in enumerate(tools if isinstance(tools, list) else ()):
        if not isinstance(tool, Mapping) or tool.get("type") != "function":
            kind = tool.get("type") if isinstance(tool, Mapping) else None
            raise t.refuse(f"tools[{i}].type", f"Anthropic has no {kind!r} tools, only functions")
        function = tool.get("function") or {}
        if function.get("strict") is True:
            strict.add(str(function.get("name")))
    return frozenset(strict)


def _tool_choice(choice: str | Mapping[str, Any], t: _Translation) -> dict[str, Any]:
    named = {"auto": "auto", "required": "any", "none": "none"}
    if isinstance(choice, str) and choice in named:
        return {"type": named[choice]}
    if isinstance(choice, Mapping) and choice.get("type") == "function":
        return {"type": "tool", "name": (choice.get("function") or {}).get("name")}
    if isinstance(choice, Mapping) and choice.get("type") in ("auto", "any", "tool", "none"):
        return dict(choice)  # already Anthropic's form (a library user's)
    raise t.refuse("tool_choice", "Anthropic can use any tool, a named function, or none")


# ------------------------------------------------------------- extra members


def _extra(t: _Translation) -> None:
    natives = []
    for name, value in t.params.extra.items():
        if name in TYPED_MEMBERS or name in _REQUEST_ITSELF:
            continue
        translate = _TRANSLATIONS.get(name)
        rule = CHAT_COMPLETIONS.get(name)
        if translate is not None:
            translate(t, name, value)
        elif rule is not None:
            if not is_no_op(rule, value):
                raise t.refuse(name, rule.note)
        elif name in ANTHROPIC_NATIVE:
            natives.append((name, value))
        else:
            why = "it is neither a Chat Completions member nor one of Anthropic's own"
            raise t.refuse(name, why)
    for name, value in natives:  # after the translations, which they may complete
        _native(t, name, value)


def _native(t: _Translation, name: str, value: Any) -> None:
    current = t.body.get(name)
    if current is None:
        t.body[name] = value
    elif _disjoint_objects(current, value):
        t.body[name] = {**current, **value}
    else:
        why = f"the request also sends the Chat Completions member that becomes `{name}`; send one"
        raise t.refuse(name, why)


def _disjoint_objects(a: Any, b: Any) -> bool:
    return isinstance(a, Mapping) and isinstance(b, Mapping) and a.keys().isdisjoint(b)


def _parallel_tool_calls(t: _Translation, name: str, value: Any) -> None:
    if value is None or value is True:
        return
    if value is not False:
        raise t.refuse(name, "expected true or false")
    choice = t.body.get("tool_choice") or {"type": "auto"}
    if "tools" in t.body and choice["type"] != "none":  # else no call to run in parallel
        t.body["tool_choice"] = {**choice, "disable_parallel_tool_use": True}


def _reasoning_effort(t: _Translation, name: str, value: Any) -> None:
    if value is None:
        return
    if value == "none":
        t.body["thinking"] = {"type": "disabled"}
        return
    budget = REASONING_BUDGETS.get(value) if isinstance(value, str) else None
    if budget is None:
        raise t.refuse(name, f"expected none or one of {', '.join(REASONING_BUDGETS)}")
    limit = t.params.max_tokens
    if limit is None:
        t.body["max_tokens"] = budget + t.default_max_tokens
    elif limit <= _MIN_BUDGET:
        why = (
            f"a token limit of {limit} leaves no room for Anthropic's smallest thinking budget "
            f"({_MIN_BUDGET} tokens); raise max_completion_tokens or leave reasoning_effort out"
        )
        raise t.refuse(name, why)
    else:  # the limit counts the reasoning too, at OpenAI as at Anthropic
        budget = min(budget, limit - 1)
    t.body["thinking"] = {"type": "enabled", "budget_tokens": budget}


def _response_format(t: _Translation, name: str, value: Any) -> None:
    kind = value.get("type") if isinstance(value, Mapping) else value
    if kind is None or kind == "text":
        return
    if kind == "json_object":
        why = "Anthropic's structured outputs need a schema; send a `json_schema` format"
        raise t.refuse(name, why)
    if kind != "json_schema":
        raise t.refuse(name, "expected a `text` or `json_schema` format")
    spec = value.get("json_schema") or {}
    if not isinstance(spec.get("schema"), Mapping):
        why = "Anthropic's structured outputs need the schema"
        raise t.refuse(f"{name}.json_schema.schema", why)
    schema = dict(spec["schema"])
    if spec.get("description") and "description" not in schema:
        schema["description"] = spec["description"]  # guidance for the model, kept
    t.body["output_config"] = {"format": {"type": "json_schema", "schema": schema}}


def _user_id(t: _Translation, name: str, value: Any) -> None:
    if value is None or value == "":
        return
    if not isinstance(value, str):
        raise t.refuse(name, "expected a string")
    current = (t.body.get("metadata") or {}).get("user_id")
    if current is not None and current != value:
        raise t.refuse(name, "`user` and `safety_identifier` differ; Anthropic carries one user id")
    t.body["metadata"] = {"user_id": value}


def _service_tier(t: _Translation, name: str, value: Any) -> None:
    if value is None:
        return
    tier = _SERVICE_TIERS.get(value) if isinstance(value, str) else None
    if tier is None:
        raise t.refuse(name, f"Anthropic serves `auto`, `default` and `priority`, not {value!r}")
    t.body["service_tier"] = tier


_TRANSLATIONS: Mapping[str, Callable[[_Translation, str, Any], None]] = {
    "parallel_tool_calls": _parallel_tool_calls,
    "reasoning_effort": _reasoning_effort,
    "response_format": _response_format,
    "safety_identifier": _user_id,
    "service_tier": _service_tier,
    "user": _user_id,
}
