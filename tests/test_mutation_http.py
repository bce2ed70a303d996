"""HTTP plumbing pinned piece by piece: what the mutation session (scripts/mutation.py) found
the worker tests leaving unpinned in ``workers/http.py`` -- error texts and classes, the
retry-after headers, keys, timing, reloads and the stream's own bookkeeping."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any, cast

import attrs
import httpx
import pytest
import trio
import trio.testing
from service_helpers import call_app, serving_in_process

from trio_orchestrator import errors as e
from trio_orchestrator.config.secret import Secret
from trio_orchestrator.types import RequestTiming
from trio_orchestrator.workers import KeyPool
from trio_orchestrator.workers._sse import ServerSentEvent, SSEDecoder
from trio_orchestrator.workers.config import ProviderConfig, Timeouts
from trio_orchestrator.workers.http import (
    MAX_ERROR_BODY,
    HTTPProvider,
    _finish_iteration,
    error_from_body,
    error_from_response,
    parse_retry_after,
    redact,
    transport_error,
    wire_format_guard,
)
from trio_orchestrator.workers.openai import OpenAIWorker
from trio_orchestrator.workers.transport import sharded_client

NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
LIMITS = Timeouts(connect=2, first_token=3, idle=5, total=20)


# ------------------------------------------------------------------ redaction


def test_redact_removes_each_revealed_key_and_anything_key_shaped() -> None:
    """A configured key is starred wherever it appears; sk-/key- shapes of 6+ chars too."""
    text = "used abc123 then sk-ABCdef_1 and key-12345678 but not sk-12345 or ask-123456x"
    assert redact(text, [Secret("abc123"), Secret("")]) == (
        "used *** then *** and *** but not sk-12345 or ask-123456x"
    )


def test_redact_without_secrets_still_removes_key_shapes() -> None:
    """With no keys given only the key-shaped words go."""
    assert redact("a sk-abcdefgh b") == "a *** b"


# ------------------------------------------------------------------ retry-after


@pytest.mark.parametrize(
    ("headers", "seconds"),
    [
        ({"Retry-After-Ms": "1500", "Retry-After": "9"}, 1.5),
        ({"retry-after-ms": "-20"}, 0.0),
        ({"retry-after-ms": "soon", "retry-after": "7"}, 7.0),
        ({"retry-after": " 2.5 "}, 2.5),
        ({"retry-after": "0"}, 0.0),
        ({"retry-after": "-1"}, None),
        ({"retry-after": "inf"}, None),
        ({"retry-after": "nan"}, None),
        ({"retry-after": "1m30s"}, 90.0),
        ({"retry-after": "Fri, 02 Jan 2026 03:04:15 GMT"}, 10.0),
        ({"retry-after": "2026-01-02T03:04:08Z"}, 3.0),
        ({"retry-after": "2026-01-02t03:04:08z"}, 3.0),
        ({"retry-after": "2026-01-02T03:04:09"}, 4.0),
        ({"retry-after": "2026-01-02T03:04:09+01:00"}, 0.0),
        ({"retry-after": "whenever", "x-ratelimit-reset-requests": "4s"}, 4.0),
        ({"x-ratelimit-reset-requests": "20ms"}, 0.02),
        ({"x-ratelimit-reset-requests": "1h2m3.5s"}, 3723.5),
        ({"x-ratelimit-reset-requests": "6m0s"}, 360.0),
        ({"x-ratelimit-reset-requests": "3"}, 3.0),
        ({"x-ratelimit-reset-requests": "4x"}, None),
        ({"x-ratelimit-reset-requests": "4s and more"}, None),
        ({"x-ratelimit-reset-requests": "s"}, None),
        ({"x-ratelimit-reset-requests": "1s", "x-ratelimit-reset-tokens": "6s"}, 6.0),
        (
            {
                "x-ratelimit-reset-requests": "1s",
                "x-ratelimit-remaining-requests": "0",
                "x-ratelimit-reset-tokens": "6s",
                "x-ratelimit-remaining-tokens": "10",
            },
            1.0,
        ),
        (
            {
                "x-ratelimit-reset-requests": "1s",
                "x-ratelimit-remaining-requests": "0",
                "x-ratelimit-reset-tokens": "2s",
                "x-ratelimit-remaining-tokens": "0",
                "x-ratelimit-reset-other": "9s",
            },
            2.0,
        ),
        (
            {
                "anthropic-ratelimit-requests-reset": "2026-01-02T03:04:07Z",
                "anthropic-ratelimit-requests-remaining": "0",
                "anthropic-ratelimit-tokens-reset": "2026-01-02T03:05:05Z",
                "anthropic-ratelimit-tokens-remaining": "5",
            },
            2.0,
        ),
        ({"anthropic-ratelimit-tokens-reset": "2026-01-02T03:04:06Z"}, 1.0),
        ({"anthropic-ratelimit-tokens-limit": "9", "x-ratelimit-limit-requests": "9"}, None),
        ({"x-ratelimit-reset-requests": "never"}, None),
        ({}, None),
    ],
)
def test_parse_retry_after(headers: dict[str, str], seconds: float | None) -> None:
    """Each header form gives its seconds from NOW (or None), in the documented order."""
    assert parse_retry_after(headers, NOW) == seconds


def test_parse_retry_after_measures_dates_from_now_by_default() -> None:
    """Without ``now`` a date is measured from the wall clock: one far ahead is far ahead."""
    seconds = parse_retry_after({"retry-after": "2999-01-01T00:00:00Z"})
    assert seconds is not None
    assert seconds > 10**9


# ------------------------------------------------------------------ error mapping


def _error(body: Any, status: int | None = None, provider: str = "acme") -> e.ProviderError:
    return error_from_body(body, provider=provider, status=status)


@pytest.mark.parametrize(
    ("kind", "cls"),
    [
        ("invalid_request_error", e.BadRequest),
        ("authentication_error", e.AuthenticationError),
        ("permission_error", e.PermissionDenied),
        ("not_found_error", e.ModelNotFound),
        ("request_too_large", e.BadRequest),
        ("rate_limit_error", e.RateLimited),
        ("api_error", e.ServerError),
        ("overloaded_error", e.Overloaded),
        ("server_error", e.ServerError),
        ("rate_limit_exceeded", e.RateLimited),
        ("insufficient_quota", e.RateLimited),
        ("invalid_api_key", e.AuthenticationError),
        ("model_not_found", e.ModelNotFound),
        ("content_filter", e.ContentFiltered),
        ("content_policy_violation", e.ContentFiltered),
        ("exceed_context_size_error", e.ContextLengthExceeded),
    ],
)
def test_each_error_type_maps_to_its_class(kind: str, cls: type[e.ProviderError]) -> None:
    """An error type (or code) in the stream, without a status, picks its class."""
    assert type(_error({"error": {"type": kind, "message": "m"}})) is cls
    assert type(_error({"error": {"code": kind, "message": "m"}})) is cls


@pytest.mark.parametrize(
    ("status", "cls"),
    [
        (400, e.BadRequest),
        (401, e.AuthenticationError),
        (403, e.PermissionDenied),
        (404, e.ModelNotFound),
        (408, e.ProviderTimeout),
        (409, e.BadRequest),
        (413, e.BadRequest),
        (422, e.BadRequest),
        (429, e.RateLimited),
        (499, e.BadRequest),
        (500, e.ServerError),
        (502, e.ServerError),
        (503, e.Overloaded),
        (529, e.Overloaded),
    ],
)
def test_each_status_maps_to_its_class(status: int, cls: type[e.ProviderError]) -> None:
    """A status with an unknown error type picks the status's class."""
    error = _error({"error": {"type": "whatever", "message": "m"}}, status)
    assert type(error) is cls
    assert error.status == status


