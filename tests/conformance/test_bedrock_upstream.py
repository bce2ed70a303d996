"""A Bedrock upstream reached with AWS SigV4, through the served gateway with the official
``openai`` SDK: the fake re-signs every request with botocore and refuses a wrong signature
as Bedrock does; Bedrock's own errors (``x-amzn-ErrorType``, exceptions inside the event
stream) reach the client as their typed errors."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import openai
import pytest

from trio_orchestrator.config import Config
from trio_orchestrator.config.service import ServiceConfig
from trio_orchestrator.testing.fake_bedrock import CREDENTIALS
from trio_orchestrator.testing.fake_provider import Behaviour, FakeProvider
from trio_orchestrator.workers import ProviderConfig, ProvidersConfig

from .conftest import ConfigFactory, Gateway, start_gateway

((KEY_ID, SECRET),) = CREDENTIALS.items()
HELLO: Any = [{"role": "user", "content": "Hi"}]


def _signed(secret: str, **provider: Any) -> ConfigFactory:
    """One Bedrock provider signing with ``KEY_ID`` and ``secret``."""

    def make(fake: FakeProvider) -> Config:
        upstream = ProviderConfig(
            "bedrock",
            "aws",
            fake.base_url,
            region="eu-west-3",
            aws_access_key_id=KEY_ID,
            aws_secret_access_key=secret,
            aws_session_token="session-token",
            **provider,
        )
        return Config(providers=ProvidersConfig([upstream]), service=ServiceConfig(port=0))

    return make


def _running(make: ConfigFactory) -> Iterator[Gateway]:
    running = start_gateway("bedrock", make)
    try:
        yield running.gateway
    finally:
        running.stop()


@pytest.fixture(scope="module")
def signed() -> Iterator[Gateway]:
    """The gateway in front of Bedrock, streaming, signing with the right secret."""
    yield from _running(_signed(SECRET))


@pytest.fixture(scope="module")
def signed_json() -> Iterator[Gateway]:
    """The same with Converse (one JSON answer)."""
    yield from _running(_signed(SECRET, stream=False))


@pytest.fixture(scope="module")
def wrong_secret() -> Iterator[Gateway]:
    """The gateway signing with a secret the upstream does not hold."""
    yield from _running(_signed("not-the-secret"))


def _stream(gw: Gateway) -> str:
    chunks = gw.openai().chat.completions.create(model="m", messages=HELLO, stream=True)
    return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


@pytest.mark.parametrize("stream", [True, False])
def test_a_signed_request_is_answered(signed: Gateway, signed_json: Gateway, stream: bool) -> None:
    """ConverseStream and Converse, signed by botocore: the fake's own SigV4 check (over the
    path, the signed headers and the body's bytes) passes, and the answer parses."""
    gw = signed if stream else signed_json
    gw.clear()
    gw.script(Behaviour(text="Hello there"))
    if stream:
        assert _stream(gw) == "Hello there"
    else:
        answer = gw.openai().chat.completions.create(model="m", messages=HELLO)
        assert answer.choices[0].message.content == "Hello there"
    headers = gw.last().headers
    assert headers["authorization"].startswith(f"AWS4-HMAC-SHA256 Credential={KEY_ID}/")
    assert "/eu-west-3/bedrock/aws4_request" in headers["authorization"]
    assert headers["x-amz-security-token"] == "session-token"
    assert SECRET not in str(headers)


def test_a_wrong_signature_is_the_upstream_auth_502(wrong_secret: Gateway) -> None:
    """The upstream's InvalidSignatureException (403) is the gateway refusing its own
    credentials: the documented 502 upstream_auth, not the caller's fault."""
    wrong_secret.script(Behaviour(text="never sent"))
    with pytest.raises(openai.InternalServerError) as caught:
        _stream(wrong_secret)
    assert caught.value.status_code == 502
    assert caught.value.code == "upstream_auth"


@pytest.mark.parametrize(
    ("status", "sdk_error", "code"),
    [
        (429, openai.RateLimitError, 429),
        (400, openai.BadRequestError, 400),
        (404, openai.NotFoundError, 404),
    ],
)
def test_bedrocks_exceptions_are_the_sdks_errors(
    signed: Gateway, status: int, sdk_error: type[openai.APIStatusError], code: int
) -> None:
    """ThrottlingException, ValidationException and ResourceNotFoundException (named in
    x-amzn-ErrorType) reach the client as the SDK's error for their status."""
    signed.clear()
    signed.script(Behaviour(status=status, error_message="the model says no", retry_after=3))
    with pytest.raises(sdk_error) as caught:
        _stream(signed)
    assert caught.value.status_code == code
    assert "the model says no" in caught.value.message


def test_a_too_long_input_is_context_length_exceeded(signed: Gateway) -> None:
    """A ValidationException saying the input is too long is the context-length 400."""
    signed.clear()
    signed.script(Behaviour(status=400, error_message="Input is too long for requested model."))
    with pytest.raises(openai.BadRequestError) as caught:
        _stream(signed)
    assert caught.value.code == "context_length_exceeded"


def test_an_exception_inside_the_stream_is_an_in_stream_error(signed: Gateway) -> None:
    """A modelStreamErrorException frame after the first token is an error in the stream
    (the status went out with the first token)."""
    signed.clear()
    signed.script(Behaviour(text="one two three", error_after=1))
    with pytest.raises(openai.APIError) as caught:
        _stream(signed)
    assert not isinstance(caught.value, openai.APIStatusError)
    assert "modelStreamErrorException" in caught.value.message
