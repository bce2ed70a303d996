"""Through the running service (real HTTP, the fake provider upstream): one 429 or 401 does
not take a provider's keys out for long (issue 16, items 1 and 2), and /v1/stats and /readyz
show the keys' state.

The service runs over real sockets, so these tests use the real clock with rests and
cool-downs of a fraction of a second, and poll for what must happen; the clock-driven rules
(caps, probes, cool-downs doubling) are proven under ``autojump_clock`` in test_key_pool.py.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import openai
import pytest
import trio
from service_helpers import running_app

from trio_orchestrator.config import Config, parse_config
from trio_orchestrator.config.secret import Secret
from trio_orchestrator.testing import FakeBehaviour, FakeProvider, open_fake_provider

KEY = "sk-upstream-key-1"
FINGERPRINT = Secret(KEY).fingerprint()
# Rests and cool-downs this short keep the tests fast on the real clock.
SHORT = 0.2


def chat(model: str = "m") -> dict[str, Any]:
    """A non-streaming chat request for ``model``."""
    return {"model": model, "messages": [{"role": "user", "content": "hi"}]}


def settings(url: str, **keys: float) -> Config:
    """The service in front of one OpenAI-compatible provider holding one key."""
    options = "".join(f"{name} = {value}\n" for name, value in keys.items())
    return parse_config(
        f'[service]\nport = 0\n[[providers.providers]]\nkind = "openai"\nname = "up"\n'
        f'base_url = "{url}"\napi_keys = ["{KEY}"]\n{options}'
    )


@asynccontextmanager
async def serving(**keys: float) -> AsyncIterator[tuple[httpx.AsyncClient, Any, FakeProvider]]:
    """The fake provider answering "ok" and the service for ``settings(fake, **keys)`` in
    front of it; an HTTP client on the service, the app, and the fake."""
    async with open_fake_provider(FakeBehaviour(text="ok")) as fake:
        config = settings(fake.openai_base_url, **keys)
        async with running_app(config) as (url, app), httpx.AsyncClient(base_url=url) as client:
            yield client, app, fake


async def key_state(client: httpx.AsyncClient) -> dict[str, Any]:
    """The upstream key's entry in ``GET /v1/stats``."""
    stats = (await client.get("/v1/stats")).json()
    state: dict[str, Any] = stats["keys"]["up"]["keys"][FINGERPRINT]
    return state


async def served_within(client: httpx.AsyncClient, seconds: float) -> None:
    """Send the chat request until it is answered 200 (refused meanwhile: no upstream call)."""
    with trio.fail_after(seconds):
        while True:
            if (await client.post("/v1/chat/completions", json=chat())).status_code == 200:
                return
            await trio.sleep(SHORT / 4)


async def test_a_429_asking_for_an_hour_rests_the_key_only_max_key_rest() -> None:
    """Retry-After: 3600 once: the client is told the capped wait, /v1/stats shows the rest,
    and once max_key_rest has passed the next request is answered with an upstream call."""
    async with serving(max_key_rest=1.0, key_probe_interval=3600) as (client, _, fake):
        fake.script(FakeBehaviour(status=429, retry_after=3600))
        refused = await client.post("/v1/chat/completions", json=chat())
        assert refused.status_code == 429
        assert float(refused.headers["retry-after"]) <= 2
        state = await key_state(client)
        assert state["rate_limited"] == 1
        assert 0 < state["model_rests"]["m"] <= 1.1
        await served_within(client, 10)
        assert fake.statistics().requests == 2  # the 429, then the answer: none wasted
        assert (await key_state(client))["model_rests"] == {}


async def test_a_rest_for_one_model_leaves_the_providers_other_models_served() -> None:
    """A 429 for model a rests the key for a only: the official SDK's request for model b is
    answered upstream, one for a is refused without an upstream call."""
    async with serving(key_probe_interval=3600) as (client, _, fake):
        fake.set_model("a", FakeBehaviour(status=429, retry_after=3600))
        sdk = openai.AsyncOpenAI(
            base_url=str(client.base_url).rstrip("/") + "/v1", api_key="x", max_retries=0
        )
        async with sdk:
            with pytest.raises(openai.RateLimitError):
                await sdk.chat.completions.create(**chat("a"))
            answer = await sdk.chat.completions.create(**chat("b"))
            assert answer.choices[0].message.content == "ok"
            with pytest.raises(openai.RateLimitError):
                await sdk.chat.completions.create(**chat("a"))
        assert [r.body["model"] for r in fake.requests] == ["a", "b"]
        state = await key_state(client)
        assert state["state"] == "ready"
        assert set(state["model_rests"]) == {"a"}
        assert (await client.get("/readyz")).status_code == 200


async def test_a_probe_finds_a_recovered_upstream_before_the_rest_ends() -> None:
    """Every key resting (for 30 s) after a 429: a probe passes after key_probe_interval and
    its answer ends the rest."""
    async with serving(key_probe_interval=SHORT) as (client, _, fake):
        fake.script(FakeBehaviour(status=429, retry_after=3600))
        assert (await client.post("/v1/chat/completions", json=chat())).status_code == 429
        await served_within(client, 10)  # well before the 30 s rest ends
        state = await key_state(client)
        assert state["probes"] == 1
        assert state["model_rests"] == {}
        assert fake.statistics().requests == 2


async def test_a_rejected_key_is_probed_after_its_cooldown_and_works_again() -> None:
    """A 401 disables the only key (the client gets a 502: the gateway's key is at fault;
    /readyz is 503 naming it, /v1/stats says "disabled"); after
    rejected_key_cooldown one probe goes upstream, is answered, and the key is back."""
    async with serving(rejected_key_cooldown=SHORT) as (client, _, fake):
        fake.script(FakeBehaviour(status=401))
        assert (await client.post("/v1/chat/completions", json=chat())).status_code == 502
        ready = await client.get("/readyz")
        assert ready.status_code == 503
        assert "disabled after a 401" in ready.json()["reasons"][0]
        assert (await key_state(client))["state"] == "disabled"
        await served_within(client, 10)
        state = await key_state(client)
        assert (state["state"], state["probes"], state["rejected"]) == ("ready", 1, 1)
        assert fake.statistics().requests == 2
        assert (await client.get("/readyz")).status_code == 200


async def test_a_reload_brings_a_rejected_key_back() -> None:
    """A 401 disables the key for an hour; reloading the same configuration (what SIGHUP
    does) enables it: the next request is answered upstream."""
    async with serving(rejected_key_cooldown=3600) as (client, app, fake):
        fake.script(FakeBehaviour(status=401))
        assert (await client.post("/v1/chat/completions", json=chat())).status_code == 502
        assert (await client.post("/v1/chat/completions", json=chat())).status_code == 502
        assert fake.statistics().requests == 1  # the second was refused locally
        gateway = app.state.service.gateway
        gateway.reload(gateway.config)
        assert (await client.post("/v1/chat/completions", json=chat())).status_code == 200
        assert (await key_state(client))["state"] == "ready"
        assert (await client.get("/readyz")).status_code == 200
