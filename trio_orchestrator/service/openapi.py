"""The OpenAPI document served at ``/openapi.json``."""

from __future__ import annotations

from functools import cache
from typing import Any

from .chat_schema import CHAT_SCHEMA, MESSAGE
from .native import DEADLINE_RANGE, TIMEOUT_RANGE

__all__ = ["openapi_document"]

_STR = {"type": "string"}
_ERROR = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["message", "type"],
            "properties": {
                "message": _STR,
                "type": _STR,
                "param": {"type": "string", "nullable": True},
                "code": {"type": "string", "nullable": True},
            },
        }
    },
}
_MESSAGE = MESSAGE.openapi()
_STOP = CHAT_SCHEMA["stop"].openapi()
# Rendered from the schema the door checks (chat_schema.py), so the two cannot disagree.
_CHAT_REQUEST: dict[str, Any] = {
    "type": "object",
    "required": ["model", "messages"],
    "description": "OpenAI's Chat Completions request. Members not listed here are accepted "
    "and forwarded to OpenAI-compatible upstreams unchanged.",
    "properties": {
        **{name: schema.openapi() for name, schema in CHAT_SCHEMA.items()},
        "model": {"type": "string", "description": "one of the ids GET /v1/models lists"},
    },
}
_PROMPT_REQUEST: dict[str, Any] = {
    "type": "object",
    "description": "Give `input`, `messages`, or both.",
    "properties": {
        "input": _STR,
        "messages": {"type": "array", "minItems": 1, "items": _MESSAGE},
        "model": _STR,
        "max_tokens": {"type": "integer", "minimum": 1},
        "temperature": {"type": "number", "minimum": 0, "maximum": 2},
        "stop": _STOP,
        "request_id": {"type": "string", "maxLength": 128},
        "session": _STR,
        "priority": {
            "oneOf": [
                {"type": "string", "enum": ["critical", "high", "normal", "low"]},
                {"type": "integer", "minimum": 0, "maximum": 3},
            ]
        },
        "timeout": {
            "type": "number",
            "minimum": TIMEOUT_RANGE[0],
            "maximum": TIMEOUT_RANGE[1],
            "description": "seconds from submission",
        },
        "deadline": {
            "type": "number",
            "minimum": DEADLINE_RANGE[0],
            "maximum": DEADLINE_RANGE[1],
            "description": "Unix time by which to answer",
        },
        "meta": {"type": "object", "additionalProperties": _STR},
    },
}
_COMPLETION = {
    "type": "object",
    "properties": {
        "text": _STR,
        "finish_reason": _STR,
        "usage": {"type": "object", "nullable": True},
        "tool_calls": {"type": "array", "items": {"type": "object"}},
        "model": {"type": "string", "nullable": True},
    },
}
_PROMPT_RESPONSE = {
    "type": "object",
    "required": ["request_id", "outcome"],
    "properties": {
        "request_id": _STR,
        "outcome": {
            "type": "string",
            "enum": ["completed", "failed", "shed", "expired", "cancelled"],
        },
        "completion": _COMPLETION,
        "error": _ERROR["properties"]["error"],  # type: ignore[index]
    },
}
_ANY_OBJECT = {"type": "object"}
_COMPLETIONS_REQUEST: dict[str, Any] = {
    "type": "object",
    "required": ["model", "prompt"],
    "description": "One prompt per request; n, best_of > 1, suffix and logprobs are refused.",
    "properties": {
        "model": _STR,
        "prompt": {"oneOf": [_STR, {"type": "array", "items": _STR, "minItems": 1, "maxItems": 1}]},
        "max_tokens": {"type": "integer", "minimum": 1, "default": 16},
        "temperature": {"type": "number", "minimum": 0, "maximum": 2},
        "top_p": {"type": "number", "minimum": 0, "maximum": 1},
        "stop": _STOP,
        "seed": {"type": "integer"},
        "echo": {"type": "boolean"},
        "n": {"type": "integer", "minimum": 1, "maximum": 1},
        "best_of": {"type": "integer", "minimum": 1, "maximum": 1},
        "frequency_penalty": {"type": "number", "minimum": -2, "maximum": 2},
        "presence_penalty": {"type": "number", "minimum": -2, "maximum": 2},
        "logit_bias": {"type": "object", "additionalProperties": {"type": "integer"}},
        "user": _STR,
        "stream": {"type": "boolean"},
        "stream_options": {"type": "object", "properties": {"include_usage": {"type": "boolean"}}},
    },
}
_INPUT_PART = {
    "type": "object",
    "required": ["type"],
    "properties": {
        "type": {
            "type": "string",
            "enum": ["input_text", "output_text", "refusal", "input_image", "input_file"],
        },
        "text": _STR,
        "refusal": _STR,
        "image_url": _STR,
        "detail": {"type": "string", "enum": ["low", "high", "auto"]},
        "file_data": _STR,
        "file_id": _STR,
        "filename": _STR,
    },
}
_INPUT_ITEM = {
    "type": "object",
    "description": "A message (role, content), a function_call (call_id, name, arguments) "
    "or a function_call_output (call_id, output).",
    "properties": {
        "type": {
            "type": "string",
            "enum": ["message", "function_call", "function_call_output"],
        },
        "role": {"type": "string", "enum": ["user", "system", "developer", "assistant"]},
        "content": {"oneOf": [_STR, {"type": "array", "items": _INPUT_PART}]},
        "call_id": _STR,
        "name": _STR,
        "arguments": _STR,
        "output": _STR,
    },
}
_FUNCTION_TOOL = {
    "type": "object",
    "required": ["type", "name"],
    "properties": {
        "type": {"type": "string", "enum": ["function"]},
        "name": {"type": "string", "maxLength": 64},
        "description": _STR,
        "parameters": {"type": "object"},
        "strict": {"type": "boolean"},
    },
}
_RESPONSES_REQUEST: dict[str, Any] = {
    "type": "object",
    "required": ["model", "input"],
    "description": "Stateless: nothing is stored, so previous_response_id, conversation, "
    "background and item references are refused; only function tools.",
    "properties": {
        "model": _STR,
        "input": {"oneOf": [_STR, {"type": "array", "items": _INPUT_ITEM, "minItems": 1}]},
        "instructions": _STR,
        "tools": {"type": "array", "items": _FUNCTION_TOOL},
        "tool_choice": {
            "oneOf": [
                {"type": "string", "enum": ["none", "auto", "required"]},
                {
                    "type": "object",
                    "required": ["type", "name"],
                    "properties": {
                        "type": {"type": "string", "enum": ["function"]},
                        "name": _STR,
                    },
                },
            ]
        },
        "text": {
            "type": "object",
            "properties": {
                "format": {
                    "type": "object",
                    "required": ["type"],
                    "properties": {
                        "type": {"type": "string", "enum": ["text", "json_object", "json_schema"]},
                        "name": _STR,
                        "schema": {"type": "object"},
                        "strict": {"type": "boolean"},
                        "description": _STR,
                    },
                },
                "verbosity": _STR,  # any string, as chat's: the upstream knows its levels
            },
        },
        "reasoning": {
            "type": "object",
            "properties": {
                # Any string, as chat's reasoning_effort: the upstream knows its levels
                # (minimal, low, medium, high; newer models add more).
                "effort": _STR,
            },
        },
        "max_output_tokens": {"type": "integer", "minimum": 1},
        "temperature": {"type": "number", "minimum": 0, "maximum": 2},
        "top_p": {"type": "number", "minimum": 0, "maximum": 1},
        "parallel_tool_calls": {"type": "boolean"},
        "metadata": {"type": "object", "additionalProperties": _STR},
        "store": {"type": "boolean", "description": "accepted; nothing is stored"},
        "user": _STR,
        "stream": {"type": "boolean"},
    },
}
#: One server-sent event as sent: ``data`` is a JSON object (a chunk, a ``response.*`` or
#: Anthropic event, a native event) or the ``[DONE]`` that ends an OpenAI stream; ``event``
#: names it on the Responses and Anthropic streams.
_SSE_EVENT = {
    "type": "object",
    "required": ["data"],
    "properties": {"data": _STR, "event": _STR, "id": _STR, "retry": {"type": "integer"}},
}
_STREAMING_OR_JSON = {
    "application/json": {"schema": _ANY_OBJECT},
    "text/event-stream": {"schema": _SSE_EVENT},
}

