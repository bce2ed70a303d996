"""Provider configuration: the ``[[providers]]`` tables (building workers from them is
:mod:`.factory`).

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

One provider builds its worker; several build a load balancer over theirs.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal

import attrs

from ..config.secret import Secret
from ..errors import ConfigError
from ..resilience.config import AdaptiveConfig
from ..validators import one_of, positive_int, positive_time
from .presets import PRESETS

__all__ = [
    "ANTHROPIC_VERSION",
    "AZURE_API_VERSION",
    "STRATEGIES",
    "ProviderConfig",
    "ProvidersConfig",
    "Strategy",
    "Timeouts",
]

Kind = Literal[
    "openai",
    "anthropic",
    "echo",
    "bedrock",
    "gemini",
    "vertex",
    "azure",
    "groq",
    "mistral",
    "together",
    "deepseek",
    "openrouter",
    "ollama",
    "vllm",
    "llamacpp",
]
KINDS: tuple[str, ...] = (
    "openai",
    "anthropic",
    "echo",
    "bedrock",
    "gemini",
    "vertex",
    "azure",
    *PRESETS,
)
HTTPClient = Literal["httpx", "httpx2"]
HTTPTransport = Literal["httpcore", "h11"]
Strategy = Literal["round_robin", "least_loaded", "weighted", "session"]
STRATEGIES: tuple[Strategy, ...] = ("round_robin", "least_loaded", "weighted", "session")
ANTHROPIC_VERSION = "2023-06-01"
#: Azure OpenAI's latest GA data-plane ``api-version`` (``"v1"``: the v1 surface).
AZURE_API_VERSION = "2024-10-21"
AzureAuth = Literal["api-key", "entra"]

DEFAULT_BASE_URLS = {
    "openai": "https://api.openai.com/v1",
    "anthropic": "https://api.anthropic.com",
    # Per region: ``{region}`` is the provider's ``region``.
    "bedrock": "https://bedrock-runtime.{region}.amazonaws.com",
    "gemini": "https://generativelanguage.googleapis.com",
    **{kind: preset.base_url for kind, preset in PRESETS.items()},
}


def _to_secrets(value: Sequence[str | Secret]) -> tuple[Secret, ...]:
    return tuple(v if isinstance(v, Secret) else Secret(v) for v in value)


def _to_secret(value: str | Secret | None) -> Secret | None:
    return value if value is None or isinstance(value, Secret) else Secret(value)


def _to_strings(value: Iterable[str]) -> tuple[str, ...]:
    return tuple(value)


def _to_deployments(value: Mapping[str, str]) -> Mapping[str, str]:
    return dict(value)


def _to_providers(value: Iterable[ProviderConfig]) -> tuple[ProviderConfig, ...]:
    return tuple(value)


@attrs.frozen
class Timeouts:
    """How long each phase of a provider call may take, in seconds (``math.inf``: no limit).

    Attributes:
        connect: to open the connection (and write the request).
        first_token: from sending the request to the first content (headers included).
        idle: the longest gap between chunks once content has begun; a stalled stream is
            cut here.
        total: the whole call.
    """

    connect: float = attrs.field(default=10.0, validator=positive_time)
    first_token: float = attrs.field(default=60.0, validator=positive_time)
    idle: float = attrs.field(default=30.0, validator=positive_time)
    total: float = attrs.field(default=600.0, validator=positive_time)


#: The options only one kind takes, and that kind: given on another kind's entry, refused.
_KIND_ONLY = {
    "responses_api": "openai",
    "region": "bedrock",
    "aws_access_key_id": "bedrock",
    "aws_secret_access_key": "bedrock",
    "aws_session_token": "bedrock",
    "credentials_file": "vertex",
    "project": "vertex",
    "location": "vertex",
    "api_version": "azure",
    "deployments": "azure",
    "azure_auth": "azure",
}


def _given(entry: object, field: attrs.Attribute[object]) -> bool:
    """Whether ``entry`` sets ``field`` to other than its default."""
    default: Any = field.default
    if isinstance(default, attrs.Factory):  # type: ignore[arg-type]  # attrs' stubs
        default = default.factory()
    return bool(getattr(entry, field.name) != default)


@attrs.frozen
class ProviderConfig:
    """One provider.

    Attributes:
        kind: ``"openai"`` (any ``/v1/chat/completions`` server), ``"anthropic"``,
            ``"echo"`` (offline), ``"bedrock"`` (AWS Bedrock's Converse API), ``"gemini"``
            (Google's Gemini API), ``"vertex"`` (Gemini on Vertex AI), ``"azure"`` (Azure
            OpenAI), or a preset for an OpenAI-compatible service (``"groq"``, ``"mistral"``,
            ``"together"``, ``"deepseek"``, ``"openrouter"``, ``"ollama"``, ``"vllm"``,
            ``"llamacpp"``: its base URL, key variable and quirks come from :mod:`.presets`).
        name: the provider's name in errors, logs and statistics.
        base_url: the API root; default OpenAI's ``https://api.openai.com/v1`` or Anthropic's
            ``https://api.anthropic.com``. For vLLM/llama.cpp/Ollama/LM Studio give the
            server's ``…/v1``.
        api_keys: the keys (a key pool when several); may be empty for local servers.
        api_key_env: an environment variable holding one more key, read when building. A
            preset for a cloud service reads its usual variable (``GROQ_API_KEY``…) when
            the entry gives neither ``api_keys`` nor ``api_key_env``.
        models: the models this provider serves: with several providers and no routing,
            a request goes only to those listing its model (or listing none).
        timeouts: connect, first-token, idle and total timeouts in seconds.
        stream: ask the provider to stream (SSE) when the client streams; a client that
            takes its answer whole is answered from one JSON answer, bounded by
            ``timeouts.total`` only (docs/providers.md). ``False``: one JSON answer always,
            bounded by ``timeouts.first_token`` too.
        key_rest: seconds a key rests after a 429 that named no wait.
        max_key_rest: the longest a 429 rests a key, whatever its ``Retry-After`` asked (one
            answer must not take a provider out for an hour). A 429 to a request for one
            model rests the key for that model only; rests are lengthened by up to 10 % at
            random, so keys do not wake together.
        key_probe_interval: while no key is ready for a model, one call per resting key is let
            through this often, to find a recovered upstream before the rest ends.
        rejected_key_cooldown: seconds after a 401 before the rejected key is tried again
            with one call; each 401 in a row doubles it (up to an hour). A reload (SIGHUP)
            enables rejected keys at once.
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
        region: for ``"bedrock"``, the AWS region (``us-east-1``…): the endpoint
            ``https://bedrock-runtime.{region}.amazonaws.com`` and the SigV4 scope; default
            the ``AWS_REGION`` / ``AWS_DEFAULT_REGION`` environment variable.
        aws_access_key_id: for ``"bedrock"``, the access key id requests are signed with
            (AWS SigV4); default ``AWS_ACCESS_KEY_ID``. Without ``api_keys`` (Bedrock API
            keys, sent as a bearer token; ``AWS_BEARER_TOKEN_BEDROCK``) requests are signed.
        aws_secret_access_key: for ``"bedrock"``, the secret key that signs; default
            ``AWS_SECRET_ACCESS_KEY``.
        aws_session_token: for ``"bedrock"``, the session token of temporary credentials;
            default ``AWS_SESSION_TOKEN``.
        credentials_file: for ``"vertex"``, the service-account JSON key file (default: the
            ``GOOGLE_APPLICATION_CREDENTIALS`` environment variable); its ``token_uri`` is
            where access tokens are exchanged.
        project: for ``"vertex"``, the Google Cloud project (default: the key file's
            ``project_id``).
        location: for ``"vertex"``, the region (default ``us-central1``; ``global`` too).
            The base URL defaults to ``https://{location}-aiplatform.googleapis.com``.
        api_version: for ``"azure"``, the ``api-version`` query parameter of the
            deployment URLs (default ``"2024-10-21"``, the latest GA); ``"v1"`` uses Azure's
            v1 surface instead (``{base_url}/openai/v1/chat/completions``, the deployment
            as ``model``, no ``api-version``). ``base_url`` is the resource's endpoint,
            ``https://<resource>.openai.azure.com``.
        deployments: for ``"azure"``, the deployment serving each model
            (``{ "gpt-4o" = "my-gpt4o-deploy" }``); a model not listed is its own
            deployment name.
        azure_auth: for ``"azure"``, how the keys are sent: ``"api-key"`` (the default: the
            ``api-key`` header) or ``"entra"`` (each key is a Microsoft Entra ID access
            token, sent as ``Authorization: Bearer``; put it in the variable ``api_key_env``
            names, and a reload reads a refreshed token).
        adaptive: the adaptive concurrency limit in front of this provider
            (``[providers.providers.adaptive]``, off by default; see
            :class:`~trio_orchestrator.resilience.config.AdaptiveConfig`).
    """

    kind: Kind = attrs.field(validator=one_of(*KINDS))
    name: str = ""
    base_url: str | None = None
    api_keys: tuple[Secret, ...] = attrs.field(default=(), converter=_to_secrets)
    api_key_env: str | None = None
    models: tuple[str, ...] = attrs.field(default=(), converter=_to_strings)
    timeouts: Timeouts = attrs.field(factory=Timeouts)
    stream: bool = True
    key_rest: float = attrs.field(default=5.0, validator=positive_time)
    max_key_rest: float = attrs.field(default=30.0, validator=positive_time)
    key_probe_interval: float = attrs.field(default=5.0, validator=positive_time)
    rejected_key_cooldown: float = attrs.field(default=300.0, validator=positive_time)
    weight: float = attrs.field(default=1.0, validator=positive_time)
    max_connections: int = attrs.field(default=1024, validator=positive_int)
    pool_size: int = attrs.field(default=16, validator=positive_int)
    max_tokens: int = attrs.field(default=4096, validator=positive_int)
    anthropic_version: str = ANTHROPIC_VERSION
    responses_api: bool = attrs.field(default=False)
    region: str | None = attrs.field(default=None)
    aws_access_key_id: str | None = attrs.field(default=None)
    aws_secret_access_key: Secret | None = attrs.field(default=None, converter=_to_secret)
    aws_session_token: Secret | None = attrs.field(default=None, converter=_to_secret)
    credentials_file: str | None = attrs.field(default=None)
    project: str | None = attrs.field(default=None)
    location: str | None = attrs.field(default=None)
    api_version: str | None = None
    deployments: Mapping[str, str] = attrs.field(
        factory=dict, converter=_to_deployments, hash=False
    )
    azure_auth: AzureAuth = attrs.field(default="api-key", validator=one_of("api-key", "entra"))
    adaptive: AdaptiveConfig = attrs.field(factory=AdaptiveConfig)

    def __attrs_post_init__(self) -> None:
        if self.kind == "ollama" and (self.base_url or "").rstrip("/").endswith("/api"):
            raise ValueError(
                "an ollama provider speaks Ollama's OpenAI-compatible API: give base_url "
                "as http://<host>:11434/v1, not its native /api"
            )
        if self.kind == "azure" and not self.base_url:
            raise ValueError(
                "an azure provider needs base_url, its resource's endpoint "
                "(https://<resource>.openai.azure.com)"
            )
        for field in attrs.fields(ProviderConfig):
            owner = _KIND_ONLY.get(field.name)
            if owner is not None and owner != self.kind and _given(self, field):
                raise ValueError(f"{field.name} is for kind {owner!r} providers, not {self.kind!r}")

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
        env = self.api_key_env
        if env is None and not keys and self.kind in PRESETS:
            env = PRESETS[self.kind].api_key_env
        if env:
            value = os.environ.get(env)
            if not value:
                raise ConfigError(
                    f"providers.{self.label}.api_key_env: the environment variable "
                    f"{env} is not set; set it, or give the key in api_keys"
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
        transport: how those clients speak HTTP: ``"h11"`` (default: the project's
            HTTP/1.1 transport on h11 over Trio sockets, less CPU and fewer scheduler rounds
            per call than httpcore's in bench_overhead.py; no HTTP/2; proxies from the
            environment still go through the library's own transport; see
            :mod:`trio_orchestrator.workers.h11transport`) or ``"httpcore"`` (the library's
            own transport). Changes only on a restart.
    """

    providers: tuple[ProviderConfig, ...] = attrs.field(converter=_to_providers)
    strategy: Strategy = attrs.field(default="round_robin", validator=one_of(*STRATEGIES))
    http_client: HTTPClient = attrs.field(default="httpx2", validator=one_of("httpx", "httpx2"))
    transport: HTTPTransport = attrs.field(default="h11", validator=one_of("httpcore", "h11"))

    @providers.validator
    def _check_providers(self, _attribute: object, value: tuple[ProviderConfig, ...]) -> None:
        if not value:
            raise ValueError("providers must name at least one provider")
        names = [p.label for p in value]
        if len(set(names)) != len(names):
            raise ValueError(f"provider names must be unique, got {names}")
