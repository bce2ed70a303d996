"""The native API's wire format: ``/v1/prompt``, its SSE stream, and the WebSocket protocol."""

from __future__ import annotations

import re
import time
from collections.abc import Mapping, Sequence
from typing import Any

import trio

from ..events import (
    Completion,
    Done,
    Embeddings,
    Passthrough,
    StreamEvent,
    TextDelta,
    ToolCallDelta,
    ToolCallStart,
    Usage,
)
from ..types import GenerationParams, Priority, PromptRequest
from .chat import messages_of, stop_of
from .errors import ApiError
from .validate import Fields, invalid

__all__ = [
    "DEADLINE_RANGE",
    "TIMEOUT_RANGE",
    "completion_json",
    "event_json",
    "parse_prompt_request",
    "priority_of",
]

_PRIORITY_NAMES = {p.name.lower(): p for p in Priority}
#: The bounds of a prompt's ``timeout``, in seconds. Below a millisecond a request can only
#: expire (``5e-324`` is a positive number, and no answer); above a day it is not a timeout.
TIMEOUT_RANGE = (0.001, 86_400.0)
#: The bounds of a prompt's ``deadline``, in Unix time.
DEADLINE_RANGE = (0.0, 1e11)


def priority_of(fields: Fields, cap: Priority | None) -> Priority:
    """The ``priority`` member (a name or 0-3), no higher than ``cap``; ``cap`` by default."""
    value = fields.data.get("priority")
    if value is None:
        return Priority.NORMAL if cap is None else cap
    if isinstance(value, str) and value in _PRIORITY_NAMES:
        priority = _PRIORITY_NAMES[value]
    elif isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 3:
        priority = Priority(value)
    else:
        expected = f"one of {list(_PRIORITY_NAMES)} or an integer 0-3"
        raise invalid(fields.path_of("priority"), expected, value)
    # Lower values go first: a key capped at NORMAL cannot ask for HIGH.
    return priority if cap is None else Priority(max(priority, cap))


_REQUEST_ID = re.compile(r"[A-Za-z0-9._:\-]{1,128}")


def parse_prompt_request(
    fields: Fields, models: Sequence[str], meta: Mapping[str, str], cap: Priority | None
) -> PromptRequest:
    """Validate a native prompt body (``/v1/prompt``, a WebSocket ``prompt`` message).

    Raises:
        ApiError: 400 naming the bad field; 404 for an unknown model.
    """
    model = fields.text("model", max_length=256) or (models[0] if models else None)
    if model is None:  # the providers list no models, so there is no default to pick
        raise invalid(fields.path_of("model"), "the model to use", missing=True)
    if models and model not in models:
        message = f"the model {model!r} does not exist; GET /v1/models lists the models served"
        raise ApiError(404, message, code="model_not_found", param=fields.path_of("model"))
    text = fields.text("input")
    messages = messages_of(fields) if fields.data.get("messages") is not None else ()
    if text is None and not messages:
        raise invalid(fields.path_of("input"), "a prompt (or give `messages`)", missing=True)
    params = GenerationParams(
        model=model,
        max_tokens=fields.integer("max_tokens", minimum=1),
        temperature=fields.number("temperature", minimum=0, maximum=2),
        stop=stop_of(fields),
    )
    extra: dict[str, Any] = {}
    request_id = fields.text("request_id", max_length=128)
    if request_id:
        if not _REQUEST_ID.fullmatch(request_id):
            # It goes out in the x-request-id header: visible ASCII only, no spaces.
            expected = "up to 128 letters, digits and the marks . _ : -"
            raise invalid(fields.path_of("request_id"), expected, request_id)
        extra["request_id"] = request_id
    return PromptRequest(
        messages=messages,
        input=text,
        params=params,
        session=fields.text("session", max_length=256),
        meta=_meta(fields) | dict(meta),
        priority=priority_of(fields, cap),
        **_time_limits(fields),
        **extra,
    )


def _meta(fields: Fields) -> dict[str, str]:
    labels = fields.object("meta")
    if labels is None:
        return {}
    if len(labels.data) > 64 or not all(isinstance(v, str) for v in labels.data.values()):
        raise invalid(labels.path, "an object of at most 64 string labels", labels.data)
    return dict(labels.data)


def _time_limits(fields: Fields) -> dict[str, Any]:
    timeout = fields.number("timeout", minimum=TIMEOUT_RANGE[0], maximum=TIMEOUT_RANGE[1])
    deadline = fields.number("deadline", minimum=DEADLINE_RANGE[0], maximum=DEADLINE_RANGE[1])
    if deadline is not None:
        # A wall-clock deadline (Unix time) becomes one on Trio's clock.
        return {"deadline": trio.current_time() + (deadline - time.time())}
    return {} if timeout is None else {"timeout": timeout}


def _usage_json(usage: Usage | None) -> dict[str, int] | None:
    if usage is None:
        return None
    return {"input_tokens": usage.input_tokens, "output_tokens": usage.output_tokens}


def _answer_json(answer: Completion | Done) -> dict[str, Any]:
    return {
        "text": answer.text,
        "finish_reason": answer.finish_reason,
        "usage": _usage_json(answer.usage),
        "tool_calls": [
            {"id": c.id, "name": c.name, "arguments": c.arguments} for c in answer.tool_calls
        ],
        "model": answer.model,
    }


def completion_json(completion: Completion) -> dict[str, Any]:
    """A completion as JSON."""
    return _answer_json(completion)


def event_json(event: StreamEvent) -> dict[str, Any]:
    """One stream event as JSON, its kind in ``type``."""
    if isinstance(event, TextDelta):
        return {"type": "text_delta", "text": event.text}
    if isinstance(event, ToolCallStart):
        return {"type": "tool_call_start", "index": event.index, "id": event.id, "name": event.name}
    if isinstance(event, ToolCallDelta):
        return {"type": "tool_call_delta", "index": event.index, "arguments": event.arguments}
    if isinstance(event, Usage):
        return {"type": "usage", **(_usage_json(event) or {})}
    if isinstance(event, Passthrough):
        response, choice, message = event.response, event.choice, event.message
        return {"type": "passthrough", "response": response, "choice": choice, "message": message}
    if isinstance(event, Embeddings):
        return {"type": "embeddings", "vectors": [list(v) for v in event.vectors]}
    return {"type": "done", **_answer_json(event)}
