"""Faults through the served path: the breaker's accounting, retries of non-streaming
answers cut mid-way, and the labels of the resilience layers' metrics."""

from __future__ import annotations

from typing import Any

import attrs
import httpx
import orjson
from service_helpers import make_config, running_service

from trio_orchestrator.config import Config
from trio_orchestrator.events import Done, TextDelta
from trio_orchestrator.observability import MetricsConfig, ObservabilityConfig
from trio_orchestrator.resilience import (
    BreakerConfig,
    LimitConfig,
    RateLimitsConfig,
    ResilienceConfig,
    RetryConfig,
)
from trio_orchestrator.testing.fake_provider import Behaviour, open_fake_provider
from trio_orchestrator.types import PromptRequest
from trio_orchestrator.workers import EventSink
from trio_orchestrator.workers.config import ProviderConfig, ProvidersConfig


def _chat(content: str, model: str = "echo", **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": content}], **extra}


@attrs.define(eq=False)
class Encoding:
    """Encodes each request's last message as the OpenAI worker encodes a body (orjson), so
    a poison message fails inside orjson exactly as it would there; others are echoed."""

    name: str = "encoding"

    async def generate(self, request: PromptRequest, emit: EventSink) -> None:
        text = request.chat()[-1].content
        if text == "poison":
            orjson.dumps({"seed": 2**64})  # raises orjson.JSONEncodeError, a TypeError
        await emit(TextDelta(text))
        await emit(Done("stop", text))


def _with(config: Config, **resilience: Any) -> Config:
    return attrs.evolve(config, resilience=ResilienceConfig(**resilience))


async def test_poison_requests_leave_the_breaker_closed_for_the_next_caller() -> None:
    """Ten requests crashing the worker while encoding them do not open the circuit."""
    config = _with(make_config(), breaker=BreakerConfig(enabled=True, failure_threshold=5))
    async with running_service(config, Encoding()) as url, httpx.AsyncClient(base_url=url) as c:
        for _ in range(10):
            response = await c.post("/v1/chat/completions", json=_chat("poison"))
            assert response.status_code >= 400
        response = await c.post("/v1/chat/completions", json=_chat("hello"))
        assert response.status_code == 200, response.text
        assert response.json()["choices"][0]["message"]["content"] == "hello"
        metrics = (await c.get("/metrics")).text
    assert 'breaker_state{state="open",target="encoding/echo"} 0.0' in metrics


def _upstream(url: str, **resilience: Any) -> Config:
    # One pool (of 64 by default): each builds an SSL context, slow on a loaded machine.
    provider = ProviderConfig(kind="openai", name="fake", base_url=url + "/v1", max_connections=16)
    config = attrs.evolve(make_config(), providers=ProvidersConfig((provider,)))
    return _with(config, **resilience)


async def test_an_answer_cut_mid_way_is_retried_for_a_non_streaming_client() -> None:
    """An upstream dropping the connection after two tokens is retried: the client, who
    has seen nothing yet, gets the whole answer once."""
    async with open_fake_provider(Behaviour(text="one two three four")) as fake:
        fake.script(Behaviour(text="one two three four", disconnect_after=2))
        config = _upstream(fake.base_url, retry=RetryConfig(enabled=True, initial_backoff=0.01))
        async with running_service(config) as url, httpx.AsyncClient(base_url=url) as client:
            response = await client.post(
                "/v1/chat/completions", json=_chat("hi", model="fake-model")
            )
        assert fake.statistics().requests == 2
    assert response.status_code == 200, response.text
    assert response.json()["choices"][0]["message"]["content"] == "one two three four"


async def test_a_stream_cut_mid_way_ends_whole_at_the_default_settings() -> None:
    """At retry's defaults a stream cut after two tokens is restarted: the repeated tokens
    are swallowed and the client reads the whole answer once, with no error event."""
    async with open_fake_provider(Behaviour(text="one two three four")) as fake:
        fake.script(Behaviour(text="one two three four", disconnect_after=2))
        config = _upstream(fake.base_url, retry=RetryConfig(enabled=True, initial_backoff=0.01))
        async with running_service(config) as url, httpx.AsyncClient(base_url=url) as client:
            body = _chat("hi", model="fake-model", stream=True)
            response = await client.post("/v1/chat/completions", json=body)
        assert fake.statistics().requests == 2
    assert response.status_code == 200
    assert '"error"' not in response.text
    chunks = [orjson.loads(line[6:]) for line in response.text.splitlines() if line[6:7] == "{"]
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert text == "one two three four"
    assert response.text.rstrip().endswith("data: [DONE]")


async def test_an_answer_cut_mid_way_ends_a_streaming_client_with_an_error_unless_restarted() -> (
    None
):
    """With restart_stream off the tokens already went out: no retry, an in-stream error."""
    async with open_fake_provider(Behaviour(text="one two three four")) as fake:
        fake.script(Behaviour(text="one two three four", disconnect_after=2))
        retry = RetryConfig(enabled=True, initial_backoff=0.01, restart_stream=False)
        config = _upstream(fake.base_url, retry=retry)
        async with running_service(config) as url, httpx.AsyncClient(base_url=url) as client:
            body = _chat("hi", model="fake-model", stream=True)
            response = await client.post("/v1/chat/completions", json=body)
        assert fake.statistics().requests == 1
    assert response.status_code == 200
    assert '"error"' in response.text


async def test_rate_limit_metrics_are_labelled_with_the_provider() -> None:
    """/metrics labels the rate-limit layer's counters with the provider, not a layer."""
    async with open_fake_provider() as fake:
        config = _upstream(
            fake.base_url,
            rate_limits=RateLimitsConfig(
                enabled=True, limits=(LimitConfig(scope="provider", requests_per_second=100),)
            ),
            breaker=BreakerConfig(enabled=True),
            retry=RetryConfig(enabled=True),
        )
        config = attrs.evolve(
            config, observability=ObservabilityConfig(metrics=MetricsConfig(enabled=True))
        )
        async with running_service(config) as url, httpx.AsyncClient(base_url=url) as client:
            response = await client.post("/v1/chat/completions", json=_chat("hi", "fake-model"))
            assert response.status_code == 200
            metrics = (await client.get("/metrics")).text
    assert 'trio_orchestrator_rate_limit_admitted_total{provider="fake"} 1.0' in metrics
    assert 'layer"' not in metrics  # no label value names a layer class
