"""Building the configured worker from ``[[providers]]``: one provider's worker, or a
:class:`LoadBalancedWorker` over several. Every HTTP provider gets one ``httpx.AsyncClient``
(or ``httpx2``), shared by all its calls.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import httpx

from .anthropic import AnthropicWorker
from .azure import AzureOpenAIWorker
from .balance import LoadBalancedWorker
from .base import ModelWorker
from .bedrock import BedrockWorker, bedrock_worker
from .config import (
    AZURE_API_VERSION,
    DEFAULT_BASE_URLS,
    HTTPClient,
    HTTPTransport,
    ProviderConfig,
    ProvidersConfig,
)
from .echo import EchoWorker
from .gemini import GeminiWorker
from .keys import KeyPool
from .openai import OpenAIWorker
from .preset import PresetWorker
from .presets import PRESETS
from .transport import h11_client, sharded_client

__all__ = ["build_worker", "key_pool", "make_client", "open_worker", "worker_for"]

ClientFactory = Callable[[ProviderConfig], httpx.AsyncClient]


def make_client(
    provider: ProviderConfig, library: HTTPClient = "httpx2", transport: HTTPTransport = "h11"
) -> httpx.AsyncClient:
    """A new HTTP client sized for ``provider`` (the library's own timeouts off: the workers
    apply theirs): on httpcore, its connections split over pools of ``provider.pool_size``;
    on ``"h11"``, one :class:`~.h11transport.H11Transport` pool of ``max_connections``."""
    module: Any = httpx
    if library == "httpx2":
        import httpx2

        module = httpx2
    if transport == "h11":
        return h11_client(module, provider.max_connections, provider.pool_size)
    return sharded_client(module, provider.max_connections, provider.pool_size)


def worker_for(provider: ProviderConfig, client: httpx.AsyncClient | None) -> ModelWorker:
    """The worker for one provider (``client`` may be None only for an echo provider)."""
    if provider.kind == "echo":
        return EchoWorker(model=provider.models[0] if provider.models else "echo")
    assert client is not None
    keys = provider.keys()
    pool = None
    if keys:
        pool = KeyPool(
            keys,
            provider.label,
            provider.key_rest,
            provider.max_key_rest,
            provider.key_probe_interval,
            provider.rejected_key_cooldown,
            provider.models,
        )
    if provider.kind == "bedrock":
        return bedrock_worker(provider, client, pool)
    if provider.kind == "vertex":
        from .vertex import vertex_worker  # google-auth, imported only when used

        return vertex_worker(provider, client, pool)
    base_url = provider.base_url or DEFAULT_BASE_URLS[provider.kind]
    common = (client, base_url, pool, provider.label, provider.timeouts, provider.stream)
    if provider.kind == "gemini":
        return GeminiWorker(*common)
    if provider.kind == "anthropic":
        return AnthropicWorker(*common, provider.max_tokens, provider.anthropic_version)
    if provider.kind == "azure":
        return AzureOpenAIWorker(
            *common,
            api_version=provider.api_version or AZURE_API_VERSION,
            deployments=provider.deployments,
            auth=provider.azure_auth,
        )
    if provider.kind in PRESETS:
        return PresetWorker(*common, preset=PRESETS[provider.kind])
    return OpenAIWorker(*common, responses_api=provider.responses_api)


def key_pool(worker: ModelWorker) -> KeyPool | None:
    """The key pool of a worker :func:`worker_for` built, if it has one."""
    if isinstance(worker, OpenAIWorker | AnthropicWorker | BedrockWorker | GeminiWorker):
        return worker.keys
    return None


def build_worker(
    providers_config: ProvidersConfig,
    client: httpx.AsyncClient | ClientFactory | None = None,
) -> ModelWorker:
    """Build the configured worker: one provider's, or a load balancer over several.

    Args:
        providers_config: the providers.
        client: the client every HTTP provider uses (tests pass their own), or a factory
            called once per HTTP provider; ``None`` builds one per provider with
            :func:`make_client` (closing those is the caller's job: prefer
            :func:`open_worker`).

    Raises:
        ConfigError: a key's environment variable is not set.
    """
    workers = []
    for provider in providers_config.providers:
        http = None
        if provider.kind != "echo":
            if client is None:
                http = make_client(
                    provider, providers_config.http_client, providers_config.transport
                )
            elif callable(client) and not isinstance(client, httpx.AsyncClient):
                http = client(provider)
            else:
                http = client
        workers.append(worker_for(provider, http))
    if len(workers) == 1:
        return workers[0]
    weights = [p.weight for p in providers_config.providers]
    models = [p.models for p in providers_config.providers]
    return LoadBalancedWorker(workers, providers_config.strategy, weights, models)


@asynccontextmanager
async def open_worker(
    providers_config: ProvidersConfig, client: httpx.AsyncClient | None = None
) -> AsyncIterator[ModelWorker]:
    """Build the configured worker; on exit, close the HTTP clients built for it.

    Args:
        providers_config: the providers.
        client: a client to use for every provider instead (not closed here).

    Returns:
        An async context manager giving the worker.
    """
    if client is not None:
        yield build_worker(providers_config, client)
        return
    built: list[httpx.AsyncClient] = []

    def factory(provider: ProviderConfig) -> httpx.AsyncClient:
        built.append(
            make_client(provider, providers_config.http_client, providers_config.transport)
        )
        return built[-1]

    try:
        yield build_worker(providers_config, factory)
    finally:
        for http in built:
            await http.aclose()
