"""Requests in Google's ``generateContent`` shape (Gemini API and Vertex AI alike).

A request arrives in Chat Completions terms (typed ``GenerationParams`` fields, every member
the client sent in ``extra``, messages whose ``parts`` are OpenAI content parts). Each member
is translated to its ``generateContent`` equivalent, accepted when its value asks for
nothing, sent unchanged when it is one of Gemini's own (``safetySettings``,
``cachedContent``, ``labels``), or refused with
:class:`~trio_orchestrator.errors.UnsupportedParameter` naming it, before any call.

Gemini's ``functionCall`` parts carry no id (older models) and its ``functionResponse``
parts are matched by name: the worker invents a stable id for each call
(:func:`call_id`), and a tool message is sent back as the ``functionResponse`` of the
function its ``tool_call_id`` names in the conversation's earlier assistant turns.

Schemas (tool parameters, ``response_format``) within Gemini's OpenAPI subset go as
``parameters`` / ``responseSchema``; any other JSON Schema (``$ref``, ``$defs``,
``additionalProperties``, type arrays...) goes whole as ``parametersJsonSchema`` /
``responseJsonSchema``, which take JSON Schema, so no keyword is dropped.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Mapping
from typing import Any

import attrs

from ..compatibility import CHAT_COMPLETIONS, is_no_op
from ..errors import UnsupportedParameter
from ..types import TYPED_MEMBERS, GenerationParams, Message, PromptRequest

__all__ = [
    "GEMINI_NATIVE",
    "THINKING_BUDGETS",
    "call_id",
    "embed_body",
    "generate_body",
    "predict_body",
]

#: ``reasoning_effort`` → ``thinkingConfig.thinkingBudget`` (the budgets Google's own
#: OpenAI-compatible endpoint uses).
THINKING_BUDGETS: Mapping[str, int] = {"none": 0, "minimal": 512, "low": 1024, "medium": 8192,
                                       "high": 24576}  # fmt: skip

#: Request members of Gemini's own, sent as they come (``labels`` is Vertex AI's).
GEMINI_NATIVE = frozenset(["safetySettings", "cachedContent", "labels"])

#: The keywords of Gemini's ``Schema`` object (an OpenAPI 3.0 subset); a schema using others
#: is sent as JSON Schema instead.
_SCHEMA_KEYS = frozenset(
    [
        "type", "format", "title", "description", "nullable", "enum", "maxItems", "minItems",
        "properties", "required", "minProperties", "maxProperties", "minLength", "maxLength",
        "pattern", "example", "anyOf", "propertyOrdering", "default", "items", "minimum",
        "maximum",
    ]
)  # fmt: skip
_MAX_STOP = 5  # Gemini takes at most five stop sequences
_DATA_URL = re.compile(r"data:(?P<type>[^;,]*)(?P<params>(?:;[^;,]*)*),(?P<data>.*)", re.DOTALL)
_REQUEST_ITSELF = frozenset(["model", "messages", "stream", "stream_options"])


def call_id(index: int, name: str, args: Any) -> str:
    """A stable id for a ``functionCall`` that came without one: the same call at the same
    place in an answer always gets the same id."""
    digest = hashlib.sha256(f"{index}\0{name}\0{json.dumps(args, sort_keys=True)}".encode())
    return f"call_{digest.hexdigest()[:24]}"


@attrs.define(eq=False)
class _Translation:
    """One body being built, and what a refusal needs to name."""

    params: GenerationParams
    provider: str
    body: dict[str, Any] = attrs.field(factory=dict)
    config: dict[str, Any] = attrs.field(factory=dict)  # generationConfig

    def refuse(self, param: str, why: str) -> UnsupportedParameter:
        """The error refusing ``param``, for the caller to raise."""
        where = f"the Gemini upstream {self.provider!r}" if self.provider else "Gemini"
        why = why[:1].upper() + why[1:].rstrip(".")
        message = f"`{param}` cannot be sent to {where}. {why}. See docs/providers.md."
        return UnsupportedParameter(param, message, provider=self.provider)


def generate_body(request: PromptRequest, *, provider: str = "") -> dict[str, Any]:
    """The ``generateContent`` JSON body for ``request`` (the model goes in the URL).

    Args:
        request: the request.
        provider: the provider's name, for errors.

    Returns:
        The body, every member translated.

    Raises:
        UnsupportedParameter: a member (or message part) Gemini cannot carry.
    """
    t = _Translation(request.params, provider)
    chat = request.chat()
    system = _system(chat, t)
    t.body["contents"] = _contents(chat, t)
    if system:
        t.body["systemInstruction"] = {"parts": [{"text": system}]}
    _sampling(t)
    _tools(t)
    _extra(t)
    if t.config:
        t.body["generationConfig"] = {**t.config, **t.body.get("generationConfig", {})}
    return t.body


def embed_body(request: PromptRequest, model: str, *, provider: str = "") -> dict[str, Any]:
    """The Gemini API's ``batchEmbedContents`` body for an embedding request: one request
    per input.

    Raises:
        UnsupportedParameter: token-array inputs, or a member Gemini's embeddings lack.
    """
    options, texts = _embed_options(request, provider)
    common = {"model": f"models/{model}", **options}
    return {"requests": [{**common, "content": {"parts": [{"text": t}]}} for t in texts]}


def predict_body(request: PromptRequest, *, provider: str = "") -> dict[str, Any]:
    """Vertex AI's ``:predict`` body for an embedding request (its text-embedding and
    gemini-embedding models): one instance per input.

    Raises:
        UnsupportedParameter: token-array inputs, or a member Vertex's embeddings lack.
    """
    options, texts = _embed_options(request, provider)
    instance = {"task_type": options["taskType"]} if "taskType" in options else {}
    if "title" in options:
        instance["title"] = options["title"]
    body: dict[str, Any] = {"instances": [{"content": t, **instance} for t in texts]}
    if "outputDimensionality" in options:
        body["parameters"] = {"outputDimensionality": options["outputDimensionality"]}
    return body


def _embed_options(request: PromptRequest, provider: str) -> tuple[dict[str, Any], list[str]]:
    """The embedding options in Google's words, and the input texts."""
    assert request.embed is not None, "not an embedding request"
    t = _Translation(request.params, provider)
    options: dict[str, Any] = {}
    for name, value in request.params.extra.items():
        if name == "dimensions" and value is not None:
            options["outputDimensionality"] = value
        elif name in ("taskType", "title"):
            options[name] = value
        elif name == "encoding_format" and value in (None, "float", "base64"):
            continue  # the gateway encodes the vectors as the client asked
        elif value not in (None, "") and name not in _REQUEST_ITSELF | {"input"}:
            raise t.refuse(name, "Google's embeddings take `dimensions`, `taskType` and `title`")
    texts = []
    for i, item in enumerate(request.embed):
        if not isinstance(item, str):
            raise t.refuse(f"input[{i}]", "Google's embedding models embed text, not token arrays")
        texts.append(item)
    return options, texts


