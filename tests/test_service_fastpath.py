"""POST /v1/chat/completions served in front of Starlette's router answers as the route does."""

from __future__ import annotations

import json
from typing import Any

import pytest
from service_helpers import RecordingWorker, call_app, make_config, serving_in_process

from trio_orchestrator.config import Secret
from trio_orchestrator.config.service import ApiKeyConfig
from trio_orchestrator.service.fastpath import CHAT_PATH
from trio_orchestrator.workers import EchoWorker

HELLO = {"model": "echo", "messages": [{"role": "user", "content": "hello there"}]}

# Valid and invalid bodies: each is answered the same by the fast path and by the route.
BODIES: list[Any] = [
    HELLO,
    HELLO | {"stream": True, "stream_options": {"include_usage": True}},
    HELLO | {"model": "gpt-unknown"},
    HELLO | {"temperature": 7},
    {"model": "echo", "messages": [{"role": "wizard", "content": "x"}]},
    {"model": "echo"},
    b"{not json",
    b"[1, 2]",
    {"model": "echo", "messages": [{"role": "user", "content": "\udc80 lone surrogate"}]},
]

_VARYING = ("id", "created")
_PER_REQUEST = (b"x-request-id", b"x-gateway-overhead-ms")


def _comparable(sent: list[dict[str, Any]]) -> list[Any]:
    """The messages sent, without what differs between two runs (ids, timestamps)."""
    out: list[Any] = []
    for message in sent:
        if message["type"] == "http.response.start":
            # Both carry an x-request-id and an x-gateway-overhead-ms; their values differ
            # per request.
            headers = [(k, b"*" if k in _PER_REQUEST else v) for k, v in message["headers"]]
            out.append((message["status"], sorted(headers)))
            continue
        body = message["body"]
        for line in body.split(b"\n\n") if body.startswith(b"data: ") else [body]:
            payload = line.removeprefix(b"data: ")
            try:
                data = json.loads(payload)
            except ValueError:
                out.append(payload)
                continue
            if isinstance(data, dict):
                data = {k: v for k, v in data.items() if k not in _VARYING}
            out.append(data)
    return out


@pytest.mark.parametrize("body", BODIES, ids=range(len(BODIES)))
async def test_the_fast_path_answers_as_the_starlette_route(body: Any) -> None:
    """Status, headers and body (ids and timestamps aside) are the same whether the request
    took the fast path or, under a root_path, Starlette's route."""
    async with serving_in_process(EchoWorker()) as (app, pipeline):
        fast = await call_app(app, CHAT_PATH, body)
        routed = await call_app(app, CHAT_PATH, body, root_path="/gateway")
        stats = pipeline.statistics()
    assert _comparable(fast) == _comparable(routed)
    assert fast[0]["status"] in (200, 400, 404)
    assert stats.submitted == 2 * (fast[0]["status"] == 200)


async def test_a_body_in_pieces_is_read_whole() -> None:
    """A body that arrives in several messages is joined before it is parsed."""
    async with serving_in_process(EchoWorker()) as (app, _pipeline):
        sent = await call_app(app, CHAT_PATH, HELLO, chunk=7)
    assert sent[0]["status"] == 200
    assert json.loads(sent[1]["body"])["choices"][0]["message"]["content"] == "hello there"


async def test_errors_name_the_field_in_openais_shape() -> None:
    """A bad field is a 400 whose error names it, as on every endpoint."""
    async with serving_in_process(EchoWorker()) as (app, _pipeline):
        sent = await call_app(app, CHAT_PATH, HELLO | {"top_p": "high"})
    assert sent[0]["status"] == 400
    error = json.loads(sent[1]["body"])["error"]
    assert (error["param"], error["code"], error["type"]) == (
        "top_p",
        "invalid_value",
        "invalid_request_error",
    )


async def test_a_draining_service_refuses_with_503_and_retry_after() -> None:
    """While draining, the fast path refuses as every endpoint does: 503 with Retry-After."""
    async with serving_in_process(EchoWorker()) as (app, _pipeline):
        app.state.service.draining = True
        sent = await call_app(app, CHAT_PATH, HELLO)
    assert sent[0]["status"] == 503
    assert (b"retry-after", b"1") in sent[0]["headers"]


async def test_the_fast_path_is_behind_the_api_key_check() -> None:
    """With keys configured, the fast path is reached only with a valid key."""
    config = make_config(api_keys=[ApiKeyConfig("app", key=Secret("sk-good"))])
    async with serving_in_process(EchoWorker(), config) as (app, pipeline):
        refused = await call_app(app, CHAT_PATH, HELLO)
        served = await call_app(
            app, CHAT_PATH, HELLO, headers=[(b"authorization", b"Bearer sk-good")]
        )
        stats = pipeline.statistics()
    assert (refused[0]["status"], served[0]["status"], stats.submitted) == (401, 200, 1)


async def test_an_incoming_traceparent_reaches_the_request() -> None:
    """The caller's traceparent (and tracestate) go into the request's meta."""
    traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    worker = RecordingWorker()
    headers = [(b"traceparent", traceparent.encode()), (b"tracestate", b"k=v")]
    async with serving_in_process(worker) as (app, _pipeline):
        await call_app(app, CHAT_PATH, HELLO, headers=headers)
    assert dict(worker.seen[0].meta) == {"traceparent": traceparent, "tracestate": "k=v"}


async def test_other_methods_go_on_to_starlette() -> None:
    """Only POST takes the fast path: another method is routed as before, to a 405."""
    async with serving_in_process(EchoWorker()) as (app, pipeline):
        sent = await call_app(app, CHAT_PATH, b"", method="GET")
        stats = pipeline.statistics()
    assert (sent[0]["status"], stats.submitted) == (405, 0)
    assert json.loads(sent[1]["body"])["error"]["code"] == "invalid_request"


async def test_with_cors_the_chat_answer_carries_its_headers() -> None:
    """With CORS configured, chat completions go through the CORS layer (no fast path)."""
    config = make_config(cors_origins=("https://example.com",))
    origin = [(b"origin", b"https://example.com")]
    async with serving_in_process(EchoWorker(), config) as (app, _pipeline):
        sent = await call_app(app, CHAT_PATH, HELLO, headers=origin)
    assert sent[0]["status"] == 200
    assert (b"access-control-allow-origin", b"https://example.com") in sent[0]["headers"]


async def test_a_body_growing_past_the_limit_is_a_413() -> None:
    """A body sent in pieces without a Content-Length is counted as it arrives: 413 past the
    limit, and nothing is submitted."""
    config = make_config(max_body_bytes=100)
    body = HELLO | {"user": "x" * 200}
    async with serving_in_process(EchoWorker(), config) as (app, pipeline):
        sent = await call_app(app, CHAT_PATH, body, chunk=30, content_length=False)
        stats = pipeline.statistics()
    assert (sent[0]["status"], stats.submitted) == (413, 0)
    assert json.loads(sent[1]["body"])["error"]["code"] == "request_too_large"
