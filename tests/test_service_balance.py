"""Several providers without ``[routing]``: the balancer sends each model only to the
providers that list it, through the service, to upstreams that record what they received."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial

import httpx
import pytest
import trio

from trio_orchestrator.config import Config, parse_config
from trio_orchestrator.service import serve
from trio_orchestrator.testing.fake_provider import FakeProvider, open_fake_provider


def _config(alpha: FakeProvider, beta: FakeProvider, beta_models: str) -> Config:
    return parse_config(
        f"""
        [providers]
        strategy = "round_robin"

        [[providers.providers]]
        kind = "openai"
        name = "alpha"
        base_url = "{alpha.openai_base_url}"
        models = ["model-a"]
        max_connections = 16  # one connection pool: each costs an SSL context to build

        [[providers.providers]]
        kind = "anthropic"
        name = "beta"
        base_url = "{beta.base_url}"
        models = {beta_models}
        max_connections = 16

        [pipeline]
        grace_period = 1.0

        [service]
        port = 0
        """
    )


@asynccontextmanager
async def _gateway(beta_models: str) -> AsyncIterator[tuple[str, FakeProvider, FakeProvider]]:
    async with (
        open_fake_provider() as alpha,
        open_fake_provider() as beta,
        trio.open_nursery() as nursery,
    ):
        stop = trio.Event()
        server = partial(serve, _config(alpha, beta, beta_models), shutdown_trigger=stop.wait)
        url = await nursery.start(server)
        try:
            yield url, alpha, beta
        finally:
            stop.set()


def _chat(model: str) -> dict[str, object]:
    return {"model": model, "messages": [{"role": "user", "content": "Hi"}]}


async def test_each_model_goes_only_to_the_providers_listing_it() -> None:
    """Round robin over two providers never sends a model to the one that does not list it."""
    async with _gateway('["model-b"]') as (url, alpha, beta), httpx.AsyncClient() as client:
        for model in ["model-a"] * 3 + ["model-b"] * 3 + ["model-a", "model-b"]:
            response = await client.post(url + "/v1/chat/completions", json=_chat(model))
            assert response.status_code == 200
    assert [r.body["model"] for r in alpha.requests] == ["model-a"] * 4
    assert [r.body["model"] for r in beta.requests] == ["model-b"] * 4


async def test_a_provider_listing_no_model_serves_any() -> None:
    """A provider with no `models` takes any model; the listed one is shared in turn."""
    async with _gateway("[]") as (url, alpha, beta), httpx.AsyncClient() as client:
        for model in ("model-a", "model-a", "other", "other"):
            response = await client.post(url + "/v1/chat/completions", json=_chat(model))
            assert response.status_code == 200
    assert [r.body["model"] for r in alpha.requests] == ["model-a"]
    assert [r.body["model"] for r in beta.requests] == ["model-a", "other", "other"]


@pytest.mark.parametrize("stream", [False, True])
async def test_a_model_nobody_serves_is_a_404_at_once(stream: bool) -> None:
    """A model no provider lists is 404 model_not_found, and no upstream is called."""
    async with _gateway('["model-b"]') as (url, alpha, beta), httpx.AsyncClient() as client:
        body = _chat("model-z") | {"stream": stream}
        response = await client.post(url + "/v1/chat/completions", json=body)
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "model_not_found"
    assert alpha.requests == beta.requests == []
