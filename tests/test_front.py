"""The front layers (cache → coalescing), switched on by configuration, end to end."""

from __future__ import annotations

import attrs
import trio
import trio.testing

from trio_orchestrator import Config, EchoWorker, GenerationParams, PromptRequest, open_gateway
from trio_orchestrator.resilience import (
    CacheConfig,
    CacheLayer,
    CoalescingConfig,
    CoalescingLayer,
    ResilienceConfig,
    iter_layers,
)
from trio_orchestrator.workers import EventSink


@attrs.define(eq=False)
class CountingWorker:
    calls: int = 0

    async def generate(self, request: PromptRequest, emit: EventSink) -> None:
        self.calls += 1
        await EchoWorker(token_delay=0.1).generate(request, emit)


REQUEST = PromptRequest(input="same question", params=GenerationParams(temperature=0))

FRONT = Config(
    resilience=ResilienceConfig(
        cache=CacheConfig(enabled=True), coalescing=CoalescingConfig(enabled=True)
    )
)


async def test_concurrent_then_repeated_requests_cost_one_upstream_call(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Ten concurrent identical requests coalesce, and a later one is a cache hit."""
    worker = CountingWorker()
    async with open_gateway(FRONT, worker=worker) as gateway:
        pipeline = gateway.pipeline
        layers = list(iter_layers(pipeline.worker))
        async with trio.open_nursery() as callers:
            for _ in range(10):
                callers.start_soon(pipeline.submit, REQUEST)
        later = await pipeline.submit(REQUEST)
    assert later.text == "same question"
    assert worker.calls == 1
    cache, coalescing = layers[0], layers[1]
    assert isinstance(cache, CacheLayer)
    assert isinstance(coalescing, CoalescingLayer)
    cs, co = cache.statistics(), coalescing.statistics()
    assert (cs.hits, cs.misses, co.coalesced) == (1, 10, 9)


async def test_disabled_layers_are_left_out() -> None:
    """With both layers off (the default) the worker is used as it is."""
    worker = CountingWorker()
    async with open_gateway(worker=worker) as gateway:
        assert gateway.pipeline.worker is worker
