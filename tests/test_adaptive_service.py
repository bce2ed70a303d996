"""The adaptive concurrency limit through the served path: a real gateway over HTTP in front
of the fake provider, whose capacity drops and recovers while clients keep calling. The
limit, read from ``/metrics``, falls and recovers; calls beyond it are answered 503
``upstream_overloaded`` by the gateway instead of queueing at the upstream; a reload moves
its bounds."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable
from typing import Any

import attrs
import httpx
import trio
from service_helpers import make_config, running_app

from trio_orchestrator.config import Config
from trio_orchestrator.observability import MetricsConfig, ObservabilityConfig
from trio_orchestrator.resilience import AdaptiveConfig, AdaptiveLimitLayer
from trio_orchestrator.testing.fake_provider import Behaviour, open_fake_provider
from trio_orchestrator.workers.config import ProviderConfig, ProvidersConfig

CHAT = {"model": "fake-model", "messages": [{"role": "user", "content": "hi"}]}


def _config(url: str, **adaptive: Any) -> Config:
    settings = AdaptiveConfig(
        enabled=True,
        initial_limit=4,
        max_limit=64,
        window=0.2,
        min_samples=3,
        max_waiting=0,
        probe_interval=1000.0,
    )
    provider = ProviderConfig(
        kind="openai",
        name="fake",
        base_url=url + "/v1",
        max_connections=64,
        adaptive=attrs.evolve(settings, **adaptive),
    )
    return attrs.evolve(
        make_config(),
        providers=ProvidersConfig((provider,)),
        observability=ObservabilityConfig(metrics=MetricsConfig(enabled=True)),
    )


def _gauge(metrics: str, name: str) -> float:
    match = re.search(
        rf'^trio_orchestrator_adaptive_{name}{{provider="fake"}} (\S+)$', metrics, re.M
    )
    assert match is not None, f"no adaptive {name} in /metrics"
    return float(match.group(1))


def _clients(
    url: str, count: int, seen: Counter[str], nursery: trio.Nursery, stop: trio.Event
) -> None:
    """``count`` clients calling in a loop until ``stop`` is set (each finishes its call:
    cancelling httpx mid-answer leaves its stream to the garbage collector); ``seen``
    counts statuses (with the error code for errors)."""

    async def client() -> None:
        async with httpx.AsyncClient(base_url=url, timeout=30) as http:
            while not stop.is_set():
                response = await http.post("/v1/chat/completions", json=CHAT)
                code = "" if response.is_success else ":" + response.json()["error"]["code"]
                seen[f"{response.status_code}{code}"] += 1
                if not response.is_success:
                    await trio.sleep(0.05)  # as a client honouring Retry-After would pause

    for _ in range(count):
        nursery.start_soon(client)


async def _until(metrics: httpx.AsyncClient, name: str, ok: Callable[[float], bool]) -> float:
    """Read the adaptive ``name`` from /metrics until ``ok`` holds; the caller bounds it."""
    while True:
        value = _gauge((await metrics.get("/metrics")).text, name)
        if ok(value):
            return value
        await trio.sleep(0.1)


async def test_the_limit_falls_when_the_upstream_capacity_drops_and_recovers() -> None:
    """24 clients against an upstream of capacity 12 that drops to 3 and comes back: the
    limit, started at the capacity, falls below 8 while it is 3 (the excess shed with 503
    upstream_overloaded rather than queued upstream), and rises to 10 again."""
    seen: Counter[str] = Counter()
    behaviour = Behaviour(text="ok", first_token_delay=0.1)
    async with (
        open_fake_provider(behaviour, record=False, capacity=12) as fake,
        running_app(_config(fake.base_url, initial_limit=12)) as (url, _app),
        httpx.AsyncClient(base_url=url) as metrics,
    ):
        async with trio.open_nursery() as nursery:
            stop = trio.Event()
            _clients(url, 24, seen, nursery, stop)
            with trio.fail_after(60):
                # The first window's baseline probe (the limit halved for a window) is over.
                await _until(metrics, "baseline_rtt", lambda v: v > 0)
                await _until(metrics, "limit", lambda v: v >= 12)
                fake.set_capacity(3)
                await _until(metrics, "limit", lambda v: v < 8)
                shed_while_low = seen["503:upstream_overloaded"]
                fake.set_capacity(12)
                await _until(metrics, "limit", lambda v: v >= 10)
            stop.set()
        text = (await metrics.get("/metrics")).text
    assert shed_while_low > 0
    assert seen["200"] > 0
    assert set(seen) <= {"200", "503:upstream_overloaded"}
    assert _gauge(text, "cuts_total") >= 1
    assert _gauge(text, "raises_total") >= 1
    assert _gauge(text, "shed_total") == seen["503:upstream_overloaded"]


async def test_upstream_429s_cut_the_limit_and_the_gateway_sheds_instead() -> None:
    """An upstream answering 429 beyond 4 concurrent calls: the limit is cut to near 4 and
    most of the excess is then shed by the gateway (503) before reaching the upstream."""
    seen: Counter[str] = Counter()
    behaviour = Behaviour(text="ok", first_token_delay=0.1)
    async with (
        open_fake_provider(behaviour, record=False, capacity=4, overflow="429") as fake,
        running_app(_config(fake.base_url, initial_limit=16)) as (url, _app),
        httpx.AsyncClient(base_url=url) as metrics,
        trio.open_nursery() as nursery,
    ):
        stop = trio.Event()
        _clients(url, 16, seen, nursery, stop)
        with trio.fail_after(60):
            await _until(metrics, "limit", lambda v: v <= 6)
            await _until(metrics, "shed_total", lambda v: v >= 40)
        stop.set()
    assert fake.statistics().over_capacity > 0
    assert seen["429:rate_limit_exceeded"] > 0
    assert seen["503:upstream_overloaded"] >= 20


async def test_a_reload_moves_the_limits_bounds() -> None:
    """SIGHUP-style reload of the provider's [adaptive] max_limit caps the running limit."""
    async with (
        open_fake_provider(Behaviour(text="ok")) as fake,
        running_app(_config(fake.base_url, initial_limit=20)) as (url, app),
        httpx.AsyncClient(base_url=url) as http,
    ):
        gateway = app.state.service.gateway
        assert (await http.post("/v1/chat/completions", json=CHAT)).status_code == 200
        assert _gauge((await http.get("/metrics")).text, "limit") == 20
        report = gateway.reload(_config(fake.base_url, initial_limit=4, max_limit=6))
        assert report.ok, report
        assert _gauge((await http.get("/metrics")).text, "limit") == 6
        off = gateway.reload(_config(fake.base_url, enabled=False))
    assert [line.split(":")[0] for line in off.refused] == ["providers.fake.adaptive.enabled"]