_TOKENS = {"type": "array", "items": {"type": "integer", "minimum": 0}, "minItems": 1}
_EMBEDDINGS_REQUEST: dict[str, Any] = {
    "type": "object",
    "required": ["model", "input"],
    "additionalProperties": True,  # forwarded to OpenAI-compatible upstreams as sent
    "properties": {
        "model": _STR,
        "input": {
            "oneOf": [
                {"type": "string", "minLength": 1},
                {
                    "type": "array",
                    "items": {"type": "string", "minLength": 1},
                    "minItems": 1,
                    "maxItems": 2048,
                },
                {**_TOKENS, "maxItems": 2048},
                {"type": "array", "items": _TOKENS, "minItems": 1, "maxItems": 2048},
            ]
        },
        "encoding_format": {"type": "string", "enum": ["float", "base64"]},
        "dimensions": {"type": "integer", "minimum": 1},
        "user": _STR,
    },
}
_NUMBER = {"type": "number"}
_MODEL = {
    "type": "object",
    "description": "OpenAI's model object, with the catalogue's facts where they are known",
    "required": ["id", "object", "created", "owned_by"],
    "properties": {
        "id": _STR,
        "object": {"type": "string", "enum": ["model"]},
        "created": {"type": "integer"},
        "owned_by": {"type": "string", "description": "the provider, when the catalogue knows"},
        "context_window": {"type": "integer", "description": "input tokens the model takes"},
        "max_output_tokens": {"type": "integer"},
        "capabilities": {"type": "array", "items": _STR, "description": "e.g. vision, tools"},
        "pricing": {
            "type": "object",
            "description": "US dollars per million tokens",
            "required": ["currency"],
            "properties": {
                "input_per_million": _NUMBER,
                "cached_input_per_million": _NUMBER,
                "output_per_million": _NUMBER,
                "currency": {"type": "string", "enum": ["USD"]},
            },
        },
    },
}
_MODEL_LIST = {
    "type": "object",
    "required": ["object", "data"],
    "properties": {
        "object": {"type": "string", "enum": ["list"]},
        "data": {"type": "array", "items": _MODEL},
    },
}
_EMBEDDINGS_RESPONSE = {
    "type": "object",
    "required": ["object", "data", "model", "usage"],
    "properties": {
        "object": {"type": "string", "enum": ["list"]},
        "data": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["object", "index", "embedding"],
                "properties": {
                    "object": {"type": "string", "enum": ["embedding"]},
                    "index": {"type": "integer"},
                    "embedding": {
                        "oneOf": [{"type": "array", "items": {"type": "number"}}, _STR],
                        "description": "floats, or with encoding_format base64 the "
                        "little-endian float32 values in base64",
                    },
                },
            },
        },
        "model": _STR,
        "usage": {
            "type": "object",
            "required": ["prompt_tokens", "total_tokens"],
            "properties": {
                "prompt_tokens": {"type": "integer"},
                "total_tokens": {"type": "integer"},
            },
        },
    },
}

