"""The model catalogue through the served gateway: ``/v1/models`` with its facts, read by the
official ``openai`` SDK; the ``cost`` metric and the router pricing and sizing catalogued
models that the configuration gives no facts for; a local server's own model list.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from trio_orchestrator.catalogue import CatalogueConfig, ModelFacts
from trio_orchestrator.config import Config
from trio_orchestrator.config.service import ServiceConfig
from trio_orchestrator.routing import BudgetConfig, ModelDeployment, RoutingConfig
from trio_orchestrator.testing.fake_provider import Behaviour, FakeProvider
from trio_orchestrator.workers import ProviderConfig, ProvidersConfig

from .conftest import UPSTREAM_KEY, Gateway, start_gateway

FIXTURES = Path(__file__).parent / "fixtures"
LOCAL = ModelFacts(context_window=8192, capabilities=["tools"], input_price=0.0)


def _config(fake: FakeProvider, **extra: Any) -> Config:
    """One OpenAI-compatible provider at the fake (asked for JSON answers)."""
    provider: dict[str, Any] = {"stream": False, "api_keys": [UPSTREAM_KEY]}
    provider.update(extra.pop("provider", {}))
    upstream = ProviderConfig("openai", "up", fake.openai_base_url, **provider)
    return Config(providers=ProvidersConfig([upstream]), service=ServiceConfig(port=0), **extra)


def _running(make: Any) -> Iterator[Gateway]:
    running = start_gateway("openai", make)
    try:
        yield running.gateway
    finally:
        running.stop()


@pytest.fixture(scope="module")
def listed() -> Iterator[Gateway]:
    """A provider serving gpt-4o-mini and a local model the configuration describes."""
    catalogue = CatalogueConfig(models={"my-local": LOCAL})
    yield from _running(
        lambda fake: _config(
            fake, provider={"models": ["gpt-4o-mini", "my-local"]}, catalogue=catalogue
        )
    )


@pytest.fixture(scope="module")
def local_server() -> Iterator[Gateway]:
    """A provider naming no models, at a server that is not OpenAI's (it lists its own)."""
    yield from _running(_config)


@pytest.fixture(scope="module")
def routed() -> Iterator[Gateway]:
    """The router over two catalogued deployments whose prices and limits are not configured."""
    deployments = [
        ModelDeployment("a-big", "chat", "up", upstream_model="gpt-4o"),
        ModelDeployment("b-mini", "chat", "up", upstream_model="gpt-4o-mini"),
        ModelDeployment("mini", "gpt-4o-mini", "up"),
    ]
    routing = RoutingConfig(deployments, strategy="cost", max_attempts=1)
    yield from _running(lambda fake: _config(fake, routing=routing))


@pytest.fixture(scope="module")
def budgeted() -> Iterator[Gateway]:
    """The router with spending limits on two catalogued models whose prices are not
    configured."""
    deployments = [
        ModelDeployment("big", "gpt-4o", "up"),
        ModelDeployment("mini", "gpt-4o-mini", "up"),
    ]
    budgets = BudgetConfig(per_model={"gpt-4o": 0.0001, "gpt-4o-mini": 0.0004})
    routing = RoutingConfig(deployments, budgets=budgets, max_attempts=1)
    yield from _running(lambda fake: _config(fake, routing=routing))


def test_models_list_carries_the_catalogue_facts(listed: Gateway) -> None:
    """models.list() gives each served model its catalogue facts; config entries extend it."""
    page = listed.openai().models.list()
    by_id = {m.id: m.model_dump() for m in page.data}
    assert set(by_id) == {"gpt-4o-mini", "my-local"}
    mini = by_id["gpt-4o-mini"]
    assert mini["owned_by"] == "openai"
    assert (mini["context_window"], mini["max_output_tokens"]) == (128000, 16384)
    assert set(mini["capabilities"]) >= {"tools", "vision", "json_schema"}
    assert mini["pricing"] == {
        "input_per_million": 0.15,
        "cached_input_per_million": 0.075,
        "output_per_million": 0.6,
        "currency": "USD",
    }
    local = by_id["my-local"]
    assert (local["context_window"], local["capabilities"]) == (8192, ["tools"])
    assert local["pricing"] == {"input_per_million": 0.0, "currency": "USD"}
    assert "max_output_tokens" not in local


