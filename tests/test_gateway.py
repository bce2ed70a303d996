"""The whole gateway from a TOML configuration: providers, routing, breakers and metrics,
served by the real service in front of fake providers over real HTTP."""

from __future__ import annotations

import json

import httpx
import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families
from service_helpers import open_raw_post, running_service

from trio_orchestrator.config import Config, parse_config
from trio_orchestrator.gateway import open_gateway
from trio_orchestrator.testing import FakeBehaviour, open_fake_provider


def config(text: str) -> Config:
    """The configuration in ``text``, serving on a free loopback port."""
    return parse_config("[service]\nport = 0\n" + text)


def chat(model: str = "m", *, stream: bool = False) -> dict[str, object]:
    """An OpenAI chat completion request body."""
    return {"model": model, "messages": [{"role": "user", "content": "hi"}], "stream": stream}


def provider(name: str, url: str) -> str:
    """A TOML table declaring an OpenAI-compatible provider at ``url``."""
    return f"""
[[providers.providers]]
kind = "openai"
name = "{name}"
base_url = "{url}"
api_keys = ["sk-{name}"]
"""


async def test_the_service_answers_from_the_configured_provider() -> None:
    """With [providers] pointing at an OpenAI-compatible server, the answer comes from it."""
    async with open_fake_provider(FakeBehaviour(text="from upstream")) as fake:
        settings = config(provider("up", fake.openai_base_url))
        async with running_service(settings) as url, httpx.AsyncClient(base_url=url) as client:
            response = await client.post("/v1/chat/completions", json=chat("gpt-x"))
        assert response.status_code == 200, response.text
        assert response.json()["choices"][0]["message"]["content"] == "from upstream"
        (seen,) = fake.requests
        assert seen.headers["authorization"] == "Bearer sk-up"


async def test_a_client_leaving_mid_stream_closes_the_upstream_connection() -> None:
    """A streaming client that disconnects makes the gateway close its upstream connection:
    the fake provider sees the client side close before its answer was complete."""
    slow = FakeBehaviour(tokens=200, token_delay=0.05)
    async with open_fake_provider(slow) as fake:
        settings = config(provider("up", fake.openai_base_url))
        async with running_service(settings) as url:
            stream = await open_raw_post(url, "/v1/chat/completions", chat(stream=True))
            received = b""
            with trio.fail_after(10):
                # The role chunk comes first; a second event is a token from upstream.
                while received.count(b"data: ") < 2:
                    received += await stream.receive_some()
            await stream.aclose()
            with trio.fail_after(10):
                await fake.wait_for_disconnects(1)
        assert fake.statistics().client_disconnects == 1


ROUTED = """
[routing]
strategy = "cost"

[[routing.deployments]]
name = "cheap"
model = "m"
provider = "a"
input_price = 1.0

[[routing.deployments]]
name = "dear"
model = "m"
provider = "b"
input_price = 2.0

[resilience.breaker]
enabled = true
failure_threshold = 2
cooldown = 60.0
"""


async def test_the_router_falls_back_and_then_skips_a_provider_whose_breaker_opened() -> None:
    """Through /v1/chat/completions: the cheap deployment fails, each request falls back to
    the dear one invisibly, and once the cheap provider's breaker opens it is not called."""
    async with (
        open_fake_provider(FakeBehaviour(status=500)) as a,
        open_fake_provider(FakeBehaviour(text="from b")) as b,
    ):
        settings = config(
            provider("a", a.openai_base_url) + provider("b", b.openai_base_url) + ROUTED
        )
        async with running_service(settings) as url, httpx.AsyncClient(base_url=url) as client:
            answers = [
                (await client.post("/v1/chat/completions", json=chat("m"))).json() for _ in range(5)
            ]
    assert [r["choices"][0]["message"]["content"] for r in answers] == ["from b"] * 5
    assert a.statistics().requests == 2  # then the breaker opened, and the router skipped it
    assert b.statistics().requests == 5


