"""``GET /v1/models`` through the served gateway when upstreams list their own models (local
servers naming no ``models``): they are asked at once, each for at most
``service.model_list_timeout``; a hung one adds no names and never holds the answer up; a
complete answer is reused for ``service.model_list_ttl`` (on Trio's mock clock)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

import httpx
import pytest
import trio
import trio.testing
from service_helpers import running_service

from trio_orchestrator.config import Config
from trio_orchestrator.config.service import ServiceConfig
from trio_orchestrator.testing.fake_provider import FakeProvider, open_fake_provider
from trio_orchestrator.workers import ProviderConfig, ProvidersConfig


@asynccontextmanager
async def hung_server() -> AsyncIterator[str]:
    """An HTTP server that accepts connections and never answers; yields its API root."""

    async def hang(stream: trio.SocketStream) -> None:
        await trio.sleep_forever()

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(partial(trio.serve_tcp, hang, 0, host="127.0.0.1"))
        port = listeners[0].socket.getsockname()[1]
        yield f"http://127.0.0.1:{port}/v1"
        nursery.cancel_scope.cancel()


def _config(fake: FakeProvider, hung: list[str], **service: Any) -> Config:
    """A local vLLM at the fake (it lists ``local-a``), llama.cpp and Ollama servers at
    ``hung``, and a provider that names its model."""
    providers = [
        ProviderConfig("vllm", "vllm", fake.openai_base_url),
        *(ProviderConfig("llamacpp", "llamacpp", url) for url in hung[:1]),
        *(ProviderConfig("ollama", "ollama", url) for url in hung[1:]),
        ProviderConfig("openai", "named", fake.openai_base_url, models=["configured"]),
    ]
    return Config(providers=ProvidersConfig(providers), service=ServiceConfig(port=0, **service))


async def _listed(client: httpx.AsyncClient) -> list[str]:
    response = await client.get("/v1/models")
    response.raise_for_status()
    return [m["id"] for m in response.json()["data"]]


def _asked(fake: FakeProvider) -> int:
    return sum(r.path == "/v1/models" for r in fake.requests)


async def test_hung_local_servers_do_not_hold_up_the_list(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Two hung local servers cost one model_list_timeout together, not their first-token
    limit (60 s) each: the list has the answering server's and the configured names."""
    async with (
        open_fake_provider(models=("local-a",)) as fake,
        hung_server() as one,
        hung_server() as two,
    ):
        config = _config(fake, [one, two], model_list_timeout=2.0)
        async with (
            running_service(config) as url,
            httpx.AsyncClient(base_url=url, timeout=None) as client,
        ):
            with trio.fail_after(3):  # both asked at once: 2 s, where one after another is 4
                assert await _listed(client) == ["local-a", "configured"]


async def test_a_complete_list_is_reused_until_its_ttl(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Every local server answered: the next calls within model_list_ttl reuse the list,
    and the first after it asks again."""
    async with open_fake_provider(models=("local-a",)) as fake:
        config = _config(fake, [], model_list_ttl=30.0)
        async with (
            running_service(config) as url,
            httpx.AsyncClient(base_url=url, timeout=None) as client,
        ):
            assert await _listed(client) == ["local-a", "configured"]
            await trio.sleep(29)
            assert await _listed(client) == ["local-a", "configured"]
            assert _asked(fake) == 1
            await trio.sleep(2)
            assert await _listed(client) == ["local-a", "configured"]
            assert _asked(fake) == 2


async def test_a_list_missing_a_hung_server_is_not_reused(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """An answer a server was late for is not cached: the next call asks again."""
    async with open_fake_provider(models=("local-a",)) as fake, hung_server() as hung:
        config = _config(fake, [hung], model_list_timeout=1.0)
        async with (
            running_service(config) as url,
            httpx.AsyncClient(base_url=url, timeout=None) as client,
        ):
            await _listed(client)
            await _listed(client)
            assert _asked(fake) == 2


def test_the_listing_settings_refuse_nonsense() -> None:
    """model_list_timeout must be a finite positive number; model_list_ttl may be 0."""
    assert ServiceConfig(model_list_ttl=0).model_list_ttl == 0
    with pytest.raises(ValueError, match="model_list_timeout"):
        ServiceConfig(model_list_timeout=float("inf"))
    with pytest.raises(ValueError, match="model_list_ttl"):
        ServiceConfig(model_list_ttl=-1)
