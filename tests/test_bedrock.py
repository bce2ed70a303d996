"""The Bedrock worker over real HTTP to the fake provider, its SigV4 signing, its errors,
and its configuration (served-path tests: tests/conformance/test_bedrock_*.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import attrs
import httpx
import pytest
import trio

from trio_orchestrator.config.secret import Secret
from trio_orchestrator.errors import (
    AuthenticationError,
    ConfigError,
    ContextLengthExceeded,
    MalformedResponse,
    ModelNotFound,
    Overloaded,
    PermissionDenied,
    ProviderConnectionError,
    ProviderError,
    RateLimited,
    ServerError,
    UnsupportedParameter,
)
from trio_orchestrator.testing.fake_bedrock import CREDENTIALS, refusal, verify_sigv4
from trio_orchestrator.testing.fake_provider import Behaviour, FakeProvider, open_fake_provider
from trio_orchestrator.types import GenerationParams, PromptRequest
from trio_orchestrator.workers import ProviderConfig, ProvidersConfig, build_worker, collect
from trio_orchestrator.workers.bedrock import AWSCredentials, BedrockWorker, bedrock_error
from trio_orchestrator.workers.embeddings import fake_vector

((KEY_ID, SECRET),) = CREDENTIALS.items()
REQUEST = PromptRequest(input="hello", params=GenerationParams(model="amazon.nova-pro-v1:0"))


@pytest.fixture
async def fake() -> AsyncIterator[FakeProvider]:
    async with open_fake_provider(Behaviour(text="Hello from Bedrock")) as fake:
        yield fake


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient() as client:
        yield client


def signed(client: httpx.AsyncClient, fake: FakeProvider, *, stream: bool = True) -> BedrockWorker:
    """A worker signing with the credentials the fake holds."""
    credentials = AWSCredentials(KEY_ID, Secret(SECRET))
    return BedrockWorker(
        client, fake.base_url, stream=stream, credentials=credentials, region="us-east-1"
    )


# ------------------------------------------------------------------ SigV4


ANSWER = {
    "output": {"message": {"role": "assistant", "content": [{"text": "ok"}]}},
    "stopReason": "end_turn",
    "usage": {"inputTokens": 1, "outputTokens": 1, "totalTokens": 2},
}


async def _sent(credentials: AWSCredentials) -> httpx.Request:
    """The request a non-streaming worker sends, as it went out."""
    sent: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        return httpx.Response(200, json=ANSWER)

    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
        worker = BedrockWorker(
            client, "http://bedrock.test", stream=False, credentials=credentials, region="us-east-1"
        )
        await collect(worker, REQUEST)
    return sent[0]


def _check(request: httpx.Request, body: bytes | None = None, url: str | None = None) -> Any:
    headers = {k.lower(): v for k, v in request.headers.items()}
    content = request.content if body is None else body
    return verify_sigv4("POST", url or str(request.url), headers, content)


async def test_the_signature_covers_the_body_the_headers_and_the_query() -> None:
    """The fake's re-signing accepts the worker's signature, and refuses it once the body,
    a signed header or the query differs from what was signed."""
    request = await _sent(AWSCredentials(KEY_ID, Secret(SECRET), Secret("token")))
    assert request.url.raw_path == b"/model/amazon.nova-pro-v1%3A0/converse"
    assert _check(request) is None
    assert _check(request, body=request.content + b" ")[0] == "InvalidSignatureException"
    assert _check(request, url=f"{request.url}?trace=1")[0] == "InvalidSignatureException"
    request.headers["x-amz-security-token"] = "another-token"
    assert _check(request)[0] == "InvalidSignatureException"
    request.headers["x-amz-security-token"] = "token"
    request.headers["content-type"] = "text/plain"
    assert _check(request)[0] == "InvalidSignatureException"


async def test_without_the_check_the_fake_takes_any_signature_from_a_known_key() -> None:
    """With ``check_sigv4`` off (benchmarks), the fake takes a wrong signature from a key id
    it holds, still refuses an unknown key id and a missing signature, and with the check on
    refuses the wrong signature."""
    request = await _sent(AWSCredentials(KEY_ID, Secret(SECRET)))
    headers = {k.lower(): v for k, v in request.headers.items()}
    scope = {"raw_path": request.url.raw_path, "method": "POST", "query_string": b""}
    wrong = request.content + b" "
    assert refusal(headers, scope, wrong, check_sigv4=False) is None
    assert (refusal(headers, scope, wrong) or ("",))[0] == "InvalidSignatureException"
    unknown = headers | {"authorization": headers["authorization"].replace(KEY_ID, "AKIDNOPE")}
    refused = refusal(unknown, scope, request.content, check_sigv4=False)
    assert refused == ("UnrecognizedClientException", "Unknown access key id")
    unsigned = {k: v for k, v in headers.items() if k != "authorization"}
    refused = refusal(unsigned, scope, request.content, check_sigv4=False)
    assert refused == ("AccessDeniedException", "Missing Authentication Token")


async def test_an_unknown_access_key_is_unrecognized(
    fake: FakeProvider, client: httpx.AsyncClient
) -> None:
    """A request signed with an access key the fake does not hold is a 403 that the worker
    types as an authentication failure."""
    credentials = AWSCredentials("AKIAUNKNOWN", Secret("x"))
    worker = BedrockWorker(client, fake.base_url, credentials=credentials, region="us-east-1")
    with pytest.raises(AuthenticationError, match="UnrecognizedClientException"):
        await collect(worker, REQUEST)


async def test_a_bedrock_api_key_is_a_bearer_token(
    fake: FakeProvider, client: httpx.AsyncClient
) -> None:
    """api_keys are Bedrock API keys: sent as Authorization: Bearer, no region needed with a
    base_url, and a 429 on one key moves to the next."""
    fake.set_key("bedrock-key-1", Behaviour(status=429, error_type="ThrottlingException"))
    config = ProviderConfig(
        "bedrock", "aws", fake.base_url, api_keys=["bedrock-key-1", "bedrock-key-2"]
    )
    worker = build_worker(ProvidersConfig([config]), client)
    completion = await collect(worker, REQUEST)
    assert completion.text == "Hello from Bedrock"
    assert fake.requests[-1].headers["authorization"] == "Bearer bedrock-key-2"
    assert fake.requests[-1].path == "/model/amazon.nova-pro-v1:0/converse-stream"


# ------------------------------------------------------------------ answers


@pytest.mark.parametrize("stream", [True, False])
async def test_text_tool_calls_and_usage(
    fake: FakeProvider, client: httpx.AsyncClient, stream: bool
) -> None:
    """Text, a tool call (streamed as toolUse input pieces) and the usage become one Done
    with OpenAI's finish reason."""
    fake.script(Behaviour(text="Let me check.", tool_calls=(("get_weather", '{"city": "Oslo"}'),)))
    completion = await collect(signed(client, fake, stream=stream), REQUEST)
    assert completion.text == "Let me check."
    assert completion.finish_reason == "tool_calls"
    ((name, arguments),) = [(c.name, c.arguments) for c in completion.tool_calls]
    assert (name, arguments.replace(" ", "")) == ("get_weather", '{"city":"Oslo"}')
    assert completion.usage is not None
    assert completion.usage.output_tokens > 0


