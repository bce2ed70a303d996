"""Errors the service sends: the status and OpenAI error object for each failure."""

from __future__ import annotations

import importlib
import json
import logging
import pkgutil
from collections.abc import AsyncIterator
from typing import Any

import attrs
import httpx
import pytest
import trio
from service_helpers import RaisingWorker, make_config, running_service

import trio_orchestrator
from trio_orchestrator import errors as e
from trio_orchestrator.distributed.connection import RedisUnavailable
from trio_orchestrator.events import Completion, EventGrammarError, StreamEvent, TextDelta
from trio_orchestrator.pipeline import open_pipeline
from trio_orchestrator.resilience.adaptive_limiter import ConcurrencyLimited
from trio_orchestrator.routing.budget import BudgetExceeded
from trio_orchestrator.service import ApiError, map_exception
from trio_orchestrator.service.app import create_app
from trio_orchestrator.service.streaming import PushedEventStream
from trio_orchestrator.storage import StorageUnavailable
from trio_orchestrator.types import PromptRequest
from trio_orchestrator.workers import EchoWorker, EventSink

CHAT_PATH = "/v1/chat/completions"
CHAT = {"model": "echo", "messages": [{"role": "user", "content": "hi"}]}

# Every error class a request can end with, from anywhere in the package, and its status.
STATUS: list[tuple[Exception, int]] = [
    (e.PipelineClosed(), 503),
    (e.RequestShed("inference", "full"), 503),
    (e.DeadlineExceeded("late"), 408),
    (e.RequestCancelled("shutdown"), 503),
    (e.RequestError("ended"), 503),
    (e.WorkerCrashed("boom"), 500),
    (e.CircuitOpen("open", retry_after=3), 503),
    (e.RateLimitExceeded("local", retry_after=2), 429),
    (e.RateLimited("upstream", retry_after=5), 429),
    (e.Overloaded("busy"), 503),
    (e.ServerError("500"), 502),
    (e.ProviderTimeout("slow"), 504),
    (e.ProviderConnectionError("reset"), 502),
    (e.MalformedResponse("garbled"), 502),
    (e.AuthenticationError("bad key"), 502),
    (e.PermissionDenied("no"), 502),
    (e.ModelNotFound("gone"), 404),
    (e.ContentFiltered("no"), 400),
    (e.BadRequest("bad"), 400),
    (e.ContextLengthExceeded("long"), 400),
    (e.UnsupportedParameter("logit_bias", "no equivalent"), 400),
    (e.ProviderError("other"), 502),
    (BudgetExceeded("model", "gpt", limit=1.0, spent=1.0, needed=0.1), 429),
    (RedisUnavailable("down"), 503),
    (StorageUnavailable("down"), 503),
    (ConcurrencyLimited("at its adaptive limit", retry_after=1.0), 503),
    (e.ConfigError("routing.deployments: bad"), 503),
    (EventGrammarError("TextDelta after Done"), 502),
]

# Abstract bases: a bare instance says nothing about what failed, so it is an internal error.
UNTYPED: list[tuple[Exception, int]] = [
    (e.OrchestratorError("untyped"), 500),
    (e.WorkerError("untyped"), 500),
]


@pytest.mark.parametrize(("error", "status"), STATUS + UNTYPED, ids=lambda x: type(x).__name__)
def test_each_error_class_maps_to_its_status(error: Exception, status: int) -> None:
    """Every exception class of the hierarchy has its documented HTTP status."""
    assert map_exception(error).status == status


def _package_error_classes() -> set[type[BaseException]]:
    """Every OrchestratorError subclass defined anywhere in the package (all modules
    imported first, so that none is missed because nothing imported it yet)."""
    for module in pkgutil.walk_packages(trio_orchestrator.__path__, "trio_orchestrator."):
        if module.name != "trio_orchestrator.__main__":  # it runs the CLI
            importlib.import_module(module.name)
    found: set[type[BaseException]] = set()
    todo: list[type[BaseException]] = [e.OrchestratorError]
    while todo:
        cls = todo.pop()
        found.add(cls)
        todo += cls.__subclasses__()
    return {cls for cls in found if cls.__module__.startswith("trio_orchestrator.")}


def test_every_error_class_of_the_package_has_a_deliberate_mapping() -> None:
    """No OrchestratorError subclass in the package is left to the generic 500 fallback."""
    table = {type(error) for error, _ in STATUS + UNTYPED}
    assert _package_error_classes() - table == set()


@pytest.mark.parametrize(("error", "status"), STATUS, ids=lambda x: type(x).__name__)
def test_only_a_crash_is_a_500_and_nothing_typed_logs_a_traceback(
    error: Exception, status: int, caplog: pytest.LogCaptureFixture
) -> None:
    """A typed error is answered without the internal-error log; only WorkerCrashed is 500."""
    mapped = map_exception(error)
    assert (mapped.status == 500) == isinstance(error, e.WorkerCrashed)
    logged = any(record.levelno >= logging.ERROR for record in caplog.records)
    assert logged == (status == 500)