def test_a_generic_type_yields_to_a_known_status() -> None:
    """Ollama's api_error says less than its 401/429/503; with an unmapped status it counts."""
    assert type(_error({"error": {"type": "api_error"}}, 401)) is e.AuthenticationError
    assert type(_error({"error": {"type": "api_error"}}, 429)) is e.RateLimited
    assert type(_error({"error": {"type": "api_error"}}, 500)) is e.ServerError
    assert type(_error({"error": {"type": "api_error"}}, 418)) is e.ServerError


def test_the_code_is_read_before_the_type() -> None:
    """OpenAI's code is more specific than its type."""
    body = {"error": {"type": "invalid_request_error", "code": "model_not_found"}}
    assert type(_error(body, 400)) is e.ModelNotFound


@pytest.mark.parametrize(
    "message",
    [
        "This model's maximum context length is 8192 tokens",
        "context_length reached",
        "the context window is full",
        "prompt is too long: 300000 tokens",
        "input exceeds the context",
        "Requests exceeded context",
        "TOO MANY TOKENS",
        "input length and `max_tokens` exceed context limit",
        "input length and max_tokens exceed context limit",
    ],
)
def test_context_length_messages(message: str) -> None:
    """Each wording of an over-long prompt is ContextLengthExceeded, whatever its status."""
    assert type(_error({"error": {"message": message}}, 400)) is e.ContextLengthExceeded


def test_a_context_length_code_is_context_length() -> None:
    """A code naming the context length is enough, whatever the message."""
    body = {"error": {"code": "context_length_exceeded", "message": "no"}}
    assert type(_error(body, 400)) is e.ContextLengthExceeded


def test_an_error_without_a_status_or_known_type_is_a_server_error() -> None:
    """In the stream, an unknown error is the provider's fault."""
    assert type(_error({"error": {"type": "odd"}})) is e.ServerError


def test_a_bad_request_type_with_a_5xx_is_a_server_error() -> None:
    """A 500 whose body says invalid_request_error is still the provider's fault."""
    error = _error({"error": {"type": "invalid_request_error", "message": "m"}}, 500)
    assert type(error) is e.ServerError
    assert str(error) == (
        "acme answered HTTP 500 (invalid_request_error): m; retry; this is the provider's fault"
    )


@pytest.mark.parametrize(
    ("body", "status", "text"),
    [
        (
            {"error": {"type": "rate_limit_error", "message": "slow down"}},
            429,
            "acme answered HTTP 429 (rate_limit_error): slow down; retry after the wait it "
            "asked for, or add API keys",
        ),
        (
            {"type": "error", "error": {"type": "overloaded_error", "message": "busy"}},
            529,
            "acme answered HTTP 529 (overloaded_error): busy; retry later or route to another "
            "provider",
        ),
        (
            {"error": {"code": "x", "message": "m"}},
            408,
            "acme answered HTTP 408 (x): m; retry, or raise the timeout",
        ),
        (
            {"error": {"type": "t", "detail": "who"}},
            401,
            "acme answered HTTP 401 (t): who; check the API key in the configuration",
        ),
        (
            {"error": {"message": "no"}},
            403,
            "acme answered HTTP 403 (error): no; check that the key may use this model",
        ),
        (
            {"error": {}},
            404,
            "acme answered HTTP 404 (error): no message; check the model name and the "
            "provider's base_url",
        ),
        (
            {"error": {"code": "content_filter", "message": "m"}},
            400,
            "acme answered HTTP 400 (content_filter): m; change the prompt; retrying will not help",
        ),
        (
            {"error": {"message": "too many tokens"}},
            400,
            "acme answered HTTP 400 (error): too many tokens; shorten the prompt or lower "
            "max_tokens",
        ),
        (
            "plain text",
            400,
            "acme answered HTTP 400 (error): plain text; fix the request; retrying will not help",
        ),
        (
            ["a", "list"],
            None,
            "acme answered an error in the stream (error): no message; retry; this is the "
            "provider's fault",
        ),
        (
            {"message": "top level"},
            None,
            "acme answered an error in the stream (error): top level; retry; this is the "
            "provider's fault",
        ),
    ],
)
def test_error_text(body: Any, status: int | None, text: str) -> None:
    """The message names the provider, the status or stream, the type, what it said, and
    what to do about it."""
    assert str(_error(body, status)) == text


def test_error_text_of_an_unnamed_provider_and_its_attributes() -> None:
    """Without a name the text says "the provider"; provider, status and retry_after are kept."""
    error = error_from_body({"error": {"message": "m"}}, provider="", status=429, retry_after=3)
    assert str(error).startswith("the provider answered HTTP 429 (error): m;")
    assert (error.provider, error.status, error.retry_after) == ("", 429, 3)


def test_a_long_message_is_cut_and_keys_scrubbed() -> None:
    """The provider's message is quoted redacted and at most 500 characters long."""
    message = "key abc123 " + "x" * 1000
    error = error_from_body(
        {"error": {"message": message}}, provider="p", secrets=[Secret("abc123")]
    )
    said = str(error).split(": ", 1)[1].split(";")[0]
    assert said == ("key *** " + "x" * 1000)[:500]


def test_azure_filter_categories_join_the_message() -> None:
    """Azure's content-filter verdict names what it filtered, with the severity (or
    "detected"), skipping what it passed and what is not an object."""
    inner = {
        "content_filter_result": {
            "hate": {"filtered": False, "severity": "safe"},
            "violence": {"filtered": True, "severity": "medium"},
            "jailbreak": {"filtered": True, "detected": True},
            "odd": "text",
        }
    }
    body = {"error": {"code": "content_filter", "message": "no", "innererror": inner}}
    assert str(_error(body, 400)).startswith(
        "acme answered HTTP 400 (content_filter): no (filtered: violence (medium), "
        "jailbreak (detected)); "
    )


@pytest.mark.parametrize("inner", [None, "text", {"content_filter_result": "text"}, {}])
def test_no_filter_verdict_adds_nothing(inner: Any) -> None:
    """An innererror without a verdict object leaves the message as it was."""
    body = {"error": {"message": "no", "innererror": inner}}
    assert str(_error(body, 400)).startswith("acme answered HTTP 400 (error): no; ")


def test_error_from_response_reads_json_or_quotes_text() -> None:
    """A JSON body is read as an error object; any other is quoted (500 bytes, decoded
    leniently); retry_after is read only for 429, 503 and 529."""
    json_body = b'{"error": {"type": "server_error", "message": "boom"}}'
    error = error_from_response(500, {"retry-after": "4"}, json_body, provider="p")
    assert type(error) is e.ServerError
    assert error.retry_after is None
    assert str(error).startswith("p answered HTTP 500 (server_error): boom;")
    text = error_from_response(400, {}, b"\xff" + b"y" * 600, provider="p")
    assert str(text).startswith("p answered HTTP 400 (error): \ufffd" + "y" * 499 + ";")
    for status in (429, 503, 529):
        limited = error_from_response(status, {"retry-after": "4"}, b"{}", provider="p")
        assert limited.retry_after == 4.0


def test_error_from_response_scrubs_keys() -> None:
    """The secrets given are scrubbed from the quoted body."""
    error = error_from_response(
        400, {}, b"bad key abc123", provider="p", secrets=[Secret("abc123")]
    )
    assert "abc123" not in str(error)
    assert "bad key ***" in str(error)


# ------------------------------------------------------------------ transport errors


