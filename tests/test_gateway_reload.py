"""Reloads of ``[[providers]]`` as a whole: the balancer takes its strategy and weights, the
set of providers and the HTTP library are refused, and the models served follow."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from typing import Any, cast

import attrs
import httpx
import trio
from hypercorn.trio import serve as hypercorn_serve

from trio_orchestrator import Config, Gateway, open_gateway
from trio_orchestrator.config.service import ServiceConfig
from trio_orchestrator.service import create_app
from trio_orchestrator.service.server import hypercorn_config
from trio_orchestrator.types import GenerationParams, PromptRequest
from trio_orchestrator.workers import LoadBalancedWorker, ProviderConfig, ProvidersConfig


def two_echoes(**table: Any) -> Config:
    providers = ProvidersConfig(
        [ProviderConfig("echo", name="a", models=["m"]), ProviderConfig("echo", name="b")],
        **table,
    )
    return Config(providers=providers, service=ServiceConfig(port=0))


def balancer_of(gateway: Gateway) -> LoadBalancedWorker:
    (balancer,) = (c.part for c in gateway.components if isinstance(c.part, LoadBalancedWorker))
    return balancer


async def send(gateway: Gateway, count: int) -> list[int]:
    """Send ``count`` requests; return how many each provider took."""
    for _ in range(count):
        await gateway.pipeline.submit(PromptRequest(input="hi", params=GenerationParams("m")))
    return [w.requests for w in balancer_of(gateway).statistics().workers]


async def test_a_reloaded_strategy_and_weights_reach_the_running_balancer() -> None:
    """Round robin spreads 1:1; after a reload to ``weighted`` with weights 3:1 the next
    requests spread 3:1."""
    config = two_echoes()
    async with open_gateway(config) as gateway:
        assert await send(gateway, 4) == [2, 2]
        assert config.providers is not None
        entries = [
            attrs.evolve(p, weight=w)
            for p, w in zip(config.providers.providers, (3, 1), strict=True)
        ]
        new = attrs.evolve(config, providers=ProvidersConfig(entries, strategy="weighted"))
        report = gateway.reload(new)
        assert report.ok, report
        assert await send(gateway, 8) == [2 + 6, 2 + 2]


async def test_changing_the_http_library_or_the_providers_is_refused() -> None:
    """The HTTP library and transport, and adding or reordering providers, need a restart:
    refused, and the configuration in force keeps the old values."""
    config = two_echoes()
    async with open_gateway(config) as gateway:
        report = gateway.reload(two_echoes(http_client="httpx"))
        assert [r.split(":")[0] for r in report.refused] == ["providers.http_client"]
        assert gateway.config.providers is not None
        assert gateway.config.providers.http_client == "httpx2"
        report = gateway.reload(two_echoes(transport="httpcore"))
        assert [r.split(":")[0] for r in report.refused] == ["providers.transport"]
        assert gateway.config.providers.transport == "h11"
        assert config.providers is not None
        reordered = ProvidersConfig(tuple(reversed(config.providers.providers)))
        report = gateway.reload(attrs.evolve(config, providers=reordered))
        assert [r.split(":")[0] for r in report.refused] == ["providers.providers"]
        assert not report.applied


@asynccontextmanager
async def serving(config: Config) -> AsyncIterator[tuple[str, Any]]:
    """The service on a free loopback port; yields its URL and its application."""
    app = create_app(config)
    stop = trio.Event()
    async with trio.open_nursery() as nursery:
        run = partial(
            hypercorn_serve, cast(Any, app), hypercorn_config(config), shutdown_trigger=stop.wait
        )
        (url,) = await nursery.start(run)
        try:
            yield url, app
        finally:
            stop.set()


async def test_the_models_served_follow_a_reload_of_the_providers() -> None:
    """A model added to a provider's ``models`` is listed by ``/v1/models`` and accepted
    after a reload, without a restart."""
    one = Config(
        providers=ProvidersConfig([ProviderConfig("echo", name="a", models=["m"])]),
        service=ServiceConfig(port=0),
    )
    async with serving(one) as (url, app), httpx.AsyncClient(base_url=url) as client:
        listed = (await client.get("/v1/models")).json()["data"]
        assert [m["id"] for m in listed] == ["m"]
        body = {"model": "n", "messages": [{"role": "user", "content": "hi"}]}
        assert (await client.post("/v1/chat/completions", json=body)).status_code == 404
        entry = ProviderConfig("echo", name="a", models=["m", "n"])
        report = app.state.service.gateway.reload(
            attrs.evolve(one, providers=ProvidersConfig([entry]))
        )
        assert report.ok, report
        listed = (await client.get("/v1/models")).json()["data"]
        assert [m["id"] for m in listed] == ["m", "n"]
        assert (await client.post("/v1/chat/completions", json=body)).status_code == 200
