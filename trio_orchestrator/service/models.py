"""``GET /v1/models`` and ``GET /v1/models/{model}``: what the gateway serves, with the model
catalogue's facts.

Each entry is OpenAI's model object (``id``, ``object``, ``created``, ``owned_by``) with the
facts the catalogue knows added, as OpenRouter's and LiteLLM's listings add theirs (the
official SDKs keep members they do not declare): ``context_window``, ``max_output_tokens``,
``capabilities`` and ``pricing`` (US dollars per million tokens). A fact the catalogue does
not know is left out. The names are the configured ones (``service.models``, the router's,
the providers' ``models``); when some provider names none, the upstreams that list their own
models (local OpenAI-compatible servers) are asked, all at once and each for at most
``service.model_list_timeout`` seconds (a hung one adds no names), beside the other
providers' configured names; a list every such upstream answered is reused for
``service.model_list_ttl`` seconds (:meth:`~trio_orchestrator.gateway.Gateway.listed_models`).
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from ..catalogue import ModelFacts
from .errors import ApiError
from .jsonenc import JSONResponse
from .state import ServiceState, service_of

__all__ = ["get_model", "list_models", "model_json"]


async def list_models(request: Request) -> Response:
    """``GET /v1/models``."""
    state = service_of(request)
    names = await _served(state)
    return JSONResponse({"object": "list", "data": [_entry(state, n) for n in names]})


async def get_model(request: Request) -> Response:
    """``GET /v1/models/{model}``."""
    state = service_of(request)
    name = request.path_params["model"]
    if name not in state.models and (state.models or name not in await _served(state)):
        raise ApiError(404, f"the model {name!r} does not exist", code="model_not_found")
    return JSONResponse(_entry(state, name))


async def _served(state: ServiceState) -> tuple[str, ...]:
    if state.models or state.gateway is None:
        return state.models
    return await state.gateway.listed_models()


def _entry(state: ServiceState, name: str) -> dict[str, Any]:
    facts = None if state.gateway is None else state.gateway.model_facts(name)
    return model_json(name, facts)


def model_json(name: str, facts: ModelFacts | None) -> dict[str, Any]:
    """The model object for ``name``, with what ``facts`` knows of it.

    Args:
        name: the model's id, as clients name it.
        facts: the catalogue's facts (None: unknown).

    Returns:
        OpenAI's model object, plus ``context_window``, ``max_output_tokens``,
        ``capabilities`` and ``pricing`` (``input_per_million``,
        ``cached_input_per_million``, ``output_per_million``, ``currency``) as far as known.
    """
    owner = "trio-orchestrator" if facts is None or facts.provider is None else facts.provider
    entry: dict[str, Any] = {"id": name, "object": "model", "created": 0, "owned_by": owner}
    if facts is None:
        return entry
    if facts.context_window is not None:
        entry["context_window"] = facts.context_window
    if facts.max_output_tokens is not None:
        entry["max_output_tokens"] = facts.max_output_tokens
    if facts.capabilities is not None:
        entry["capabilities"] = list(facts.capabilities)
    pricing = {
        key: value
        for key, value in (
            ("input_per_million", facts.input_price),
            ("cached_input_per_million", facts.cached_input_price),
            ("output_per_million", facts.output_price),
        )
        if value is not None
    }
    if pricing:
        entry["pricing"] = {**pricing, "currency": "USD"}
    return entry