# ----------------------------------------------------------------- messages


def _system(chat: tuple[Message, ...], t: _Translation) -> str:
    texts = []
    for i, message in enumerate(chat):
        if message.role != "system":
            continue
        for j, part in enumerate(message.parts):
            if part.get("type") != "text":
                raise t.refuse(f"messages[{i}].content[{j}]", "a system prompt carries text only")
        texts.append(message.content)
    return "\n\n".join(texts)


def _contents(chat: tuple[Message, ...], t: _Translation) -> list[dict[str, Any]]:
    """Chat messages as ``contents``: assistant turns are ``model``, tool results are
    ``user`` turns of ``functionResponse`` parts; turns of one role in a row merge."""
    names: dict[str, str] = {}  # tool call id -> function name, from the assistant turns
    out: list[dict[str, Any]] = []
    for i, message in enumerate(chat):
        if message.name:
            raise t.refuse(f"messages[{i}].name", "Gemini has no participant names")
        if message.role == "system":
            continue
        role = "model" if message.role == "assistant" else "user"
        for call in message.tool_calls:
            names[call.id] = call.name
        parts = _parts(message, i, names, t)
        if not parts:
            continue
        if out and out[-1]["role"] == role:
            out[-1]["parts"].extend(parts)
        else:
            out.append({"role": role, "parts": parts})
    return out


def _parts(
    message: Message, i: int, names: Mapping[str, str], t: _Translation
) -> list[dict[str, Any]]:
    if message.role == "tool":
        name = names.get(message.tool_call_id or "")
        if name is None:
            why = "its `tool_call_id` names no tool call of an earlier assistant message"
            raise t.refuse(f"messages[{i}].tool_call_id", why)
        return [{"functionResponse": {"name": name, "response": _response(message.content)}}]
    parts = _content(message, i, t)
    for call in message.tool_calls:
        try:
            args = json.loads(call.arguments or "{}")
        except ValueError as exc:
            why = "a tool call's arguments must be a JSON object for Gemini"
            raise t.refuse(f"messages[{i}].tool_calls", why) from exc
        parts.append({"functionCall": {"name": call.name, "args": args}})
    return parts