def test_models_retrieve_carries_the_facts_and_404s_an_unknown_model(listed: Gateway) -> None:
    """models.retrieve() of a served model has its facts; of another, the SDK's NotFoundError."""
    client = listed.openai()
    model = client.models.retrieve("gpt-4o-mini").model_dump()
    assert model["context_window"] == 128000
    assert model["pricing"]["output_per_million"] == 0.6
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("gpt-4o")


def test_a_local_server_lists_its_own_models(local_server: Gateway) -> None:
    """With no models configured, /v1/models is the local upstream's own list (asked once:
    the retrieve after it reuses the list)."""
    client = local_server.openai()
    assert [m.id for m in client.models.list().data] == ["fake-model"]
    assert client.models.retrieve("fake-model").id == "fake-model"
    assert [r.path for r in local_server.received()] == ["/v1/models"]


def test_cost_metric_prices_a_catalogued_model_with_no_prices_configured(listed: Gateway) -> None:
    """The cost counter counts gpt-4o-mini's spend from the catalogue, cached tokens at the
    cached-input price."""
    answer = json.loads((FIXTURES / "openai_chat_search_cached.json").read_text())
    listed.script(Behaviour(body=answer))
    listed.openai().chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "Hello!"}]
    )
    # usage: 2006 prompt tokens of which 1920 cached, 300 completion tokens.
    expected = (86 * 0.15 + 1920 * 0.075 + 300 * 0.6) / 1e6
    assert _cost(listed, "gpt-4o-mini") == pytest.approx(expected)


def test_router_cost_strategy_reads_the_catalogue_prices(routed: Gateway) -> None:
    """The cost strategy picks gpt-4o-mini over gpt-4o by their catalogue prices."""
    routed.openai().chat.completions.create(
        model="chat", messages=[{"role": "user", "content": "Hello!"}]
    )
    assert routed.last().body["model"] == "gpt-4o-mini"


def test_router_precheck_reads_the_catalogue_context_window(routed: Gateway) -> None:
    """A ~10k-token prompt reaches gpt-4o-mini (128k window), not refused as over 8192."""
    prompt = "word " * 10_000
    routed.openai().chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": prompt}], max_tokens=16
    )
    assert routed.last().body["model"] == "gpt-4o-mini"


def test_router_models_carry_the_deployment_facts(routed: Gateway) -> None:
    """A routed public name lists its first deployment's catalogue facts."""
    model = routed.openai().models.retrieve("chat").model_dump()
    assert model["context_window"] == 128000
    assert model["pricing"]["input_per_million"] == 2.5


def test_budget_refuses_a_call_the_catalogue_prices_over_the_limit(budgeted: Gateway) -> None:
    """gpt-4o's catalogue prices make 1000 output tokens cost more than its $0.0001 budget."""
    with pytest.raises(openai.RateLimitError):
        budgeted.openai().chat.completions.create(
            model="gpt-4o", messages=[{"role": "user", "content": "Hi"}], max_tokens=1000
        )
    assert budgeted.received() == []


def test_budget_spend_counts_cached_tokens_at_the_cached_price(budgeted: Gateway) -> None:
    """Spend is the catalogue price with cached input tokens at the cached-input price: a
    $0.000337 call leaves room under $0.0004 for a small call, not for a bigger one."""
    answer = json.loads((FIXTURES / "openai_chat_search_cached.json").read_text())
    budgeted.script(Behaviour(body=answer))
    client = budgeted.openai()
    hello: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Hi"}]
    client.chat.completions.create(model="gpt-4o-mini", messages=hello, max_tokens=16)
    # At the full input price the first call would have spent $0.000481 > $0.0004.
    client.chat.completions.create(model="gpt-4o-mini", messages=hello, max_tokens=16)
    with pytest.raises(openai.RateLimitError):
        client.chat.completions.create(model="gpt-4o-mini", messages=hello, max_tokens=200)


def _cost(gateway: Gateway, model: str) -> float:
    text = httpx.get(gateway.url + "/metrics").text
    for line in text.splitlines():
        if line.startswith("trio_orchestrator_cost_usd_total{") and f'model="{model}"' in line:
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no cost sample for {model}:\n{text}")