# ------------------------------------------------------------------- Anthropic Messages

_TEXT_PART = {
    "type": "object",
    "required": ["type", "text"],
    "properties": {"type": {"type": "string", "enum": ["text"]}, "text": _STR},
}
_ANTHROPIC_ERROR = {
    "type": "object",
    "required": ["type", "error"],
    "properties": {
        "type": {"type": "string", "enum": ["error"]},
        "error": {
            "type": "object",
            "required": ["type", "message"],
            "properties": {"type": _STR, "message": _STR},
        },
        "request_id": _STR,
    },
}
_BLOCK_TYPES = [
    "text",
    "image",
    "document",
    "tool_use",
    "tool_result",
    "thinking",
    "redacted_thinking",
]
_CONTENT_BLOCK = {
    "type": "object",
    "required": ["type"],
    "properties": {"type": {"type": "string", "enum": _BLOCK_TYPES}},
}
_ANTHROPIC_TURN = {
    "type": "object",
    "required": ["role", "content"],
    "properties": {
        "role": {"type": "string", "enum": ["user", "assistant"]},
        "content": {"oneOf": [_STR, {"type": "array", "items": _CONTENT_BLOCK}]},
    },
}
_ANTHROPIC_TOOL = {
    "type": "object",
    "required": ["name", "input_schema"],
    "properties": {
        "type": {"type": "string", "enum": ["custom"]},
        "name": {"type": "string", "maxLength": 128},
        "description": _STR,
        "input_schema": {"type": "object"},
    },
}
_MESSAGES_REQUEST: dict[str, Any] = {
    "type": "object",
    "required": ["model", "max_tokens", "messages"],
    "properties": {
        "model": {"type": "string", "description": "one of the ids GET /v1/models lists"},
        "max_tokens": {"type": "integer", "minimum": 1},
        "messages": {"type": "array", "items": _ANTHROPIC_TURN, "minItems": 1},
        "system": {"oneOf": [_STR, {"type": "array", "items": _TEXT_PART}]},
        "stream": {"type": "boolean"},
        "temperature": {"type": "number", "minimum": 0, "maximum": 1},
        "top_p": {"type": "number", "minimum": 0, "maximum": 1},
        "top_k": {"type": "integer", "minimum": 0},
        "stop_sequences": {"type": "array", "items": _STR},
        "tools": {"type": "array", "items": _ANTHROPIC_TOOL},
        "tool_choice": {
            "type": "object",
            "required": ["type"],
            "properties": {
                "type": {"type": "string", "enum": ["auto", "any", "tool", "none"]},
                "name": _STR,
                "disable_parallel_tool_use": {"type": "boolean"},
            },
        },
        "metadata": {"type": "object", "properties": {"user_id": _STR}},
        "thinking": {
            "type": "object",
            "required": ["type"],
            "properties": {
                "type": {"type": "string", "enum": ["enabled", "adaptive", "disabled"]},
                "budget_tokens": {"type": "integer", "minimum": 1},
            },
        },
        "service_tier": {"type": "string", "enum": ["auto", "standard_only"]},
    },
}


