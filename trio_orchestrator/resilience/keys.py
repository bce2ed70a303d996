"""The identity of a request's answer: what coalescing and the cache key on.

Two requests share a key exactly when a provider would see the same inference call: the same
model, the same chat (roles, contents, names, tool calls; content parts and the client's own
message objects, when the request has them), the same retrieved context and the
same output-shaping parameters (``temperature``, ``top_p``, ``max_tokens``, ``stop``,
``tools``, ``tool_choice``, ``seed``, ``extra``) — for an embedding request, the same inputs
(``embed``), in the same order; a ``/v1/responses`` request, the same client body too
(``responses_body``: a native upstream receives it as sent). Fields that only label or schedule the
request (``request_id``, ``session``, ``meta``, ``deadline``, ``timeout``, ``priority``) are
left out, so two callers asking the same question share one answer.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

from ..types import GenerationParams, Message, PromptRequest, Tool

__all__ = ["is_deterministic", "message_key", "params_key", "request_key"]


def request_key(request: PromptRequest) -> str:
    """Return a stable key (64 hex digits, SHA-256) for the answer ``request`` asks for.

    Stable across processes and runs (no ``hash()`` randomisation), so it can key a shared
    cache. Mappings are serialised with sorted keys; numbers are normalised so ``0`` and
    ``0.0`` agree; values JSON cannot express fall back to their ``repr``.

    Args:
        request: the request as the worker will see it (after prompt assembly).

    Returns:
        The key, as lowercase hex.
    """
    payload = {
        "chat": [_message(m) for m in request.chat()],
        "context": [[d.id, d.text] for d in request.context],
        "params": _params(request.params),
    }
    if request.embed is not None:  # absent otherwise, so chat keys stay what they were
        payload["embed"] = _plain(request.embed)
    if request.responses_body is not None:  # a native upstream receives the body itself
        payload["responses"] = _plain(request.responses_body)
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=repr)
    return hashlib.sha256(text.encode()).hexdigest()


def is_deterministic(request: PromptRequest) -> bool:
    """Whether ``request`` asks for a reproducible answer: an embedding request (a model
    embeds the same input the same way), or a chat whose ``temperature`` is exactly 0.

    An unset temperature means the provider's default, which is sampled (1.0 at OpenAI and
    Anthropic), so it is *not* deterministic. A ``seed`` alone does not count: providers
    document seeded sampling as best-effort only.

    Args:
        request: the request.

    Returns:
        True when greedy decoding was asked for.
    """
    return request.embed is not None or request.params.temperature == 0


def message_key(message: Message) -> list[Any]:
    """What of ``message`` :func:`request_key` keys on, as plain JSON-able values (the
    semantic cache keys a conversation's earlier turns on it)."""
    return _message(message)


def params_key(params: GenerationParams) -> dict[str, Any]:
    """What of ``params`` :func:`request_key` keys on (model and every output-shaping
    parameter), as plain JSON-able values."""
    return _params(params)


def _message(message: Message) -> list[Any]:
    calls = [[c.id, c.name, c.arguments] for c in message.tool_calls]
    key = [message.role, message.content, message.name, calls, message.tool_call_id]
    wire = message.wire
    if wire is not None and not _says_no_more(wire, message):
        # Images, audio, files, a developer role, a refusal… reach the upstream too: two
        # requests alike in their text but not in these must not share an answer.
        key.append(_plain(wire))
    elif message.parts:
        key.append(_plain(message.parts))
    return key


def _says_no_more(wire: Mapping[str, Any], message: Message) -> bool:
    """Whether the client's message object is just the typed role and text (the usual one)."""
    return (
        len(wire) == 2
        and wire.get("role") == message.role
        and wire.get("content") == message.content
    )


def _tool(tool: Tool) -> list[Any]:
    return [tool.name, tool.description, _plain(tool.parameters)]


def _number(value: float | None) -> float | None:
    return None if value is None else float(value)


def _params(params: GenerationParams) -> dict[str, Any]:
    return {
        "model": params.model,
        "max_tokens": params.max_tokens,
        "temperature": _number(params.temperature),
        "top_p": _number(params.top_p),
        "stop": list(params.stop),
        "tools": [_tool(t) for t in params.tools],
        "tool_choice": _plain(params.tool_choice),
        "seed": params.seed,
        "extra": _plain(params.extra),
    }


def _plain(value: Any) -> Any:
    """Mappings to dicts (json sorts their keys), other containers to lists."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value
