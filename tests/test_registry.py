"""The model registry: deployments and routing configuration, and how names resolve."""

from __future__ import annotations

import math

import pytest

from trio_orchestrator import Config
from trio_orchestrator.routing import (
    AliasConfig,
    AutoConfig,
    BanditConfig,
    BudgetConfig,
    ModelDeployment,
    ModelRegistry,
    RoutingConfig,
)


def test_upstream_model_defaults_to_the_public_name() -> None:
    """A deployment without upstream_model sends its public model name upstream."""
    assert ModelDeployment("d", "gpt-4o", "openai").upstream_model == "gpt-4o"


def test_cost_is_priced_per_million_tokens() -> None:
    """cost() applies the input and output prices per million tokens."""
    d = ModelDeployment("d", "m", "p", input_price=2.0, output_price=8.0)
    assert d.cost(1_000_000, 500_000) == pytest.approx(6.0)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"context_window": 0}, "context_window"),
        ({"max_output_tokens": True}, "max_output_tokens"),
        ({"input_price": -1.0}, "input_price"),
        ({"output_price": math.nan}, "output_price"),
        ({"capabilities": ("telepathy",)}, "unknown capabilities"),
        ({"capabilities": "tools"}, "list of names"),
        ({"weight": 0}, "weight"),
        ({"name": ""}, "name"),
    ],
)
def test_a_deployment_rejects_invalid_values(fields: dict[str, object], message: str) -> None:
    """Each field is range-checked, and the error names it."""
    values: dict[str, object] = {"name": "d", "model": "m", "provider": "p", **fields}
    with pytest.raises(ValueError, match=message):
        ModelDeployment(**values)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: RoutingConfig(strategy="fastest"), "strategy"),
        (lambda: RoutingConfig(stream_fallback="retry"), "stream_fallback"),  # type: ignore[arg-type]
        (lambda: RoutingConfig(ewma_alpha=0), "ewma_alpha"),
        (lambda: AliasConfig(()), "at least one target"),
        (lambda: AutoConfig(threshold=1.5), "threshold"),
        (lambda: BudgetConfig(per_api_key={"k": -1.0}), r"per_api_key\.k"),
        (lambda: BudgetConfig(period=0), "period"),
        (lambda: BanditConfig(latency_scale=0), "latency_scale"),
        (lambda: BanditConfig(success_weight=0, latency_weight=0, cost_weight=0), "weight"),
        (
            lambda: RoutingConfig(
                deployments=(ModelDeployment("d", "m", "p"), ModelDeployment("d", "n", "q"))
            ),
            r"repeated: \['d'\]",
        ),
        (
            lambda: RoutingConfig(
                deployments=(ModelDeployment("d", "m", "p"),),
                aliases={"best": AliasConfig(("m", "gpt-5"))},
            ),
            r"aliases\.best\.targets: \['gpt-5'\]",
        ),
    ],
)
def test_routing_config_rejects_invalid_values(build: object, message: str) -> None:
    """Invalid routing settings fail at construction with the key named."""
    with pytest.raises(ValueError, match=message):
        build()  # type: ignore[operator]


def test_routing_is_part_of_the_root_config_and_off_by_default() -> None:
    """Config has a routing section, enabled only once deployments are declared."""
    assert not Config().routing.enabled
    routing = RoutingConfig(deployments=(ModelDeployment("d", "m", "p"),))
    assert Config(routing=routing).routing.enabled


def registry(**kwargs: object) -> ModelRegistry:
    deployments = (
        ModelDeployment("gpt@openai", "gpt", "openai", groups=("premium", "strong")),
        ModelDeployment("gpt@azure", "gpt", "azure", groups="premium"),
        ModelDeployment("llama@local", "llama", "local", groups=("cheap",)),
    )
    return ModelRegistry(RoutingConfig(deployments=deployments, **kwargs))  # type: ignore[arg-type]


def test_a_public_model_name_resolves_to_all_its_deployments() -> None:
    """Asking for ``gpt`` offers both of its deployments."""
    route = registry().resolve("gpt")
    assert route is not None
    assert [d.name for d in route.candidates] == ["gpt@openai", "gpt@azure"]


def test_a_group_and_a_deployment_name_resolve() -> None:
    """A group name offers its members; a deployment name offers that one deployment."""
    reg = registry()
    premium, single = reg.resolve("premium"), reg.resolve("gpt@azure")
    assert premium is not None
    assert single is not None
    assert {d.name for d in premium.candidates} == {"gpt@openai", "gpt@azure"}
    assert [d.name for d in single.candidates] == ["gpt@azure"]


def test_a_configured_alias_wins_over_a_group_of_the_same_name() -> None:
    """Precedence: a configured alias before models, groups and built-ins."""
    reg = registry(aliases={"premium": AliasConfig("llama", strategy="latency")})
    route = reg.resolve("premium")
    assert route is not None
    assert [d.name for d in route.candidates] == ["llama@local"]
    assert route.strategy == "latency"


def test_auto_splits_deployments_into_the_cheap_and_strong_pools() -> None:
    """``auto`` resolves to the configured pools, under the complexity strategy."""
    route = registry().resolve("auto")
    assert route is not None
    assert route.strategy == "complexity"
    assert route.pools is not None
    cheap, strong = route.pools
    assert ([d.name for d in cheap], [d.name for d in strong]) == (
        ["llama@local"],
        ["gpt@openai"],
    )


def test_built_in_fast_offers_every_deployment_by_latency() -> None:
    """``fast`` (unless a model or group is named so) covers all deployments."""
    route = registry().resolve("fast")
    assert route is not None
    assert route.strategy == "latency"
    assert len(route.candidates) == 3


def test_an_unknown_name_resolves_to_nothing() -> None:
    """A name no model, group, deployment or alias has resolves to None."""
    assert registry().resolve("nope") is None


def test_models_describes_each_public_model() -> None:
    """models() merges each public model's deployments for /v1/models."""
    gpt, llama = registry().models()
    assert (gpt.id, gpt.providers, llama.id) == ("gpt", ("openai", "azure"), "llama")


def test_routing_config_structures_from_toml_through_cattrs() -> None:
    """A TOML routing section becomes the attrs classes, validated, through cattrs."""
    import tomllib

    import cattrs

    document = tomllib.loads(
        """
        [routing]
        strategy = "latency"
        [[routing.deployments]]
        name = "gpt@openai"
        model = "gpt-4o"
        provider = "openai"
        capabilities = ["tools", "streaming"]
        groups = ["strong"]
        [routing.aliases.best]
        targets = ["strong"]
        strategy = "reliability"
        [routing.budgets]
        per_api_key = { team-a = 20.0 }
        """
    )
    config = cattrs.Converter(forbid_extra_keys=True).structure(document, Config)
    (deployment,) = config.routing.deployments
    assert deployment.capabilities == ("streaming", "tools")
    assert config.routing.aliases["best"].targets == ("strong",)
    assert config.routing.budgets.per_api_key == {"team-a": 20.0}