def _null_is_absent(schema: dict[str, Any], *, deep: bool = True) -> dict[str, Any]:
    """``schema`` with every optional member marked ``nullable``, as the door reads it.

    The door takes a null member as an absent one (the SDKs send nulls for what they leave
    out), so the document must allow the null: a schema that forbids it tells a generated
    client a request is wrong that the service serves. ``deep=False`` marks only the body's
    own members, for bodies whose nested objects are checked member by member (the chat
    schema says itself which of those may be null).
    """
    rendered = dict(schema)
    required = set(schema.get("required", ()))
    if "properties" in schema:
        properties = {}
        for name, member in schema["properties"].items():
            member = _null_is_absent(member) if deep else member
            if name not in required:
                member = {**member, "nullable": True}
                if "enum" in member:  # OpenAPI 3.0: a nullable enum lists null itself
                    member["enum"] = [*member["enum"], None]
            properties[name] = member
        rendered["properties"] = properties
    if deep:
        for key in ("oneOf", "anyOf"):
            if key in schema:
                rendered[key] = [_null_is_absent(variant) for variant in schema[key]]
        if isinstance(schema.get("items"), dict):
            rendered["items"] = _null_is_absent(schema["items"])
    return rendered


def _json(schema: dict[str, Any], description: str = "OK") -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


_ERRORS = {
    "400": _json(_ERROR, "Bad input; `param` names the field"),
    "401": _json(_ERROR, "Missing or unknown API key"),
    "404": _json(_ERROR, "Unknown model or resource"),
    "408": _json(_ERROR, "The request's deadline passed"),
    "413": _json(_ERROR, "The body is larger than service.max_body_bytes"),
    "429": _json(_ERROR, "Rate limited; see Retry-After"),
    "500": _json(_ERROR, "The worker failed"),
    "502": _json(_ERROR, "The upstream provider failed"),
    "503": _json(_ERROR, "Draining, full or circuit open; see Retry-After"),
    "504": _json(_ERROR, "The upstream provider timed out"),
}
_ANTHROPIC_ERRORS = {
    status: _json(_ANTHROPIC_ERROR, response["description"])
    for status, response in {
        **_ERRORS,
        "529": {"description": "The upstream is overloaded"},
    }.items()
}
_SSE = {
    "description": "Server-sent events",
    "content": {"text/event-stream": {"schema": _SSE_EVENT}},
}


def _post(
    summary: str, body: dict[str, Any], ok: dict[str, Any], *, deep: bool = True
) -> dict[str, Any]:
    schema = _null_is_absent(body, deep=deep)
    request = {"required": True, "content": {"application/json": {"schema": schema}}}
    return {
        "post": {"summary": summary, "requestBody": request, "responses": {"200": ok, **_ERRORS}}
    }


def _anthropic_post(summary: str, body: dict[str, Any], ok: dict[str, Any]) -> dict[str, Any]:
    """A POST on the Anthropic paths, whose errors are in Anthropic's shape."""
    operation = _post(summary, body, ok)
    operation["post"]["responses"] = {"200": ok, **_ANTHROPIC_ERRORS}
    return operation


def _get(summary: str, ok: dict[str, Any], *, public: bool = False) -> dict[str, Any]:
    operation: dict[str, Any] = {"summary": summary, "responses": {"200": ok, **_ERRORS}}
    if public:
        operation["security"] = []
    return {"get": operation}


