"""Vertex AI: Gemini's ``generateContent`` under a project/location path, with an OAuth
access token from a service-account key.

The token comes from ``google-auth`` (``pip install 'trio-orchestrator[vertex]'``): its
``service_account.Credentials`` signs the JWT assertion and exchanges it at the key file's
``token_uri``, through :class:`_HttpxRequest`, a transport of ours (a synchronous ``httpx``
client; the exchange blocks, so it runs in a worker thread). The token is cached until
google-auth judges it close to expiry (a few minutes before), then refreshed by one call
while the others wait for it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import attrs
import httpx
import trio

from ..errors import AuthenticationError, ConfigError
from .gemini import GeminiWorker
from .keys import KeyPool

if TYPE_CHECKING:
    from .config import ProviderConfig

__all__ = [
    "SCOPES",
    "ServiceAccountTokens",
    "credentials_path",
    "vertex_base_url",
    "vertex_models_path",
    "vertex_worker",
]

#: The OAuth scope Vertex AI calls need.
SCOPES = ("https://www.googleapis.com/auth/cloud-platform",)
DEFAULT_LOCATION = "us-central1"


def vertex_base_url(location: str) -> str:
    """Vertex AI's API root for ``location`` (``global`` has no regional host)."""
    if location == "global":
        return "https://aiplatform.googleapis.com"
    return f"https://{location}-aiplatform.googleapis.com"


def vertex_models_path(project: str, location: str) -> str:
    """The path of Google's publisher models for ``project`` in ``location``."""
    return f"/v1/projects/{project}/locations/{location}/publishers/google/models"


class _Response:
    """A ``google.auth.transport.Response`` over an httpx response."""

    def __init__(self, response: httpx.Response) -> None:
        self.status = response.status_code
        self.headers = dict(response.headers)
        self.data = response.content


class _HttpxRequest:
    """A ``google.auth.transport.Request``: google-auth's token exchange over our own
    (synchronous) httpx client, so it goes wherever the key file's ``token_uri`` says and
    under our timeout. One per refresh (hourly): no connection outlives it."""

    def __init__(self, client: httpx.Client) -> None:
        self._client = client

    def __call__(
        self,
        url: str,
        method: str = "GET",
        body: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        timeout: float | None = None,
        **kwargs: Any,
    ) -> _Response:
        from google.auth import exceptions

        try:
            response = self._client.request(method, url, content=body, headers=headers)
        except httpx.HTTPError as exc:
            raise exceptions.TransportError(str(exc)) from exc  # type: ignore[no-untyped-call]
        return _Response(response)


@attrs.define(eq=False)
class ServiceAccountTokens:
    """Access tokens for a service account, from its JSON key file.

    Args:
        credentials_file: the key file (``type: service_account``).
        timeout: seconds the token exchange may take.
        name: the provider's name, for errors.

    Raises:
        ConfigError: google-auth is not installed, or the key file cannot be read.
    """

    credentials_file: str
    timeout: float = 30.0
    name: str = "vertex"
    _credentials: Any = attrs.field(init=False)
    _lock: trio.Lock = attrs.field(factory=trio.Lock, init=False)

    def __attrs_post_init__(self) -> None:
        try:
            from google.oauth2 import service_account
        except ImportError as exc:
            raise ConfigError(
                "a vertex provider needs google-auth: pip install 'trio-orchestrator[vertex]'"
            ) from exc
        try:
            credentials = service_account.Credentials
            self._credentials = credentials.from_service_account_file(  # type: ignore[no-untyped-call]
                self.credentials_file, scopes=list(SCOPES)
            )
        except (OSError, ValueError) as exc:
            raise ConfigError(
                f"the service-account key file {self.credentials_file!r} cannot be used: {exc}"
            ) from exc

    @property
    def project(self) -> str | None:
        """The key file's ``project_id``."""
        project: str | None = self._credentials.project_id
        return project

    async def token(self) -> str:
        """A valid access token, refreshed (in a thread) when missing or about to expire.

        Raises:
            AuthenticationError: the token exchange failed.
        """
        async with self._lock:
            if not self._credentials.valid:
                await trio.to_thread.run_sync(self._refresh)
            token: str = self._credentials.token
            return token

    def invalidate(self) -> None:
        """Forget the token: the next :meth:`token` exchanges a new one."""
        self._credentials.token = None

    def _refresh(self) -> None:
        from google.auth import exceptions

        try:
            with httpx.Client(timeout=self.timeout, trust_env=False) as client:
                self._credentials.refresh(_HttpxRequest(client))
        except exceptions.GoogleAuthError as exc:
            raise AuthenticationError(
                f"the service-account token exchange failed ({exc}); check the key file "
                "and that the account is enabled",
                provider=self.name,
            ) from exc


def credentials_path(provider: ProviderConfig) -> str:
    """The provider's key file: ``credentials_file``, else ``GOOGLE_APPLICATION_CREDENTIALS``.

    Raises:
        ConfigError: neither is set.
    """
    path = provider.credentials_file or os.environ.get("GOOGLE_APPLICATION_CREDENTIALS")
    if not path:
        raise ConfigError(
            f"providers.{provider.label}: a vertex provider needs a service-account key: "
            "set credentials_file or GOOGLE_APPLICATION_CREDENTIALS"
        )
    return path


def vertex_worker(
    provider: ProviderConfig, client: httpx.AsyncClient, pool: KeyPool | None
) -> GeminiWorker:
    """The worker for a ``kind = "vertex"`` provider.

    Raises:
        ConfigError: no key file, google-auth missing, or no project (neither configured
            nor in the key file).
    """
    tokens = ServiceAccountTokens(
        credentials_path(provider), provider.timeouts.connect, provider.label
    )
    project = provider.project or tokens.project
    if not project:
        raise ConfigError(
            f"providers.{provider.label}.project: name the Google Cloud project "
            "(the key file has no project_id)"
        )
    location = provider.location or DEFAULT_LOCATION
    return GeminiWorker(
        client,
        provider.base_url or vertex_base_url(location),
        pool,
        provider.label,
        provider.timeouts,
        provider.stream,
        vertex_models_path(project, location),
        tokens,
        embed_method="predict",
    )