async def test_a_broken_frame_is_malformed(fake: FakeProvider, client: httpx.AsyncClient) -> None:
    """Bytes that are no event-stream frame (botocore's prelude check) are MalformedResponse."""
    fake.script(Behaviour(malformed_after=1))
    with pytest.raises(MalformedResponse, match="event-stream"):
        await collect(signed(client, fake), REQUEST)


async def test_a_stream_without_message_stop_is_incomplete(
    fake: FakeProvider, client: httpx.AsyncClient
) -> None:
    """A stream that ends before messageStop is a connection error, never a short answer."""
    fake.script(Behaviour(omit_done=True))
    with pytest.raises(ProviderConnectionError, match="messageStop"):
        await collect(signed(client, fake), REQUEST)


async def test_a_refused_member_never_reaches_the_upstream(
    fake: FakeProvider, client: httpx.AsyncClient
) -> None:
    """A seed is refused before any call, naming it."""
    request = PromptRequest(input="hi", params=GenerationParams(model="m", seed=3))
    with pytest.raises(UnsupportedParameter, match="seed"):
        await collect(signed(client, fake), request)
    assert fake.requests == []


# ------------------------------------------------------------------ errors


@pytest.mark.parametrize(
    ("status", "name", "expected"),
    [
        (429, "ThrottlingException", RateLimited),
        (400, "ServiceQuotaExceededException", RateLimited),
        (403, "AccessDeniedException", PermissionDenied),
        (403, "UnrecognizedClientException", AuthenticationError),
        (404, "ResourceNotFoundException", ModelNotFound),
        (424, "ModelErrorException", ServerError),
        (503, "ServiceUnavailableException", Overloaded),
        (500, "", ServerError),
    ],
)
def test_the_exception_name_picks_the_error(status: int, name: str, expected: type) -> None:
    """x-amzn-ErrorType (with its namespace suffix) names the exception; without it, the status."""
    headers = (
        {"x-amzn-ErrorType": f"{name}:http://internal.amazon.com/coral/com.amazon.bedrock/"}
        if name
        else {}
    )
    error = bedrock_error(status, headers, b'{"message": "no"}', provider="aws")
    assert type(error) is expected
    assert error.status == status