def _with_model(schema: dict[str, Any], model: dict[str, Any]) -> dict[str, Any]:
    return {**schema, "properties": {**schema["properties"], "model": model}}


_WS_DESCRIPTION = (
    'WebSocket at /v1/ws: send {"type": "prompt", "id": ..., <fields of /v1/prompt>} '
    'and {"type": "cancel", "id": ...}; receive events tagged with the id, each prompt '
    "ending with one of done, error or cancelled. See docs/service.md."
)


_KEY_MEMBERS: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "label": {"type": "string", "maxLength": 200},
        "owner": {"type": "string", "maxLength": 200},
        "models": {"type": "array", "items": {"type": "string", "minLength": 1}},
        "aliases": {"type": "object", "additionalProperties": {"type": "string", "minLength": 1}},
        "rpm": {"type": "integer", "minimum": 1, "maximum": 1_000_000_000, "nullable": True},
        "tpm": {"type": "integer", "minimum": 1, "maximum": 1_000_000_000, "nullable": True},
        "budget": {"type": "number", "minimum": 0, "nullable": True},
        "budget_period": {"type": "string", "enum": ["day", "week", "month", "total"]},
        "priority": {
            "type": "string",
            "enum": ["critical", "high", "normal", "low", None],
            "nullable": True,
        },
        "expires_at": {
            "description": "Unix time or ISO 8601 date-time (years 1970 to 9999)",
            "oneOf": [
                {"type": "number", "minimum": 0, "maximum": 253_402_300_799},
                {"type": "string", "format": "date-time"},
            ],
            "nullable": True,
        },
        "metadata": {"type": "object"},
    },
}


def _admin_paths(id_param: dict[str, Any]) -> dict[str, Any]:
    """The admin API of virtual keys and spend (docs/keys-and-spend.md)."""
    key = _json(_ANY_OBJECT)
    errors = {
        **_ERRORS,
        "403": _json(_ERROR, "Not an admin key"),
        "409": _json(_ERROR, "The key is revoked, or no admin key is configured"),
    }
    body = {"required": True, "content": {"application/json": {"schema": _KEY_MEMBERS}}}
    created = {"201": {**key, "description": "The key, with its secret in `key` (shown once)"}}
    page = [
        {
            "name": "limit",
            "in": "query",
            "schema": {"type": "integer", "minimum": 1, "maximum": 100},
        },
        {"name": "after", "in": "query", "schema": _STR},
        {"name": "include_revoked", "in": "query", "schema": {"type": "boolean"}},
    ]
    day = {"type": "string", "format": "date"}
    spend = [
        {
            "name": "group_by",
            "in": "query",
            "schema": {"type": "string", "enum": ["key", "model", "provider", "day"]},
        },
        {"name": "from", "in": "query", "schema": day},
        {"name": "to", "in": "query", "schema": day},
        {"name": "key_id", "in": "query", "schema": _STR},
    ]

    def operation(summary: str, **extra: Any) -> dict[str, Any]:
        return {"summary": summary, "responses": {"200": key, **errors}, **extra}

    return {
        "/v1/admin/keys": {
            "post": {
                "summary": "Create a virtual key (admin)",
                "requestBody": body,
                "responses": {**created, **errors},
            },
            "get": operation("Virtual keys, a page at a time (admin)", parameters=page),
        },
        "/v1/admin/keys/{id}": {
            "get": operation("One virtual key (admin)", parameters=[id_param]),
            "patch": operation(
                "Change a virtual key (admin)", parameters=[id_param], requestBody=body
            ),
            "delete": operation("Revoke a virtual key (admin)", parameters=[id_param]),
        },
        "/v1/admin/keys/{id}/rotate": {
            "post": operation("A new secret for a virtual key (admin)", parameters=[id_param])
        },
        "/v1/admin/spend": {
            "get": operation(
                "Spend summed by key, model, provider or day (admin)", parameters=spend
            )
        },
    }


