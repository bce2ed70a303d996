"""The provider examples of issue 18's Azure and preset kinds load and build their workers."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from trio_orchestrator.config import load_config
from trio_orchestrator.workers import build_worker
from trio_orchestrator.workers.azure import AzureOpenAIWorker
from trio_orchestrator.workers.balance import LoadBalancedWorker
from trio_orchestrator.workers.preset import PresetWorker

EXAMPLES = Path(__file__).parent.parent / "examples"

ENV = {
    "AZURE_OPENAI_API_KEY": "azure-key-0123456789",
    "AZURE_OPENAI_AD_TOKEN": "eyJ0eXAiOiJKV1QiLCJhbGciOi",
    "GROQ_API_KEY": "gsk-example-0123456789",
    "DEEPSEEK_API_KEY": "sk-example-0123456789",
}


@pytest.fixture(autouse=True)
def keys(monkeypatch: pytest.MonkeyPatch) -> None:
    """The environment variables the examples read their keys from."""
    for name, value in ENV.items():
        monkeypatch.setenv(name, value)


def _workers(name: str) -> list[object]:
    config = load_config(EXAMPLES / name)
    assert config.providers is not None
    worker = build_worker(config.providers, httpx.AsyncClient())
    assert isinstance(worker, LoadBalancedWorker)
    return list(worker.workers)


def test_the_azure_example_builds_both_resources() -> None:
    """examples/azure_provider.toml: a deployment-URL provider and a v1 one with Entra ID."""
    deployments, entra = _workers("azure_provider.toml")
    assert isinstance(deployments, AzureOpenAIWorker)
    assert isinstance(entra, AzureOpenAIWorker)
    assert (deployments.api_version, deployments.auth) == ("2024-10-21", "api-key")
    assert (entra.api_version, entra.auth) == ("v1", "entra")
    assert deployments.deployment("gpt-4o") == "gpt4o-prod"


def test_the_presets_example_builds_each_service() -> None:
    """examples/openai_compatible_presets.toml: one preset worker per service."""
    workers = _workers("openai_compatible_presets.toml")
    assert all(isinstance(w, PresetWorker) for w in workers)
    urls = [w.base_url for w in workers if isinstance(w, PresetWorker)]
    assert urls == [
        "https://api.groq.com/openai/v1",
        "https://api.deepseek.com/v1",
        "http://localhost:11434/v1",
        "http://10.0.0.5:8000/v1",
    ]