def test_transport_errors_are_typed_with_their_phase() -> None:
    """A connect timeout, a read timeout, a decoding error and any other failure of the
    HTTP client each get their class and words."""
    connect = transport_error(httpx.ConnectTimeout("slow"), "p")
    assert type(connect) is e.ProviderTimeout
    assert connect.provider == "p"
    assert str(connect) == (
        "timed out connecting to p (ConnectTimeout: slow); retry, or raise the connect timeout"
    )
    read = transport_error(httpx.ReadTimeout(""), "")
    assert str(read) == (
        "timed out talking to the provider (ReadTimeout); retry, or raise the connect timeout"
    )
    decoding = transport_error(httpx.DecodingError("gz"), "p")
    assert type(decoding) is e.MalformedResponse
    assert decoding.provider == "p"
    assert str(decoding) == (
        "p sent a body that could not be decoded (DecodingError: gz); retrying may help"
    )
    other = transport_error(httpx.ConnectError("refused"), "p")
    assert type(other) is e.ProviderConnectionError
    assert other.provider == "p"
    assert str(other) == (
        "the connection to p failed (ConnectError: refused); check base_url and that the "
        "server is up, then retry"
    )


# ------------------------------------------------------------------ wire format guard


@pytest.mark.parametrize(
    "error", [KeyError("k"), IndexError(), TypeError(), ValueError(), AttributeError()]
)
def test_the_wire_format_guard_types_shape_errors(error: Exception) -> None:
    """Reading an unexpected shape fails as MalformedResponse naming the provider."""
    with pytest.raises(e.MalformedResponse) as info, wire_format_guard("p"):
        raise error
    assert info.value.provider == "p"
    assert info.value.__cause__ is error
    assert str(info.value) == (
        f"p sent an answer of an unexpected shape ({type(error).__name__}: {error}); "
        "retrying may help"
    )


def test_the_wire_format_guard_lets_other_errors_and_success_pass() -> None:
    """Another exception passes unchanged; an unnamed provider is "the provider"."""
    with pytest.raises(RuntimeError), wire_format_guard("p"):
        raise RuntimeError("x")
    with wire_format_guard("p") as entered:
        assert entered is None
    with pytest.raises(e.MalformedResponse, match=r"^the provider sent"), wire_format_guard(""):
        raise KeyError("k")


# ------------------------------------------------------------------ calls


Handler = Any


def _provider(
    handler: Handler,
    *,
    keys: KeyPool | None = None,
    timeouts: Timeouts = LIMITS,
    name: str = "acme",
    **kwargs: Any,
) -> HTTPProvider:
    client = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    return HTTPProvider(
        client,
        "http://llm.test/v1/",
        name,
        keys,
        timeouts,
        lambda key: {"authorization": f"Bearer {key.reveal()}"},
        **kwargs,
    )


def test_repr_and_secrets() -> None:
    """The repr names the provider and URL only; secrets are the pool's keys (none without)."""
    assert repr(_provider(lambda r: httpx.Response(200))) == (
        "HTTPProvider(name='acme', base_url='http://llm.test/v1/')"
    )
    assert _provider(lambda r: httpx.Response(200)).secrets == []
    pool = KeyPool([Secret("k1"), Secret("k2")])
    assert [s.reveal() for s in _provider(lambda r: httpx.Response(200), keys=pool).secrets] == [
        "k1",
        "k2",
    ]


async def test_a_post_carries_json_headers_auth_and_the_connect_limit() -> None:
    """The request goes to base_url + path with the JSON body (non-string keys allowed),
    the headers (the key's over the fixed ones) and the connect limit for connect and write."""
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"ok": 1}, headers={"x-n": "5"})

    pool = KeyPool([Secret("k1")])
    headers = {"x-fixed": "f", "authorization": "none"}
    provider = _provider(handler, keys=pool, headers=headers)
    answer, answer_headers = await provider.post_json_headers(
        "/chat", cast(dict[str, Any], {"model": "m", 1: 2})
    )
    assert answer == {"ok": 1}
    assert answer_headers["x-n"] == "5"
    (request,) = seen
    assert request.method == "POST"
    assert str(request.url) == "http://llm.test/v1/chat"
    assert request.content == b'{"model":"m","1":2}'
    assert request.headers["content-type"] == "application/json"
    assert request.headers["authorization"] == "Bearer k1"
    assert request.headers["x-fixed"] == "f"
    timeout = request.extensions["timeout"]
    assert timeout == {"connect": 2, "read": None, "write": 2, "pool": None}


async def test_a_get_has_no_body_and_an_infinite_connect_limit_is_none() -> None:
    """get_json sends no body and no content-type; an unbounded connect limit is None."""
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json=[1])

    timeouts = Timeouts(connect=float("inf"))
    assert await _provider(handler, timeouts=timeouts).get_json("/models") == [1]
    (request,) = seen
    assert request.method == "GET"
    assert request.content == b""
    assert "content-type" not in request.headers
    assert request.extensions["timeout"]["connect"] is None


async def test_sign_sees_the_request_as_sent() -> None:
    """sign runs last, on the finished request; what it adds is sent."""
    seen: list[httpx.Request] = []

    def sign(request: httpx.Request) -> None:
        request.headers["x-sig"] = str(len(request.content))

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={})

    await _provider(handler, sign=sign).post_json("/c", {"a": 1})
    assert seen[0].headers["x-sig"] == str(len(b'{"a":1}'))


async def test_a_body_json_cannot_carry_is_a_bad_request() -> None:
    """What orjson refuses is a BadRequest naming the provider, the cause kept."""
    provider = _provider(lambda r: httpx.Response(200, json={}))
    with pytest.raises(e.BadRequest) as info:
        await provider.post_json("/c", {"a": 2**70})
    assert info.value.provider == "acme"
    assert str(info.value).startswith("the request cannot be sent to acme as JSON (")
    assert str(info.value).endswith(
        "); remove lone surrogates, integers beyond 64 bits and deep nesting"
    )
    unnamed = _provider(lambda r: httpx.Response(200, json={}), name="")
    with pytest.raises(e.BadRequest, match=r"^the request cannot be sent to the provider as"):
        await unnamed.post_json("/c", {"a": 2**70})


async def test_a_body_that_is_not_json_is_malformed() -> None:
    """A 200 whose body is not JSON is MalformedResponse, with its words."""
    provider = _provider(lambda r: httpx.Response(200, content=b"<html>"))
    with pytest.raises(e.MalformedResponse) as info:
        await provider.post_json("/c", {})
    assert str(info.value) == (
        "acme answered with a body that is not JSON; check base_url, or retry"
    )
    assert info.value.provider == "acme"
    unnamed = _provider(lambda r: httpx.Response(200, content=b"<"), name="")
    with pytest.raises(e.MalformedResponse, match=r"^the provider answered with a body"):
        await unnamed.post_json("/c", {})


