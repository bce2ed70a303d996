"""The front layers (cache → coalescing) stacked by wrap_coalescing_and_cache, end to end."""

from __future__ import annotations

import attrs
import trio
import trio.testing

from trio_orchestrator import EchoWorker, GenerationParams, PromptRequest, open_pipeline
from trio_orchestrator.resilience import CacheConfig, CoalescingConfig, wrap_coalescing_and_cache
from trio_orchestrator.workers import EventSink


@attrs.define(eq=False)
class CountingWorker:
    calls: int = 0

    async def generate(self, request: PromptRequest, emit: EventSink) -> None:
        self.calls += 1
        await EchoWorker(token_delay=0.1).generate(request, emit)


REQUEST = PromptRequest(input="same question", params=GenerationParams(temperature=0))


async def test_concurrent_then_repeated_requests_cost_one_upstream_call(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Ten concurrent identical requests coalesce, and a later one is a cache hit."""
    worker = CountingWorker()
    async with trio.open_nursery() as nursery:
        front = wrap_coalescing_and_cache(worker, nursery, cache=CacheConfig(enabled=True))
        async with open_pipeline(front) as pipeline:
            async with trio.open_nursery() as callers:
                for _ in range(10):
                    callers.start_soon(pipeline.submit, REQUEST)
            later = await pipeline.submit(REQUEST)
    assert later.text == "same question"
    assert worker.calls == 1
    cache, coalescing = front.cache_statistics(), front.coalescing_statistics()
    assert cache is not None
    assert coalescing is not None
    assert (cache.hits, cache.misses, coalescing.coalesced) == (1, 10, 9)


async def test_disabled_layers_are_left_out() -> None:
    """With both layers disabled the worker is used as it is."""
    worker = CountingWorker()
    async with trio.open_nursery() as nursery:
        front = wrap_coalescing_and_cache(
            worker, nursery, coalescing=CoalescingConfig(enabled=False)
        )
    assert front.worker is worker
    assert front.cache is None
    assert front.coalescing is None
