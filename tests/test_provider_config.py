"""Provider configuration and building workers from it."""

from __future__ import annotations

import httpx
import pytest

from trio_orchestrator.config.secret import Secret
from trio_orchestrator.errors import ConfigError
from trio_orchestrator.testing.fake_provider import Behaviour, open_fake_provider
from trio_orchestrator.types import PromptRequest
from trio_orchestrator.workers import (
    AnthropicWorker,
    EchoWorker,
    OpenAIWorker,
    ProviderConfig,
    ProvidersConfig,
    build_worker,
    collect,
    open_worker,
)

KEY = "sk-config-secret-0123456789"


def test_one_provider_builds_its_own_worker() -> None:
    """A single provider builds its worker directly, with its defaults."""
    worker = build_worker(ProvidersConfig([ProviderConfig("anthropic")]), httpx.AsyncClient())
    assert isinstance(worker, AnthropicWorker)
    assert worker.base_url == "https://api.anthropic.com"


def test_echo_needs_no_client() -> None:
    """The echo kind builds an EchoWorker with the configured model name."""
    worker = build_worker(ProvidersConfig([ProviderConfig("echo", models=["m1"])]))
    assert isinstance(worker, EchoWorker)
    assert worker.model == "m1"


async def test_key_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """api_key_env adds the key held in that variable to the pool."""
    monkeypatch.setenv("FAKE_PROVIDER_KEY", KEY)
    config = ProvidersConfig([ProviderConfig("openai", api_key_env="FAKE_PROVIDER_KEY")])
    worker = build_worker(config, httpx.AsyncClient())
    assert isinstance(worker, OpenAIWorker)
    assert worker.keys is not None
    assert Secret(KEY).fingerprint() in worker.keys.statistics().keys


def test_missing_environment_key_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """An unset api_key_env is a ConfigError naming the provider and the variable."""
    monkeypatch.delenv("NOT_SET_ANYWHERE", raising=False)
    config = ProvidersConfig([ProviderConfig("openai", "p", api_key_env="NOT_SET_ANYWHERE")])
    with pytest.raises(ConfigError, match=r"providers\.p\.api_key_env.*NOT_SET_ANYWHERE"):
        build_worker(config, httpx.AsyncClient())


def test_keys_are_masked_in_config_and_worker_reprs() -> None:
    """Configured keys become Secrets and appear in no repr."""
    provider = ProviderConfig("openai", api_keys=[KEY])
    worker = build_worker(ProvidersConfig([provider]), httpx.AsyncClient())
    assert isinstance(provider.api_keys[0], Secret)
    assert KEY not in repr(provider) + repr(worker) + repr(ProvidersConfig([provider]))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"kind": "gopher"}, "kind"),
        ({"kind": "gemini", "location": "us-east1"}, "location"),
        ({"kind": "openai", "weight": 0}, "weight"),
        ({"kind": "openai", "key_rest": -1}, "key_rest"),
        ({"kind": "anthropic", "responses_api": True}, "responses_api"),
    ],
)
def test_bad_provider_values_are_refused(kwargs: dict[str, object], message: str) -> None:
    """Unknown kinds, non-positive numbers and options of another kind are refused, naming
    the field."""
    with pytest.raises(ValueError, match=message):
        ProviderConfig(**kwargs)  # type: ignore[arg-type]


def test_duplicate_names_are_refused() -> None:
    """Two providers with one name would be indistinguishable in errors and metrics."""
    with pytest.raises(ValueError, match="unique"):
        ProvidersConfig([ProviderConfig("openai", "x"), ProviderConfig("anthropic", "x")])


@pytest.mark.parametrize("library", ["httpx", "httpx2"])
async def test_open_worker_builds_and_closes_its_clients(library: str) -> None:
    """open_worker answers through a client of the chosen library, and closes it after."""
    pytest.importorskip(library)
    async with open_fake_provider(Behaviour(text="ok")) as fake:
        provider = ProviderConfig("openai", "fake", fake.openai_base_url)
        async with open_worker(ProvidersConfig([provider], http_client=library)) as worker:  # type: ignore[arg-type]
            assert (await collect(worker, PromptRequest(input="q"))).text == "ok"
            assert isinstance(worker, OpenAIWorker)
            assert type(worker.client).__module__.split(".")[0] == library
        assert worker.client.is_closed