def _response(content: str) -> dict[str, Any]:
    """A tool result as ``functionResponse.response`` (a JSON object): an object result as
    it is, anything else under ``content``."""
    try:
        value = json.loads(content)
    except ValueError:
        value = None
    return value if isinstance(value, dict) else {"content": content}


def _content(message: Message, i: int, t: _Translation) -> list[dict[str, Any]]:
    if not message.parts:
        return [{"text": message.content}] if message.content else []
    out = []
    for j, part in enumerate(message.parts):
        path = f"messages[{i}].content[{j}]"
        kind = part.get("type")
        if kind in ("text", "refusal"):
            text = part.get(str(kind))
            if isinstance(text, str) and text:
                out.append({"text": text})
        elif kind == "image_url":
            out.append(_image(part.get("image_url") or {}, path, t))
        else:
            raise t.refuse(path, f"the content part type {kind!r} has no Gemini equivalent here")
    return out


def _image(image: Mapping[str, Any], path: str, t: _Translation) -> dict[str, Any]:
    url = image.get("url")
    if image.get("detail") not in (None, "auto", "high", "low"):
        raise t.refuse(f"{path}.image_url.detail", "expected auto, low or high")
    if isinstance(url, str) and url.startswith("data:"):
        match = _DATA_URL.fullmatch(url)
        if match is None or ";base64" not in match["params"].lower():
            why = "a `data:` URL must be base64 (`data:<type>;base64,<data>`)"
            raise t.refuse(f"{path}.image_url.url", why)
        mime = match["type"].strip().lower()
        if not mime.startswith("image/"):
            raise t.refuse(f"{path}.image_url.url", f"expected an image, got {mime or 'no type'}")
        return {"inlineData": {"mimeType": mime, "data": match["data"]}}
    # Gemini reads remote files only from its Files API or Cloud Storage (fileData), and
    # the gateway fetches no URLs on a client's behalf.
    why = "Gemini takes images inline: send a base64 `data:` URL, not a link"
    raise t.refuse(f"{path}.image_url.url", why)


# --------------------------------------------------------- typed parameters


def _sampling(t: _Translation) -> None:
    p = t.params
    if p.temperature is not None and not 0 <= p.temperature <= 2:
        raise t.refuse("temperature", "Gemini's temperature runs from 0 to 2")
    if len(p.stop) > _MAX_STOP:
        raise t.refuse("stop", f"Gemini takes at most {_MAX_STOP} stop sequences")
    optional = {
        "temperature": p.temperature,
        "topP": p.top_p,
        "maxOutputTokens": p.max_tokens,
        "stopSequences": list(p.stop) or None,
        "seed": p.seed,
    }
    t.config.update({k: v for k, v in optional.items() if v is not None})


def _schema(schema: Any, path: str, t: _Translation) -> tuple[str, Any]:
    """``("openapi", schema)`` when Gemini's ``Schema`` subset holds it, else
    ``("json", schema)`` for the JSON Schema member."""
    if not isinstance(schema, Mapping):
        raise t.refuse(path, "a schema is a JSON object")
    return ("openapi" if _in_subset(schema) else "json"), dict(schema)


def _in_subset(schema: Any) -> bool:
    if isinstance(schema, list):
        return all(_in_subset(item) for item in schema)
    if not isinstance(schema, Mapping):
        return True
    if not schema.keys() <= _SCHEMA_KEYS or not isinstance(schema.get("type", ""), str):
        return False
    nested = [schema.get("items"), schema.get("anyOf")]
    nested += list((schema.get("properties") or {}).values())
    return all(_in_subset(item) for item in nested if item is not None)


def _tools(t: _Translation) -> None:
    p = t.params
    for i, tool in enumerate(p.extra.get("tools") or ()):
        kind = tool.get("type") if isinstance(tool, Mapping) else None
        if kind != "function":
            raise t.refuse(f"tools[{i}].type", f"Gemini has no {kind!r} tools, only functions")
    declarations = []
    for i, tool in enumerate(p.tools):
        declaration: dict[str, Any] = {"name": tool.name, "description": tool.description}
        if tool.parameters:
            form, schema = _schema(tool.parameters, f"tools[{i}].function.parameters", t)
            if schema.get("type", "object") not in ("object", "OBJECT"):
                why = "Gemini's function parameters are an object schema"
                raise t.refuse(f"tools[{i}].function.parameters", why)
            declaration["parameters" if form == "openapi" else "parametersJsonSchema"] = schema
        declarations.append(declaration)
    if declarations:
        t.body["tools"] = [{"functionDeclarations": declarations}]
    if p.tool_choice is not None:
        t.body["toolConfig"] = {"functionCallingConfig": _tool_choice(p.tool_choice, t)}


