"""Reload by section: each reloadable option reaches the running part that uses it, and an
option no running part takes is refused, its old value kept in force (issue 15, item 3).

Every test opens a gateway, reloads, and reads the part that is running: the pipeline's
limiter, a layer's configuration or statistics, a key pool's keys, the router's registry
and decisions. The Redis-backed shared breakers and limiters are covered with the
distributed tests.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import trio
import trio.testing

from trio_orchestrator import EchoWorker, GenerationParams, PromptRequest, RateLimitExceeded
from trio_orchestrator.config import Config, parse_config
from trio_orchestrator.config.secret import Secret
from trio_orchestrator.gateway import Gateway, open_gateway
from trio_orchestrator.resilience import (
    CacheLayer,
    CircuitBreakerLayer,
    CoalescingLayer,
    RateLimitLayer,
    RetryLayer,
    iter_layers,
)
from trio_orchestrator.routing import RouterWorker
from trio_orchestrator.workers.keys import KeyPool

# ------------------------------------------------------------------ helpers


def _part(gateway: Gateway, kind: type[Any]) -> Any:
    """The one running part of class ``kind``."""
    (part,) = [c.part for c in gateway.components if isinstance(c.part, kind)]
    return part


def _parts(gateway: Gateway, kind: type[Any]) -> list[Any]:
    return [c.part for c in gateway.components if isinstance(c.part, kind)]


def _paths(gateway: Gateway, config: Config) -> tuple[list[str], list[str]]:
    """Reload ``config``; the key paths applied and refused."""
    report = gateway.reload(config)
    return [c.path for c in report.applied], [r.split(":")[0] for r in report.refused]


# ------------------------------------------------------------------ [pipeline]


def _pipeline(gateway: Gateway, option: str) -> object:
    if option == "inference_concurrency":
        return gateway.pipeline.statistics().inference_concurrency  # the running limiter
    return getattr(gateway.pipeline.config.pipeline, option)


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("inference_concurrency", 3),
        ("stream_buffer", 8),
        ("request_timeout", 1.5),
        ("grace_period", 60.0),
    ],
)
async def test_each_reloadable_pipeline_option_reaches_the_running_pipeline(
    option: str, value: object
) -> None:
    """A reloaded ``[pipeline]`` option is in force in the running pipeline."""
    async with open_gateway(worker=EchoWorker()) as gateway:
        before = _pipeline(gateway, option)
        assert before != value
        applied, refused = _paths(gateway, parse_config(f"[pipeline]\n{option} = {value}\n"))
        assert (applied, refused) == ([f"pipeline.{option}"], [])
        assert _pipeline(gateway, option) == value


# ------------------------------------------------------------------ [resilience.*]

LAYERS = """
[resilience.cache]
enabled = true
max_entries = {cache}
[resilience.coalescing]
enabled = true
max_subscribers = {coalescing}
[resilience.rate_limits]
enabled = true
limits = [{{ scope = "provider", requests_per_second = {rate}, burst = 5.0 }}]
[resilience.breaker]
enabled = true
failure_threshold = {breaker}
[resilience.retry]
enabled = true
max_attempts = {retry}
"""
BEFORE = {"cache": 10, "coalescing": 100, "rate": 1.0, "breaker": 5, "retry": 2}


def _layers(**changes: object) -> Config:
    return parse_config(LAYERS.format(**(BEFORE | changes)))


def _breaker_threshold(layer: CircuitBreakerLayer) -> object:
    # The layer's setting and the breaker already made for a target must both move.
    return (layer.config.failure_threshold, layer.breaker("echo").config.failure_threshold)


LAYER_CASES: list[tuple[str, str, object, type[Any], Callable[[Any], object], object]] = [
    # (key, option, new value, layer class, reader of the running layer, what it reads)
    ("cache", "max_entries", 3, CacheLayer, lambda layer: layer.statistics().max_entries, 3),
    (
        "coalescing",
        "max_subscribers",
        7,
        CoalescingLayer,
        lambda layer: layer._config.max_subscribers,
        7,
    ),
    (
        "rate",
        "limits",
        50.0,
        RateLimitLayer,
        lambda layer: layer.config.limits[0].requests_per_second,
        50.0,
    ),
    ("breaker", "failure_threshold", 2, CircuitBreakerLayer, _breaker_threshold, (2, 2)),
    ("retry", "max_attempts", 4, RetryLayer, lambda layer: layer.config.max_attempts, 4),
]
SECTION = {"rate": "rate_limits"}


@pytest.mark.parametrize(
    ("key", "option", "value", "kind", "read", "expected"),
    LAYER_CASES,
    ids=[case[0] for case in LAYER_CASES],
)
async def test_each_layers_reloaded_option_reaches_the_running_layer(
    key: str,
    option: str,
    value: object,
    kind: type[Any],
    read: Callable[[Any], object],
    expected: object,
) -> None:
    """A reloaded ``[resilience.<layer>]`` option is in force in that running layer."""
    async with open_gateway(_layers(), worker=EchoWorker()) as gateway:
        layer = _part(gateway, kind)
        await gateway.pipeline.submit(
            PromptRequest(input="x", params=GenerationParams(model="echo"))
        )
        assert read(layer) != expected
        applied, refused = _paths(gateway, _layers(**{key: value}))
        assert refused == []
        assert applied
        assert all(p.startswith(f"resilience.{SECTION.get(key, key)}.{option}") for p in applied)
        assert read(layer) == expected


async def test_a_reloaded_rate_limit_has_fresh_buckets_of_the_new_size(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """After reloading a burst of 5 → 2, the running limiter admits two and refuses the
    third (reject mode)."""
    text = (
        '[resilience.rate_limits]\nenabled = true\nlimits = [{{ scope = "provider", '
        'requests_per_second = 0.001, burst = {burst}, mode = "reject" }}]\n'
    )
    async with open_gateway(parse_config(text.format(burst=5.0)), worker=EchoWorker()) as gw:
        gw.reload(parse_config(text.format(burst=2.0)))
        layer = _part(gw, RateLimitLayer)
        for _ in range(2):
            await gw.pipeline.submit(PromptRequest(input="x"))
        with pytest.raises(RateLimitExceeded):
            await gw.pipeline.submit(PromptRequest(input="x"))
        assert layer.statistics().rejected == 1


async def test_a_reloaded_coalescing_eligibility_changes_what_is_merged() -> None:
    """With ``coalesce_sampled`` reloaded to true, a sampled request is no longer bypassed
    by the running coalescing layer."""
    text = "[resilience.coalescing]\nenabled = true\ncoalesce_sampled = {on}\n"
    sampled = PromptRequest(input="x", params=GenerationParams(temperature=0.7))
    async with open_gateway(parse_config(text.format(on="false")), worker=EchoWorker()) as gw:
        layer = _part(gw, CoalescingLayer)
        await gw.pipeline.submit(sampled)
        assert layer.statistics().bypassed == 1
        gw.reload(parse_config(text.format(on="true")))
        await gw.pipeline.submit(sampled)
        assert (layer.statistics().bypassed, layer.statistics().upstream_calls) == (1, 1)


@pytest.mark.parametrize("section", ["cache", "coalescing", "rate_limits", "breaker", "retry"])
async def test_switching_a_running_layer_off_is_refused_and_it_keeps_running(
    section: str,
) -> None:
    """Turning an enabled layer off by a reload is refused; the layer stays in the request
    path and the configuration in force still says enabled."""
    async with open_gateway(_layers(), worker=EchoWorker()) as gateway:
        before = list(iter_layers(gateway.worker))
        text = LAYERS.format(**BEFORE).replace(
            f"[resilience.{section}]\nenabled = true", f"[resilience.{section}]\nenabled = false"
        )
        report = gateway.reload(parse_config(text))
        assert [r.split(":")[0] for r in report.refused] == [f"resilience.{section}.enabled"]
        assert "adding or removing a layer needs a restart" in report.refused[0]
        assert report.applied == ()
        assert list(iter_layers(gateway.worker)) == before
        assert getattr(gateway.config.resilience, section).enabled


DISABLED_CASES = [
    ("cache", "max_entries = 3"),
    ("coalescing", "coalesce_sampled = true"),
    ("rate_limits", 'limits = [{ scope = "provider", requests_per_second = 9.0 }]'),
    ("breaker", "failure_threshold = 2"),
    ("retry", "max_attempts = 9"),
    ("cache", "enabled = true"),
]


@pytest.mark.parametrize(("section", "line"), DISABLED_CASES)
async def test_an_option_of_a_disabled_layer_is_refused_and_the_old_value_kept(
    section: str, line: str
) -> None:
    """Changing an option of a layer that is off (or switching it on) is refused — no running
    part takes it — and the configuration in force keeps the old value."""
    async with open_gateway(Config(), worker=EchoWorker()) as gateway:
        report = gateway.reload(parse_config(f"[resilience.{section}]\n{line}\n"))
        assert report.applied == ()
        assert report.refused
        assert all(f"resilience.{section}." in r for r in report.refused)
        assert all("no running part takes this option" in r for r in report.refused)
        assert gateway.config == Config()
        assert [type(w) for w in iter_layers(gateway.worker)] == [EchoWorker]


# ------------------------------------------------------------------ [routing]

ROUTED = """
[[providers.providers]]
kind = "echo"
name = "p1"
[[providers.providers]]
kind = "echo"
name = "p2"
[resilience.breaker]
enabled = true
failure_threshold = {threshold}
[routing]
strategy = "{strategy}"
[routing.aliases.best]
targets = ["{alias}"]
[routing.budgets]
per_model = {{ m = {budget} }}
[[routing.deployments]]
name = "a"
model = "m"
provider = "p1"
upstream_model = "echo"
input_price = {price_a}
weight = {weight_a}
[[routing.deployments]]
name = "b"
model = "m"
provider = "p2"
upstream_model = "echo"
input_price = 2.0
"""
ROUTED_BEFORE = {
    "threshold": 5,
    "strategy": "cost",
    "alias": "a",
    "budget": 10.0,
    "price_a": 1.0,
    "weight_a": 1.0,
}


def _routed(**changes: object) -> Config:
    return parse_config(ROUTED.format(**(ROUTED_BEFORE | changes)))


def _decide(router: RouterWorker, model: str = "m") -> Any:
    return router.decide(PromptRequest(input="x", params=GenerationParams(model=model)))


def _weight_of_a(router: RouterWorker) -> float:
    return next(d.weight for d in router.registry.deployments if d.name == "a")


ROUTING_CASES: list[tuple[str, object, Callable[[RouterWorker], object], object, object]] = [
    # (option, new value, reader of the running router, before, after)
    ("weight_a", 4.0, _weight_of_a, 1.0, 4.0),
    ("price_a", 3.0, lambda r: _decide(r).chosen.name, "a", "b"),
    ("strategy", "latency", lambda r: _decide(r).strategy, "cost", "latency"),
    ("alias", "b", lambda r: _decide(r, "best").chosen.name, "a", "b"),
    ("budget", 3.0, lambda r: r.ledger.model_left("m"), 10.0, 3.0),
]


@pytest.mark.parametrize(
    ("option", "value", "read", "before", "after"),
    ROUTING_CASES,
    ids=[case[0] for case in ROUTING_CASES],
)
async def test_each_reloaded_routing_option_reaches_the_running_router(
    option: str,
    value: object,
    read: Callable[[RouterWorker], object],
    before: object,
    after: object,
) -> None:
    """Weights, prices, strategy, aliases and budgets reloaded change the running router."""
    async with open_gateway(_routed()) as gateway:
        router = _part(gateway, RouterWorker)
        assert read(router) == before
        applied, refused = _paths(gateway, _routed(**{option: value}))
        assert refused == []
        assert applied
        assert all(p.startswith("routing.") for p in applied)
        assert read(router) == after


async def test_reloaded_deployments_are_refused_and_the_router_keeps_its_own() -> None:
    """Adding a deployment by a reload is refused; the router resolves what it had."""
    grown = ROUTED.format(**ROUTED_BEFORE) + (
        '[[routing.deployments]]\nname = "c"\nmodel = "m"\nprovider = "p1"\n'
    )
    async with open_gateway(_routed()) as gateway:
        router = _part(gateway, RouterWorker)
        report = gateway.reload(parse_config(grown))
        assert report.refused == (
            "routing.deployments: adding, removing or moving deployments needs a restart",
        )
        assert [d.name for d in router.registry.deployments] == ["a", "b"]


async def test_with_routing_every_providers_breaker_gets_the_new_thresholds() -> None:
    """Under routing each provider has its own breaker layer; a reloaded threshold reaches
    every one of them (and the breakers they already made)."""
    async with open_gateway(_routed()) as gateway:
        breakers = _parts(gateway, CircuitBreakerLayer)
        assert {"p1", "p2"} <= {b.provider for b in breakers}
        await gateway.pipeline.submit(PromptRequest(input="x", params=GenerationParams(model="m")))
        applied, refused = _paths(gateway, _routed(threshold=2))
        assert (applied, refused) == (["resilience.breaker.failure_threshold"], [])
        for layer in breakers:
            assert layer.config.failure_threshold == 2
            assert all(b.config.failure_threshold == 2 for b in layer._breakers.values())


# ------------------------------------------------------------------ [providers]

PROVIDERS = """
[[providers.providers]]
kind = "openai"
name = "up"
base_url = "{url}"
api_keys = [{keys}]
[providers.providers.timeouts]
total = {read}
"""


def _providers(
    url: str = "http://127.0.0.1:9/v1", keys: str = '"sk-1"', read: float = 600.0
) -> Config:
    return parse_config(PROVIDERS.format(url=url, keys=keys, read=read))


def _fingerprints(*keys: str) -> list[str]:
    return [Secret(k).fingerprint() for k in keys]


async def test_reloaded_provider_keys_replace_the_running_key_pool() -> None:
    """A provider's reloaded ``api_keys`` are the keys its running key pool hands out."""
    async with open_gateway(_providers()) as gateway:
        pool = _part(gateway, KeyPool)
        assert list(pool.statistics().keys) == _fingerprints("sk-1")
        applied, refused = _paths(gateway, _providers(keys='"sk-2", "sk-3"'))
        assert refused == []
        assert applied
        assert all(p.startswith("providers.") for p in applied)
        assert list(pool.statistics().keys) == _fingerprints("sk-2", "sk-3")
        assert pool.acquire() == Secret("sk-2")