def test_the_body_type_names_the_exception_and_too_long_is_context_length() -> None:
    """``__type`` works as the header does; a ValidationException about a too long input is
    ContextLengthExceeded; a 429's Retry-After is kept."""
    body = b'{"__type": "com.amazon.bedrock#ValidationException", "message": "Input is too long"}'
    assert type(bedrock_error(400, {}, body, provider="aws")) is ContextLengthExceeded
    throttled = bedrock_error(429, {"retry-after": "4"}, b"{}", provider="aws")
    assert throttled.retry_after == 4.0


# ------------------------------------------------------------------ configuration


def test_aws_settings_are_for_bedrock_only() -> None:
    """region and the aws_* keys on another kind are refused, naming the key."""
    with pytest.raises(ValueError, match="region is for kind 'bedrock'"):
        ProviderConfig("openai", region="us-east-1")


async def test_credentials_and_region_come_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, client: httpx.AsyncClient
) -> None:
    """AWS_REGION and AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY make a signing worker for the
    region's endpoint; AWS_BEARER_TOKEN_BEDROCK alone makes a bearer one."""
    monkeypatch.setenv("AWS_REGION", "ap-southeast-2")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDENV")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "env-secret")
    worker = build_worker(ProvidersConfig([ProviderConfig("bedrock")]), client)
    assert isinstance(worker, BedrockWorker)
    assert worker.base_url == "https://bedrock-runtime.ap-southeast-2.amazonaws.com"
    assert worker.credentials is not None
    assert worker.credentials.access_key_id == "AKIDENV"
    assert worker.keys is None
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.setenv("AWS_BEARER_TOKEN_BEDROCK", "bedrock-api-key")
    worker = build_worker(ProvidersConfig([ProviderConfig("bedrock")]), client)
    assert isinstance(worker, BedrockWorker)
    assert worker.keys is not None
    assert worker.credentials is None


async def test_no_region_or_no_credentials_is_a_config_error(
    monkeypatch: pytest.MonkeyPatch, client: httpx.AsyncClient
) -> None:
    """Without a region (or any credentials) building the provider says what to set."""
    for name in (
        "AWS_REGION",
        "AWS_DEFAULT_REGION",
        "AWS_ACCESS_KEY_ID",
        "AWS_BEARER_TOKEN_BEDROCK",
    ):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(ConfigError, match="region"):
        build_worker(ProvidersConfig([ProviderConfig("bedrock", api_keys=["k"])]), client)
    with pytest.raises(ConfigError, match="aws_access_key_id"):
        build_worker(ProvidersConfig([ProviderConfig("bedrock", region="us-east-1")]), client)