def _tool_choice(choice: str | Mapping[str, Any], t: _Translation) -> dict[str, Any]:
    modes = {"auto": "AUTO", "required": "ANY", "none": "NONE"}
    if isinstance(choice, str) and choice in modes:
        return {"mode": modes[choice]}
    if isinstance(choice, Mapping) and choice.get("type") == "function":
        name = (choice.get("function") or {}).get("name")
        return {"mode": "ANY", "allowedFunctionNames": [name]}
    raise t.refuse("tool_choice", "Gemini can use any tool, a named function, or none")


# ------------------------------------------------------------- extra members


def _extra(t: _Translation) -> None:
    for name, value in t.params.extra.items():
        if name in TYPED_MEMBERS or name in _REQUEST_ITSELF:
            continue
        translate = _TRANSLATIONS.get(name)
        rule = CHAT_COMPLETIONS.get(name)
        if translate is not None:
            translate(t, name, value)
        elif name in GEMINI_NATIVE or name == "generationConfig":
            t.body[name] = value
        elif rule is not None:
            if not is_no_op(rule, value):
                raise t.refuse(name, f"Gemini has no equivalent of `{name}`")
        else:
            raise t.refuse(name, "it is neither a Chat Completions member nor one of Gemini's own")


def _penalty(key: str) -> Callable[[_Translation, str, Any], None]:
    def translate(t: _Translation, name: str, value: Any) -> None:
        if value is None:
            return
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise t.refuse(name, "expected a number")
        if value:
            t.config[key] = value

    return translate


def _parallel_tool_calls(t: _Translation, name: str, value: Any) -> None:
    if value not in (None, True):
        raise t.refuse(name, "Gemini has no switch to stop parallel function calls")


def _reasoning_effort(t: _Translation, name: str, value: Any) -> None:
    if value is None:
        return
    budget = THINKING_BUDGETS.get(value) if isinstance(value, str) else None
    if budget is None:
        raise t.refuse(name, f"expected one of {', '.join(THINKING_BUDGETS)}")
    t.config["thinkingConfig"] = {"thinkingBudget": budget}


def _response_format(t: _Translation, name: str, value: Any) -> None:
    kind = value.get("type") if isinstance(value, Mapping) else value
    if kind is None or kind == "text":
        return
    if kind == "json_object":
        t.config["responseMimeType"] = "application/json"
        return
    if kind != "json_schema":
        raise t.refuse(name, "expected a `text`, `json_object` or `json_schema` format")
    spec = value.get("json_schema") or {}
    form, schema = _schema(spec.get("schema"), f"{name}.json_schema.schema", t)
    if spec.get("description") and "description" not in schema:
        schema["description"] = spec["description"]  # guidance for the model, kept
    t.config["responseMimeType"] = "application/json"
    t.config["responseSchema" if form == "openapi" else "responseJsonSchema"] = schema


def _top_k(t: _Translation, name: str, value: Any) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise t.refuse(name, "expected a positive integer")
    t.config["topK"] = value


def _thinking(t: _Translation, name: str, value: Any) -> None:
    # Anthropic's ``thinking`` (a Messages API client's): its budget is Gemini's.
    kind = value.get("type") if isinstance(value, Mapping) else None
    if value is None:
        return
    if kind == "disabled":
        t.config["thinkingConfig"] = {"thinkingBudget": 0}
    elif kind == "enabled" and isinstance(value.get("budget_tokens"), int):
        t.config["thinkingConfig"] = {"thinkingBudget": value["budget_tokens"]}
    else:
        raise t.refuse(name, "expected `disabled`, or `enabled` with `budget_tokens`")


def _service_tier(t: _Translation, name: str, value: Any) -> None:
    # Gemini serves one tier: asking for the standard one asks for nothing.
    if value not in (None, "auto", "default", "standard_only"):
        raise t.refuse(name, f"Gemini serves one standard tier, not {value!r}")


def _n(t: _Translation, name: str, value: Any) -> None:
    # The gateway fans n > 1 out into one request per choice; a worker answers one.
    if value not in (None, 1):
        raise t.refuse(name, "a Gemini worker answers one candidate per request (candidateCount 1)")


_TRANSLATIONS: Mapping[str, Callable[[_Translation, str, Any], None]] = {
    "frequency_penalty": _penalty("frequencyPenalty"),
    "presence_penalty": _penalty("presencePenalty"),
    "parallel_tool_calls": _parallel_tool_calls,
    "reasoning_effort": _reasoning_effort,
    "response_format": _response_format,
    "n": _n,
    "service_tier": _service_tier,
    "thinking": _thinking,
    "top_k": _top_k,
}
