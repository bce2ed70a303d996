"""``/v1/embeddings`` through the served gateway with the official ``openai`` SDK: members
reach an OpenAI-compatible upstream, vectors come back in the encoding asked for, an
Anthropic upstream refuses with a 400, and the request goes through the pipeline's layers
(rate limits, statistics, metrics, routing and fallbacks) like a chat."""

from __future__ import annotations

import array
import base64
import hashlib
import sys
from collections.abc import Iterator
from typing import Any

import attrs
import httpx
import openai
import pytest

from trio_orchestrator.config import Config
from trio_orchestrator.config.service import ServiceConfig
from trio_orchestrator.resilience import BreakerConfig, ResilienceConfig
from trio_orchestrator.resilience.config import LimitConfig, RateLimitsConfig
from trio_orchestrator.routing import ModelDeployment, RoutingConfig
from trio_orchestrator.testing.fake_provider import Behaviour, FakeProvider
from trio_orchestrator.workers import ProviderConfig, ProvidersConfig

from .conftest import UPSTREAM_KEY, ConfigFactory, Gateway, single_provider, start_gateway

MODEL = "text-embedding-3-small"


@pytest.fixture(scope="module")
def upstream_kind() -> str:
    """The embeddings wire format is OpenAI's: this module's shared gateway speaks it."""
    return "openai"


def fake_vector(text: str, size: int = 8) -> list[float]:
    """The vector the fake upstream gives ``text`` (from its SHA-256)."""
    return [b / 255 for b in hashlib.sha256(text.encode()).digest()[:size]]


def float32(values: list[float]) -> list[float]:
    """``values`` rounded to float32, as a base64 answer carries them."""
    return array.array("f", values).tolist()


def decode(text: str) -> list[float]:
    """A base64 vector (little-endian float32) as floats."""
    values = array.array("f", base64.b64decode(text))
    if sys.byteorder == "big":
        values.byteswap()
    return values.tolist()


@pytest.fixture
def gateway_for() -> Iterator[Any]:
    """Starts a gateway of its own for a test (with its own configuration); stops it after."""
    running: list[Any] = []

    def start(kind: str, make_config: ConfigFactory) -> Gateway:
        running.append(start_gateway(kind, make_config))
        gateway: Gateway = running[-1].gateway
        return gateway

    yield start
    for started in running:
        started.stop()


# ----------------------------------------------------------------- the wire format


def test_every_member_reaches_an_openai_upstream(gw: Gateway) -> None:
    """model, input, encoding_format, dimensions, user and unknown members arrive as sent."""
    answer = gw.openai().embeddings.create(
        model=MODEL,
        input=["hello", "world"],
        encoding_format="float",
        dimensions=4,
        user="user-1",
        extra_body={"truncate": "END"},
    )
    body = gw.last().body
    assert gw.last().path == "/v1/embeddings"
    assert body == {
        "model": MODEL,
        "input": ["hello", "world"],
        "encoding_format": "float",
        "dimensions": 4,
        "user": "user-1",
        "truncate": "END",
    }
    assert UPSTREAM_KEY in gw.last().headers["authorization"]
    assert [d.embedding for d in answer.data] == [fake_vector("hello", 4), fake_vector("world", 4)]
    assert [d.index for d in answer.data] == [0, 1]
    assert (answer.object, answer.model) == ("list", MODEL)
    assert (answer.usage.prompt_tokens, answer.usage.total_tokens) == (2, 2)


def test_the_sdk_default_base64_is_forwarded_and_decoded(gw: Gateway) -> None:
    """The SDK asks for base64 by default and decodes it: it gets the upstream's float32s."""
    answer = gw.openai().embeddings.create(model=MODEL, input="hello")
    assert gw.last().body["encoding_format"] == "base64"
    assert answer.data[0].embedding == float32(fake_vector("hello"))


def test_base64_asked_explicitly_is_float32_little_endian(gw: Gateway) -> None:
    """encoding_format="base64" answers base64 text, the vector's little-endian float32s."""
    answer = gw.openai().embeddings.create(model=MODEL, input=["a"], encoding_format="base64")
    text: Any = answer.data[0].embedding
    assert isinstance(text, str)
    assert decode(text) == float32(fake_vector("a"))


def test_a_float_answer_from_the_upstream_is_given_back_as_base64(gw: Gateway) -> None:
    """An upstream that answers floats to a base64 request still gives the client base64."""
    recorded = {
        "object": "list",
        "data": [{"object": "embedding", "index": 0, "embedding": [0.5, -0.25, 1e-3]}],
        "model": MODEL,
        "usage": {"prompt_tokens": 3, "total_tokens": 3},
    }
    gw.script(Behaviour(body=recorded))
    answer = gw.openai().embeddings.create(model=MODEL, input="x", encoding_format="base64")
    assert decode(str(answer.data[0].embedding)) == float32([0.5, -0.25, 1e-3])


