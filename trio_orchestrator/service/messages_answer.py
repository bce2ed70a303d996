"""Anthropic's Messages format, the answer side: a completion as a ``message`` object, a
stream of events as Anthropic's named server-sent events, and errors in Anthropic's shape.

A stream goes::

    message_start (content_block_start content_block_delta* content_block_stop)*
    message_delta message_stop

Anthropic's content blocks come one after another, never interleaved, and their indexes
count up from 0 in the order they start (the SDK appends each started block to its list).
The gateway's events may interleave (an OpenAI-compatible upstream may stream several tool
calls at once), so :class:`MessageStreamWriter` keeps one block open and streams it live.
A new block closes an open text or thinking block; but an open tool call may still receive
arguments, so what starts after it (more calls, more text) is held and sent whole, block
after block, when the answer ends. ``reasoning_content`` passthrough (from
reasoning models behind an OpenAI-compatible server) is rendered as ``thinking`` blocks,
with an empty ``signature``: the gateway has none to give.
"""

from __future__ import annotations

import json
from typing import Any

import attrs

from ..events import Completion, Passthrough, StreamEvent, TextDelta, ToolCallDelta, ToolCallStart
from ..events import Usage as UsageEvent
from ..types import ToolCall
from .errors import ApiError
from .jsonenc import json_bytes

__all__ = [
    "ANTHROPIC_PATH",
    "AnthropicApiError",
    "MessageStreamWriter",
    "anthropic_error_body",
    "anthropic_status",
    "frame_bytes",
    "message_body",
    "message_id",
    "stop_reason",
    "usage_body",
]

#: The paths whose errors are in Anthropic's shape (``/v1/messages`` and below).
ANTHROPIC_PATH = "/v1/messages"

#: The gateway's finish reasons (OpenAI's words) in Anthropic's.
_STOP_REASONS = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "function_call": "tool_use",
    "content_filter": "refusal",
}
#: Anthropic's own stop reasons, which pass through as they are.
_ANTHROPIC_STOP_REASONS = frozenset(
    [
        "end_turn",
        "max_tokens",
        "stop_sequence",
        "tool_use",
        "pause_turn",
        "refusal",
        "model_context_window_exceeded",
    ]
)

#: HTTP status → Anthropic error type (docs.claude.com/en/api/errors).
_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    408: "timeout_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    502: "api_error",
    503: "overloaded_error",
    504: "timeout_error",
    529: "overloaded_error",
}


def message_id(request_id: str) -> str:
    """The message's id: ``msg_`` and the request's id."""
    return "msg_" + request_id.removeprefix("req_")


def stop_reason(finish_reason: str) -> str:
    """Anthropic's ``stop_reason`` for the gateway's finish reason (``end_turn`` for one it
    has no word for)."""
    if finish_reason in _ANTHROPIC_STOP_REASONS:
        return finish_reason
    return _STOP_REASONS.get(finish_reason, "end_turn")


def usage_body(usage: UsageEvent | None) -> dict[str, int]:
    """Anthropic's ``usage``: its ``input_tokens`` counts neither cache reads nor cache
    writes (the three sum to the whole prompt), unlike the gateway's."""
    if usage is None:
        usage = UsageEvent()
    cached, written = usage.cached_input_tokens, usage.cache_write_tokens
    return {
        "input_tokens": max(0, usage.input_tokens - cached - written),
        "output_tokens": usage.output_tokens,
        "cache_creation_input_tokens": written,
        "cache_read_input_tokens": cached,
    }


def _tool_input(call: ToolCall) -> Any:
    """A tool call's arguments as the JSON object Anthropic's ``input`` is."""
    try:
        value = json.loads(call.arguments or "{}")
    except ValueError:
        return {"arguments": call.arguments}  # not JSON: kept, not lost
    return value if isinstance(value, dict) else {"arguments": value}


def _reasoning(passthrough: Passthrough | None) -> str:
    if passthrough is None:
        return ""
    reasoning = passthrough.message.get("reasoning_content")
    return reasoning if isinstance(reasoning, str) else ""


def message_body(completion: Completion, model: str) -> dict[str, Any]:
    """The ``message`` object for a finished request."""
    content: list[dict[str, Any]] = []
    if thinking := _reasoning(completion.passthrough):
        content.append({"type": "thinking", "thinking": thinking, "signature": ""})
    if completion.text:
        content.append({"type": "text", "text": completion.text})
    for call in completion.tool_calls:
        block = {"type": "tool_use", "id": call.id, "name": call.name}
        content.append({**block, "input": _tool_input(call)})
    return {
        "id": message_id(completion.request_id),
        "type": "message",
        "role": "assistant",
        "model": completion.model or model,
        "content": content,
        "stop_reason": stop_reason(completion.finish_reason),
        "stop_sequence": None,
        "usage": usage_body(completion.usage),
    }


def anthropic_status(error: ApiError) -> int:
    """The status to answer ``error`` with: its own, but an overloaded upstream is 529, as
    Anthropic answers it."""
    return 529 if error.code == "upstream_overloaded" else error.status


def anthropic_error_body(error: ApiError, request_id: str | None = None) -> dict[str, Any]:
    """``error`` in Anthropic's shape: ``{"type": "error", "error": {"type", "message"}}``."""
    kind = _ERROR_TYPES.get(anthropic_status(error))
    if kind is None:
        kind = "api_error" if error.status >= 500 else "invalid_request_error"
    message = error.message
    if error.param and f"`{error.param}`" not in message:
        message = f"{error.param}: {message}"  # Anthropic's errors have no param member
    body: dict[str, Any] = {"type": "error", "error": {"type": kind, "message": message}}
    if request_id is not None:
        body["request_id"] = request_id
    return body


