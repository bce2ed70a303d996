"""Requests in AWS Bedrock's Converse shape: the ``/model/{modelId}/converse`` body.

The shapes are Bedrock Runtime's (``bedrock-runtime-2023-09-30``, the service model botocore
ships): ``system`` and ``messages`` of content blocks (``text``, ``image`` with raw ``bytes``
— base64 in JSON — ``toolUse``, ``toolResult``), ``inferenceConfig`` (``maxTokens``,
``temperature``, ``topP``, ``stopSequences``), ``toolConfig`` (``toolSpec`` with
``inputSchema.json``, ``toolChoice`` ``auto``/``any``/``tool``) and ``outputConfig``
(``textFormat`` with a JSON schema — Converse's native structured output — and ``effort``).

As for Anthropic (:mod:`.anthropic_request`), every member is translated, accepted when it
asks for nothing, sent unchanged when it is one of Converse's own, or refused with
:class:`~trio_orchestrator.errors.UnsupportedParameter` naming it — before any call.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from typing import Any

import attrs

from ..compatibility import CHAT_COMPLETIONS, is_no_op
from ..errors import UnsupportedParameter
from ..types import TYPED_MEMBERS, GenerationParams, Message, PromptRequest

__all__ = ["BEDROCK_NATIVE", "CLAUDE_FIELDS", "converse_body"]

#: Converse request members with no Chat Completions counterpart, sent unchanged when a
#: client puts them in its request (``extra_body`` in the OpenAI SDKs).
BEDROCK_NATIVE = frozenset(
    [
        "additionalModelRequestFields",
        "additionalModelResponseFieldPaths",
        "guardrailConfig",
        "performanceConfig",
        "promptVariables",
        "requestMetadata",
    ]
)

#: Anthropic Messages members that Claude models on Bedrock take in
#: ``additionalModelRequestFields`` (Bedrock's Claude parameters guide): a client of the
#: gateway's ``/v1/messages`` sends them by their names.
CLAUDE_FIELDS = frozenset(["thinking", "top_k"])

#: ``reasoning_effort`` values Converse's ``outputConfig.effort`` takes.
_EFFORTS = frozenset(["low", "medium", "high", "xhigh", "max"])
_IMAGE_FORMATS = {
    "image/png": "png",
    "image/jpeg": "jpeg",
    "image/gif": "gif",
    "image/webp": "webp",
}
_DATA_URL = re.compile(r"data:(?P<type>[^;,]*)(?P<params>(?:;[^;,]*)*),(?P<data>.*)", re.DOTALL)
_SERVICE_TIERS = {"auto": None, "default": "default", "priority": "priority", "flex": "flex"}
_REQUEST_ITSELF = frozenset(["model", "messages", "stream", "stream_options"])


@attrs.define(eq=False)
class _Translation:
    """One body being built, and what a refusal needs to name."""

    params: GenerationParams
    provider: str
    body: dict[str, Any] = attrs.field(factory=dict)

    def refuse(self, param: str, why: str) -> UnsupportedParameter:
        """The error refusing ``param``, for the caller to raise."""
        where = f"the Bedrock upstream {self.provider!r}" if self.provider else "Bedrock"
        why = why[:1].upper() + why[1:].rstrip(".")
        message = f"`{param}` cannot be sent to {where}. {why}. See docs/providers.md."
        return UnsupportedParameter(param, message, provider=self.provider)


def converse_body(request: PromptRequest, *, max_tokens: int, provider: str = "") -> dict[str, Any]:
    """The Converse (and ConverseStream) JSON body for ``request``; the model is in the URL.

    Args:
        request: the request.
        max_tokens: ``maxTokens`` when the request names none.
        provider: the provider's name, for errors.

    Returns:
        The body, every member translated.

    Raises:
        UnsupportedParameter: a member (or message part) Converse cannot carry.
    """
    p = request.params
    t = _Translation(p, provider)
    chat = request.chat()
    t.body["messages"] = _messages(chat, t)
    system = _system(chat, t)
    if system:
        t.body["system"] = system
    _inference(t, max_tokens)
    _tools(t)
    _extra(t)
    return t.body


# ----------------------------------------------------------------- messages


def _messages(chat: tuple[Message, ...], t: _Translation) -> list[dict[str, Any]]:
    """Chat messages as Converse turns: tool results are user turns; same roles merge."""
    out: list[dict[str, Any]] = []
    for i, message in enumerate(chat):
        if message.name:
            raise t.refuse(f"messages[{i}].name", "Converse has no participant names")
        if (message.wire or {}).get("audio") is not None:
            raise t.refuse(f"messages[{i}].audio", "Converse does not answer in audio")
        if message.role == "system":
            continue
        role = "assistant" if message.role == "assistant" else "user"
        blocks = _blocks(message, i, t)
        if out and out[-1]["role"] == role:
            out[-1]["content"].extend(blocks)
        else:
            out.append({"role": role, "content": blocks})
    return out


def _system(chat: tuple[Message, ...], t: _Translation) -> list[dict[str, Any]]:
    blocks: list[dict[str, Any]] = []
    for i, message in enumerate(chat):
        if message.role != "system":
            continue
        for j, part in enumerate(message.parts):
            if part.get("type") != "text":
                raise t.refuse(f"messages[{i}].content[{j}]", "a system prompt carries text only")
        if message.content:
            blocks.append({"text": message.content})
        if any(part.get("cache_control") is not None for part in message.parts):
            blocks.append({"cachePoint": {"type": "default"}})
    return blocks


def _blocks(message: Message, i: int, t: _Translation) -> list[dict[str, Any]]:
    content = _content(message, i, t)
    if message.role == "tool":
        # A result's content takes no cachePoint: a breakpoint in it goes after the result.
        result = [b for b in content if "cachePoint" not in b]
        if not message.parts:
            result = [{"text": message.content}]
        blocks = [{"toolResult": {"toolUseId": message.tool_call_id, "content": result}}]
        if message.parts and len(result) < len(content):
            blocks.append({"cachePoint": {"type": "default"}})
        return blocks
    refusal = (message.wire or {}).get("refusal")
    if message.role == "assistant" and isinstance(refusal, str) and refusal:
        content.append({"text": refusal})
    for call in message.tool_calls:
        try:
            arguments = json.loads(call.arguments or "{}")
        except ValueError:
            arguments = {"arguments": call.arguments}
        content.append({"toolUse": {"toolUseId": call.id, "name": call.name, "input": arguments}})
    return content


def _content(message: Message, i: int, t: _Translation) -> list[dict[str, Any]]:
    if not message.parts:
        return [{"text": message.content}] if message.content else []
    blocks: list[dict[str, Any]] = []
    for j, part in enumerate(message.parts):
        block = _part(part, f"messages[{i}].content[{j}]", t)
        if block is not None:
            blocks.append(block)
        if part.get("cache_control") is not None:
            # Anthropic's cache breakpoint on a block is Converse's cachePoint after it.
            blocks.append({"cachePoint": {"type": "default"}})
    return blocks


def _part(part: Mapping[str, Any], path: str, t: _Translation) -> dict[str, Any] | None:
    kind = part.get("type")
    if kind in ("text", "refusal"):
        text = part.get(str(kind))
        return {"text": text} if isinstance(text, str) and text else None
    if kind == "image_url":
        return _image(part.get("image_url") or {}, path, t)
    raise t.refuse(path, f"the content part type {kind!r} has no Converse equivalent here")


def _image(image: Mapping[str, Any], path: str, t: _Translation) -> dict[str, Any]:
    url = image.get("url")
    if image.get("detail") not in (None, "auto", "high"):
        raise t.refuse(f"{path}.image_url.detail", "Bedrock reads images whole; send `auto`")
    match = _DATA_URL.fullmatch(url) if isinstance(url, str) else None
    if match is None or ";base64" not in match["params"].lower():
        why = "Bedrock takes image bytes, not URLs: send a base64 `data:` URL"
        raise t.refuse(f"{path}.image_url.url", why)
    media_type = match["type"].strip().lower()
    if media_type not in _IMAGE_FORMATS:
        why = f"Bedrock reads PNG, JPEG, GIF and WebP images, not {media_type or 'this'}"
        raise t.refuse(f"{path}.image_url.url", why)
    # A blob member is base64 in Converse's JSON: the data URL's payload as it is.
    source = {"bytes": match["data"]}
    return {"image": {"format": _IMAGE_FORMATS[media_type], "source": source}}


# --------------------------------------------------------- typed parameters


def _inference(t: _Translation, max_tokens: int) -> None:
    p = t.params
    if not is_no_op(CHAT_COMPLETIONS["seed"], p.seed):
        raise t.refuse("seed", "Converse has no sampling seed")
    config = {
        "maxTokens": p.max_tokens or max_tokens,
        "temperature": p.temperature,
        "topP": p.top_p,
        "stopSequences": list(p.stop) or None,
    }
    t.body["inferenceConfig"] = {k: v for k, v in config.items() if v is not None}


def _tools(t: _Translation) -> None:
    p = t.params
    strict = _strict_tools(p.extra.get("tools"), t)
    choice = _tool_choice(p.tool_choice, t)
    if not p.tools or choice == "none":
        # Converse has no "none": a model offered no tools calls none.
        return
    tools: list[dict[str, Any]] = []
    for tool in p.tools:
        spec: dict[str, Any] = {
            "name": tool.name,
            "inputSchema": {"json": dict(tool.parameters) or {"type": "object", "properties": {}}},
        }
        if tool.description:
            spec["description"] = tool.description
        if tool.name in strict:
            spec["strict"] = True
        tools.append({"toolSpec": spec})
        if tool.cache_control is not None:
            tools.append({"cachePoint": {"type": "default"}})  # Converse's breakpoint after it
    t.body["toolConfig"] = {"tools": tools}
    if choice is not None:
        t.body["toolConfig"]["toolChoice"] = choice


def _strict_tools(tools: Any, t: _Translation) -> frozenset[str]:
    strict = set()
    for i, tool in enumerate(tools if isinstance(tools, list) else ()):
        if not isinstance(tool, Mapping) or tool.get("type") != "function":
            kind = tool.get("type") if isinstance(tool, Mapping) else None
            raise t.refuse(f"tools[{i}].type", f"Converse has no {kind!r} tools, only functions")
        if (tool.get("function") or {}).get("strict") is True:
            strict.add(str(tool["function"].get("name")))
    return frozenset(strict)


def _tool_choice(choice: str | Mapping[str, Any] | None, t: _Translation) -> Any:
    if choice is None or choice == "auto":
        return {"auto": {}} if choice else None
    if choice == "none":
        return "none"
    if choice == "required":
        return {"any": {}}
    if isinstance(choice, Mapping) and choice.get("type") == "function":
        return {"tool": {"name": (choice.get("function") or {}).get("name")}}
    raise t.refuse("tool_choice", "Converse can use any tool, a named function, or none")


# ------------------------------------------------------------- extra members


def _extra(t: _Translation) -> None:
    for name, value in t.params.extra.items():
        if name in TYPED_MEMBERS or name in _REQUEST_ITSELF:
            continue
        translate = _TRANSLATIONS.get(name)
        rule = CHAT_COMPLETIONS.get(name)
        if translate is not None:
            translate(t, name, value)
        elif rule is not None:
            if not is_no_op(rule, value):
                # The table's notes speak of Anthropic's API; OpenAI's own deprecations hold.
                deprecated = rule.note.startswith("Deprecated")
                raise t.refuse(name, rule.note if deprecated else "Converse has no equivalent")
        elif name in CLAUDE_FIELDS:
            fields = t.body.setdefault("additionalModelRequestFields", {})
            fields[name] = value
        elif name in BEDROCK_NATIVE:
            if name in t.body:
                why = f"the request also sends the Chat Completions member that becomes `{name}`"
                raise t.refuse(name, why)
            t.body[name] = value
        else:
            raise t.refuse(name, "it is neither a Chat Completions member nor one of Converse's")


def _output_config(t: _Translation) -> dict[str, Any]:
    config: dict[str, Any] = t.body.setdefault("outputConfig", {})
    return config


def _parallel_tool_calls(t: _Translation, name: str, value: Any) -> None:
    if value is None or value is True:
        return
    raise t.refuse(name, "Converse cannot forbid parallel tool calls; leave it out")


def _reasoning_effort(t: _Translation, name: str, value: Any) -> None:
    if value is None:
        return
    if value not in _EFFORTS:
        raise t.refuse(name, f"Converse's effort is one of {', '.join(sorted(_EFFORTS))}")
    _output_config(t)["effort"] = value


def _response_format(t: _Translation, name: str, value: Any) -> None:
    kind = value.get("type") if isinstance(value, Mapping) else value
    if kind is None or kind == "text":
        return
    if kind == "json_object":
        why = "Converse's structured output needs a schema; send a `json_schema` format"
        raise t.refuse(name, why)
    if kind != "json_schema":
        raise t.refuse(name, "expected a `text` or `json_schema` format")
    spec = value.get("json_schema") or {}
    if not isinstance(spec.get("schema"), Mapping):
        raise t.refuse(f"{name}.json_schema.schema", "Converse's structured output needs it")
    # JsonSchemaDefinition.schema is a string holding the schema, not the object.
    schema: dict[str, Any] = {"schema": json.dumps(spec["schema"])}
    for member in ("name", "description"):
        if spec.get(member):
            schema[member] = spec[member]
    text_format = {"type": "json_schema", "structure": {"jsonSchema": schema}}
    _output_config(t)["textFormat"] = text_format


def _user_id(t: _Translation, name: str, value: Any) -> None:
    if value is None or value == "":
        return
    if not isinstance(value, str):
        raise t.refuse(name, "expected a string")
    metadata = t.body.setdefault("requestMetadata", {})
    if metadata.get("user", value) != value:
        raise t.refuse(name, "`user` and `safety_identifier` differ; Bedrock logs one user")
    metadata["user"] = value


def _service_tier(t: _Translation, name: str, value: Any) -> None:
    if value is None or value == "auto":
        return
    tier = _SERVICE_TIERS.get(value) if isinstance(value, str) else None
    if tier is None:
        raise t.refuse(name, f"Bedrock serves `default`, `priority` and `flex`, not {value!r}")
    t.body["serviceTier"] = {"type": tier}


_TRANSLATIONS: Mapping[str, Callable[[_Translation, str, Any], None]] = {
    "parallel_tool_calls": _parallel_tool_calls,
    "reasoning_effort": _reasoning_effort,
    "response_format": _response_format,
    "safety_identifier": _user_id,
    "service_tier": _service_tier,
    "user": _user_id,
}
