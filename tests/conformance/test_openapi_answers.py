"""The served answers match the OpenAPI document the service publishes (``/openapi.json``):
a client generated from it reads what the gateway really sends."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import jsonschema
import pytest

from trio_orchestrator.catalogue import CatalogueConfig, ModelFacts
from trio_orchestrator.config import Config
from trio_orchestrator.config.service import ServiceConfig
from trio_orchestrator.testing.fake_provider import FakeProvider
from trio_orchestrator.workers import ProviderConfig, ProvidersConfig

from .conftest import UPSTREAM_KEY, Gateway, start_gateway

LOCAL = ModelFacts(context_window=8192, capabilities=["tools"], input_price=0.0)


def _config(fake: FakeProvider) -> Config:
    """A catalogued model and one the configuration describes."""
    upstream = ProviderConfig(
        "openai",
        "up",
        fake.openai_base_url,
        stream=False,
        api_keys=[UPSTREAM_KEY],
        models=["gpt-4o-mini", "my-local", "unknown-model"],
    )
    return Config(
        providers=ProvidersConfig([upstream]),
        service=ServiceConfig(port=0),
        catalogue=CatalogueConfig(models={"my-local": LOCAL}),
    )


@pytest.fixture(scope="module")
def served() -> Iterator[Gateway]:
    """The gateway in front of the fake, its models described by the catalogue."""
    running = start_gateway("openai", _config)
    try:
        yield running.gateway
    finally:
        running.stop()


def _schema(document: dict[str, Any], path: str) -> dict[str, Any]:
    """The 200 answer's schema of GET ``path``."""
    schema: dict[str, Any] = document["paths"][path]["get"]["responses"]["200"]["content"][
        "application/json"
    ]["schema"]
    return schema


def test_models_answers_match_the_published_schemas(served: Gateway) -> None:
    """GET /v1/models and /v1/models/{model} validate against the document's own schemas,
    which describe the model object (not a bare object): id, facts and pricing."""
    with httpx.Client(base_url=served.url.removesuffix("/v1")) as client:
        document = client.get("/openapi.json").json()
        listing = client.get("/v1/models").json()
        one = client.get("/v1/models/gpt-4o-mini").json()
    listed = _schema(document, "/v1/models")
    single = _schema(document, "/v1/models/{model}")
    assert listed["properties"]["data"]["items"]["required"] == [
        "id",
        "object",
        "created",
        "owned_by",
    ]
    jsonschema.validate(listing, listed)
    jsonschema.validate(one, single)
    assert {m["id"] for m in listing["data"]} == {"gpt-4o-mini", "my-local", "unknown-model"}
    assert set(single["properties"]) >= set(one)  # every member it sends is described