@cache
def openapi_document(models: tuple[str, ...] = ("echo",)) -> dict[str, Any]:
    """The service's OpenAPI 3.0 document, naming the models served."""
    model_name = {"type": "string", "enum": list(models)}
    chat_request = {
        **_CHAT_REQUEST,
        "properties": {**_CHAT_REQUEST["properties"], "model": model_name},
    }
    prompt_request = {
        **_PROMPT_REQUEST,
        "properties": {**_PROMPT_REQUEST["properties"], "model": model_name},
        "anyOf": [{"required": ["input"]}, {"required": ["messages"]}],
    }
    id_param = {"name": "id", "in": "path", "required": True, "schema": _STR}
    model_param = {"name": "model", "in": "path", "required": True, "schema": _STR}
    limit = {"name": "limit", "in": "query", "required": False}
    limit["schema"] = {"type": "integer", "minimum": 1, "maximum": 10000}
    replay = _post("Replay a dead letter", _ANY_OBJECT, _json(_PROMPT_RESPONSE))
    del replay["post"]["requestBody"]
    replay["post"]["parameters"] = [id_param]
    dead_letters = _get("Shed requests, oldest first", _json(_ANY_OBJECT))
    dead_letters["get"]["parameters"] = [limit]
    model = _get("One model", _json(_MODEL))
    model["get"]["parameters"] = [model_param]
    embedding_body = {
        **_EMBEDDINGS_REQUEST,
        "properties": {**_EMBEDDINGS_REQUEST["properties"], "model": model_name},
    }
    messages_request = {
        **_MESSAGES_REQUEST,
        "properties": {**_MESSAGES_REQUEST["properties"], "model": model_name},
    }
    count_request = {**messages_request, "required": ["model", "messages"]}
    paths = {
        "/v1/chat/completions": _post(
            "OpenAI chat completions (streaming with `stream: true`)",
            chat_request,
            deep=False,
            ok={
                "description": "A chat.completion, or chat.completion.chunk events",
                "content": {
                    "application/json": {"schema": _ANY_OBJECT},
                    "text/event-stream": {"schema": _SSE_EVENT},
                },
            },
        ),
        "/v1/completions": _post(
            "OpenAI legacy text completions (streaming with `stream: true`)",
            _with_model(_COMPLETIONS_REQUEST, model_name),
            {"description": "A text_completion, or its chunks", "content": _STREAMING_OR_JSON},
        ),
        "/v1/responses": _post(
            "OpenAI Responses, stateless (streaming with `stream: true`)",
            _with_model(_RESPONSES_REQUEST, model_name),
            {"description": "A response, or response.* events", "content": _STREAMING_OR_JSON},
        ),
        "/v1/messages": _anthropic_post(
            "Anthropic Messages (streaming with `stream: true`), served by any provider",
            messages_request,
            {
                "description": "A message, or Anthropic's named stream events",
                "content": {
                    "application/json": {"schema": _ANY_OBJECT},
                    "text/event-stream": {"schema": _SSE_EVENT},
                },
            },
        ),
        "/v1/messages/count_tokens": _anthropic_post(
            "An estimate of a Messages request's input tokens (no upstream call)",
            count_request,
            _json(
                {
                    "type": "object",
                    "required": ["input_tokens"],
                    "properties": {"input_tokens": {"type": "integer"}},
                }
            ),
        ),
        "/v1/models": _get("The models served", _json(_MODEL_LIST)),
        "/v1/models/{model}": model,
        "/v1/embeddings": _post(
            "OpenAI embeddings, through the pipeline; a provider without embeddings is a 400",
            embedding_body,
            _json(_EMBEDDINGS_RESPONSE),
        ),
        "/v1/prompt": _post(
            "Run a prompt; the completion and its outcome",
            prompt_request,
            _json(_PROMPT_RESPONSE),
            deep=False,
        ),
        "/v1/prompt/stream": _post(
            "A prompt's events as server-sent events", prompt_request, _SSE, deep=False
        ),
        "/v1/stats": _get("Pipeline statistics", _json(_ANY_OBJECT)),
        "/v1/dead-letters": dead_letters,
        "/v1/dead-letters/{id}/replay": replay,
        **_admin_paths(id_param),
        "/metrics": _get(
            "Prometheus metrics", {"description": "OK", "content": {"text/plain": {"schema": _STR}}}
        ),
        "/healthz": _get("Alive", _json(_ANY_OBJECT), public=True),
        "/readyz": _get("Ready to serve (503 when not)", _json(_ANY_OBJECT), public=True),
        "/openapi.json": _get("This document", _json(_ANY_OBJECT)),
    }
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "trio_orchestrator",
            "version": "0.1.0",
            "description": "An OpenAI-compatible gateway with native endpoints. " + _WS_DESCRIPTION,
        },
        "paths": paths,
        "components": {
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer"},
                "x-api-key": {"type": "apiKey", "in": "header", "name": "x-api-key"},
            },
        },
        "security": [{"bearer": []}, {"x-api-key": []}],
    }