async def test_metrics_show_the_pipeline_and_the_layers_as_configured() -> None:
    """/metrics parses, counts exactly the requests served, and exports the breaker's state."""
    settings = config("[resilience.breaker]\nenabled = true\n")
    async with running_service(settings) as url, httpx.AsyncClient(base_url=url) as client:
        for _ in range(3):
            assert (await client.post("/v1/chat/completions", json=chat("echo"))).status_code == 200
        exposition = (await client.get("/metrics")).text
    samples = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(exposition)
        for sample in family.samples
    }
    completed = ("trio_orchestrator_pipeline_requests_total", (("outcome", "completed"),))
    assert samples[completed] == 3
    breaker_closed = (
        "trio_orchestrator_breaker_state",
        (("state", "closed"), ("target", "echo/echo")),
    )
    assert samples[breaker_closed] == 1


THREE = """
[routing]
strategy = "cost"
[[routing.deployments]]
name = "failing"
model = "m"
provider = "a"
input_price = 1.0
[[routing.deployments]]
name = "limited"
model = "m"
provider = "b"
input_price = 2.0
[[routing.deployments]]
name = "slow"
model = "m"
provider = "c"
input_price = 3.0
"""


async def test_a_stream_falls_back_invisibly_past_a_failing_and_a_rate_limited_provider() -> None:
    """Streaming through /v1/chat/completions: the cheapest provider fails and the next is
    rate limited, both before any token; the client sees only the slow provider's stream,
    and the rate-limited provider rests (is not asked again) for its Retry-After."""
    async with (
        open_fake_provider(FakeBehaviour(status=500)) as a,
        open_fake_provider(FakeBehaviour(status=429, retry_after=30)) as b,
        open_fake_provider(FakeBehaviour(text="slow but sure", token_delay=0.01)) as c,
    ):
        urls = provider("a", a.openai_base_url) + provider("b", b.openai_base_url)
        settings = config(urls + provider("c", c.openai_base_url) + THREE)
        async with running_service(settings) as url, httpx.AsyncClient(base_url=url) as client:
            streamed: list[str] = []
            for _ in range(2):
                body = chat("m", stream=True)
                async with client.stream("POST", "/v1/chat/completions", json=body) as reply:
                    assert reply.status_code == 200
                    async for line in reply.aiter_lines():
                        if line.startswith("data: {"):
                            delta = json.loads(line[6:])["choices"]
                            if delta and delta[0]["delta"].get("content"):
                                streamed.append(delta[0]["delta"]["content"])
    assert "".join(streamed) == "slow but sure" * 2
    assert (a.statistics().requests, b.statistics().requests) == (2, 1)
    assert c.statistics().requests == 2


async def test_the_router_skips_a_provider_whose_keys_all_rest() -> None:
    """A provider whose only API key is resting (after a 429) is skipped at decision time,
    before any call: its key pool is one of the router's health checks."""
    from trio_orchestrator import GenerationParams, PromptRequest
    from trio_orchestrator.resilience import iter_layers
    from trio_orchestrator.routing import RouterWorker
    from trio_orchestrator.workers.openai import OpenAIWorker

    urls = provider("a", "http://127.0.0.1:9/v1") + provider("b", "http://127.0.0.1:9/v1")
    settings = config(urls + ROUTED.split("[resilience.breaker]")[0])
    request = PromptRequest(input="x", params=GenerationParams(model="m"))
    async with open_gateway(settings) as gateway:
        (router,) = [c.part for c in gateway.components if isinstance(c.part, RouterWorker)]
        (cheap,) = [
            w
            for top in router.deployment_workers()
            for w in iter_layers(top)
            if isinstance(w, OpenAIWorker) and w.name == "a"
        ]
        assert cheap.keys is not None
        assert router.decide(request).chosen.name == "cheap"
        cheap.keys.rate_limited(cheap.keys.acquire(), 30.0)
        decision = router.decide(request)
    assert decision.chosen.name == "dear"
    assert "cheap" in {name for name, _ in decision.skipped}


async def test_an_error_in_the_block_reaches_the_caller_as_itself() -> None:
    """An exception raised inside ``open_gateway``'s block (routing on) comes out as itself,
    not wrapped in an exception group."""

    settings = config(
        '[routing]\n[[routing.deployments]]\nname = "e"\nmodel = "m"\nprovider = "echo"\n'
    )
    with pytest.raises(KeyError, match="inside"):
        async with open_gateway(settings):
            raise KeyError("inside")