async def test_a_reload_changing_the_credentials_is_refused(client: httpx.AsyncClient) -> None:
    """A reload with new aws_* credentials or region says it needs a restart (the signer
    keeps what it was built with); the same settings reload quietly."""
    config = ProviderConfig(
        "bedrock", "aws", region="us-east-1", aws_access_key_id="AKID", aws_secret_access_key="s"
    )
    worker = build_worker(ProvidersConfig([config]), client)
    assert isinstance(worker, BedrockWorker)
    assert worker.reconfigure(config) == []
    rotated = attrs.evolve(config, aws_secret_access_key=Secret("rotated"))
    (refusal,) = worker.reconfigure(rotated)
    assert "aws_* credentials change only on a restart" in refusal


async def test_a_dropped_connection_mid_stream_is_a_connection_error(
    fake: FakeProvider, client: httpx.AsyncClient
) -> None:
    """The upstream dropping the connection after a token is ProviderConnectionError."""
    fake.script(Behaviour(disconnect_after=1))
    with pytest.raises(ProviderConnectionError):
        await collect(signed(client, fake), REQUEST)


# ------------------------------------------------------------------ embeddings (InvokeModel)

TITAN = "amazon.titan-embed-text-v2:0"
COHERE = "cohere.embed-english-v3"


def embed(model: str, *inputs: Any, **extra: Any) -> PromptRequest:
    """An embedding request of ``inputs`` for ``model``, with ``extra`` members."""
    return PromptRequest(embed=inputs, params=GenerationParams(model=model, extra=extra))


async def test_titan_embeds_each_input_in_its_own_call_and_keeps_the_order(
    fake: FakeProvider, client: httpx.AsyncClient
) -> None:
    """Titan takes one text a call: three inputs are three signed InvokeModel calls, with
    ``{"inputText", "dimensions"}``; the vectors come back in input order and the usage is
    the sum of the answers' inputTextTokenCount."""
    texts = ("one", "two words", "three little words")
    completion = await collect(signed(client, fake), embed(TITAN, *texts, dimensions=256))
    calls = list(fake.requests)
    assert {c.path for c in calls} == {f"/model/{TITAN}/invoke"}
    assert sorted(c.body["inputText"] for c in calls) == sorted(texts)
    assert all(c.body == {"inputText": c.body["inputText"], "dimensions": 256} for c in calls)
    assert [list(v) for v in completion.embeddings] == [
        pytest.approx(fake_vector(t, 256)) for t in texts
    ]
    assert completion.usage is not None
    assert completion.usage.input_tokens == 1 + 2 + 3


async def test_cohere_embeds_every_input_in_one_call(
    fake: FakeProvider, client: httpx.AsyncClient
) -> None:
    """Cohere Embed takes the texts in one call with ``input_type`` (search_document unless
    the client says), up to 96 a call."""
    texts = [f"text {i}" for i in range(100)]
    completion = await collect(signed(client, fake), embed(COHERE, *texts))
    calls = sorted(fake.requests, key=lambda c: len(c.body["texts"]), reverse=True)
    assert [c.path for c in calls] == [f"/model/{COHERE}/invoke"] * 2
    assert calls[0].body == {"texts": texts[:96], "input_type": "search_document"}
    assert calls[1].body == {"texts": texts[96:], "input_type": "search_document"}
    assert [list(v) for v in completion.embeddings] == [
        pytest.approx(fake_vector(t, 1024)) for t in texts
    ]
    await collect(signed(client, fake), embed(COHERE, "q", input_type="search_query"))
    assert fake.requests[-1].body == {"texts": ["q"], "input_type": "search_query"}