async def test_the_router_falls_back_from_a_provider_at_its_limit() -> None:
    """With routing, a call shed by the cheaper provider's full limit goes to the next
    deployment instead of failing: both concurrent calls are answered."""
    from trio_orchestrator.routing import ModelDeployment, RoutingConfig

    async with open_fake_provider(Behaviour(text="ok", first_token_delay=0.5)) as fake:
        full = AdaptiveConfig(enabled=True, initial_limit=1, max_limit=1, max_waiting=0)
        providers = ProvidersConfig(
            (
                ProviderConfig(kind="openai", name="cheap", base_url=fake.base_url + "/v1"),
                ProviderConfig(kind="openai", name="spare", base_url=fake.base_url + "/v1"),
            )
        )
        providers = attrs.evolve(
            providers,
            providers=(attrs.evolve(providers.providers[0], adaptive=full), providers.providers[1]),
        )
        routing = RoutingConfig(
            [
                ModelDeployment("m@cheap", "m", "cheap", "fake-model", input_price=0.0),
                ModelDeployment("m@spare", "m", "spare", "fake-model", input_price=10.0),
            ],
            strategy="cost",
        )
        config = attrs.evolve(make_config(), providers=providers, routing=routing)
        statuses: list[int] = []
        async with running_app(config) as (url, app), httpx.AsyncClient(base_url=url) as http:

            async def call() -> None:
                body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
                statuses.append((await http.post("/v1/chat/completions", json=body)).status_code)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(call)
                nursery.start_soon(call)
            (layer,) = [
                c.part
                for c in app.state.service.gateway.components
                if isinstance(c.part, AdaptiveLimitLayer)
            ]
            shed = layer.statistics().shed
    assert statuses == [200, 200]
    assert shed == 1


async def test_a_whole_answer_is_still_streamed_from_an_adaptive_provider() -> None:
    """A client that does not stream is answered from one JSON answer by a plain provider,
    but a provider with the adaptive limit is asked to stream: the limit's signal is the
    time to the first token, which a whole answer shows only at its end."""
    async with (
        open_fake_provider(Behaviour(text="ok")) as fake,
        running_app(_config(fake.base_url)) as (url, _app),
        httpx.AsyncClient(base_url=url) as http,
    ):
        response = await http.post("/v1/chat/completions", json=CHAT)
        assert response.json()["choices"][0]["message"]["content"] == "ok"
    assert fake.requests[-1].body["stream"] is True