class HugeError(httpx.AsyncByteStream):
    """An error body of eight halves of MAX_ERROR_BODY, ending once closed (as a
    connection's body does); ``served`` counts the halves sent."""

    def __init__(self) -> None:
        self.served = 0
        self.closed = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for _ in range(8):
            if self.closed:
                return
            self.served += 1
            yield b"z" * (MAX_ERROR_BODY // 2)

    async def aclose(self) -> None:
        self.closed = True


async def test_an_error_status_reads_at_most_the_error_body_limit() -> None:
    """A huge error body is read only up to MAX_ERROR_BODY, then closed (leaving no body
    generator for the garbage collector: pytest fails on that ResourceWarning) and typed by
    its status."""
    body = HugeError()
    provider = _provider(lambda r: httpx.Response(400, stream=body))
    with pytest.raises(e.BadRequest, match=r"\(error\): z+;"):
        await provider.post_json("/c", {})
    assert body.served == 2
    assert body.closed


async def test_served_huge_error_body_is_cut_and_closed() -> None:
    """Through the service, a streamed call answered 400 with a body past MAX_ERROR_BODY
    gives the client its 400 error; the body is read only to the limit and closed."""
    body = HugeError()
    client = httpx.AsyncClient(
        transport=httpx.MockTransport(lambda r: httpx.Response(400, stream=body))
    )
    worker = OpenAIWorker(client, "http://llm.test/v1")
    async with serving_in_process(worker) as (app, _):
        call = {"model": "echo", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
        sent = await call_app(app, "/v1/chat/completions", call)
    assert sent[0]["status"] == 400
    answer = b"".join(m.get("body", b"") for m in sent[1:]).decode()
    assert "answered HTTP 400" in answer
    assert body.served == 2
    assert body.closed


async def test_a_custom_error_maker_types_error_answers() -> None:
    """``error`` replaces error_from_response, and is given the status, headers, body,
    provider name and secrets."""
    calls: list[tuple[Any, ...]] = []

    def maker(status: int, headers: Any, body: bytes, **kwargs: Any) -> e.ProviderError:
        calls.append((status, headers["x-h"], body, kwargs))
        return e.Overloaded("custom")

    pool = KeyPool([Secret("k1")])
    provider = _provider(
        lambda r: httpx.Response(418, content=b"tea", headers={"x-h": "v"}), error=maker, keys=pool
    )
    with pytest.raises(e.Overloaded, match="custom"):
        await provider.post_json("/c", {})
    (call,) = calls
    assert call[:3] == (418, "v", b"tea")
    assert call[3]["provider"] == "acme"
    assert [s.reveal() for s in call[3]["secrets"]] == ["k1"]


async def test_a_json_call_past_the_total_limit_names_the_total(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """When the total limit is the nearer, a JSON call is cut at it, naming it."""

    class Never(httpx.AsyncByteStream):
        async def __aiter__(self) -> AsyncIterator[bytes]:
            await trio.sleep_forever()
            yield b""  # pragma: no cover

    timeouts = Timeouts(first_token=10, total=4)
    provider = _provider(lambda r: httpx.Response(200, stream=Never()), timeouts=timeouts)
    start = trio.current_time()
    with pytest.raises(e.ProviderTimeout) as info:
        await provider.post_json("/c", {})
    assert trio.current_time() - start == 4
    assert str(info.value) == "acme exceeded the total timeout (4s); retry, or raise timeouts.total"
    timeouts = Timeouts(first_token=4, total=4)
    provider = _provider(lambda r: httpx.Response(200, stream=Never()), timeouts=timeouts)
    with pytest.raises(e.ProviderTimeout) as info:
        await provider.post_json("/c", {})
    assert str(info.value) == (
        "acme exceeded the first token timeout (4s); retry, or raise timeouts.first_token"
    )


# ------------------------------------------------------------------ keys


async def test_a_429_rests_the_key_for_the_model_and_the_next_key_answers() -> None:
    """A 429 on one key moves the call to the next; the first key rests for that model."""
    used: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        used.append(request.headers["authorization"])
        if len(used) == 1:
            return httpx.Response(429, json={}, headers={"retry-after": "7"})
        return httpx.Response(200, json={"ok": True})

    pool = KeyPool([Secret("k1"), Secret("k2")], jitter=0)
    provider = _provider(handler, keys=pool)
    assert await provider.post_json("/c", {"model": "m"}) == {"ok": True}
    assert used == ["Bearer k1", "Bearer k2"]
    assert pool.has_ready("other")
    assert pool.wait("m") == 0
    first = next(iter(pool.statistics().keys.values()))
    assert first.state == "ready"
    assert list(first.model_rests) == ["m"]
    stats = list(pool.statistics().keys.values())
    assert [s.rate_limited for s in stats] == [1, 0]
    assert [s.successes for s in stats] == [0, 1]


async def test_the_model_argument_names_the_rested_model() -> None:
    """``model=`` (a URL naming the model) rests the key for it, not for the body's none."""
    pool = KeyPool([Secret("k1")], jitter=0)
    provider = _provider(lambda r: httpx.Response(429, json={}), keys=pool)
    with pytest.raises(e.RateLimited):
        await provider.post_json("/c", {}, model="g")
    assert pool.can_call("other")
    assert not pool.has_ready("g")


async def test_the_last_429_says_when_a_key_may_be_tried(autojump_clock: Any) -> None:
    """When no key may be tried, the upstream's wait is kept if within max_rest, else
    replaced by the pool's wait (capped)."""
    pool = KeyPool([Secret("k1")], max_rest=30, probe_interval=1000, jitter=0)
    provider = _provider(
        lambda r: httpx.Response(429, json={}, headers={"retry-after": "7"}), keys=pool
    )
    with pytest.raises(e.RateLimited) as info:
        await provider.post_json("/c", {"model": "m"})
    assert info.value.retry_after == 7
    pool = KeyPool([Secret("k1")], max_rest=30, probe_interval=1000, jitter=0)
    provider = _provider(
        lambda r: httpx.Response(429, json={}, headers={"retry-after": "300"}), keys=pool
    )
    with pytest.raises(e.RateLimited) as info:
        await provider.post_json("/c", {"model": "m"})
    assert info.value.retry_after == 30
    pool = KeyPool([Secret("k1")], max_rest=30, default_rest=12, probe_interval=1000, jitter=0)
    provider = _provider(lambda r: httpx.Response(429, json={}), keys=pool)
    with pytest.raises(e.RateLimited) as info:
        await provider.post_json("/c", {"model": "m"})
    assert info.value.retry_after == 12


async def test_a_401_disables_the_key_and_the_next_key_answers() -> None:
    """A 401 disables its key and the call goes on with the next; the last 401 is raised."""
    used: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        used.append(request.headers["authorization"])
        if request.headers["authorization"] == "Bearer k1":
            return httpx.Response(401, json={})
        return httpx.Response(200, json={"ok": True})

    pool = KeyPool([Secret("k1"), Secret("k2")])
    assert await _provider(handler, keys=pool).post_json("/c", {}) == {"ok": True}
    assert [s.state for s in pool.statistics().keys.values()] == ["disabled", "ready"]
    only = KeyPool([Secret("k1")])
    with pytest.raises(e.AuthenticationError):
        await _provider(handler, keys=only).post_json("/c", {})
    assert used == ["Bearer k1", "Bearer k2", "Bearer k1"]


# ------------------------------------------------------------------ streams


@attrs.define
class Parser:
    """Content is any event but "pre"; "end" finishes the answer."""

    seen: list[str] = attrs.field(factory=list)
    started: bool = False
    finished: bool = False
    ended: bool = False
    fail_with: e.ProviderError | None = None

    async def event(self, event: ServerSentEvent) -> None:
        self.seen.append(event.data)
        if self.fail_with is not None:
            raise self.fail_with
        if event.data == "bad":
            raise KeyError("shape")
        if event.data != "pre":
            self.started = True
        if event.data == "end":
            self.finished = True

    async def end(self) -> None:
        self.ended = True


class Scripted(httpx.AsyncByteStream):
    """Each chunk after its delay; then the end, or a stall. With ``ends_when_closed`` the
    body ends once closed, as a connection's does."""

    def __init__(
        self,
        chunks: list[tuple[float, bytes]],
        *,
        stall: bool = False,
        ends_when_closed: bool = False,
    ) -> None:
        self.chunks, self.stall, self.ends_when_closed = chunks, stall, ends_when_closed
        self.closed = False
        self.sent = 0

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for delay, chunk in self.chunks:
            await trio.sleep(delay)
            if self.closed and self.ends_when_closed:
                return
            self.sent += 1
            yield chunk
        if self.stall:
            await trio.sleep_forever()

    async def aclose(self) -> None:
        self.closed = True


def _stream_provider(body: Scripted, status: int = 200, **kwargs: Any) -> HTTPProvider:
    return _provider(lambda r: httpx.Response(status, stream=body), **kwargs)


async def test_a_stream_feeds_each_event_until_the_end_and_reads_the_rest(
    autojump_clock: Any,
) -> None:
    """Events reach the parser in order until it finishes; the body's rest is read (the
    connection kept) and end() is called once."""
    body = Scripted(
        [(0, b"data: pre\n\ndata: a\n\n"), (1, b"data: end\n\ndata: after\n\n"), (1, b"x")]
    )
    parser = Parser()
    await _stream_provider(body).post_stream("/c", {"model": "m"}, parser)
    assert parser.seen == ["pre", "a", "end"]
    assert parser.ended
    assert body.sent == 3


async def test_the_rest_after_the_end_is_read_within_the_idle_limit(
    autojump_clock: Any,
) -> None:
    """A body that stalls after a complete answer costs only its connection, within idle."""
    body = Scripted([(0, b"data: end\n\n")], stall=True)
    start = trio.current_time()
    await _stream_provider(body).post_stream("/c", {}, Parser())
    assert trio.current_time() - start == LIMITS.idle
    assert body.closed


async def test_a_stream_that_ends_without_its_end_is_told_so(autojump_clock: Any) -> None:
    """The decoder's close and the parser's end() run when the body ends first."""
    body = Scripted([(0, b"data: a\n\ndata: b")])
    parser = Parser()
    await _stream_provider(body).post_stream("/c", {}, parser)
    assert parser.seen == ["a", "b"]
    assert parser.ended


async def test_a_shape_error_in_a_stream_is_malformed(autojump_clock: Any) -> None:
    """A parser's KeyError while reading an event is MalformedResponse naming the provider."""
    body = Scripted([(0, b"data: bad\n\n")])
    with pytest.raises(e.MalformedResponse, match=r"^acme sent an answer of an unexpected"):
        await _stream_provider(body).post_stream("/c", {}, Parser())


async def test_an_error_status_on_a_stream_is_typed() -> None:
    """A stream answered 404 raises the status's error, reading none of it as events."""
    body = Scripted([(0, b'{"error": {"message": "no such model"}}')])
    parser = Parser()
    with pytest.raises(e.ModelNotFound, match="no such model"):
        await _stream_provider(body, 404).post_stream("/c", {}, parser)
    assert parser.seen == []


@pytest.mark.parametrize(
    ("timeouts", "limit", "at"),
    [
        (Timeouts(first_token=3, idle=5, total=20), "idle", 7),
        (Timeouts(first_token=3, idle=5, total=6), "total", 6),
        (Timeouts(first_token=3, idle=5, total=7), "total", 7),
    ],
)
async def test_a_stalled_stream_names_the_limit_that_cut_it(
    timeouts: Timeouts, limit: str, at: float, autojump_clock: Any
) -> None:
    """After content at 2 s, a stall is cut at idle or at total, whichever comes first
    (total when both fall together), and the error names it with its setting."""
    body = Scripted([(2, b"data: a\n\n")], stall=True)
    start = trio.current_time()
    with pytest.raises(e.ProviderTimeout) as info:
        await _stream_provider(body, timeouts=timeouts).post_stream("/c", {}, Parser())
    assert trio.current_time() - start == at
    seconds = getattr(timeouts, limit)
    assert str(info.value) == (
        f"acme exceeded the {limit} timeout ({seconds:g}s); retry, or raise timeouts.{limit}"
    )
    assert body.closed


async def test_a_silent_stream_past_the_total_limit_names_the_total(
    autojump_clock: Any,
) -> None:
    """With total under first_token, a silent stream is cut at total, naming it."""
    body = Scripted([], stall=True)
    timeouts = Timeouts(first_token=9, idle=5, total=4)
    start = trio.current_time()
    with pytest.raises(e.ProviderTimeout, match="the total timeout"):
        await _stream_provider(body, timeouts=timeouts).post_stream("/c", {}, Parser())
    assert trio.current_time() - start == 4


async def test_a_slow_consumer_is_not_a_stalled_provider(autojump_clock: Any) -> None:
    """While the parser takes its time over an event only the total limit runs."""

    @attrs.define
    class Slow(Parser):
        async def event(self, event: ServerSentEvent) -> None:
            await super().event(event)
            await trio.sleep(8)  # longer than idle and first_token

    body = Scripted([(0, b"data: a\n\n"), (1, b"data: end\n\n")])
    parser = Slow()
    await _stream_provider(body).post_stream("/c", {}, parser)
    assert parser.seen == ["a", "end"]


async def test_a_429_after_content_is_not_retried_on_another_key(autojump_clock: Any) -> None:
    """Once content was emitted a rate limit is raised as is, with the pool's wait."""
    pool = KeyPool([Secret("k1"), Secret("k2")], jitter=0, max_rest=30)
    calls: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request.headers["authorization"])
        return httpx.Response(200, stream=Scripted([(0, b"data: a\n\ndata: limit\n\n")]))

    parser = Parser()

    @attrs.define
    class Limited(Parser):
        async def event(self, event: ServerSentEvent) -> None:
            await super().event(event)
            if event.data == "limit":
                raise e.RateLimited("mid-stream", retry_after=None)

    parser = Limited()
    with pytest.raises(e.RateLimited) as info:
        await _provider(handler, keys=pool).post_stream("/c", {"model": "m"}, parser)
    assert calls == ["Bearer k1"]
    assert info.value.retry_after == 0.0  # k2 may be tried now


async def test_a_401_after_content_is_not_retried_on_another_key(autojump_clock: Any) -> None:
    """Once content was emitted a rejected key is raised as is."""
    pool = KeyPool([Secret("k1"), Secret("k2")])
    calls: list[str] = []

    @attrs.define
    class Rejected(Parser):
        async def event(self, event: ServerSentEvent) -> None:
            await super().event(event)
            raise e.AuthenticationError("mid-stream")

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request.headers["authorization"])
        return httpx.Response(200, stream=Scripted([(0, b"data: a\n\n")]))

    with pytest.raises(e.AuthenticationError):
        await _provider(handler, keys=pool).post_stream("/c", {}, Rejected())
    assert calls == ["Bearer k1"]


# ------------------------------------------------------------------ timing


async def test_a_json_call_counts_its_exchange_as_one_wait(autojump_clock: Any) -> None:
    """From sending to the body read whole is upstream time; before and after is not."""
    body = Scripted([(1, b'{"a":'), (1.5, b"1}")])
    timing = RequestTiming(arrived=trio.current_time())
    answer = await _stream_provider(body).post_json("/c", {}, timing)
    assert answer == {"a": 1}
    assert timing.upstream == 2.5
    assert timing.waited(trio.current_time()) == 2.5


async def test_a_failed_json_call_still_ends_its_wait(autojump_clock: Any) -> None:
    """A send that fails after 0 s, or an error answer, leaves no wait open."""

    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused")

    timing = RequestTiming(arrived=trio.current_time())
    with pytest.raises(e.ProviderConnectionError):
        await _provider(refuse).post_json("/c", {}, timing)
    await trio.sleep(5)
    assert timing.waited(trio.current_time()) == 0
    body = Scripted([(2, b"{}")])
    with pytest.raises(e.ServerError):
        await _stream_provider(body, 500).post_json("/c", {}, timing)
    await trio.sleep(5)
    assert timing.waited(trio.current_time()) == 2


async def test_a_stream_counts_its_reads_until_the_service_answered(
    autojump_clock: Any,
) -> None:
    """Each read is a wait until the timing is answered; later reads are not."""
    timing = RequestTiming(arrived=trio.current_time())

    @attrs.define
    class Answering(Parser):
        async def event(self, event: ServerSentEvent) -> None:
            await super().event(event)
            await trio.sleep(1)  # the consumer's own time is never a wait
            if event.data == "b":
                timing.answer(trio.current_time())

    body = Scripted([(2, b"data: a\n\n"), (3, b"data: b\n\n"), (4, b"data: end\n\n"), (5, b"x")])
    await _stream_provider(body).post_stream("/c", {}, Answering(), timing)
    assert timing.upstream == 5


async def test_a_drain_before_the_answer_is_a_wait(autojump_clock: Any) -> None:
    """Reading the rest of a complete answer counts while the service has not answered."""
    timing = RequestTiming(arrived=trio.current_time())
    body = Scripted([(1, b"data: end\n\n"), (2, b"x")])
    await _stream_provider(body).post_stream("/c", {}, Parser(), timing)
    assert timing.upstream == 3
    answered = RequestTiming(arrived=trio.current_time(), answered=True)
    body = Scripted([(1, b"data: end\n\n"), (2, b"x")])
    await _stream_provider(body).post_stream("/c", {}, Parser(), answered)
    assert answered.upstream == 0


async def test_an_error_answer_to_a_stream_is_a_wait(autojump_clock: Any) -> None:
    """The headers and the error body of a failed stream are upstream time."""
    timing = RequestTiming(arrived=trio.current_time())
    body = Scripted([(2, b'{"error": {"message": "no"}}')])
    with pytest.raises(e.BadRequest):
        await _stream_provider(body, 400).post_stream("/c", {}, Parser(), timing)
    assert timing.upstream == 2
    assert timing.waited(trio.current_time()) == 2


# ------------------------------------------------------------------ reload


def _reloadable(keys: KeyPool | None, client: httpx.AsyncClient | None = None) -> HTTPProvider:
    return HTTPProvider(
        client or httpx.AsyncClient(),
        "http://llm.test/v1",
        "acme",
        keys,
        Timeouts(),
        lambda key: {},
    )


def test_a_reload_replaces_keys_and_key_settings() -> None:
    """Reloaded keys, rests, probe interval, cool-down and models reach the pool."""
    pool = KeyPool([Secret("k1")])
    provider = _reloadable(pool)
    config = ProviderConfig(
        kind="openai",
        name="acme",
        base_url="http://llm.test/v1",
        api_keys=("k2", "k3"),
        models=("m1",),
        key_rest=7,
        max_key_rest=8,
        key_probe_interval=9,
        rejected_key_cooldown=10,
    )
    assert provider.reconfigure(config) == []
    assert [s.reveal() for s in pool.secrets] == ["k2", "k3"]
    settings = (pool.default_rest, pool.max_rest, pool.probe_interval, pool.rejected_cooldown)
    assert settings == (7, 8, 9, 10)
    assert list(pool.models) == ["m1"]


def test_a_reload_without_keys_keeps_the_pools_keys() -> None:
    """A provider whose reloaded entry lists no keys keeps the ones it has."""
    pool = KeyPool([Secret("k1")])
    provider = _reloadable(pool)
    assert provider.reconfigure(ProviderConfig(kind="ollama", name="acme")) == []
    assert [s.reveal() for s in pool.secrets] == ["k1"]


def test_a_reload_refuses_what_needs_a_restart() -> None:
    """Removal, a new base URL or timeouts, new pool limits and keys for a keyless
    provider are refused, each with its words."""
    provider = _reloadable(None, sharded_client(httpx, 1024, 16))
    assert provider.reconfigure(None) == [
        "providers: provider 'acme' was removed or renamed; restart to apply"
    ]
    same = ProviderConfig(kind="openai", name="acme", base_url="http://llm.test/v1")
    assert provider.reconfigure(same) == []
    assert provider.reconfigure(attrs.evolve(same, base_url=None)) == []
    changed = attrs.evolve(
        same,
        base_url="http://other.test",
        max_connections=10,
        api_keys=("k",),
    )
    assert provider.reconfigure(changed) == [
        "providers.acme: base_url and timeouts change only on a restart",
        "providers.acme: max_connections and pool_size change only on a restart",
        "providers.acme.api_keys: a provider without keys needs a restart",
    ]
    assert provider.reconfigure(attrs.evolve(same, timeouts=Timeouts(idle=1))) == [
        "providers.acme: base_url and timeouts change only on a restart"
    ]
    assert provider.reconfigure(attrs.evolve(same, pool_size=4)) == [
        "providers.acme: max_connections and pool_size change only on a restart"
    ]


# ------------------------------------------------------------------ HTTP library errors


class _Deep(httpx.ConnectError):
    """A transport's own subclass of an HTTP library error."""


class _Deeper(_Deep):
    """Two levels below the library's class."""


def _library_errors() -> list[Exception]:
    import h2.exceptions
    import h11
    import httpcore
    import httpcore2
    import httpx2

    return [
        httpcore.ConnectError("c"),
        httpcore2.ConnectError("c"),
        httpx2.ConnectError("c"),
        h11.LocalProtocolError("c"),
        h2.exceptions.ProtocolError("c"),
        _Deeper("c"),
    ]


@pytest.mark.parametrize("error", _library_errors(), ids=lambda x: type(x).__module__)
async def test_every_http_librarys_error_is_typed_on_send(error: Exception) -> None:
    """An exception from httpx, httpx2, httpcore(2), h11 or h2 (or a subclass of one, however
    deep) raised while sending is a ProviderConnectionError naming the provider."""

    def handler(request: httpx.Request) -> httpx.Response:
        raise error

    with pytest.raises(e.ProviderConnectionError, match=r"^the connection to acme failed") as info:
        await _provider(handler).post_json("/c", {})
    assert info.value.__cause__ is error


async def test_another_error_on_send_passes_unchanged() -> None:
    """An exception from elsewhere (a bug, not the network) is not dressed as a provider's."""

    def handler(request: httpx.Request) -> httpx.Response:
        raise RuntimeError("bug")

    with pytest.raises(RuntimeError, match="bug"):
        await _provider(handler).post_json("/c", {})


class _Failing(httpx.AsyncByteStream):
    """A body that sends one chunk, then fails with ``error``."""

    def __init__(self, first: bytes, error: Exception) -> None:
        self.first, self.error = first, error

    async def __aiter__(self) -> AsyncIterator[bytes]:
        yield self.first
        raise self.error


@pytest.mark.parametrize("status", [200, 500])
async def test_a_body_that_fails_mid_read_is_typed(status: int) -> None:
    """A JSON answer (or an error answer) whose body read fails is a connection error
    naming the provider, the library's error its cause."""
    error = httpx.ReadError("reset")
    provider = _provider(lambda r: httpx.Response(status, stream=_Failing(b"{", error)))
    with pytest.raises(e.ProviderConnectionError) as info:
        await provider.post_json("/c", {})
    assert str(info.value).startswith("the connection to acme failed (ReadError: reset)")
    assert info.value.__cause__ is error


async def test_a_stream_that_fails_mid_read_is_typed(autojump_clock: Any) -> None:
    """A stream whose body fails after content is a connection error naming the provider."""
    error = httpx.RemoteProtocolError("peer closed")
    provider = _provider(lambda r: httpx.Response(200, stream=_Failing(b"data: a\n\n", error)))
    parser = Parser()
    with pytest.raises(e.ProviderConnectionError, match=r"^the connection to acme failed"):
        await provider.post_stream("/c", {}, parser)
    assert parser.seen == ["a"]


async def test_the_decoder_is_made_for_the_provider(autojump_clock: Any) -> None:
    """The stream decoder is made with the provider's name (for its errors)."""
    names: list[str] = []

    def decoder(name: str) -> SSEDecoder:
        names.append(name)
        return SSEDecoder(name)

    body = Scripted([(0, b"data: end\n\n")])
    await _stream_provider(body, decoder=decoder).post_stream("/c", {}, Parser())
    assert names == ["acme"]


@pytest.mark.parametrize(
    "error", [httpx.ReadError("closed"), trio.ClosedResourceError(), _Deeper("x")]
)
async def test_finishing_a_closed_body_swallows_its_closing_errors(error: Exception) -> None:
    """Unwinding a closed body ignores the HTTP library's errors and a closed resource."""

    async def chunks() -> AsyncIterator[bytes]:
        yield b"a"
        raise error

    await _finish_iteration(chunks())


async def test_finishing_a_closed_body_lets_other_errors_through() -> None:
    """Any other error while unwinding a body is a bug and is raised."""

    async def chunks() -> AsyncIterator[bytes]:
        raise RuntimeError("bug")
        yield b""  # pragma: no cover

    with pytest.raises(RuntimeError, match="bug"):
        await _finish_iteration(chunks())


def test_a_known_type_outranks_the_status() -> None:
    """A specific error type wins over a status that says otherwise."""
    body = {"error": {"type": "permission_error", "message": "m"}}
    assert type(_error(body, 400)) is e.PermissionDenied
    assert type(_error({"error": {"type": "overloaded_error"}}, 500)) is e.Overloaded


def test_error_from_body_keeps_the_providers_name() -> None:
    """The error carries the provider's name for the breaker and the logs."""
    assert _error({"error": {"message": "m"}}, 400).provider == "acme"


def test_an_error_body_is_cut_at_500_bytes_before_decoding() -> None:
    """A text error body is quoted from its first 500 bytes: a character they split is
    replaced, not completed from the 501st byte."""
    body = b"y" * 499 + "\u00e9".encode()
    error = error_from_response(400, {}, body, provider="p")
    assert str(error).startswith("p answered HTTP 400 (error): " + "y" * 499 + "\ufffd;")


async def test_a_timeout_names_an_unnamed_provider_and_carries_the_name(
    autojump_clock: Any,
) -> None:
    """A time limit's error says "the provider" without a name, and carries the name."""
    for name, said in (("", "the provider"), ("acme", "acme")):
        body = Scripted([], stall=True)
        with pytest.raises(e.ProviderTimeout) as info:
            await _stream_provider(body, name=name).post_stream("/c", {}, Parser())
        assert str(info.value) == (
            f"{said} exceeded the first token timeout (3s); retry, or raise timeouts.first_token"
        )
        assert info.value.provider == name


# ------------------------------------------------------------------ keys, per model


async def test_a_key_resting_for_a_model_is_passed_over_for_that_model(
    autojump_clock: Any,
) -> None:
    """After a 429 for model m on k1, the next call for m goes to k2, though k1 is next in
    turn and still serves other models."""
    used: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        used.append(request.headers["authorization"])
        if len(used) == 1:
            return httpx.Response(429, json={}, headers={"retry-after": "30"})
        return httpx.Response(200, json={})

    pool = KeyPool([Secret("k1"), Secret("k2")], jitter=0)
    provider = _provider(handler, keys=pool)
    await provider.post_json("/c", {"model": "m"})
    await provider.post_json("/c", {"model": "m"})
    assert used == ["Bearer k1", "Bearer k2", "Bearer k2"]


async def test_a_probe_that_succeeds_ends_the_keys_rest_for_its_model(
    autojump_clock: Any,
) -> None:
    """A call let through to a key resting for a model (a probe) that is answered ends that
    rest: the key is ready for the model again at once."""
    answers = iter(
        [httpx.Response(429, json={}, headers={"retry-after": "30"}), httpx.Response(200, json={})]
    )
    pool = KeyPool([Secret("k1")], jitter=0, max_rest=30, probe_interval=5)
    provider = _provider(lambda r: next(answers), keys=pool)
    with pytest.raises(e.RateLimited):
        await provider.post_json("/c", {"model": "m"})
    assert not pool.has_ready("m")
    await trio.sleep(5)
    assert await provider.post_json("/c", {"model": "m"}) == {}
    assert pool.has_ready("m")
    (key,) = pool.statistics().keys.values()
    assert (key.model_rests, key.successes) == ({}, 1)


async def test_a_429_rests_the_key_for_as_long_as_it_asked(autojump_clock: Any) -> None:
    """The key rests for the model for the upstream's retry-after, not the default rest."""
    pool = KeyPool([Secret("k1")], jitter=0, default_rest=60, max_rest=100)
    provider = _provider(
        lambda r: httpx.Response(429, json={}, headers={"retry-after": "7"}), keys=pool
    )
    start = trio.current_time()
    with pytest.raises(e.RateLimited):
        await provider.post_json("/c", {"model": "m"})
    (key,) = pool.statistics().keys.values()
    assert key.model_rests == {"m": start + 7}


@pytest.mark.parametrize("asked", [7, 30])
async def test_the_last_429_is_the_upstreams_with_its_wait_up_to_max_rest(
    asked: int, autojump_clock: Any
) -> None:
    """When no key may be tried, the caller gets the upstream's 429 itself, with the wait it
    asked for (up to max_rest included), though the pool would probe the key sooner."""
    pool = KeyPool([Secret("k1")], jitter=0, max_rest=30, probe_interval=5)
    provider = _provider(
        lambda r: httpx.Response(429, json={}, headers={"retry-after": str(asked)}), keys=pool
    )
    with pytest.raises(e.RateLimited) as info:
        await provider.post_json("/c", {"model": "m"})
    assert info.value.retry_after == asked
    assert str(info.value).startswith("acme answered HTTP 429")


async def test_a_401_while_the_other_keys_rest_for_the_model_is_raised(
    autojump_clock: Any,
) -> None:
    """A 401 on the only key not resting for the model ends the call with that 401 (the
    other keys serve other models, not this one)."""
    pool = KeyPool([Secret("k1"), Secret("k2")], jitter=0)
    pool.rate_limited(pool.secrets[1], 60, "m")
    used: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        used.append(request.headers["authorization"])
        return httpx.Response(401, json={"error": {"message": "bad key"}})

    with pytest.raises(e.AuthenticationError, match="bad key"):
        await _provider(handler, keys=pool).post_json("/c", {"model": "m"})
    assert used == ["Bearer k1"]


@pytest.mark.parametrize("model", ["", 7])
async def test_a_body_naming_no_model_rests_the_whole_key(model: Any, autojump_clock: Any) -> None:
    """A 429 on a body whose model is empty or not a string rests the key for every model."""
    pool = KeyPool([Secret("k1")], jitter=0)
    provider = _provider(lambda r: httpx.Response(429, json={}), keys=pool)
    with pytest.raises(e.RateLimited):
        await provider.post_json("/c", {"model": model})
    (key,) = pool.statistics().keys.values()
    assert (key.state, key.model_rests) == ("resting", {})


# ------------------------------------------------------------------ closing


class SlowClose(httpx.AsyncByteStream):
    """A body that sends ``chunks`` then stalls, and whose close takes ``close_takes``
    seconds (a real connection's close does I/O)."""

    def __init__(self, close_takes: float, chunks: tuple[bytes, ...] = ()) -> None:
        self.close_takes, self.chunks = close_takes, chunks
        self.closed = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for chunk in self.chunks:
            yield chunk
        await trio.sleep_forever()
        yield b""  # pragma: no cover

    async def aclose(self) -> None:
        await trio.sleep(self.close_takes)
        self.closed = True


async def test_a_call_cut_by_its_limit_still_closes_its_body(autojump_clock: Any) -> None:
    """A JSON call cut at its first-token limit closes the body, though the close itself
    waits (it is shielded from the cancellation that ended the call)."""
    body = SlowClose(1)
    provider = _provider(lambda r: httpx.Response(200, stream=body))
    with pytest.raises(e.ProviderTimeout, match="first token"):
        await provider.post_json("/c", {})
    assert body.closed


async def test_a_close_that_hangs_is_abandoned_after_five_seconds(autojump_clock: Any) -> None:
    """A close that never ends cannot hang a cut call: it gets five seconds."""
    body = SlowClose(1000)
    provider = _provider(lambda r: httpx.Response(200, stream=body))
    start = trio.current_time()
    with pytest.raises(e.ProviderTimeout, match="first token"):
        await provider.post_json("/c", {})
    assert trio.current_time() - start == LIMITS.first_token + 5
    assert not body.closed


async def test_a_stream_whose_rest_stalls_still_closes_its_body(autojump_clock: Any) -> None:
    """A complete answer whose body then stalls is cut at the idle limit and its body
    closed, though the close waits."""
    body = SlowClose(1, (b"data: end\n\n", b"data: after\n\n"))
    parser = Parser()
    await _provider(lambda r: httpx.Response(200, stream=body)).post_stream("/c", {}, parser)
    assert parser.seen == ["end"]
    assert body.closed


async def test_the_rest_of_a_complete_stream_is_read_not_cut(autojump_clock: Any) -> None:
    """After the answer's end the body is read to its end (so its connection can serve the
    next call), not closed under the bytes still coming."""
    body = Scripted(
        [(0, b"data: end\n\n"), (1, b": x\n\n"), (1, b": y\n\n")], ends_when_closed=True
    )
    await _stream_provider(body).post_stream("/c", {}, Parser())
    assert body.sent == 3


class FailingClose(HugeError):
    """A huge error body whose close fails with ``error``."""

    def __init__(self, error: Exception) -> None:
        super().__init__()
        self.error = error

    async def aclose(self) -> None:
        await super().aclose()
        raise self.error


async def test_a_close_failing_in_the_http_library_is_ignored() -> None:
    """An HTTP library's error while closing a cut error body changes nothing: the call
    fails with the answer's typed error."""
    body = FailingClose(httpx.ReadError("reset"))
    provider = _provider(lambda r: httpx.Response(400, stream=body))
    with pytest.raises(e.BadRequest):
        await provider.post_json("/c", {})
    assert body.closed


async def test_another_error_while_closing_is_raised() -> None:
    """Any other error while closing is a bug, and is raised as it is."""
    body = FailingClose(RuntimeError("bug"))
    provider = _provider(lambda r: httpx.Response(400, stream=body))
    with pytest.raises(RuntimeError, match="bug"):
        await provider.post_json("/c", {})


# ------------------------------------------------------------------ sending


async def test_a_read_timeout_mid_stream_is_a_timeout_naming_its_cause(
    autojump_clock: Any,
) -> None:
    """A transport's read timeout after content is ProviderTimeout, quoting the library's
    error; another failure is a connection error quoting it."""
    timeout = _provider(
        lambda r: httpx.Response(200, stream=_Failing(b"data: a\n\n", httpx.ReadTimeout("slow")))
    )
    with pytest.raises(e.ProviderTimeout) as info:
        await timeout.post_stream("/c", {}, Parser())
    assert str(info.value).startswith("timed out talking to acme (ReadTimeout: slow)")
    reset = _provider(
        lambda r: httpx.Response(200, stream=_Failing(b"data: a\n\n", httpx.ReadError("reset")))
    )
    with pytest.raises(e.ProviderConnectionError) as failed:
        await reset.post_stream("/c", {}, Parser())
    assert str(failed.value).startswith("the connection to acme failed (ReadError: reset)")


async def test_a_client_with_hooks_still_streams_as_the_body_arrives(
    autojump_clock: Any,
) -> None:
    """Through AsyncClient.send (a client with event hooks) each event is read as it
    arrives: a stall after content is cut by the idle limit, the content delivered."""
    seen: list[str] = []

    async def hook(request: httpx.Request) -> None:
        seen.append(request.url.path)

    body = Scripted([(0, b"data: a\n\n")], stall=True)
    client = httpx.AsyncClient(
        transport=httpx.MockTransport(lambda r: httpx.Response(200, stream=body)),
        event_hooks={"request": [hook]},
    )
    provider = HTTPProvider(client, "http://llm.test/v1", "acme", None, LIMITS, lambda k: {})
    parser = Parser()
    with pytest.raises(e.ProviderTimeout, match="the idle timeout"):
        await provider.post_stream("/c", {}, parser)
    assert parser.seen == ["a"]
    assert seen == ["/v1/c"]


@pytest.mark.parametrize(
    ("base_url", "url"),
    [
        ("http://llm.test/v1//", "http://llm.test/v1/c"),
        ("http://llm.test/BOX", "http://llm.test/BOX/c"),
    ],
)
async def test_the_base_url_loses_only_its_trailing_slashes(base_url: str, url: str) -> None:
    """The path is joined to the base URL without its trailing slashes, the rest kept."""
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(str(request.url))
        return httpx.Response(200, json={})

    client = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    provider = HTTPProvider(client, base_url, "acme", None, LIMITS, lambda k: {})
    await provider.post_json("/c", {})
    await provider.post_json("/c", {})
    assert seen == [url, url]


@pytest.mark.parametrize("spelt", [str.lower, str.title])
async def test_a_fixed_header_is_replaced_not_doubled(spelt: Any) -> None:
    """A content-type or authorization among the fixed headers, however its name is
    spelt, is replaced by the JSON body's and the key's, not sent as well."""
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={})

    fixed = {spelt("content-type"): "text/plain", spelt("authorization"): "none", "X-F": "f"}
    provider = _provider(handler, keys=KeyPool([Secret("k1")]), headers=fixed)
    await provider.post_json("/c", {})
    assert seen[0].headers.get_list("content-type") == ["application/json"]
    assert seen[0].headers.get_list("authorization") == ["Bearer k1"]
    assert seen[0].headers.get_list("x-f") == ["f"]


async def test_a_traced_call_sends_its_spans_traceparent() -> None:
    """While tracing, the request carries the traceparent of the span it is sent in."""
    pytest.importorskip("opentelemetry.sdk", reason="the otel extra is not installed")
    from opentelemetry.sdk.trace import TracerProvider

    from trio_orchestrator.observability.spans import CURRENT_TRACER, otel

    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={})

    otel()
    tracer_provider = TracerProvider()
    tracer = tracer_provider.get_tracer("test")
    token = CURRENT_TRACER.set(tracer)
    try:
        with tracer.start_as_current_span("attempt") as span:
            await _provider(handler).post_json("/c", {})
    finally:
        CURRENT_TRACER.reset(token)
        tracer_provider.shutdown()
    _version, trace_id, span_id, _flags = seen[0].headers["traceparent"].split("-")
    context = span.get_span_context()
    assert (int(trace_id, 16), int(span_id, 16)) == (context.trace_id, context.span_id)
