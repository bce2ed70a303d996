"""Provider configuration, and building the configured worker from it.

::

    [[providers]]
    kind = "openai"
    name = "vllm-a"
    base_url = "http://10.0.0.5:8000/v1"
    models = ["llama-3.1-8b"]

    [[providers]]
    kind = "anthropic"
    name = "anthropic"
    api_key_env = "ANTHROPIC_API_KEY"

One provider builds its worker; several build a :class:`LoadBalancedWorker` over theirs.
Every HTTP provider gets one ``httpx.AsyncClient`` (or ``httpx2``), shared by all its calls.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from typing import Any, Literal

import attrs
import httpx

from ..config.ranges import positive_int, positive_time
from ..config.secret import Secret
from ..errors import ConfigError
from .anthropic import ANTHROPIC_VERSION, AnthropicWorker
from .balance import STRATEGIES, LoadBalancedWorker, Strategy
from .base import ModelWorker
from .echo import EchoWorker
from .http import Timeouts
from .keys import KeyPool
from .openai import OpenAIWorker
from .transport import sharded_client

__all__ = [
    "ProviderConfig",
    "ProvidersConfig",
    "build_worker",
    "make_client",
    "open_worker",
]

Kind = Literal["openai", "anthropic", "echo"]
HTTPClient = Literal["httpx", "httpx2"]
ClientFactory = Callable[["ProviderConfig"], httpx.AsyncClient]

DEFAULT_BASE_URLS = {
    "openai": "https://api.openai.com/v1",
    "anthropic": "https://api.anthropic.com",
}


def _to_secrets(value: Sequence[str | Secret]) -> tuple[Secret, ...]:
    return tuple(v if isinstance(v, Secret) else Secret(v) for v in value)


def _to_strings(value: Iterable[str]) -> tuple[str, ...]:
    return tuple(value)


def _to_providers(value: Iterable[ProviderConfig]) -> tuple[ProviderConfig, ...]:
    return tuple(value)


def _one_of(*choices: str) -> Callable[[object, attrs.Attribute[Any], object], None]:
    def check(_instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
        if value not in choices:
            raise ValueError(f"{attribute.name} must be one of {list(choices)}, got {value!r}")

    return check


@attrs.frozen
class ProviderConfig:
    """One provider.

    Attributes:
        kind: ``"openai"`` (any ``/v1/chat/completions`` server), ``"anthropic"`` or
            ``"echo"`` (offline).
        name: the provider's name in errors, logs and statistics.
        base_url: the API root; default OpenAI's ``https://api.openai.com/v1`` or Anthropic's
            ``https://api.anthropic.com``. For vLLM/llama.cpp/Ollama/LM Studio give the
            server's ``…/v1``.
        api_keys: the keys (a key pool when several); may be empty for local servers.
        api_key_env: an environment variable holding one more key, read when building.
        models: the models this provider serves: with several providers and no routing,
            a request goes only to those listing its model (or listing none).
        timeouts: connect, first-token, idle and total timeouts in seconds.
        stream: ask the provider to stream (SSE); ``False`` for one JSON answer.
        key_rest: seconds a key rests after a 429 that named no wait.
        weight: this provider's share under the ``weighted`` balance strategy.
        max_connections: the most connections its HTTP client opens.
        pool_size: the most connections in one of the client's connection pools: the
            connections are split over ``ceil(max_connections / pool_size)`` pools, because
            a pool's cost per request grows with its size (see
            :mod:`trio_orchestrator.workers.transport`).
        max_tokens: for Anthropic, ``max_tokens`` when a request names none.
        anthropic_version: for Anthropic, the ``anthropic-version`` header.
        responses_api: for ``"openai"``, the server also speaks OpenAI's Responses API
            (``POST {base_url}/responses``: OpenAI itself, Azure OpenAI, vLLM, OpenRouter…):
            a ``/v1/responses`` request is forwarded to it as the client sent it (only
            ``model`` rewritten; streamed upstream exactly when the client streams) and its
            answer or events come back verbatim. Off (the default), the request is
            translated to Chat Completions. See docs/endpoints.md.
    """

    kind: Kind = attrs.field(validator=_one_of("openai", "anthropic", "echo"))
    name: str = ""
    base_url: str | None = None
    api_keys: tuple[Secret, ...] = attrs.field(default=(), converter=_to_secrets)
    api_key_env: str | None = None
    models: tuple[str, ...] = attrs.field(default=(), converter=_to_strings)
    timeouts: Timeouts = attrs.field(factory=Timeouts)
    stream: bool = True
    key_rest: float = attrs.field(default=5.0, validator=positive_time)
    weight: float = attrs.field(default=1.0, validator=positive_time)
    max_connections: int = attrs.field(default=1024, validator=positive_int)
    pool_size: int = attrs.field(default=16, validator=positive_int)
    max_tokens: int = attrs.field(default=4096, validator=positive_int)
    anthropic_version: str = ANTHROPIC_VERSION
    responses_api: bool = attrs.field(default=False)

    @responses_api.validator
    def _check_responses_api(self, _attribute: object, value: bool) -> None:
        if value and self.kind != "openai":
            raise ValueError(f"responses_api is for kind 'openai' providers, not {self.kind!r}")

    @property
    def label(self) -> str:
        """The name, or the kind when unnamed."""
        return self.name or self.kind

    def keys(self) -> list[Secret]:
        """The configured keys plus the one in ``api_key_env``.

        Raises:
            ConfigError: ``api_key_env`` names a variable that is not set.
        """
        keys = list(self.api_keys)
        if self.api_key_env:
            value = os.environ.get(self.api_key_env)
            if not value:
                raise ConfigError(
                    f"providers.{self.label}.api_key_env: the environment variable "
                    f"{self.api_key_env} is not set; set it or remove the key"
                )
            keys.append(Secret(value))
        return keys


@attrs.frozen
class ProvidersConfig:
    """The providers, and how requests are spread over them.

    Attributes:
        providers: one or more providers; several are load balanced.
        strategy: ``round_robin`` (default), ``least_loaded``, ``weighted`` (by each
            provider's ``weight``) or ``session`` (session affinity).
        http_client: the HTTP library for the clients built here: ``"httpx2"`` (default:
            more requests per second than httpx under Trio in bench_gateway.py) or
            ``"httpx"`` (same API; see docs/providers.md).
    """

    providers: tuple[ProviderConfig, ...] = attrs.field(converter=_to_providers)
    strategy: Strategy = attrs.field(default="round_robin", validator=_one_of(*STRATEGIES))
    http_client: HTTPClient = attrs.field(default="httpx2", validator=_one_of("httpx", "httpx2"))

    @providers.validator
    def _check_providers(self, _attribute: object, value: tuple[ProviderConfig, ...]) -> None:
        if not value:
            raise ValueError("providers must name at least one provider")
        names = [p.label for p in value]
        if len(set(names)) != len(names):
            raise ValueError(f"provider names must be unique, got {names}")


def make_client(provider: ProviderConfig, library: HTTPClient = "httpx2") -> httpx.AsyncClient:
    """A new HTTP client sized for ``provider`` (the library's own timeouts off: the workers
    apply theirs), its connections split over pools of ``provider.pool_size``."""
    module: Any = httpx
    if library == "httpx2":
        import httpx2

        module = httpx2
    return sharded_client(module, provider.max_connections, provider.pool_size)


def worker_for(provider: ProviderConfig, client: httpx.AsyncClient | None) -> ModelWorker:
    """The worker for one provider (``client`` may be None only for an echo provider)."""
    if provider.kind == "echo":
        return EchoWorker(model=provider.models[0] if provider.models else "echo")
    assert client is not None
    keys = provider.keys()
    pool = KeyPool(keys, provider.label, provider.key_rest) if keys else None
    base_url = provider.base_url or DEFAULT_BASE_URLS[provider.kind]
    if provider.kind == "anthropic":
        return AnthropicWorker(
            client,
            base_url,
            pool,
            provider.label,
            provider.timeouts,
            provider.stream,
            provider.max_tokens,
            provider.anthropic_version,
        )
    return OpenAIWorker(
        client,
        base_url,
        pool,
        provider.label,
        provider.timeouts,
        provider.stream,
        responses_api=provider.responses_api,
    )


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
                http = make_client(provider, providers_config.http_client)
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
        built.append(make_client(provider, providers_config.http_client))
        return built[-1]

    try:
        yield build_worker(providers_config, factory)
    finally:
        for http in built:
            await http.aclose()
