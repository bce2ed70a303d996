"""``/v1/ws``: several prompts at once over one WebSocket, each cancellable by a message.

The client sends JSON text messages::

    {"type": "prompt", "id": "a", "input": "Hello", ...}   # the fields of POST /v1/prompt
    {"type": "cancel", "id": "a"}

and the server answers with events tagged with the prompt's ``id``::

    {"id": "a", "type": "start", "request_id": "req_…"}
    {"id": "a", "type": "text_delta", "text": "Hello"}
    {"id": "a", "type": "usage", "input_tokens": 1, "output_tokens": 1}
    {"id": "a", "type": "done", "text": "Hello", "finish_reason": "stop", ...}

A prompt ends with exactly one of ``done``, ``error`` (with ``outcome`` and OpenAI's
``error`` object) or ``cancelled``. A message the server cannot act on gets an ``error``
event whose ``id`` is the message's (or null). Closing the socket cancels every prompt.
"""

from __future__ import annotations

import json
from typing import Any

import trio
from starlette.websockets import WebSocket

from ..errors import OrchestratorError
from ..types import PromptRequest
from .errors import ApiError, map_exception, outcome_of
from .guard import Caller, caller_of
from .jsonenc import json_bytes
from .native import event_json, parse_prompt_request
from .state import ServiceState, service_of
from .validate import Fields, invalid, parse_json_object

__all__ = ["websocket_endpoint"]

# Prompts one connection may have in flight; more are refused with an error event.
MAX_IN_FLIGHT = 256


async def websocket_endpoint(websocket: WebSocket) -> None:
    """Serve one WebSocket connection until the client closes it."""
    await websocket.accept()
    connection = _Connection(websocket, service_of(websocket), caller_of(websocket.scope))
    await connection.run()


class _Connection:
    def __init__(self, websocket: WebSocket, state: ServiceState, caller: Caller) -> None:
        self._ws = websocket
        self._state = state
        self._caller = caller
        self._headers = dict(websocket.headers)
        self._send_lock = trio.Lock()
        self._prompts: dict[str, trio.CancelScope] = {}

    async def run(self) -> None:
        async with trio.open_nursery() as nursery:
            while True:
                message = await self._ws.receive()
                if message["type"] == "websocket.disconnect":
                    nursery.cancel_scope.cancel()
                    return
                try:
                    self._handle(nursery, message.get("text"))
                except ApiError as error:
                    await self._send(_message_id(message.get("text")), _error_event(error))

    async def _send(self, prompt_id: str | None, event: dict[str, Any]) -> None:
        async with self._send_lock:
            await self._ws.send_text(json_bytes({"id": prompt_id, **event}).decode())

    def _handle(self, nursery: trio.Nursery, text: str | None) -> None:
        fields = _parse(text)
        kind = fields.text("type", required=True)
        prompt_id = _id(fields)
        if kind == "cancel":
            scope = self._prompts.get(prompt_id)
            if scope is None:
                raise ApiError(404, f"no prompt {prompt_id!r} in flight", code="unknown_id")
            scope.cancel()
        elif kind == "prompt":
            if prompt_id in self._prompts:
                raise invalid("id", "an id not already in flight on this connection", prompt_id)
            if len(self._prompts) >= MAX_IN_FLIGHT:
                message = f"at most {MAX_IN_FLIGHT} prompts may be in flight per connection"
                raise ApiError(429, message, "rate_limit_error", "too_many_prompts")
            self._state.open_pipeline()
            request = parse_prompt_request(
                fields,
                self._state.models,
                self._caller.meta(self._headers),
                self._caller.priority_cap,
            )
            self._prompts[prompt_id] = scope = trio.CancelScope()
            nursery.start_soon(self._run_prompt, prompt_id, request, scope)
        else:
            raise invalid("type", '"prompt" or "cancel"', kind)

    async def _run_prompt(
        self, prompt_id: str, request: PromptRequest, scope: trio.CancelScope
    ) -> None:
        try:
            with scope:
                await self._stream(prompt_id, request)
        except OrchestratorError as exc:
            error = map_exception(exc)
            await self._send(prompt_id, {**_error_event(error), "outcome": outcome_of(exc).value})
        finally:
            del self._prompts[prompt_id]
        if scope.cancelled_caught:
            await self._send(prompt_id, {"type": "cancelled", "request_id": request.request_id})

    async def _stream(self, prompt_id: str, request: PromptRequest) -> None:
        pipeline = self._state.open_pipeline()
        async with pipeline.stream(request) as events:
            await self._send(prompt_id, {"type": "start", "request_id": request.request_id})
            async for event in events:
                await self._send(prompt_id, event_json(event))


def _parse(text: str | None) -> Fields:
    if text is None:
        raise ApiError(400, "send JSON text messages, not binary ones", code="invalid_json")
    # The door every JSON body goes through: what no upstream can carry is refused here.
    return parse_json_object(text, "the message")


def _id(fields: Fields) -> str:
    value = fields.data.get("id")
    if isinstance(value, str) and 0 < len(value) <= 128:
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    raise invalid("id", "a string (1-128 characters) or an integer", value)


def _message_id(text: str | None) -> str | None:
    try:
        value = json.loads(text or "").get("id")
    except (ValueError, AttributeError):
        return None
    return str(value) if isinstance(value, str | int) and not isinstance(value, bool) else None


def _error_event(error: ApiError) -> dict[str, Any]:
    return {"type": "error", **error.body()}
