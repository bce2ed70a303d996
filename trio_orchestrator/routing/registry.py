"""The model registry: deployments declared in configuration, aliases, and name resolution.

A *deployment* is one way to reach a model: a provider, the model's name upstream, its
limits, prices and capabilities. Several deployments may serve one public model name (the
same model at two providers), and a deployment may belong to groups. A client names a public
model, a group, or an alias, and the router picks among the deployments that name resolves
to (:class:`ModelRegistry`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal, TypeVar

import attrs

from ..catalogue.facts import CAPABILITIES as CATALOGUE_CAPABILITIES
from ..catalogue.facts import Catalogue, ModelFacts, bundled_catalogue, dollars
from ..validators import non_negative, positive_int, unit_interval

__all__ = [
    "CAPABILITIES",
    "STRATEGIES",
    "AliasConfig",
    "AutoConfig",
    "BanditConfig",
    "BudgetConfig",
    "ModelDeployment",
    "ModelInfo",
    "ModelRegistry",
    "Route",
    "RoutingConfig",
]

CAPABILITIES = frozenset(
    ("tools", "vision", "json_mode", "json_schema", "reasoning", "embeddings", "streaming")
)
"""The capabilities a deployment may declare."""

STRATEGIES = frozenset(
    ("cost", "latency", "reliability", "weighted", "least-loaded", "complexity", "bandit")
)
"""The routing strategies by name."""

StreamFallback = Literal["fail", "restart"]
_T = TypeVar("_T")


def _non_empty(_instance: object, attribute: attrs.Attribute[Any], value: str) -> None:
    if not value:
        raise ValueError(f"{attribute.name} must not be empty")


def _capabilities(value: Iterable[str] | None) -> tuple[str, ...] | None:
    if value is None:
        return None
    if isinstance(value, str):
        raise ValueError(f"capabilities must be a list of names, got the string {value!r}")
    found = tuple(sorted(set(value)))
    unknown = set(found) - CAPABILITIES
    if unknown:
        raise ValueError(
            f"unknown capabilities {sorted(unknown)}; expected some of {sorted(CAPABILITIES)}"
        )
    return found


def _strategy(_instance: object, attribute: attrs.Attribute[Any], value: str | None) -> None:
    if value is not None and value not in STRATEGIES:
        raise ValueError(f"{attribute.name} must be one of {sorted(STRATEGIES)}, got {value!r}")


def _names(value: Iterable[str]) -> tuple[str, ...]:
    if isinstance(value, str):
        return (value,)
    return tuple(value)


@attrs.frozen
class ModelDeployment:
    """One way to reach a model: a provider, its upstream name, limits, prices, capabilities.

    A fact left unset (limits, prices, capabilities) comes from the model catalogue
    (``[catalogue]``, by ``upstream_model``, then ``model``) when the router is built
    (:meth:`resolved`); a model the catalogue does not know gets a context window of 8192,
    4096 output tokens, price 0 and ``streaming``.

    Attributes:
        name: the deployment's unique id (``"gpt-4o@azure"``); used in logs, statistics and
            profiles.
        model: the public model name clients ask for; several deployments may share it.
        provider: the provider whose worker serves this deployment.
        upstream_model: the model name sent to the provider (default: ``model``).
        context_window: tokens the model holds, prompt and answer together (unset: the
            catalogue's).
        max_output_tokens: the most tokens it generates in one answer (unset: the
            catalogue's).
        input_price: US dollars per million input tokens (unset: the catalogue's).
        output_price: US dollars per million output tokens (unset: the catalogue's).
        capabilities: some of ``tools``, ``vision``, ``json_mode``, ``json_schema``,
            ``reasoning``, ``embeddings``, ``streaming`` (unset: the catalogue's).
        weight: share of traffic under the ``weighted`` strategy (relative, > 0).
        groups: groups this deployment belongs to; a client may ask for a group by name.
        cached_input_price: US dollars per million input tokens read from the provider's
            prompt cache (``Usage.cached_input_tokens``; unset: the catalogue's, else
            ``input_price``).
    """

    name: str = attrs.field(validator=_non_empty)
    model: str = attrs.field(validator=_non_empty)
    provider: str = attrs.field(validator=_non_empty)
    upstream_model: str = attrs.field(default="")
    context_window: int | None = attrs.field(
        default=None, validator=attrs.validators.optional(positive_int)
    )
    max_output_tokens: int | None = attrs.field(
        default=None, validator=attrs.validators.optional(positive_int)
    )
    input_price: float | None = attrs.field(
        default=None, validator=attrs.validators.optional(non_negative)
    )
    output_price: float | None = attrs.field(
        default=None, validator=attrs.validators.optional(non_negative)
    )
    capabilities: tuple[str, ...] | None = attrs.field(default=None, converter=_capabilities)
    weight: float = attrs.field(default=1.0)
    groups: tuple[str, ...] = attrs.field(default=(), converter=_names)
    cached_input_price: float | None = attrs.field(
        default=None, validator=attrs.validators.optional(non_negative)
    )

    def __attrs_post_init__(self) -> None:
        if not self.upstream_model:
            object.__setattr__(self, "upstream_model", self.model)

    @weight.validator
    def _check_weight(self, _attribute: object, value: float) -> None:
        if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
            raise ValueError(f"weight must be a number > 0, got {value!r}")
        if math.isinf(value):
            raise ValueError("weight must be finite")

    def cost(self, input_tokens: int, output_tokens: int, cached_input_tokens: int = 0) -> float:
        """Return the price in US dollars of a call with these token counts (``input_tokens``
        includes ``cached_input_tokens``, which cost ``cached_input_price``)."""
        prices = (self.input_price, self.cached_input_price, self.output_price)
        return dollars(prices, input_tokens, output_tokens, cached_input_tokens)

    @property
    def facts(self) -> ModelFacts:
        """This deployment's limits, prices and capabilities as catalogue facts (unset:
        unknown)."""
        capabilities = None
        if self.capabilities is not None:
            capabilities = tuple(c for c in self.capabilities if c in CATALOGUE_CAPABILITIES)
        return ModelFacts(
            capabilities=capabilities,
            context_window=self.context_window,
            max_output_tokens=self.max_output_tokens,
            input_price=self.input_price,
            cached_input_price=self.cached_input_price,
            output_price=self.output_price,
        )

    def resolved(self, catalogue: Catalogue) -> ModelDeployment:
        """This deployment with every unset fact taken from ``catalogue`` (by
        ``upstream_model``, then ``model``), else the defaults for an unknown model."""
        facts = catalogue.get(self.upstream_model) or catalogue.facts(self.model)
        return attrs.evolve(
            self,
            context_window=_first(self.context_window, facts.context_window, 8192),
            max_output_tokens=_first(self.max_output_tokens, facts.max_output_tokens, 4096),
            input_price=_first(self.input_price, facts.input_price, 0.0),
            cached_input_price=_first(self.cached_input_price, facts.cached_input_price, None),
            output_price=_first(self.output_price, facts.output_price, 0.0),
            capabilities=_first(self.capabilities, _deployment_capabilities(facts), ("streaming",)),
        )


def _first(mine: _T | None, catalogue: _T | None, default: _T) -> _T:
    if mine is not None:
        return mine
    return default if catalogue is None else catalogue


def _deployment_capabilities(facts: ModelFacts) -> tuple[str, ...] | None:
    """The router's capability names for a catalogue entry's (a chat model streams; one with
    ``json_schema`` does JSON mode too)."""
    found = facts.capabilities
    if found is None:
        return None
    names = set(found)
    if "json_schema" in names:
        names.add("json_mode")
    if "embeddings" not in names:
        names.add("streaming")
    return tuple(sorted(names))


@attrs.frozen
class ModelInfo:
    """What a client can learn about a public model name (``/v1/models``).

    Attributes:
        id: the public model name.
        deployments: the names of the deployments serving it.
        providers: their providers.
        context_window: the largest context window among them.
        capabilities: the capabilities at least one of them has.
    """

    id: str
    deployments: tuple[str, ...]
    providers: tuple[str, ...]
    context_window: int
    capabilities: frozenset[str]


@attrs.frozen
class AliasConfig:
    """A name that stands for some models or groups, with an optional strategy of its own.

    Attributes:
        targets: public model names, group names or deployment names it resolves to.
        strategy: the strategy for requests naming this alias (default: ``routing.strategy``).
    """

    targets: tuple[str, ...] = attrs.field(converter=_names)
    strategy: str | None = attrs.field(default=None, validator=_strategy)

    @targets.validator
    def _check_targets(self, _attribute: object, value: tuple[str, ...]) -> None:
        if not value:
            raise ValueError("an alias needs at least one target")


@attrs.frozen
class AutoConfig:
    """How the ``auto`` alias chooses between a cheap/local and a strong/cloud model.

    Attributes:
        cheap: model, group or deployment names of the cheap (or local) pool.
        strong: model, group or deployment names of the strong (or cloud) pool.
        threshold: requests with a complexity score at or above it go to the strong pool
            first (the score is in [0, 1]; see :func:`complexity_score`).
    """

    cheap: tuple[str, ...] = attrs.field(default=("cheap",), converter=_names)
    strong: tuple[str, ...] = attrs.field(default=("strong",), converter=_names)
    threshold: float = attrs.field(default=0.4, validator=unit_interval)


@attrs.frozen
class BudgetConfig:
    """Spending limits, in US dollars, per period.

    Attributes:
        per_api_key: limit per API key id (``request.meta["api_key_id"]``).
        default_per_api_key: limit for API keys not listed (``inf``: none).
        per_model: limit per public model name.
        period: seconds after which spending counts restart (``inf``: never).
        default_output_tokens: output tokens assumed when a request sets no ``max_tokens``.
    """

    per_api_key: Mapping[str, float] = attrs.field(factory=dict, hash=False)
    default_per_api_key: float = attrs.field(default=math.inf, validator=non_negative)
    per_model: Mapping[str, float] = attrs.field(factory=dict, hash=False)
    period: float = attrs.field(default=math.inf)
    default_output_tokens: int = attrs.field(default=256, validator=positive_int)

    @period.validator
    def _check_period(self, _attribute: object, value: float) -> None:
        if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
            raise ValueError(f"period must be seconds > 0 (inf for never), got {value!r}")

    @per_api_key.validator
    @per_model.validator
    def _check_limits(self, attribute: attrs.Attribute[Any], value: Mapping[str, float]) -> None:
        for key, limit in value.items():
            if isinstance(limit, bool) or not isinstance(limit, int | float) or not limit >= 0:
                raise ValueError(f"{attribute.name}.{key} must be dollars ≥ 0, got {limit!r}")

    @property
    def enabled(self) -> bool:
        """Whether any limit is set."""
        return bool(self.per_api_key or self.per_model) or math.isfinite(self.default_per_api_key)


@attrs.frozen
class BanditConfig:
    """The ``bandit`` strategy: learn which deployment of a group serves best.

    Attributes:
        algorithm: ``thompson`` (Thompson sampling on a Beta posterior) or ``epsilon-greedy``.
        epsilon: the exploration rate of ``epsilon-greedy``.
        success_weight: weight of success in an outcome's reward.
        latency_weight: weight of speed (``1 - latency / latency_scale``, floored at 0).
        cost_weight: weight of cheapness (``1 - cost / cost_scale``, floored at 0).
        latency_scale: seconds of latency that earn no speed reward.
        cost_scale: dollars per call that earn no cheapness reward.
        seed: seeds the bandit's random numbers (``None``: from the system).
    """

    algorithm: Literal["thompson", "epsilon-greedy"] = attrs.field(
        default="thompson", validator=attrs.validators.in_(("thompson", "epsilon-greedy"))
    )
    epsilon: float = attrs.field(default=0.1, validator=unit_interval)
    success_weight: float = attrs.field(default=0.7, validator=non_negative)
    latency_weight: float = attrs.field(default=0.2, validator=non_negative)
    cost_weight: float = attrs.field(default=0.1, validator=non_negative)
    latency_scale: float = attrs.field(default=30.0)
    cost_scale: float = attrs.field(default=0.05)
    seed: int | None = None

    @latency_scale.validator
    @cost_scale.validator
    def _check_scale(self, attribute: attrs.Attribute[Any], value: float) -> None:
        if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
            raise ValueError(f"{attribute.name} must be a number > 0, got {value!r}")

    def __attrs_post_init__(self) -> None:
        if self.success_weight + self.latency_weight + self.cost_weight <= 0:
            raise ValueError("at least one of success/latency/cost_weight must be > 0")


def _deployments(value: Iterable[ModelDeployment]) -> tuple[ModelDeployment, ...]:
    return tuple(value)


@attrs.frozen
class RoutingConfig:
    """The router: deployments, aliases, strategy, fallbacks, budgets and learning.

    Routing is on when ``deployments`` is not empty.

    Attributes:
        deployments: the models the router may call.
        strategy: how deployments are ordered: ``cost``, ``latency``, ``reliability``,
            ``weighted``, ``least-loaded``, ``complexity`` or ``bandit``.
        aliases: extra names, each standing for some models or groups (with its own strategy).
            Built in unless configured: ``auto`` (complexity-scored), ``fast`` (every
            deployment, by latency), ``cheap`` (every deployment, by cost).
        auto: the pools and threshold of the ``auto`` alias.
        max_attempts: deployments tried per request, the first included.
        stream_fallback: after a stream has forwarded an event, ``fail`` (raise the error) or
            ``restart`` (try the next deployment after a marker; callers opt in per request
            with ``meta["allow_stream_restart"] = "1"``).
        restart_marker: the text of the ``TextDelta`` that announces a restart.
        rest_after_refusal: seconds a deployment is skipped after it refused a call (open
            breaker, rate limit) without saying for how long.
        ewma_alpha: weight of the newest observation in the tracker's moving averages.
        budgets: spending limits.
        bandit: settings of the ``bandit`` strategy.
        profile_path: JSON file the tracker's profiles are loaded from at start and saved to
            (``None``: not persisted).
        profile_save_interval: seconds between saves of the profiles while the router runs
            under :func:`open_router` (which also saves once more when it closes).
        decision_log: routing decisions kept for inspection (``RouterWorker.recent_decisions``).
    """

    deployments: tuple[ModelDeployment, ...] = attrs.field(default=(), converter=_deployments)
    strategy: str = attrs.field(default="cost", validator=_strategy)
    aliases: Mapping[str, AliasConfig] = attrs.field(factory=dict, hash=False)
    auto: AutoConfig = attrs.field(factory=AutoConfig)
    max_attempts: int = attrs.field(default=3, validator=positive_int)
    stream_fallback: StreamFallback = attrs.field(
        default="fail", validator=attrs.validators.in_(("fail", "restart"))
    )
    restart_marker: str = "\n\n[restarted on another model]\n\n"
    rest_after_refusal: float = attrs.field(default=1.0, validator=non_negative)
    ewma_alpha: float = attrs.field(default=0.2)
    budgets: BudgetConfig = attrs.field(factory=BudgetConfig)
    bandit: BanditConfig = attrs.field(factory=BanditConfig)
    profile_path: str | None = None
    profile_save_interval: float = attrs.field(default=300.0)
    decision_log: int = attrs.field(default=100, validator=positive_int)

    @ewma_alpha.validator
    def _check_alpha(self, _attribute: object, value: float) -> None:
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= 1:
            raise ValueError(f"ewma_alpha must be in (0, 1], got {value!r}")

    @profile_save_interval.validator
    def _check_interval(self, _attribute: object, value: float) -> None:
        if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
            raise ValueError(f"profile_save_interval must be seconds > 0, got {value!r}")

    @deployments.validator
    def _check_unique(self, _attribute: object, value: tuple[ModelDeployment, ...]) -> None:
        names = [d.name for d in value]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"deployment names must be unique; repeated: {duplicates}")

    @aliases.validator
    def _check_targets(self, _attribute: object, value: Mapping[str, AliasConfig]) -> None:
        # Checked only when deployments are declared here: a RouterWorker built in code
        # brings its deployments separately.
        if not self.deployments:
            return
        known: set[str] = set()
        for d in self.deployments:
            known.update((d.name, d.model, *d.groups))
        for alias, config in value.items():
            unknown = [t for t in config.targets if t not in known]
            if unknown:
                raise ValueError(
                    f"aliases.{alias}.targets: {unknown} name no model, group or deployment"
                )

    @property
    def enabled(self) -> bool:
        """Whether routing is on (some deployment is declared)."""
        return bool(self.deployments)


@attrs.frozen
class Route:
    """What a requested name resolves to.

    Attributes:
        name: the name the client asked for.
        candidates: the deployments it may be served by, in declaration order.
        strategy: the strategy that orders them.
        pools: for ``complexity``: the cheap pool and the strong pool.
    """

    name: str
    candidates: tuple[ModelDeployment, ...]
    strategy: str
    pools: tuple[tuple[ModelDeployment, ...], tuple[ModelDeployment, ...]] | None = None


_BUILT_IN = {"fast": "latency", "cheap": "cost"}


class ModelRegistry:
    """Resolves requested names to deployments.

    Precedence, first match wins: a configured alias, a public model name, a group name, a
    deployment name, then the built-in aliases ``auto``, ``fast`` and ``cheap``.

    Args:
        config: the routing configuration.
        catalogue: where deployments' unset facts come from (default: the bundled one).
    """

    def __init__(self, config: RoutingConfig, catalogue: Catalogue | None = None) -> None:
        self._config = config
        known = bundled_catalogue() if catalogue is None else catalogue
        self._deployments = tuple(d.resolved(known) for d in config.deployments)
        self._routes: dict[str, Route] = {}
        for name in self._names():
            route = self._build(name)
            if route is not None:
                self._routes[name] = route

    @property
    def deployments(self) -> tuple[ModelDeployment, ...]:
        """Every declared deployment, its unset facts filled from the catalogue."""
        return self._deployments

    def resolve(self, name: str) -> Route | None:
        """Return the route for ``name``, or ``None`` when nothing answers to it."""
        return self._routes.get(name)

    def names(self) -> tuple[str, ...]:
        """Every name a client may ask for, sorted."""
        return tuple(sorted(self._routes))

    def models(self) -> tuple[ModelInfo, ...]:
        """One :class:`ModelInfo` per public model name, sorted by name."""
        by_model: dict[str, list[ModelDeployment]] = {}
        for deployment in self._deployments:
            by_model.setdefault(deployment.model, []).append(deployment)
        return tuple(
            ModelInfo(
                id=model,
                deployments=tuple(d.name for d in found),
                providers=tuple(dict.fromkeys(d.provider for d in found)),
                context_window=max(d.context_window or 0 for d in found),
                capabilities=frozenset().union(*(d.capabilities or () for d in found)),
            )
            for model, found in sorted(by_model.items())
        )

    def _names(self) -> list[str]:
        names: list[str] = [*self._config.aliases, "auto", *_BUILT_IN]
        for deployment in self._deployments:
            names += [deployment.model, deployment.name, *deployment.groups]
        return list(dict.fromkeys(names))

    def _build(self, name: str) -> Route | None:
        alias = self._config.aliases.get(name)
        if alias is not None:
            strategy = alias.strategy or self._config.strategy
            return Route(name, self._select(alias.targets), strategy)
        direct = self._select((name,))
        if direct:
            return Route(name, direct, self._config.strategy)
        if name == "auto":
            cheap, strong = (
                self._select(self._config.auto.cheap),
                self._select(self._config.auto.strong),
            )
            every = tuple(dict.fromkeys((*cheap, *strong)))
            return Route(name, every, "complexity", (cheap, strong)) if every else None
        if name in _BUILT_IN and self._deployments:
            return Route(name, self._deployments, _BUILT_IN[name])
        return None

    def _select(self, targets: Sequence[str]) -> tuple[ModelDeployment, ...]:
        """Deployments answering to any of ``targets`` (model, group or deployment name)."""
        wanted = set(targets)
        return tuple(
            d
            for d in self._deployments
            if d.model in wanted or d.name in wanted or wanted.intersection(d.groups)
        )