@attrs.define
class AnthropicApiError(ApiError):
    """An :class:`~.errors.ApiError` whose body is in Anthropic's shape (what the service's
    layers answer on the Anthropic paths, such as a missing API key)."""

    def body(self) -> dict[str, Any]:
        """The JSON body: ``{"type": "error", "error": {...}}``."""
        return anthropic_error_body(self)

    @classmethod
    def of(cls, error: ApiError) -> AnthropicApiError:
        """``error``, in Anthropic's shape and with Anthropic's status for it."""
        status = anthropic_status(error)
        return cls(status, error.message, error.type, error.code, error.param, error.retry_after)


# ------------------------------------------------------------------------- streaming

Frame = tuple[str, dict[str, Any]]


def frame_bytes(name: str, data: dict[str, Any]) -> bytes:
    """One named server-sent event."""
    return b"event: " + name.encode() + b"\ndata: " + json_bytes(data) + b"\n\n"


@attrs.define(eq=False)
class _Block:
    """A content block: its kind (``text``, ``thinking``, ``tool``), its start, and what it
    received while held back."""

    kind: str
    start: dict[str, Any]
    held: list[str] = attrs.field(factory=list)

    def delta(self, index: int, piece: str) -> Frame:
        if self.kind == "tool":
            delta = {"type": "input_json_delta", "partial_json": piece}
        else:
            delta = {"type": f"{self.kind}_delta", self.kind: piece}
        return "content_block_delta", {
            "type": "content_block_delta",
            "index": index,
            "delta": delta,
        }


@attrs.define
class MessageStreamWriter:
    """Turns a request's events into Anthropic's stream events (see the module docstring).

    Args:
        request_id: the request's id.
        model: the model asked for.
    """

    request_id: str
    model: str
    started: bool = attrs.field(default=False, init=False)
    _index: int = attrs.field(default=-1, init=False)  # the open (or last) block's index
    _open: _Block | None = attrs.field(default=None, init=False)
    _held: list[_Block] = attrs.field(factory=list, init=False)
    _tools: dict[int, _Block] = attrs.field(factory=dict, init=False)

    def event(self, event: StreamEvent) -> list[Frame]:
        """The stream events for one of the gateway's events (``Done`` is :meth:`last`'s)."""
        frames = self._start()
        if isinstance(event, TextDelta) and event.text:
            frames += self._piece("text", {"type": "text", "text": ""}, event.text)
        elif isinstance(event, Passthrough) and (thinking := _reasoning(event)):
            thinking_start = {"type": "thinking", "thinking": "", "signature": ""}
            frames += self._piece("thinking", thinking_start, thinking)
        elif isinstance(event, ToolCallStart):
            start: dict[str, Any] = {"type": "tool_use", "id": event.id, "name": event.name}
            start["input"] = {}
            block = self._tools[event.index] = _Block("tool", start)
            frames += self._begin(block)
        elif isinstance(event, ToolCallDelta) and event.arguments:
            frames += self._add(self._tools[event.index], event.arguments)
        return frames

    def last(self, completion: Completion) -> list[Frame]:
        """The rest of the stream: held blocks, ``message_delta`` and ``message_stop``."""
        frames = self._start() + self._close()
        for block in self._held:
            frames += self._open_block(block) + self._close()
        self._held.clear()
        delta = {"stop_reason": stop_reason(completion.finish_reason), "stop_sequence": None}
        usage = usage_body(completion.usage)
        frames.append(("message_delta", {"type": "message_delta", "delta": delta, "usage": usage}))
        frames.append(("message_stop", {"type": "message_stop"}))
        return frames

    def _start(self) -> list[Frame]:
        if self.started:
            return []
        self.started = True
        message: dict[str, Any] = {
            "id": message_id(self.request_id),
            "type": "message",
            "role": "assistant",
            "model": self.model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            # The counts come with message_delta, once the upstream has reported them.
            "usage": usage_body(None),
        }
        return [("message_start", {"type": "message_start", "message": message})]

    def _piece(self, kind: str, start: dict[str, Any], piece: str) -> list[Frame]:
        """Text or thinking: continues the open block of its kind, else the last held one
        of its kind, else starts a block."""
        if self._open is not None and self._open.kind == kind:
            return [self._open.delta(self._index, piece)]
        if self._held and self._held[-1].kind == kind:
            self._held[-1].held.append(piece)
            return []
        block = _Block(kind, start)
        return self._begin(block) + self._add(block, piece)

    def _begin(self, block: _Block) -> list[Frame]:
        """A block starts: it opens now, closing the open one, unless that is a tool call
        (whose arguments may still come: then this one is held back to the end)."""
        if self._open is not None and self._open.kind == "tool":
            self._held.append(block)
            return []
        return self._close() + self._open_block(block)

    def _add(self, block: _Block, piece: str) -> list[Frame]:
        if block is self._open:
            return [block.delta(self._index, piece)]
        block.held.append(piece)
        return []

    def _open_block(self, block: _Block) -> list[Frame]:
        self._index += 1
        self._open = block
        start = {"type": "content_block_start", "index": self._index, "content_block": block.start}
        frames: list[Frame] = [("content_block_start", start)]
        if block.held:
            frames.append(block.delta(self._index, "".join(block.held)))
        return frames

    def _close(self) -> list[Frame]:
        if self._open is None:
            return []
        self._open = None
        return [("content_block_stop", {"type": "content_block_stop", "index": self._index})]