def test_token_arrays_are_forwarded(gw: Gateway) -> None:
    """An array of token ids, and an array of token arrays, reach the upstream as arrays."""
    client = gw.openai()
    client.embeddings.create(model=MODEL, input=[[1, 2, 3], [4]], encoding_format="float")
    assert gw.last().body["input"] == [[1, 2, 3], [4]]
    answer = client.embeddings.create(model=MODEL, input=[5, 6], encoding_format="float")
    assert gw.last().body["input"] == [[5, 6]]
    assert len(answer.data) == 1


def test_a_recorded_answer_keeps_its_usage_order_and_extra_members(gw: Gateway) -> None:
    """Vectors come back in input order whatever order the upstream sent them in, with the
    upstream's usage and its members the gateway does not read."""
    recorded = {
        "object": "list",
        "id": "emb-123",
        "data": [
            {"object": "embedding", "index": 1, "embedding": [0.0, 1.0]},
            {"object": "embedding", "index": 0, "embedding": [1.0, 0.0]},
        ],
        "model": "text-embedding-3-small-2024",
        "usage": {"prompt_tokens": 7, "total_tokens": 7},
    }
    gw.script(Behaviour(body=recorded))
    response = gw.openai().embeddings.with_raw_response.create(
        model=MODEL, input=["p", "q"], encoding_format="float"
    )
    body = response.http_response.json()
    assert [d["embedding"] for d in body["data"]] == [[1.0, 0.0], [0.0, 1.0]]
    assert body["usage"] == {"prompt_tokens": 7, "total_tokens": 7}
    assert (body["model"], body["id"]) == ("text-embedding-3-small-2024", "emb-123")
    assert response.parse().data[1].embedding == [0.0, 1.0]


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": MODEL, "input": ""}, "input"),
        ({"model": MODEL, "input": []}, "input"),
        ({"model": MODEL, "input": ["a", 1]}, "input"),
        ({"model": MODEL, "input": [[1], []]}, "input[1]"),
        ({"model": MODEL, "input": "a", "encoding_format": "int8"}, "encoding_format"),
        ({"model": MODEL, "input": "a", "dimensions": 0}, "dimensions"),
    ],
)
def test_a_malformed_request_is_a_400_naming_the_member(
    gw: Gateway, body: dict[str, Any], param: str
) -> None:
    """A bad input or member is refused at the door with a 400 naming it; nothing is sent."""
    with pytest.raises(openai.BadRequestError) as caught:
        gw.openai().post("/embeddings", body=body, cast_to=httpx.Response)
    assert caught.value.body["param"] == param  # type: ignore[index]
    assert gw.received() == []


def test_an_upstream_error_keeps_its_status(gw: Gateway) -> None:
    """An upstream 503 reaches the SDK as a 503 (an InternalServerError), not a 200 or 500."""
    gw.script(Behaviour(status=503))
    with pytest.raises(openai.InternalServerError) as caught:
        gw.openai().embeddings.create(model=MODEL, input="x")
    assert caught.value.status_code >= 500  # the gateway says 502: the upstream failed


# ----------------------------------------------------------------- the pipeline


def test_embeddings_are_counted_in_stats_and_metrics(gw: Gateway) -> None:
    """Each embeddings request is a pipeline request: submitted and completed (or failed)."""
    stats = httpx.get(gw.url + "/v1/stats").json()["pipeline"]
    gw.openai().embeddings.create(model="counted-model", input="x")
    gw.script(Behaviour(status=400))
    with pytest.raises(openai.BadRequestError):
        gw.openai().embeddings.create(model="counted-model", input="x")
    after = httpx.get(gw.url + "/v1/stats").json()["pipeline"]
    assert after["submitted"] - stats["submitted"] == 2
    assert after["completed"] - stats["completed"] == 1
    assert after["failed"] - stats["failed"] == 1
    metrics = httpx.get(gw.url + "/metrics").text
    lines = [line for line in metrics.splitlines() if 'model="counted-model"' in line]
    assert any("requests_total" in line and 'outcome="completed"' in line for line in lines)


def rate_limited(fake: FakeProvider) -> Config:
    """One OpenAI-compatible provider; one embeddings request a minute for MODEL."""
    limit = LimitConfig("model", requests_per_minute=1, mode="reject", match=MODEL)
    limits = RateLimitsConfig(enabled=True, limits=[limit])
    resilience = ResilienceConfig(rate_limits=limits)
    return attrs.evolve(single_provider("openai", max_connections=16)(fake), resilience=resilience)


