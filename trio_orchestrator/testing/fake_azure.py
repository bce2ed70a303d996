"""Azure OpenAI's wire format for the fake provider (:mod:`.fake_provider`).

Routes, as Azure OpenAI serves them (the REST reference, data plane inference):

- ``POST /openai/deployments/{deployment}/chat/completions?api-version=…`` and
  ``…/embeddings``: without ``api-version``, Azure's 404 ``Resource not found``;
- ``POST /openai/v1/chat/completions``, ``/openai/v1/embeddings`` and
  ``GET /openai/v1/models``: the v1 surface (no ``api-version``).

A call without an ``api-key`` header or an ``Authorization: Bearer`` token gets Azure's 401.
Answers are the fake's OpenAI answers with Azure's additions: ``prompt_filter_results``
(a first stream chunk with no choices, as Azure sends it, or a member of the answer) and
each choice's ``content_filter_results``; a recorded answer (``Behaviour.body`` /
``events``) goes out verbatim. Errors take Azure's bodies: a 429 says when to retry in its
message and in ``retry-after`` and ``retry-after-ms``; ``error_type="content_filter"`` is
the content filter's 400 with ``innererror.content_filter_result``; a 404 is
``DeploymentNotFound``; a 401 is the access-denied body.
"""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from typing import Any, Protocol
from urllib.parse import parse_qs

# The fake provider imports this module, so its types are described here, not imported.
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


class Behaviour(Protocol):
    """What this module reads of :class:`.fake_provider.Behaviour`."""

    @property
    def status(self) -> int: ...
    @property
    def retry_after(self) -> float | str | None: ...
    @property
    def error_type(self) -> str | None: ...
    @property
    def error_message(self) -> str: ...
    @property
    def headers(self) -> Mapping[str, str]: ...
    @property
    def hang(self) -> bool: ...
    @property
    def body(self) -> Any: ...
    @property
    def events(self) -> tuple[Any, ...]: ...


class FakeProvider(Protocol):
    """What this module uses of :class:`.fake_provider.FakeProvider`."""

    @property
    def models(self) -> tuple[str, ...]: ...
    def _pick(self, headers: Mapping[str, str], body: Any, /) -> Any: ...
    async def _chat(
        self, b: Any, body: Mapping[str, Any], send: Send, /, *, anthropic: bool
    ) -> None: ...
    async def _embeddings(self, b: Any, body: Mapping[str, Any], send: Send, /) -> None: ...


__all__ = ["CONTENT_FILTER_RESULTS", "azure_error", "is_azure_path", "route"]

_PATH = re.compile(
    r"^/openai/(?:deployments/(?P<deployment>[^/]+)|(?P<v1>v1))"
    r"/(?P<endpoint>chat/completions|embeddings|models)$"
)

#: A content filter verdict with nothing filtered, as Azure reports one per category.
CONTENT_FILTER_RESULTS: Mapping[str, Any] = {
    "hate": {"filtered": False, "severity": "safe"},
    "self_harm": {"filtered": False, "severity": "safe"},
    "sexual": {"filtered": False, "severity": "safe"},
    "violence": {"filtered": False, "severity": "safe"},
}


_ACCESS_DENIED = (
    "Access denied due to invalid subscription key or wrong API endpoint. Make sure to "
    "provide a valid key for an active subscription and use a correct regional API endpoint "
    "for your resource."
)


def is_azure_path(path: str) -> bool:
    """Whether ``path`` is one of Azure OpenAI's."""
    return path.startswith("/openai/")


def azure_error(b: Behaviour, api_version: str) -> tuple[dict[str, Any], dict[str, str]]:
    """Azure's error body and headers for a behaviour with an error status."""
    headers = dict(b.headers)
    if b.error_type == "content_filter":
        verdict = dict(CONTENT_FILTER_RESULTS)
        verdict["violence"] = {"filtered": True, "severity": "medium"}
        error: dict[str, Any] = {
            "message": "The response was filtered due to the prompt triggering Azure "
            "OpenAI's content management policy. Please modify your prompt and retry.",
            "type": None,
            "param": "prompt",
            "code": "content_filter",
            "status": 400,
            "innererror": {
                "code": "ResponsibleAIPolicyViolation",
                "content_filter_result": verdict,
            },
        }
        return {"error": error}, headers
    if b.status == 429 and b.error_type is None:
        wait = b.retry_after if b.retry_after is not None else 6
        headers.setdefault("retry-after", str(wait))
        if isinstance(wait, int | float):
            headers.setdefault("retry-after-ms", str(int(wait * 1000)))
        headers.setdefault("x-ratelimit-remaining-requests", "0")
        headers.setdefault("x-ratelimit-remaining-tokens", "0")
        message = (
            "Requests to the ChatCompletions_Create Operation under Azure OpenAI API version "
            f"{api_version} have exceeded token rate limit of your current OpenAI S0 pricing "
            f"tier. Please retry after {wait} seconds. Please go here: "
            "https://aka.ms/oai/quotaincrease if you would like to further increase the "
            "default rate limit."
        )
        return {"error": {"code": "429", "message": message}}, headers
    if b.retry_after is not None:
        headers["retry-after"] = str(b.retry_after)
    if b.status == 401 and b.error_type is None:
        return {"error": {"code": "401", "message": _ACCESS_DENIED}}, headers
    if b.status == 404 and b.error_type is None:
        message = (
            "The API deployment for this resource does not exist. If you created the "
            "deployment within the last 5 minutes, please wait a moment and try again."
        )
        return {"error": {"code": "DeploymentNotFound", "message": message}}, headers
    # Errors from the model service itself come in OpenAI's shape.
    kind = b.error_type or ("server_error" if b.status >= 500 else "invalid_request_error")
    error = {"message": b.error_message, "type": kind, "param": None, "code": kind}
    return {"error": error}, headers


