"""Through the running service (real HTTP): /readyz says what the gateway's parts say
(issue 15, item 4), and a reload of the service's gateway changes what clients see."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import trio
from service_helpers import make_config, running_app

from trio_orchestrator.config import Config, parse_config
from trio_orchestrator.testing import FakeBehaviour, open_fake_provider

CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
# Real time: the service runs over real sockets; a cool-down this short keeps the test fast.
COOLDOWN = 0.3


def provider(name: str, url: str, keys: str = "") -> str:
    """One ``[[providers.providers]]`` entry of kind openai."""
    text = f'[[providers.providers]]\nkind = "openai"\nname = "{name}"\nbase_url = "{url}"\n'
    return text + (f"api_keys = [{keys}]\n" if keys else "")


BREAKER = f"""
[service]
port = 0
[resilience.breaker]
enabled = true
failure_threshold = 1
cooldown = {COOLDOWN}
jitter = 0.0
"""

ROUTES = """
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
"""


@asynccontextmanager
async def serving(config: Config) -> AsyncIterator[tuple[httpx.AsyncClient, Any]]:
    """The service for ``config``; an HTTP client on it, and the application."""
    async with running_app(config) as (url, app), httpx.AsyncClient(base_url=url) as client:
        yield client, app


async def ready(client: httpx.AsyncClient) -> tuple[int, list[str]]:
    """/readyz's status code and reasons."""
    response = await client.get("/readyz")
    reasons: list[str] = response.json().get("reasons", [])
    return response.status_code, reasons


async def test_a_serving_service_is_ready() -> None:
    """/readyz is 200 with no reasons while the gateway can take requests."""
    async with open_fake_provider(FakeBehaviour(text="ok")) as fake:
        config = parse_config(BREAKER + provider("up", fake.openai_base_url))
        async with serving(config) as (client, _):
            assert (await client.post("/v1/chat/completions", json=CHAT)).status_code == 200
            assert await ready(client) == (200, [])


async def test_a_draining_service_is_not_ready_and_says_so() -> None:
    """Once the service drains, /readyz is 503 with status draining and the reason."""
    async with serving(make_config()) as (client, app):
        app.state.service.draining = True  # what the shutdown trigger sets
        response = await client.get("/readyz")
    assert response.status_code == 503
    assert response.json()["status"] == "draining"
    assert response.json()["reasons"] == ["the service is draining"]


async def test_not_ready_while_its_only_providers_breakers_are_open() -> None:
    """A provider's failures open its breaker: /readyz is 503 naming it; after the
    cool-down the breaker admits a probe and /readyz is 200 again."""
    async with open_fake_provider(FakeBehaviour(text="ok")) as fake:
        config = parse_config(BREAKER + provider("up", fake.openai_base_url))
        async with serving(config) as (client, _):
            fake.script(FakeBehaviour(status=500))
            assert (await client.post("/v1/chat/completions", json=CHAT)).status_code >= 500
            assert await ready(client) == (503, ["every circuit breaker of up is open"])
            await _until_ready(client)


async def test_one_broken_provider_of_two_leaves_the_service_ready() -> None:
    """Under routing, one provider's breaker open is not enough to be unready; both open
    is, with both reasons; once a cool-down ends the service is ready again."""
    async with open_fake_provider(FakeBehaviour(text="ok")) as fake:
        url = fake.openai_base_url
        config = parse_config(BREAKER + provider("a", url) + provider("b", url) + ROUTES)
        async with serving(config) as (client, _):
            fake.script(FakeBehaviour(status=500))  # a fails, the router falls back to b
            assert (await client.post("/v1/chat/completions", json=CHAT)).status_code == 200
            assert await ready(client) == (200, [])
            fake.script(FakeBehaviour(status=500))  # a is skipped (open); b fails now
            assert (await client.post("/v1/chat/completions", json=CHAT)).status_code >= 500
            assert await ready(client) == (
                503,
                ["every circuit breaker of a is open", "every circuit breaker of b is open"],
            )
            await _until_ready(client)


async def test_not_ready_while_every_key_rests() -> None:
    """A 429 with Retry-After for the provider's only model rests its only key for it:
    /readyz is 503 naming the provider and the key."""
    async with open_fake_provider(FakeBehaviour(text="ok")) as fake:
        entry = provider("up", fake.openai_base_url, '"sk-1"') + 'models = ["m"]\n'
        async with serving(parse_config("[service]\nport = 0\n" + entry)) as (client, _):
            fake.script(FakeBehaviour(status=429, retry_after=600))
            assert (await client.post("/v1/chat/completions", json=CHAT)).status_code == 429
            status, (reason,) = await ready(client)
            assert status == 503
            assert reason.startswith("every API key of up is resting or disabled: sha256:")
            assert "resting after a 429 for every model (m)" in reason


async def _until_ready(client: httpx.AsyncClient) -> None:
    """Poll /readyz until 200 (a breaker's cool-down passes on the real clock)."""
    with trio.fail_after(10 * COOLDOWN + 5):
        while True:
            if (await ready(client))[0] == 200:
                return
            await trio.sleep(COOLDOWN / 3)


# ------------------------------------------------------------------ reload


KEYS = '[service]\nport = 0\napi_keys = [{{ name = "app", key = "{key}" }}]\n'


async def test_reloading_the_services_gateway_rotates_its_api_keys(tmp_path: Path) -> None:
    """``gateway.reload_from_file`` on the running service's gateway (no SIGHUP): the old
    key gets 401 at once, the new one 200."""
    path = tmp_path / "rotated.toml"
    path.write_text(KEYS.format(key="k-new"))
    async with serving(parse_config(KEYS.format(key="k-old"))) as (client, app):
        body = {**CHAT, "model": "echo"}
        old = {"Authorization": "Bearer k-old"}
        new = {"Authorization": "Bearer k-new"}
        url = "/v1/chat/completions"
        assert (await client.post(url, json=body, headers=old)).status_code == 200
        assert (await client.post(url, json=body, headers=new)).status_code == 401
        report = await app.state.service.gateway.reload_from_file(path)
        assert [c.path for c in report.applied] == ["service.api_keys"]
        assert report.refused == ()
        assert (await client.post(url, json=body, headers=old)).status_code == 401
        assert (await client.post(url, json=body, headers=new)).status_code == 200