@pytest.mark.parametrize(
    ("request_", "param", "words"),
    [
        (embed("amazon.nova-pro-v1:0", "x"), "model", "Titan Text Embeddings"),
        (embed(TITAN, "x", dimensions=300), "dimensions", "256, 512 or 1024"),
        (embed(TITAN, (1, 2, 3)), "input[0]", "not tokens"),
        (embed(COHERE, "x", dimensions=256), "dimensions", "input_type"),
        (embed("amazon.titan-embed-text-v1", "x", normalize=False), "normalize", "only the text"),
    ],
)
async def test_embedding_requests_bedrock_cannot_take_are_refused_before_any_call(
    fake: FakeProvider, client: httpx.AsyncClient, request_: PromptRequest, param: str, words: str
) -> None:
    """Another model family, Titan dimensions other than 256/512/1024, token inputs and
    members a family lacks are each a 400 naming the member; nothing is sent."""
    with pytest.raises(UnsupportedParameter) as caught:
        await collect(signed(client, fake), request_)
    assert caught.value.param == param
    assert words in str(caught.value)
    assert list(fake.requests) == []


async def test_titans_calls_are_in_flight_together() -> None:
    """Titan's calls for one request are made concurrently: no call is answered before all
    three have arrived (one after the other, the first would wait forever)."""
    arrived = 0
    all_in = trio.Event()

    async def handler(request: httpx.Request) -> httpx.Response:
        nonlocal arrived
        arrived += 1
        if arrived == 3:
            all_in.set()
        await all_in.wait()
        return httpx.Response(200, json={"embedding": [0.5], "inputTextTokenCount": 1})

    credentials = AWSCredentials(KEY_ID, Secret(SECRET))
    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
        worker = BedrockWorker(
            client, "http://bedrock.test", credentials=credentials, region="us-east-1"
        )
        with trio.fail_after(10):
            completion = await collect(worker, embed(TITAN, "a", "b", "c"))
    assert completion.embeddings == ((0.5,), (0.5,), (0.5,))


async def test_a_failing_titan_call_is_the_requests_typed_error(
    fake: FakeProvider, client: httpx.AsyncClient
) -> None:
    """When one of Titan's calls is throttled, the request fails with RateLimited (not an
    exception group), the other calls being cancelled."""
    fake.script(Behaviour(), Behaviour(status=429))
    with pytest.raises(RateLimited):
        await collect(signed(client, fake), embed(TITAN, "a", "b", "c"))


async def test_an_answer_without_the_vector_is_malformed(
    fake: FakeProvider, client: httpx.AsyncClient
) -> None:
    """An InvokeModel answer of another shape is MalformedResponse."""
    fake.script(Behaviour(body={"embeddings": "nope"}))
    with pytest.raises(MalformedResponse):
        await collect(signed(client, fake), embed(TITAN, "a"))


async def test_a_signature_error_quoting_the_session_token_does_not_repeat_it() -> None:
    """AWS's SignatureDoesNotMatch quotes the canonical request (the session token among its
    headers): the typed error's text has the token and the secret scrubbed."""
    token, secret = "FQoGZXIvYXdzEXAMPLETOKEN0123456789", "wJalrEXAMPLESECRETKEY0123"
    quoted = f"The canonical string ... x-amz-security-token:{token}\n... key {secret}"

    def handler(request: httpx.Request) -> httpx.Response:
        headers = {"x-amzn-ErrorType": "InvalidSignatureException"}
        return httpx.Response(403, json={"message": quoted}, headers=headers)

    credentials = AWSCredentials(KEY_ID, Secret(secret), Secret(token))
    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
        worker = BedrockWorker(
            client, "http://bedrock.test", stream=False, credentials=credentials, region="us-east-1"
        )
        with pytest.raises(ProviderError) as caught:
            await collect(worker, REQUEST)
    assert "canonical string" in str(caught.value)
    assert token not in str(caught.value)
    assert secret not in str(caught.value)
