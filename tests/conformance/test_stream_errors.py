"""A streamed answer's status goes out with the first upstream event: an upstream failure
before the first token is a real HTTP status that the official SDK raises as its typed error;
after the first token it stays an in-stream error."""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from trio_orchestrator.config import Config
from trio_orchestrator.config.service import ServiceConfig
from trio_orchestrator.routing.registry import ModelDeployment, RoutingConfig
from trio_orchestrator.testing.fake_provider import Behaviour, FakeProvider
from trio_orchestrator.workers import ProvidersConfig

from .conftest import ConfigFactory, Gateway, single_provider, start_gateway, upstream_provider

MESSAGES: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Hi"}]


def _stream(gw: Gateway) -> list[str]:
    """Stream a chat completion through the SDK and return the content pieces."""
    with (
        gw.openai() as client,
        client.chat.completions.create(
            model="fake-model",
            messages=MESSAGES,
            stream=True,
        ) as stream,
    ):
        return [chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices]


@pytest.fixture
def fresh(upstream_kind: str) -> Iterator[Gateway]:
    """A gateway of its own: an upstream 429 rests the gateway's key, a 401 disables it."""
    running = start_gateway(upstream_kind, single_provider(upstream_kind))
    try:
        yield running.gateway
    finally:
        running.stop()


def test_an_upstream_429_before_the_first_token_is_a_rate_limit_error(fresh: Gateway) -> None:
    """An upstream 429 before any token reaches the SDK as RateLimitError with Retry-After."""
    fresh.script(Behaviour(status=429, retry_after=7))
    with pytest.raises(openai.RateLimitError) as caught:
        _stream(fresh)
    assert caught.value.status_code == 429
    assert caught.value.response.headers["retry-after"] == "7"
    assert caught.value.code == "rate_limit_exceeded"


def test_an_upstream_400_before_the_first_token_is_a_bad_request_error(gw: Gateway) -> None:
    """An upstream 400 before any token reaches the SDK as BadRequestError."""
    gw.script(Behaviour(status=400, error_message="max_tokens is too large"))
    with pytest.raises(openai.BadRequestError) as caught:
        _stream(gw)
    assert caught.value.status_code == 400
    assert "max_tokens is too large" in caught.value.message


def test_an_upstream_5xx_before_the_first_token_is_a_server_error(gw: Gateway) -> None:
    """An upstream 500 before any token reaches the SDK as an InternalServerError (5xx)."""
    gw.script(Behaviour(status=500))
    with pytest.raises(openai.InternalServerError) as caught:
        _stream(gw)
    assert caught.value.status_code == 502


def test_an_upstream_401_before_the_first_token_is_the_documented_502(fresh: Gateway) -> None:
    """The upstream refusing the gateway's own key is a 502 (the caller's key is fine)."""
    fresh.script(Behaviour(status=401))
    with pytest.raises(openai.InternalServerError) as caught:
        _stream(fresh)
    assert caught.value.status_code == 502
    assert caught.value.code == "upstream_auth"


def test_an_error_after_the_first_token_stays_in_the_stream(gw: Gateway) -> None:
    """Once a token went out the status is 200; a later failure is an in-stream error."""
    gw.script(Behaviour(text="one two three", error_after=1))
    with pytest.raises(openai.APIError) as caught:
        _stream(gw)
    assert not isinstance(caught.value, openai.APIStatusError)  # no status: in-stream


def test_the_role_chunk_comes_with_the_first_token(gw: Gateway) -> None:
    """A successful stream still opens with the assistant's role and carries every token."""
    gw.script(Behaviour(text="Hello there"))
    with httpx.stream(
        "POST",
        gw.url + "/v1/chat/completions",
        json={"model": "fake-model", "messages": MESSAGES, "stream": True},
    ) as response:
        assert response.status_code == 200
        lines = [line for line in response.iter_lines() if line.startswith("data: ")]
    assert '"role":"assistant"' in lines[0]
    assert lines[-1] == "data: [DONE]"
    assert "".join(_stream_texts(lines)) == "Hello there"


def _stream_texts(lines: list[str]) -> list[str]:
    texts = []
    for line in lines[:-1]:
        choices = json.loads(line[len("data: ") :])["choices"]
        if choices:
            texts.append(choices[0]["delta"].get("content") or "")
    return texts


def test_the_native_stream_keeps_a_failure_status_before_its_first_event(gw: Gateway) -> None:
    """POST /v1/prompt/stream answers an upstream 5xx before any event with its status."""
    gw.script(Behaviour(status=500))
    body = {"input": "Hi", "model": "fake-model"}
    response = httpx.post(gw.url + "/v1/prompt/stream", json=body)
    assert response.status_code == 502
    assert response.json()["error"]["code"] == "upstream_error"


def test_the_native_stream_starts_with_its_first_event(gw: Gateway) -> None:
    """A successful native stream still opens with ``start`` and ends with ``done``."""
    gw.script(Behaviour(text="Hello there"))
    response = httpx.post(gw.url + "/v1/prompt/stream", json={"input": "Hi", "model": "m"})
    kinds = [json.loads(line[6:])["type"] for line in response.text.split("\n\n") if line]
    assert (response.status_code, kinds[0], kinds[-1]) == (200, "start", "done")


def _two_deployments(kind: str) -> ConfigFactory:
    """One model served by two deployments (two providers in front of the one fake)."""

    def make(fake: FakeProvider) -> Config:
        providers = ProvidersConfig([upstream_provider(fake, kind, name) for name in ("p1", "p2")])
        deployments = [
            ModelDeployment(f"d-{name}", "fake-model", name, input_price=price)
            for name, price in (("p1", 1.0), ("p2", 2.0))
        ]
        routing = RoutingConfig(deployments=deployments, strategy="cost", max_attempts=2)
        return Config(providers=providers, routing=routing, service=ServiceConfig(port=0))

    return make


def test_a_router_fallback_before_the_first_token_is_invisible(upstream_kind: str) -> None:
    """The first deployment failing before any token falls back; the client sees one 200."""
    running = start_gateway(upstream_kind, _two_deployments(upstream_kind))
    try:
        running.gateway.script(Behaviour(status=500), Behaviour(text="Hello there"))
        assert "".join(_stream(running.gateway)) == "Hello there"
        assert len(running.gateway.received()) == 2
    finally:
        running.stop()