@pytest.mark.parametrize(
    ("cause", "status"),
    [
        (RedisUnavailable("down"), 503),
        (EventGrammarError("delta before start"), 502),
        (e.ConfigError("x"), 503),
        (ZeroDivisionError("bug"), 500),
    ],
    ids=lambda x: type(x).__name__,
)
def test_a_crash_wrapping_a_typed_error_is_answered_as_that_error(
    cause: Exception, status: int
) -> None:
    """The pipeline wraps non-WorkerErrors as WorkerCrashed; a typed cause keeps its status."""
    crashed = e.WorkerCrashed(f"the worker raised {type(cause).__name__}")
    crashed.__cause__ = cause
    assert map_exception(crashed).status == status


def test_a_budget_refusal_is_openais_insufficient_quota() -> None:
    """BudgetExceeded is 429 insufficient_quota (type and code), and not to be retried."""
    error = map_exception(BudgetExceeded("api_key", "k", limit=1.0, spent=1.0, needed=0.2))
    assert (error.status, error.type, error.code) == (
        429,
        "insufficient_quota",
        "insufficient_quota",
    )
    assert error.headers() == {"x-should-retry": "false"}


def test_an_unsupported_parameter_is_named_in_its_400() -> None:
    """A member the upstream's format cannot carry is a 400 whose `param` names it."""
    error = map_exception(e.UnsupportedParameter("messages[1].content[0]", "no audio"))
    assert error.body()["error"] == {
        "message": "no audio",
        "type": "invalid_request_error",
        "param": "messages[1].content[0]",
        "code": "unsupported_parameter",
    }


@pytest.mark.parametrize(
    "error", [e.RateLimited("x", retry_after=2.5), e.RequestShed("a", "b"), e.CircuitOpen("c")]
)
def test_retryable_refusals_carry_retry_after(error: Exception) -> None:
    """429 and 503 answers tell the client when to retry (whole seconds, at least 1)."""
    assert int(map_exception(error).headers()["Retry-After"]) >= 1


async def test_bad_field_is_named_in_a_400() -> None:
    """Invalid input gets 400 with `param` naming the bad field."""
    body = {"model": "echo", "messages": [{"role": "user", "content": 7}]}
    async with running_service() as url, httpx.AsyncClient(base_url=url) as client:
        response = await client.post("/v1/chat/completions", json=body)
    error = response.json()["error"]
    assert (response.status_code, error["param"]) == (400, "messages[0].content")


async def test_an_out_of_range_integer_under_an_empty_member_name_is_named() -> None:
    """A member named "" holding an integer past 64 bits is named `""`, not "the body"."""
    messages = b'[{"role": "user", "content": "hi"}]'
    body = b'{"model": "echo", "messages": ' + messages + b', "": [18446744073709551616]}'
    async with running_service() as url, httpx.AsyncClient(base_url=url) as client:
        response = await client.post("/v1/chat/completions", content=body)
    error = response.json()["error"]
    assert (response.status_code, error["code"], error["param"]) == (400, "invalid_value", '""[0]')
    assert error["message"].startswith('`""[0]` must be an integer in [')


async def test_invalid_json_is_a_400() -> None:
    """A body that is not JSON gets 400 in the OpenAI error shape."""
    async with running_service() as url, httpx.AsyncClient(base_url=url) as client:
        response = await client.post("/v1/chat/completions", content=b"{nope")
    assert (response.status_code, response.json()["error"]["code"]) == (400, "invalid_json")


async def test_missing_field_is_named() -> None:
    """A missing required field is named as missing."""
    async with running_service() as url, httpx.AsyncClient(base_url=url) as client:
        response = await client.post("/v1/chat/completions", json={"model": "echo"})
    error = response.json()["error"]
    assert (error["code"], error["param"]) == ("missing_field", "messages")


async def test_body_over_the_limit_is_a_413() -> None:
    """A body larger than service.max_body_bytes gets 413."""
    config = make_config(max_body_bytes=100)
    body = {"model": "echo", "messages": [{"role": "user", "content": "x" * 200}]}
    async with running_service(config) as url, httpx.AsyncClient(base_url=url) as client:
        response = await client.post("/v1/chat/completions", json=body)
    assert (response.status_code, response.json()["error"]["code"]) == (413, "request_too_large")


async def test_chunked_body_over_the_limit_is_a_413() -> None:
    """A body without Content-Length is counted as it arrives and refused past the limit."""
    config = make_config(max_body_bytes=100)

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(10):
            yield b"x" * 50

    async with running_service(config) as url, httpx.AsyncClient(base_url=url) as client:
        response = await client.post("/v1/chat/completions", content=chunks())
    assert response.status_code == 413


async def test_worker_crash_is_a_generic_500_without_details() -> None:
    """A worker's untyped exception reaches the client as a generic 500, no traceback."""
    worker = RaisingWorker(ZeroDivisionError("secret internals"))
    async with running_service(worker=worker) as url, httpx.AsyncClient(base_url=url) as client:
        response = await client.post("/v1/chat/completions", json=CHAT)
    assert response.status_code == 500
    assert "secret internals" not in response.text
    assert "Traceback" not in response.text
    assert response.json()["error"]["type"] == "server_error"