def test_rate_limits_apply_to_embeddings(gateway_for: Any) -> None:
    """With [resilience.rate_limits] on, a second embeddings request in the minute is a 429."""
    gw: Gateway = gateway_for("openai", rate_limited)
    client = gw.openai()
    client.embeddings.create(model=MODEL, input="first")
    with pytest.raises(openai.RateLimitError) as caught:
        client.embeddings.create(model=MODEL, input="second")
    assert caught.value.response.headers.get("retry-after") is not None
    assert len(gw.received()) == 1


def anthropic_with_breaker(fake: FakeProvider) -> Config:
    """One Anthropic provider behind a circuit breaker that opens on the first failure."""
    breaker = BreakerConfig(enabled=True, failure_threshold=1)
    config = single_provider("anthropic", max_connections=16)(fake)
    return attrs.evolve(config, resilience=ResilienceConfig(breaker=breaker))


def test_an_anthropic_upstream_refuses_with_a_400_that_trips_no_breaker(gateway_for: Any) -> None:
    """Anthropic has no embeddings: a 400 naming the model, nothing sent upstream, and the
    provider's breaker stays closed (a chat still goes through)."""
    gw: Gateway = gateway_for("anthropic", anthropic_with_breaker)
    client = gw.openai()
    for _ in range(3):
        with pytest.raises(openai.BadRequestError) as caught:
            client.embeddings.create(model="claude-embed", input="x")
        assert "claude-embed" in caught.value.message
    assert gw.received() == []
    gw.script(Behaviour(text="still here"))
    chat = client.chat.completions.create(
        model="claude-x", messages=[{"role": "user", "content": "hi"}]
    )
    assert chat.choices[0].message.content == "still here"


# ----------------------------------------------------------------- routing


def routed(fake: FakeProvider) -> Config:
    """Routing over a chat provider, which does not serve MODEL, and two providers of MODEL
    (deployments with the embeddings capability), each provider with its own key, all in
    front of the same fake upstream."""
    url = fake.openai_base_url
    # One connection pool each (max_connections 16): every pool builds its own TLS
    # context, which makes a provider slow to start on a busy machine.
    chat = ProviderConfig(
        "openai", "chat", url, api_keys=["sk-chat"], models=["chat-model"], max_connections=16
    )
    embed = [
        ProviderConfig(
            "openai", name, url, api_keys=[f"sk-{name}"], models=[MODEL], max_connections=16
        )
        for name in ("emb0", "emb1")
    ]
    deployments = [ModelDeployment("chat@chat", "chat-model", "chat")] + [
        ModelDeployment(f"{MODEL}@{p.name}", MODEL, p.name, capabilities=["embeddings"])
        for p in embed
    ]
    return Config(
        providers=ProvidersConfig([chat, *embed]),
        routing=RoutingConfig(deployments=deployments),
        service=ServiceConfig(port=0),
    )


@pytest.fixture(scope="module")
def router_gateway() -> Iterator[Gateway]:
    """The gateway routing over :func:`routed`'s providers."""
    running = start_gateway("openai", routed)
    try:
        yield running.gateway
    finally:
        running.stop()


@pytest.fixture
def rgw(router_gateway: Gateway) -> Gateway:
    """The routing gateway, its upstream's record cleared for this test."""
    router_gateway.clear()
    return router_gateway


def test_the_router_sends_embeddings_only_to_providers_of_the_model(rgw: Gateway) -> None:
    """Embeddings of MODEL go to its providers, never to the chat provider; a chat model
    without the embeddings capability is a 400 naming it, and nothing is sent."""
    client = rgw.openai()
    for text in ("a", "b", "c", "d"):
        client.embeddings.create(model=MODEL, input=text)
    keys = {r.headers["authorization"] for r in rgw.received()}
    assert keys <= {"Bearer sk-emb0", "Bearer sk-emb1"}
    assert len(rgw.received()) == 4
    rgw.clear()
    with pytest.raises(openai.BadRequestError) as caught:
        client.embeddings.create(model="chat-model", input="x")
    assert "embeddings" in caught.value.message
    assert "chat-model" in caught.value.message
    assert rgw.received() == []


def test_the_router_falls_back_to_another_provider_of_the_model(rgw: Gateway) -> None:
    """When the chosen provider fails with a 503, the other provider of the model answers."""
    rgw.script(Behaviour(status=503))
    answer = rgw.openai().embeddings.create(model=MODEL, input="x", encoding_format="float")
    assert answer.data[0].embedding == fake_vector("x")
    keys = {r.headers["authorization"] for r in rgw.received()}
    assert keys == {"Bearer sk-emb0", "Bearer sk-emb1"}