async def _json(send: Send, status: int, payload: Any, headers: Mapping[str, str]) -> None:
    data = json.dumps(payload).encode()
    pairs = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]
    pairs += [(k.encode(), v.encode()) for k, v in headers.items()]
    await send({"type": "http.response.start", "status": status, "headers": pairs})
    await send({"type": "http.response.body", "body": data, "more_body": False})


def _prompt_filter_results() -> list[dict[str, Any]]:
    return [{"prompt_index": 0, "content_filter_results": dict(CONTENT_FILTER_RESULTS)}]


def _decorate_answer(data: bytes) -> bytes:
    """Azure's members added to a JSON chat answer."""
    try:
        answer = json.loads(data)
    except ValueError:
        return data
    if not isinstance(answer, dict) or "choices" not in answer:
        return data
    answer["prompt_filter_results"] = _prompt_filter_results()
    for choice in answer["choices"]:
        choice["content_filter_results"] = dict(CONTENT_FILTER_RESULTS)
    return json.dumps(answer).encode()


def _azure_send(send: Send, *, stream: bool) -> Send:
    """``send`` with Azure's additions to a generated chat answer: a first chunk of prompt
    filter results in a stream, Azure's members in a JSON answer."""
    held: list[MutableMapping[str, Any]] = []
    first = [True]

    async def wrapped(message: MutableMapping[str, Any]) -> None:
        if message["type"] == "http.response.start":
            if message["status"] != 200:
                first[0] = False
            if stream or not first[0]:
                await send(message)
            else:
                held.append(message)  # sent with the body, whose length changes
            return
        if message["type"] == "http.response.body" and first[0]:
            first[0] = False
            body = bytes(message.get("body", b""))
            if stream:
                chunk = {
                    "choices": [],
                    "created": 0,
                    "id": "",
                    "model": "",
                    "object": "",
                    "prompt_filter_results": _prompt_filter_results(),
                }
                body = f"data: {json.dumps(chunk)}\n\n".encode() + body
            elif not message.get("more_body"):
                body = _decorate_answer(body)
            message = {**message, "body": body}
            if held:
                start = held.pop()
                headers = [(k, v) for k, v in start["headers"] if k != b"content-length"]
                headers.append((b"content-length", str(len(body)).encode()))
                await send({**start, "headers": headers})
        elif held:
            await send(held.pop())
        await send(message)

    return wrapped


async def route(
    fake: FakeProvider,
    method: str,
    path: str,
    query: str,
    headers: Mapping[str, str],
    body: Any,
    send: Send,
) -> None:
    """Answer one request to an Azure OpenAI path as Azure does."""
    match = _PATH.match(path)
    version = (parse_qs(query).get("api-version") or [""])[0]
    deployment_url = match is not None and match["deployment"] is not None
    if match is None or (deployment_url and not version):
        await _json(send, 404, {"error": {"code": "404", "message": "Resource not found"}}, {})
        return
    if "api-key" not in headers and not headers.get("authorization", "").startswith("Bearer "):
        await _json(send, 401, {"error": {"code": "401", "message": _ACCESS_DENIED}}, {})
        return
    endpoint = match["endpoint"]
    if method == "GET" and endpoint == "models" and match["v1"]:
        data = [
            {"id": m, "object": "model", "created": 0, "owned_by": "system"} for m in fake.models
        ]
        await _json(send, 200, {"object": "list", "data": data}, {})
        return
    if method != "POST" or not isinstance(body, Mapping) or endpoint == "models":
        await _json(send, 404, {"error": {"code": "404", "message": "Resource not found"}}, {})
        return
    b = fake._pick(headers, body)
    if b.status >= 400 and not b.hang:
        payload, extra = azure_error(b, version or "v1")
        # A recorded error body goes out as it is.
        await _json(send, b.status, payload if b.body is None else b.body, extra)
        return
    if endpoint == "embeddings":
        await fake._embeddings(b, body, send)
        return
    stream = bool(body.get("stream"))
    recorded = b.body is not None or bool(b.events)
    azure_send = send if recorded else _azure_send(send, stream=stream)
    await fake._chat(b, body, azure_send, anthropic=False)