@pytest.mark.parametrize(
    "changed",
    [
        {"url": "http://127.0.0.2:9/v1"},
        {"read": 5.0},
    ],
    ids=["base_url", "timeouts"],
)
async def test_a_providers_base_url_or_timeouts_are_refused(changed: dict[str, Any]) -> None:
    """A reloaded base URL or timeout is refused with the provider named; the keys in the
    same reload still rotate."""
    async with open_gateway(_providers()) as gateway:
        pool = _part(gateway, KeyPool)
        report = gateway.reload(_providers(keys='"sk-2"', **changed))
        assert report.refused == ("providers.up: base_url and timeouts change only on a restart",)
        assert list(pool.statistics().keys) == _fingerprints("sk-2")


# ------------------------------------------------------------------ [service]


async def test_reloaded_service_keys_reach_the_key_ring_registered_for_service() -> None:
    """``service.api_keys`` reloaded reach the key ring the service registered; without a
    key ring registered the same change is refused."""
    from trio_orchestrator.service.guard import KeyRing

    def keys(key: str) -> Config:
        return parse_config(f'[service]\napi_keys = [{{ name = "k", key = "{key}" }}]\n')

    async with open_gateway(keys("k-old"), worker=EchoWorker()) as gateway:
        _, refused = _paths(gateway, keys("k-new"))
        assert refused == ["service.api_keys"]
        ring = KeyRing.from_config(keys("k-old").service.api_keys)
        gateway.add(ring, "service")
        applied, refused = _paths(gateway, keys("k-new"))
        assert (applied, refused) == (["service.api_keys"], [])
        assert (ring.identify("k-old"), ring.identify("k-new") is not None) == (None, True)
