"""A worker for Azure OpenAI: OpenAI's wire format under Azure's URLs and auth.

The bodies, streams, usage and errors are OpenAI's, so this is :class:`.OpenAIWorker` with
three things changed:

- the URL: a model is served by a *deployment*
  (``{endpoint}/openai/deployments/{deployment}/chat/completions?api-version=2024-10-21``,
  the same for ``/embeddings``), or, with ``api_version = "v1"``, Azure's v1 surface
  (``{endpoint}/openai/v1/chat/completions``, the deployment named in ``model``);
- the auth: the ``api-key`` header, or an Entra ID access token as ``Authorization: Bearer``;
- the model: ``deployments`` maps the model a client asks for to its deployment (by default
  the model's own name).

Azure's additions travel to the client as any unread member does: ``prompt_filter_results``
and each choice's ``content_filter_results`` (answers and stream chunks), and a choice that
the completion filter stopped ends with ``finish_reason: "content_filter"``. Its errors are
OpenAI-shaped and map like OpenAI's: ``code: "content_filter"`` (a prompt the filter refused,
with ``innererror.content_filter_result`` saying which category) is
:class:`~trio_orchestrator.errors.ContentFiltered`; a 429's ``retry-after-ms`` /
``retry-after`` headers give its wait; ``DeploymentNotFound`` (404) is
:class:`~trio_orchestrator.errors.ModelNotFound`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

import attrs

from ..config.secret import Secret
from ..types import PromptRequest
from .config import AZURE_API_VERSION, AzureAuth, ProviderConfig
from .openai import OpenAIWorker

__all__ = ["AzureOpenAIWorker"]

_V1 = "v1"


@attrs.define(eq=False, repr=False)
class AzureOpenAIWorker(OpenAIWorker):
    """Generates through an Azure OpenAI resource.

    Args:
        client: the provider's shared ``httpx.AsyncClient`` (or ``httpx2``).
        base_url: the resource's endpoint, ``https://<resource>.openai.azure.com``.
        keys: the key pool: API keys, or Entra ID access tokens with ``auth="entra"``.
        name: the provider's name, for errors and statistics.
        timeouts: connect, first-token, idle and total timeouts.
        stream: stream the answer with SSE (``False``: one JSON answer).
        headers: extra headers sent on every call.
        api_version: the ``api-version`` of the deployment URLs, or ``"v1"`` for the v1
            surface.
        deployments: the deployment serving each model; a model not listed is its own
            deployment name.
        auth: ``"api-key"`` (the ``api-key`` header) or ``"entra"`` (``Authorization:
            Bearer``).
    """

    api_version: str = attrs.field(default=AZURE_API_VERSION, kw_only=True)
    deployments: Mapping[str, str] = attrs.field(factory=dict, kw_only=True)
    auth: AzureAuth = attrs.field(default="api-key", kw_only=True)

    def __repr__(self) -> str:
        return f"AzureOpenAIWorker(name={self.name!r}, base_url={self.base_url!r})"

    def reconfigure(self, provider: ProviderConfig | None, /) -> list[str]:
        """Apply this provider's reloaded keys (see :class:`.OpenAIWorker`); its
        ``api_version``, ``deployments`` and ``azure_auth`` change only on a restart."""
        refused = super().reconfigure(provider)
        if provider is not None and (
            (provider.api_version or AZURE_API_VERSION, dict(provider.deployments))
            != (self.api_version, dict(self.deployments))
            or provider.azure_auth != self.auth
        ):
            refused.append(
                f"providers.{self.name}: api_version, deployments and azure_auth change "
                "only on a restart"
            )
        return refused

    def deployment(self, model: str) -> str:
        """The deployment that serves ``model``."""
        return self.deployments.get(model, model)

    def _auth(self, key: Secret) -> dict[str, str]:
        if self.auth == "entra":
            return {"authorization": f"Bearer {key.reveal()}"}
        return {"api-key": key.reveal()}

    def _path(self, endpoint: str, model: str | None) -> str:
        if self.api_version == _V1:
            return "/openai/v1" + endpoint
        query = f"?api-version={quote(self.api_version)}"
        if model is None:  # the resource's model list
            return "/openai" + endpoint + query
        return f"/openai/deployments/{quote(self.deployment(model), safe='')}{endpoint}{query}"

    def _chat_body(self, request: PromptRequest) -> dict[str, Any]:
        return self._named(super()._chat_body(request))

    def _embeddings_body(self, request: PromptRequest) -> dict[str, Any]:
        return self._named(super()._embeddings_body(request))

    def _named(self, body: dict[str, Any]) -> dict[str, Any]:
        """On the v1 surface ``model`` names the deployment; a deployment URL names it
        already, and Azure ignores the body's ``model`` there (kept as the client's)."""
        if self.api_version == _V1 and isinstance(body.get("model"), str):
            body["model"] = self.deployment(body["model"])
        return body
