"""Reload reaches the layers: limits, breaker thresholds, retry policy and routing change
while running, without dropping a request; what cannot change is refused and said."""

from __future__ import annotations

import attrs
import pytest
import trio
import trio.testing

from trio_orchestrator import (
    CircuitOpen,
    EchoWorker,
    EventSink,
    GenerationParams,
    PromptRequest,
    RateLimitExceeded,
    ServerError,
    open_gateway,
)
from trio_orchestrator.config import parse_config
from trio_orchestrator.gateway import Gateway
from trio_orchestrator.routing import RouterWorker


@attrs.define
class FailFirst:
    """Fails its first ``failures`` calls with a retryable ServerError, then echoes."""

    failures: int
    calls: int = 0

    async def generate(self, request: PromptRequest, emit: EventSink) -> None:
        self.calls += 1
        if self.calls <= self.failures:
            raise ServerError("scripted 500", status=500)
        await EchoWorker().generate(request, emit)


async def test_a_reloaded_breaker_threshold_applies_to_the_next_failure(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """With failure_threshold raised from 1 to 3 by a reload, one failure no longer opens it."""
    before = parse_config("[resilience.breaker]\nenabled = true\nfailure_threshold = 1\n")
    after = parse_config("[resilience.breaker]\nenabled = true\nfailure_threshold = 3\n")
    async with open_gateway(before, worker=FailFirst(failures=2)) as gateway:
        report = gateway.reload(after)
        assert [c.path for c in report.applied] == ["resilience.breaker.failure_threshold"]
        for _ in range(2):
            with pytest.raises(ServerError):
                await gateway.pipeline.submit(PromptRequest(input="x"))
        # Two failures under a threshold of 3: still closed, so the call goes through.
        assert (await gateway.pipeline.submit(PromptRequest(input="ok"))).text == "ok"


async def test_a_lowered_breaker_threshold_opens_sooner(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Lowering failure_threshold to 1 by a reload makes the next failure open the breaker."""
    before = parse_config("[resilience.breaker]\nenabled = true\nfailure_threshold = 5\n")
    after = parse_config("[resilience.breaker]\nenabled = true\nfailure_threshold = 1\n")
    async with open_gateway(before, worker=FailFirst(failures=10)) as gateway:
        gateway.reload(after)
        with pytest.raises(ServerError):
            await gateway.pipeline.submit(PromptRequest(input="x"))
        with pytest.raises(CircuitOpen):
            await gateway.pipeline.submit(PromptRequest(input="x"))


LIMIT = """
[resilience.rate_limits]
enabled = true
limits = [{{ scope = "provider", requests_per_second = 1.0, burst = {burst}, mode = "reject" }}]
"""


async def test_a_reloaded_rate_limit_admits_what_the_old_one_refused(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A burst of 1 refuses the second request; after reloading a burst of 5 it passes."""
    async with open_gateway(parse_config(LIMIT.format(burst=1.0)), worker=EchoWorker()) as gateway:
        await gateway.pipeline.submit(PromptRequest(input="one"))
        with pytest.raises(RateLimitExceeded):
            await gateway.pipeline.submit(PromptRequest(input="two"))
        report = gateway.reload(parse_config(LIMIT.format(burst=5.0)))
        assert report.refused == ()
        for text in ("two", "three", "four"):
            assert (await gateway.pipeline.submit(PromptRequest(input=text))).text == text


async def test_a_reloaded_retry_policy_recovers_what_the_old_one_gave_up_on(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """With max_attempts raised from 1 to 3, a request failing twice is recovered."""
    before = parse_config("[resilience.retry]\nenabled = true\nmax_attempts = 1\n")
    after = parse_config("[resilience.retry]\nenabled = true\nmax_attempts = 3\n")
    worker = FailFirst(failures=3)
    async with open_gateway(before, worker=worker) as gateway:
        with pytest.raises(ServerError):
            await gateway.pipeline.submit(PromptRequest(input="x"))
        gateway.reload(after)
        assert (await gateway.pipeline.submit(PromptRequest(input="recovered"))).text == "recovered"
    assert worker.calls == 4


async def test_switching_a_layer_on_or_off_is_refused_and_said() -> None:
    """A reload cannot add or remove a layer: it says so, and the layer keeps its config."""
    before = parse_config("[resilience.retry]\nenabled = true\nmax_attempts = 2\n")
    after = parse_config("[resilience.retry]\nenabled = false\nmax_attempts = 2\n")
    async with open_gateway(before, worker=EchoWorker()) as gateway:
        report = gateway.reload(after)
    assert report.applied == ()
    assert report.refused == (
        "resilience.retry.enabled: adding or removing a layer needs a restart True → False",
    )


async def test_reloading_under_load_drops_no_request(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Reloads of limits and breaker thresholds in the middle of 100 requests drop none."""
    slow = EchoWorker(token_delay=0.1)
    text = "[resilience.breaker]\nenabled = true\nfailure_threshold = {n}\n" + LIMIT.replace(
        'mode = "reject"', 'mode = "wait"'
    )
    configs = [parse_config(text.format(n=n, burst=b)) for n, b in ((5, 50.0), (2, 10.0))]
    answers: list[str] = []
    async with open_gateway(configs[0], worker=slow) as gateway:
        async with trio.open_nursery() as nursery:
            for i in range(100):
                request = PromptRequest(input=f"r{i} a b", timeout=600)
                nursery.start_soon(_ask, gateway, request, answers)
            for config in (configs[1], configs[0], configs[1]):
                await trio.sleep(0.5)
                assert gateway.reload(config).refused == ()
        stats = gateway.pipeline.statistics()
    assert len(answers) == 100
    assert (stats.completed, stats.failed, stats.cancelled) == (100, 0, 0)


async def _ask(gateway: Gateway, request: PromptRequest, answers: list[str]) -> None:
    answers.append((await gateway.pipeline.submit(request)).text)


ROUTING = """
[routing]
strategy = "cost"
[[routing.deployments]]
name = "a"
model = "m"
provider = "echo"
upstream_model = "echo"
input_price = {a}
[[routing.deployments]]
name = "b"
model = "m"
provider = "echo"
upstream_model = "echo"
input_price = {b}
"""


async def test_reloaded_routing_prices_change_the_next_decision() -> None:
    """Swapping the deployments' prices by a reload makes the cost strategy pick the other."""
    before = parse_config(ROUTING.format(a=1.0, b=2.0))
    after = parse_config(ROUTING.format(a=3.0, b=2.0))
    async with open_gateway(before) as gateway:
        decide = _router(gateway).decide
        assert decide(PromptRequest(input="x", params=_m())).chosen.name == "a"
        report = gateway.reload(after)
        assert report.refused == ()
        assert decide(PromptRequest(input="x", params=_m())).chosen.name == "b"
        grown = parse_config(ROUTING.format(a=1.0, b=2.0).replace('name = "b"', 'name = "c"'))
        assert gateway.reload(grown).refused == (
            "routing.deployments: adding, removing or moving deployments needs a restart",
        )


def _router(gateway: Gateway) -> RouterWorker:
    return next(c.part for c in gateway.components if isinstance(c.part, RouterWorker))


def _m() -> GenerationParams:
    return GenerationParams(model="m")


async def test_reloaded_provider_keys_are_used_for_the_next_call() -> None:
    """Rotating a provider's API key by a reload: the next upstream call carries the new key."""
    from trio_orchestrator.testing import FakeBehaviour, open_fake_provider

    async with open_fake_provider(FakeBehaviour(text="ok")) as fake:
        table = '[[providers.providers]]\nkind = "openai"\nname = "up"\nbase_url = "{url}"\n'
        table += 'api_keys = ["{key}"]\n'
        old = parse_config(table.format(url=fake.openai_base_url, key="sk-old"))
        new = parse_config(table.format(url=fake.openai_base_url, key="sk-new"))
        async with open_gateway(old) as gateway:
            await gateway.pipeline.submit(PromptRequest(input="before"))
            report = gateway.reload(new)
            await gateway.pipeline.submit(PromptRequest(input="after"))
        moved = parse_config(table.format(url="http://127.0.0.1:9/v1", key="sk-new"))
        async with open_gateway(old) as gateway:
            refused = gateway.reload(moved).refused
    assert report.refused == ()
    assert [r.headers["authorization"] for r in fake.requests] == [
        "Bearer sk-old",
        "Bearer sk-new",
    ]
    assert refused == ("providers.up: base_url and timeouts change only on a restart",)


async def test_reloaded_service_keys_revoke_and_admit_at_once() -> None:
    """The service's key ring takes reloaded API keys: a revoked key is refused, a new one
    accepted, with nothing restarted."""
    from trio_orchestrator.service.guard import KeyRing

    old = parse_config('[service]\napi_keys = [{ name = "a", key = "k-old" }]\n')
    new = parse_config('[service]\napi_keys = [{ name = "b", key = "k-new" }]\n')
    ring = KeyRing.from_config(old.service.api_keys)
    async with open_gateway(old, worker=EchoWorker()) as gateway:
        gateway.add(ring, "service")
        assert ring.identify("k-old") is not None
        report = gateway.reload(new)
    assert [c.path for c in report.applied] == ["service.api_keys"]
    assert ring.identify("k-old") is None
    assert ring.identify("k-new") is not None
