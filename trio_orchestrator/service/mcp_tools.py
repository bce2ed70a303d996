"""The gateway's MCP tools, each one request to the service's own HTTP endpoints, in process.

A tool call is answered by sending the matching HTTP request (``POST /v1/chat/completions``,
``GET /v1/models``, ``GET /v1/stats``, ``GET /v1/dead-letters``, ``POST
/v1/dead-letters/{id}/replay``) to the service's ASGI application itself, with the caller's
credentials (``Authorization`` or ``x-api-key``) and trace headers copied from the MCP
request. So the tool meets exactly what a client of that endpoint meets: the guard and its
key ring (401 for a missing key, 403 for a non-admin key on the dead letters), the key's
priority cap, rate limits and budgets per key, the body validation, every layer of the
pipeline, the request's metrics and logs. Nothing here reaches the pipeline or a worker
itself, so nothing can drift from the HTTP path. The cost, an in-process ASGI request (no
socket), is a few tens of microseconds against a model call's seconds.

A refusal or failure of the endpoint becomes an MCP tool error (``isError``) whose text names
the tool, the endpoint's message, and its HTTP status and code (``403 admin_required``,
``429 rate_limit_exceeded``, ``429 insufficient_quota``...); :class:`ToolCalls` counts every
call by tool and outcome for ``/metrics``.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from typing import Any
from urllib.parse import quote

import attrs
import trio

from .jsonenc import json_bytes

__all__ = [
    "TOOLS",
    "Endpoint",
    "ToolAnswer",
    "ToolCalls",
    "ToolSpec",
    "call_tool",
    "forwarded_headers",
]

Scope = dict[str, Any]
Message = dict[str, Any]
App = Callable[[Scope, Callable[[], Awaitable[Message]], Callable[[Message], Awaitable[None]]], Any]

# The request headers a tool's HTTP request carries over from the MCP request: the caller's
# key (both ways the guard reads it) and the trace context, so the completion's trace
# continues the client's.
FORWARDED = frozenset((b"authorization", b"x-api-key", b"traceparent", b"tracestate"))


def forwarded_headers(headers: Sequence[tuple[bytes, bytes]]) -> tuple[tuple[bytes, bytes], ...]:
    """The headers of an MCP HTTP request that its tool calls carry (:data:`FORWARDED`).

    Args:
        headers: the MCP request's ASGI headers (lower-case names).

    Returns:
        Those among them that the tools' requests send on.
    """
    return tuple((name, value) for name, value in headers if name in FORWARDED)


@attrs.frozen
class ToolAnswer:
    """What one tool call answers.

    Attributes:
        text: the text shown to the model (the completion's text, or JSON).
        data: the structured result (the endpoint's JSON answer), or None for an error.
        error: the call failed or was refused; ``text`` says why.
        outcome: ``ok``, or the endpoint's error code (the ``/metrics`` label).
    """

    text: str
    data: dict[str, Any] | None = None
    error: bool = False
    outcome: str = "ok"


@attrs.define(eq=False)
class Endpoint:
    """Sends the tools' HTTP requests to the service's application, in process.

    Args:
        app: the service's ASGI application (:class:`~.app.ServiceApp`).
        headers: the caller's headers to send with every request (:func:`forwarded_headers`).
    """

    app: App
    headers: tuple[tuple[bytes, bytes], ...] = ()

    async def request(
        self, method: str, path: str, body: Mapping[str, Any] | None = None, query: str = ""
    ) -> tuple[int, Any]:
        """Send one request; return its status and its JSON answer (None when not JSON).

        The request's body is never cut short and it never disconnects: the call is
        cancelled instead when the MCP request is (which cancels the pipeline request).
        """
        data = b"" if body is None else json_bytes(body)
        headers = [
            *self.headers,
            (b"content-type", b"application/json"),
            (b"content-length", b"%d" % len(data)),
        ]
        scope: Scope = {
            "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
            "method": method, "scheme": "http", "path": path, "raw_path": path.encode(),
            "query_string": query.encode(), "root_path": "", "headers": headers,
            "client": ("127.0.0.1", 0), "server": ("127.0.0.1", 0), "extensions": {},
        }  # fmt: skip
        messages = [{"type": "http.request", "body": data, "more_body": False}]
        status = 500
        chunks: list[bytes] = []

        async def receive() -> Message:
            if messages:
                return messages.pop()
            await trio.sleep_forever()  # only a disconnect would come next: none does
            raise AssertionError("unreachable")

        async def send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            elif message["type"] == "http.response.body":
                chunks.append(message.get("body", b""))

        await self.app(scope, receive, send)
        try:
            return status, json.loads(b"".join(chunks))
        except ValueError:
            return status, None


Run = Callable[[Endpoint, Mapping[str, Any]], Awaitable[ToolAnswer]]


@attrs.frozen
class ToolSpec:
    """One tool: what a client's ``tools/list`` shows, and how it runs.

    Attributes:
        name: the tool's name.
        description: what it does (the model reads it).
        input_schema: the JSON Schema of its arguments.
        read_only: it changes nothing (MCP's ``readOnlyHint``).
        run: sends its request and reads the answer.
    """

    name: str
    description: str
    input_schema: dict[str, Any]
    read_only: bool
    run: Run


class ToolArgumentError(ValueError):
    """A tool's arguments are not what its schema says."""


# ----------------------------------------------------------------- answers


def _answer(tool: str, status: int, body: Any) -> ToolAnswer:
    """The endpoint's JSON answer as the tool's, or the error it carries as a tool error."""
    if status < 400 and isinstance(body, dict):
        return ToolAnswer(json_bytes(body).decode(), body)
    return _refusal(tool, status, body)


def _refusal(tool: str, status: int, body: Any) -> ToolAnswer:
    error = body.get("error") if isinstance(body, dict) else None
    if not isinstance(error, dict):
        error = {"message": "the endpoint answered without an error body", "code": "unknown"}
    code = str(error.get("code") or error.get("type") or "error")
    message = str(error.get("message", ""))
    if code == "admin_required":
        message = f"an admin API key is needed for {tool}: {message}"
    return ToolAnswer(f"{tool} failed: {message} ({status} {code})", error=True, outcome=code)


def _bad_arguments(tool: str, problem: str) -> ToolAnswer:
    return ToolAnswer(f"{tool}: invalid arguments: {problem}", error=True, outcome="bad_arguments")


# ----------------------------------------------------------------- the tools

# The Chat Completions members `complete` takes besides the messages, sent as they are: the
# endpoint validates them (a bad value is its 400, named, as a tool error).
_PASSED = ("max_tokens", "temperature", "top_p", "stop", "seed")

_COMPLETE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "model": {
            "type": "string",
            "description": "a model list_models names (default: the first one)",
        },
        "prompt": {"type": "string", "description": "the user's message (or give messages)"},
        "messages": {
            "type": "array",
            "description": "the conversation, as Chat Completions messages",
            "items": {
                "type": "object",
                "properties": {
                    "role": {"type": "string", "enum": ["system", "user", "assistant"]},
                    "content": {"type": "string"},
                },
                "required": ["role", "content"],
            },
        },
        "max_tokens": {"type": "integer", "minimum": 1},
        "temperature": {"type": "number", "minimum": 0, "maximum": 2},
        "top_p": {"type": "number", "minimum": 0, "maximum": 1},
        "stop": {"type": "array", "items": {"type": "string"}, "maxItems": 4},
        "seed": {"type": "integer"},
    },
}


async def _complete(endpoint: Endpoint, arguments: Mapping[str, Any]) -> ToolAnswer:
    """A chat completion through ``POST /v1/chat/completions``."""
    messages = arguments.get("messages")
    prompt = arguments.get("prompt")
    if (messages is None) == (prompt is None):
        return _bad_arguments("complete", "give either `prompt` or `messages`")
    if prompt is not None:
        if not isinstance(prompt, str):
            return _bad_arguments("complete", "`prompt` must be a string")
        messages = [{"role": "user", "content": prompt}]
    model = arguments.get("model")
    if model is None:
        status, listed = await endpoint.request("GET", "/v1/models")
        if status >= 400:
            return _refusal("complete", status, listed)
        model = next(iter(_model_ids(listed)), "echo")
    body = {"model": model, "messages": messages}
    body |= {name: arguments[name] for name in _PASSED if name in arguments}
    status, answer = await endpoint.request("POST", "/v1/chat/completions", body)
    if status >= 400 or not isinstance(answer, dict):
        return _refusal("complete", status, answer)
    choice = answer["choices"][0]
    text = choice["message"].get("content") or ""
    data = {
        "text": text,
        "model": answer.get("model"),
        "finish_reason": choice.get("finish_reason"),
        "usage": answer.get("usage"),
        "request_id": answer.get("id"),
    }
    return ToolAnswer(text, data)


def _model_ids(listed: Any) -> Iterator[str]:
    for model in listed.get("data", ()) if isinstance(listed, dict) else ():
        if isinstance(model, dict) and isinstance(model.get("id"), str):
            yield model["id"]


async def _list_models(endpoint: Endpoint, _arguments: Mapping[str, Any]) -> ToolAnswer:
    """What ``GET /v1/models`` answers."""
    return _answer("list_models", *await endpoint.request("GET", "/v1/models"))


async def _statistics(endpoint: Endpoint, _arguments: Mapping[str, Any]) -> ToolAnswer:
    """What ``GET /v1/stats`` answers."""
    return _answer("statistics", *await endpoint.request("GET", "/v1/stats"))


async def _list_dead_letters(endpoint: Endpoint, arguments: Mapping[str, Any]) -> ToolAnswer:
    """What ``GET /v1/dead-letters`` answers (admin keys only)."""
    limit = arguments.get("limit")
    if limit is not None and (type(limit) is not int or limit < 1):
        return _bad_arguments("list_dead_letters", "`limit` must be a positive integer")
    query = "" if limit is None else f"limit={limit}"
    answer = await endpoint.request("GET", "/v1/dead-letters", query=query)
    return _answer("list_dead_letters", *answer)


async def _replay_dead_letter(endpoint: Endpoint, arguments: Mapping[str, Any]) -> ToolAnswer:
    """What ``POST /v1/dead-letters/{id}/replay`` answers (admin keys only)."""
    letter_id = arguments.get("id")
    if not isinstance(letter_id, str) or not letter_id:
        return _bad_arguments("replay_dead_letter", "`id` must be a dead letter's id")
    path = f"/v1/dead-letters/{quote(letter_id, safe='')}/replay"
    return _answer("replay_dead_letter", *await endpoint.request("POST", path, {}))


_NO_ARGUMENTS: dict[str, Any] = {"type": "object", "properties": {}}

TOOLS: tuple[ToolSpec, ...] = (
    ToolSpec(
        "complete",
        "Complete a prompt (or a conversation) with a model served by the gateway, under the "
        "caller's API key, its limits and budget. Answers the completion's text.",
        _COMPLETE_SCHEMA,
        read_only=False,
        run=_complete,
    ),
    ToolSpec(
        "list_models",
        "The models the gateway serves (what GET /v1/models answers).",
        _NO_ARGUMENTS,
        read_only=True,
        run=_list_models,
    ),
    ToolSpec(
        "statistics",
        "The gateway's request counters and API key pools (what GET /v1/stats answers).",
        _NO_ARGUMENTS,
        read_only=True,
        run=_statistics,
    ),
    ToolSpec(
        "list_dead_letters",
        "The requests the gateway shed, oldest first (admin API key only).",
        {
            "type": "object",
            "properties": {"limit": {"type": "integer", "minimum": 1, "maximum": 10000}},
        },
        read_only=True,
        run=_list_dead_letters,
    ),
    ToolSpec(
        "replay_dead_letter",
        "Submit a shed request again by its dead letter id (admin API key only).",
        {
            "type": "object",
            "properties": {"id": {"type": "string", "description": "the dead letter's id"}},
            "required": ["id"],
        },
        read_only=False,
        run=_replay_dead_letter,
    ),
)
_BY_NAME = {tool.name: tool for tool in TOOLS}


@attrs.define(eq=False)
class ToolCalls:
    """Counts MCP tool calls by tool and outcome: a Prometheus collector exporting
    ``trio_orchestrator_mcp_tool_calls_total{tool, outcome}``.

    The outcome is ``ok``, ``bad_arguments``, ``unknown_tool``, or the endpoint's error
    code (a fixed set: :mod:`.errors`); an unknown tool's name is counted as ``other``, so
    a client cannot grow the label set.
    """

    _counts: dict[tuple[str, str], int] = attrs.field(factory=dict, init=False)

    def count(self, tool: str, outcome: str) -> None:
        """Count one call of ``tool`` that ended in ``outcome``."""
        key = (tool if tool in _BY_NAME else "other", outcome)
        self._counts[key] = self._counts.get(key, 0) + 1

    def counts(self) -> dict[tuple[str, str], int]:
        """The calls so far, by (tool, outcome)."""
        return dict(self._counts)

    def describe(self) -> Iterator[Any]:
        """Nothing ahead of time (the registry then collects on each scrape)."""
        return iter(())

    def collect(self) -> Iterator[Any]:
        """The counter family, read now."""
        from ..observability.metrics import prometheus

        family = prometheus().core.CounterMetricFamily(
            "trio_orchestrator_mcp_tool_calls",
            "MCP tool calls, by tool and outcome (ok, or the endpoint's error code).",
            labels=["tool", "outcome"],
        )
        for (tool, outcome), count in sorted(self._counts.items()):
            family.add_metric([tool, outcome], count)
        yield family


async def call_tool(
    endpoint: Endpoint, name: str, arguments: Mapping[str, Any] | None, calls: ToolCalls
) -> ToolAnswer:
    """Run the tool ``name`` with ``arguments`` and count the call.

    Args:
        endpoint: sends the tool's request, with the caller's credentials.
        name: the tool's name.
        arguments: its arguments (None as none).
        calls: where the call is counted.

    Returns:
        The answer; an error answer (``error``) for an unknown tool, bad arguments, or an
        endpoint's refusal or failure.
    """
    tool = _BY_NAME.get(name)
    if tool is None:
        known = ", ".join(_BY_NAME)
        answer = ToolAnswer(f"no tool {name!r}; the tools are {known}", error=True)
        answer = attrs.evolve(answer, outcome="unknown_tool")
    else:
        answer = await tool.run(endpoint, arguments or {})
    calls.count(name, answer.outcome)
    return answer
