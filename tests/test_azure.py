"""The ``azure`` provider kind: its configuration and the worker it builds (the served path
is ``tests/conformance/test_azure.py``)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from trio_orchestrator.config import parse_config
from trio_orchestrator.config.secret import Secret
from trio_orchestrator.errors import ConfigError, ContentFiltered, RateLimited
from trio_orchestrator.testing.fake_provider import Behaviour, FakeProvider, open_fake_provider
from trio_orchestrator.types import GenerationParams, PromptRequest
from trio_orchestrator.workers import ProviderConfig, ProvidersConfig, build_worker, collect
from trio_orchestrator.workers.azure import AzureOpenAIWorker
from trio_orchestrator.workers.keys import KeyPool

KEY = "azure-key-0123456789"

CONFIG = """
[[providers.providers]]
kind = "azure"
name = "azure-east"
base_url = "https://my-resource.openai.azure.com"
api_keys = ["azure-key-0123456789"]
api_version = "2025-04-01-preview"
deployments = { "gpt-4o" = "my-gpt4o-deploy" }
"""


def test_an_azure_provider_is_read_from_toml() -> None:
    """The TOML keys build an AzureOpenAIWorker with its version and deployments."""
    config = parse_config(CONFIG)
    assert config.providers is not None
    worker = build_worker(config.providers, httpx.AsyncClient())
    assert isinstance(worker, AzureOpenAIWorker)
    assert worker.api_version == "2025-04-01-preview"
    assert worker.deployment("gpt-4o") == "my-gpt4o-deploy"
    assert worker.deployment("gpt-4.1") == "gpt-4.1"


def test_azure_defaults_to_the_latest_ga_api_version() -> None:
    """Without api_version the worker uses 2024-10-21 and sends the api-key header."""
    provider = ProviderConfig("azure", base_url="https://r.openai.azure.com", api_keys=[KEY])
    worker = build_worker(ProvidersConfig([provider]), httpx.AsyncClient())
    assert isinstance(worker, AzureOpenAIWorker)
    assert worker.api_version == "2024-10-21"
    assert worker.auth == "api-key"


def test_azure_needs_its_endpoint() -> None:
    """An azure provider without base_url is refused: there is no default resource."""
    with pytest.raises(ConfigError, match="base_url"):
        parse_config('[[providers.providers]]\nkind = "azure"\n')


@pytest.mark.parametrize(
    ("key", "value"),
    [("api_version", '"v1"'), ("deployments", '{ a = "b" }'), ("azure_auth", '"entra"')],
)
def test_azure_keys_are_refused_for_other_kinds(key: str, value: str) -> None:
    """Azure's own keys on an openai provider are refused, naming the key."""
    with pytest.raises(ConfigError, match=f"{key} is for kind 'azure'"):
        parse_config(f'[[providers.providers]]\nkind = "openai"\n{key} = {value}\n')


@pytest.fixture
async def fake() -> AsyncIterator[tuple[FakeProvider, httpx.AsyncClient]]:
    """The fake upstream and a client for it."""
    async with open_fake_provider() as upstream, httpx.AsyncClient() as client:
        yield upstream, client


def _worker(fake: tuple[FakeProvider, httpx.AsyncClient], **options: Any) -> AzureOpenAIWorker:
    upstream, client = fake
    pool = KeyPool([Secret(KEY)], "azure")
    return AzureOpenAIWorker(client, upstream.base_url, pool, "azure", **options)


REQUEST = PromptRequest(input="hi", params=GenerationParams(model="gpt-4o"))


async def test_the_fake_refuses_a_call_without_a_key(
    fake: tuple[FakeProvider, httpx.AsyncClient],
) -> None:
    """Azure's 401 for a call with no key: the fake checks what the worker must send."""
    upstream, client = fake
    worker = AzureOpenAIWorker(client, upstream.base_url, None, "azure")
    with pytest.raises(Exception, match="Access denied"):
        await collect(worker, REQUEST)


async def test_an_azure_429_is_rate_limited_for_its_retry_after_ms(
    fake: tuple[FakeProvider, httpx.AsyncClient],
) -> None:
    """Azure's 429 is RateLimited, its wait read from ``retry-after-ms``."""
    fake[0].script(Behaviour(status=429, retry_after=2.5))
    with pytest.raises(RateLimited) as caught:
        await collect(_worker(fake), REQUEST)
    assert caught.value.retry_after == pytest.approx(2.5)


async def test_the_content_filter_is_content_filtered(
    fake: tuple[FakeProvider, httpx.AsyncClient],
) -> None:
    """Azure's content filter error is ContentFiltered, naming the category."""
    fake[0].script(Behaviour(status=400, error_type="content_filter"))
    with pytest.raises(ContentFiltered, match=r"violence \(medium\)"):
        await collect(_worker(fake, stream=False), REQUEST)


async def test_a_deployment_url_without_api_version_is_not_found(
    fake: tuple[FakeProvider, httpx.AsyncClient],
) -> None:
    """The fake answers a deployment URL without ``api-version`` as Azure does: a 404."""
    upstream, client = fake
    response = await client.post(
        upstream.base_url + "/openai/deployments/d/chat/completions",
        json={"messages": []},
        headers={"api-key": KEY},
    )
    assert response.status_code == 404
    assert response.json()["error"]["message"] == "Resource not found"


def test_a_reload_that_changes_the_deployments_is_refused() -> None:
    """Keys reload; api_version, deployments and azure_auth say they need a restart."""
    provider = ProviderConfig(
        "azure", "az", "https://r.openai.azure.com", api_keys=[KEY], deployments={"a": "b"}
    )
    worker = build_worker(ProvidersConfig([provider]), httpx.AsyncClient())
    assert isinstance(worker, AzureOpenAIWorker)
    assert worker.reconfigure(provider) == []
    changed = ProviderConfig(
        "azure", "az", "https://r.openai.azure.com", api_keys=[KEY], deployments={"a": "c"}
    )
    assert worker.reconfigure(changed) == [
        "providers.az: api_version, deployments and azure_auth change only on a restart"
    ]


async def test_a_reload_sends_a_refreshed_entra_token(
    fake: tuple[FakeProvider, httpx.AsyncClient], monkeypatch: pytest.MonkeyPatch
) -> None:
    """An Entra ID token read from the environment is read again on a reload (SIGHUP)."""
    upstream, client = fake
    monkeypatch.setenv("AZURE_OPENAI_AD_TOKEN", "token-before-0123456789")
    provider = ProviderConfig(
        "azure",
        "az",
        upstream.base_url,
        api_key_env="AZURE_OPENAI_AD_TOKEN",
        azure_auth="entra",
    )
    worker = build_worker(ProvidersConfig([provider]), client)
    await collect(worker, REQUEST)
    assert upstream.requests[-1].headers["authorization"] == "Bearer token-before-0123456789"
    monkeypatch.setenv("AZURE_OPENAI_AD_TOKEN", "token-after-0123456789")
    assert isinstance(worker, AzureOpenAIWorker)
    assert worker.reconfigure(provider) == []
    await collect(worker, REQUEST)
    assert upstream.requests[-1].headers["authorization"] == "Bearer token-after-0123456789"
