"""The model catalogue: the bundled file, lookups, overrides, prices and the config section."""

from __future__ import annotations

import datetime
import tomllib
from pathlib import Path

import attrs
import pytest

from trio_orchestrator import Config, open_gateway
from trio_orchestrator.catalogue import (
    CAPABILITIES,
    Catalogue,
    CatalogueConfig,
    ModelFacts,
    bundled_catalogue,
    catalogue_for,
    parse_catalogue,
)
from trio_orchestrator.config import parse_config
from trio_orchestrator.errors import ConfigError
from trio_orchestrator.routing import ModelDeployment, ModelRegistry, RoutingConfig

BUNDLED = Path(__file__).parent.parent / "trio_orchestrator" / "catalogue" / "models.toml"
PROVIDERS = {"openai", "anthropic", "gemini", "bedrock", "groq", "mistral", "deepseek"}


def test_bundled_catalogue_is_dated_sourced_and_covers_the_major_providers() -> None:
    """The bundled file says when it was compiled and from where, for every major provider."""
    catalogue = bundled_catalogue()
    assert catalogue.compiled == datetime.date(2026, 12, 4)
    assert any("litellm" in s.lower() for s in catalogue.sources)
    assert {f.provider for f in catalogue.models.values()} == PROVIDERS


def test_bundled_entries_are_whole_and_valid() -> None:
    """Every chat entry has a window, an output limit and prices; every name is unique."""
    document = tomllib.loads(BUNDLED.read_text())
    assert len(document["models"]) == len(bundled_catalogue().models) >= 40
    for name, facts in bundled_catalogue().models.items():
        assert facts.context_window, name
        assert facts.input_price is not None, name
        assert set(facts.capabilities or ()) <= CAPABILITIES, name
        if "embeddings" not in (facts.capabilities or ()):
            assert facts.max_output_tokens, name
            assert facts.output_price is not None, name


def test_bundled_catalogue_is_read_once() -> None:
    """The loader caches: two calls give the same object."""
    assert bundled_catalogue() is bundled_catalogue()


@pytest.mark.parametrize(
    ("name", "found"),
    [
        ("gpt-4o-mini", "gpt-4o-mini"),
        ("openai/gpt-4o-mini", "gpt-4o-mini"),
        ("us.anthropic.claude-haiku-4-5-20251001-v1:0", "anthropic.claude-haiku-4-5-20251001-v1:0"),
        ("openai/gpt-oss-120b", "openai/gpt-oss-120b"),
    ],
)
def test_lookup_strips_provider_and_region_prefixes(name: str, found: str) -> None:
    """A name is found as given, without a provider/ prefix, or without a Bedrock region."""
    catalogue = bundled_catalogue()
    assert catalogue.get(name) is catalogue.models[found]


def test_unknown_model_has_no_facts() -> None:
    """A model the catalogue does not know is None, or all-unknown facts."""
    assert bundled_catalogue().get("my-own-llama") is None
    assert bundled_catalogue().facts("my-own-llama") == ModelFacts()


def test_cost_charges_cached_tokens_the_cached_price() -> None:
    """Cached input tokens cost the cached-input price, the rest the input price."""
    facts = ModelFacts(input_price=2.0, cached_input_price=0.5, output_price=8.0)
    assert facts.cost(1000, 100, cached_input_tokens=400) == pytest.approx(
        (600 * 2 + 400 * 0.5 + 100 * 8) / 1e6
    )
    assert ModelFacts(input_price=2.0).cost(1000, 0, 400) == pytest.approx(2000 / 1e6)


def test_an_override_replaces_only_the_facts_it_gives() -> None:
    """A config entry for a known model keeps the facts it leaves unset; a new one is added."""
    config = parse_config(
        '[catalogue.models."gpt-4o"]\ninput_price = 2\n'
        '[catalogue.models."mine"]\ncontext_window = 4096\ncapabilities = ["tools"]\n'
    )
    catalogue = catalogue_for(config.catalogue)
    gpt = catalogue.get("gpt-4o")
    assert gpt is not None
    assert (gpt.input_price, gpt.output_price, gpt.context_window) == (2.0, 10.0, 128000)
    assert catalogue.get("mine") == ModelFacts(context_window=4096, capabilities=("tools",))
    assert bundled_catalogue().models["gpt-4o"].input_price == 2.5


def test_bundled_can_be_switched_off() -> None:
    """With bundled = false only the configured entries are known."""
    catalogue = catalogue_for(CatalogueConfig(bundled=False, models={"m": ModelFacts()}))
    assert list(catalogue) == ["m"]


@pytest.mark.parametrize(
    "toml",
    [
        '[catalogue.models."m"]\ncapabilities = ["telepathy"]\n',
        '[catalogue.models."m"]\ninput_price = -1\n',
        '[catalogue.models."m"]\ncontext_window = 0\n',
        '[catalogue.models."m"]\nprice = 1\n',
    ],
)
def test_bad_entries_are_config_errors(toml: str) -> None:
    """An unknown capability or key, a negative price or a zero window is refused."""
    with pytest.raises(ConfigError, match="catalogue"):
        parse_config(toml)


def test_parse_catalogue_names_the_bad_entry() -> None:
    """A bad entry in a catalogue file is an error naming it."""
    with pytest.raises(ValueError, match=r"models\.broken"):
        parse_catalogue({"models": {"broken": {"context_window": -3}}})


def test_deployment_facts_come_from_the_catalogue_unless_configured() -> None:
    """The registry fills a deployment's unset facts from the catalogue, else the defaults."""
    catalogue = Catalogue({"m": ModelFacts(context_window=100, input_price=1.0)})
    config = RoutingConfig(
        [
            ModelDeployment("a", "m", "p"),
            ModelDeployment("b", "m", "p", context_window=50),
            ModelDeployment("c", "other", "p"),
        ]
    )
    a, b, c = ModelRegistry(config, catalogue).deployments
    assert (a.context_window, a.input_price, a.max_output_tokens) == (100, 1.0, 4096)
    assert b.context_window == 50
    assert (c.context_window, c.input_price, c.capabilities) == (8192, 0.0, ("streaming",))


def test_catalogued_capabilities_become_routing_capabilities() -> None:
    """A catalogued chat model streams, and json_schema implies json_mode for the router."""
    (deployment,) = ModelRegistry(RoutingConfig([ModelDeployment("g", "gpt-4o", "p")])).deployments
    assert deployment.capabilities is not None
    assert {"streaming", "tools", "vision", "json_mode", "json_schema"} <= set(
        deployment.capabilities
    )


async def test_a_reload_changing_the_catalogue_is_refused() -> None:
    """[catalogue] is read at start: a reload changing it is refused, the old facts stay."""
    config = Config(catalogue=CatalogueConfig(models={"m": ModelFacts(input_price=1.0)}))
    async with open_gateway(config) as gateway:
        new = attrs.evolve(config, catalogue=CatalogueConfig(models={"m": ModelFacts()}))
        report = gateway.reload(new)
        assert any(line.startswith("catalogue") for line in report.refused), report
        facts = gateway.model_facts("m")
        assert facts is not None
        assert facts.input_price == 1.0