@attrs.define
class FailingAfterTokenWorker:
    """Emits one token, then raises ``error``."""

    error: BaseException
    model: str = "echo"

    async def generate(self, request: PromptRequest, emit: EventSink) -> None:
        """Emit a token, then raise the configured error."""
        await emit(TextDelta("partial"))
        raise self.error


async def test_error_mid_stream_is_an_error_event() -> None:
    """A failure after a stream started is sent as a `data: {"error": ...}` event, and the
    stream then ends as streams do, with `data: [DONE]`."""
    worker = FailingAfterTokenWorker(e.Overloaded("busy"))
    body = CHAT | {"stream": True}
    async with running_service(worker=worker) as url, httpx.AsyncClient(base_url=url) as client:
        response = await client.post("/v1/chat/completions", json=body)
    events = [line for line in response.text.split("\n\n") if line]
    assert response.status_code == 200
    assert '"partial"' in response.text
    assert events[-2].startswith('data: {"error"')
    assert events[-1] == "data: [DONE]"


async def test_error_before_the_first_event_keeps_its_status() -> None:
    """A stream that fails before its first event is answered with the error's status."""
    worker = RaisingWorker(e.Overloaded("busy"))
    body = CHAT | {"stream": True}
    async with running_service(worker=worker) as url, httpx.AsyncClient(base_url=url) as client:
        response = await client.post("/v1/chat/completions", json=body)
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "upstream_overloaded"
    assert "retry-after" in response.headers


async def test_unknown_route_is_a_404_error_object() -> None:
    """An unknown path gets 404 in the OpenAI error shape."""
    async with running_service() as url, httpx.AsyncClient(base_url=url) as client:
        response = await client.get("/v1/nothing-here")
    assert (response.status_code, response.json()["error"]["code"]) == (404, "not_found")


async def test_wrong_method_is_a_405_error_object() -> None:
    """A known path with the wrong method gets 405 in the OpenAI error shape."""
    async with running_service() as url, httpx.AsyncClient(base_url=url) as client:
        response = await client.get("/v1/chat/completions")
    assert response.status_code == 405
    assert "error" in response.json()


async def test_not_started_service_refuses_with_503() -> None:
    """Before the lifespan opened the pipeline, requests get 503 and /readyz is not ready."""
    transport = httpx.ASGITransport(app=create_app(make_config()))
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        chat = await client.post("/v1/chat/completions", json=CHAT)
        ready = await client.get("/readyz")
    assert (chat.status_code, ready.status_code) == (503, 503)
    assert chat.headers["retry-after"] == "1"


def test_api_error_body_has_the_openai_shape() -> None:
    """The error body has exactly message, type, param and code."""
    body = ApiError(400, "m", param="p", code="c").body()
    assert body == {
        "error": {"message": "m", "type": "invalid_request_error", "param": "p", "code": "c"}
    }


@pytest.mark.parametrize("cors", [(), ("http://example.com",)], ids=["fast path", "layers"])
@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
async def test_the_request_after_a_413_on_the_same_connection_succeeds(
    cors: tuple[str, ...], chunked: bool
) -> None:
    """A 413 closes its connection, so the client's next request never meets a dead one."""
    config = make_config(max_body_bytes=1000, cors_origins=cors)
    big = b'{"pad": "' + b"x" * 300_000 + b'"}'

    async def pieces() -> AsyncIterator[bytes]:
        yield big

    limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
    async with (
        running_service(config) as url,
        httpx.AsyncClient(base_url=url, limits=limits) as client,
    ):
        for _ in range(50):
            refused = await client.post(CHAT_PATH, content=pieces() if chunked else big)
            assert refused.status_code == 413
            answered = await client.post(CHAT_PATH, json=CHAT)
            assert answered.status_code == 200


class _CrashingRender:
    """Renders no event, and fails on the stream's end: a bug in the service's own code."""

    def event(self, event: StreamEvent) -> list[bytes]:
        return []

    def end(self, tail: str, completion: Completion) -> list[bytes]:
        raise RuntimeError("a bug in rendering")


async def test_a_pushed_stream_that_crashes_before_it_began_answers_500(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A pushed stream whose own code fails before anything was sent logs the error and
    answers the generic 500 itself (no wrapper holds a frame for the stream's life)."""
    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    async def receive() -> dict[str, Any]:
        await trio.sleep_forever()
        raise AssertionError("unreachable")

    scope = {"type": "http", "method": "POST", "path": CHAT_PATH}
    async with open_pipeline(EchoWorker()) as pipeline:
        stream = PushedEventStream(
            pipeline, PromptRequest(input="hi"), _CrashingRender(), lambda *_: b""
        )
        await stream(scope, receive, send)
    assert sent[0]["type"] == "http.response.start"
    assert sent[0]["status"] == 500
    assert json.loads(sent[1]["body"])["error"]["code"] == "internal_error"
    assert any(record.levelno >= logging.ERROR for record in caplog.records)
