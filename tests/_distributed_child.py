"""A gateway in its own process sharing state through Redis, for the multi-process tests.

Usage:
    python _distributed_child.py ratelimit REDIS_URL RATE SECONDS START_AT
        from wall time START_AT, for SECONDS, submit requests as fast as 8 tasks can under a
        global limit of RATE requests/s (reject mode, burst 10, so that a process starved of
        CPU for a moment does not waste tokens); print how many were admitted, when the
        window opened and closed (wall time), and how many checks fell back to the local
        buckets (Redis unreachable).
    python _distributed_child.py trip REDIS_URL
        send one request to a failing provider with a breaker that opens on one failure.
"""

from __future__ import annotations

import sys
import time

import trio

from trio_orchestrator import Config, EchoWorker, PromptRequest, open_gateway
from trio_orchestrator.distributed import DistributedConfig, SharedRateLimiter
from trio_orchestrator.errors import RateLimitExceeded, ServerError, WorkerError
from trio_orchestrator.resilience import (
    BreakerConfig,
    LimitConfig,
    RateLimitsConfig,
    ResilienceConfig,
)
from trio_orchestrator.resilience.ratelimit import RateLimitLayer
from trio_orchestrator.workers.base import EventSink

BURST = 10


def limited(url: str, rate: float) -> Config:
    """A global limit of ``rate`` requests per second, refusing at once when empty."""
    limit = LimitConfig("provider", requests_per_second=rate, burst=BURST, mode="reject")
    limits = RateLimitsConfig(enabled=True, limits=[limit])
    return Config(
        resilience=ResilienceConfig(rate_limits=limits),
        distributed=DistributedConfig(redis_url=url, operation_timeout=2),
    )


async def hammer(url: str, rate: float, seconds: float, start_at: float) -> None:
    """Print the number of requests admitted in the window."""
    admitted = 0
    async with open_gateway(limited(url, rate), worker=EchoWorker()) as gateway:
        pipeline = gateway.pipeline
        await trio.sleep(max(0.0, start_at - time.time()))

        async def loop() -> None:
            nonlocal admitted
            while True:
                try:
                    await pipeline.submit(PromptRequest(input="hi"))
                except RateLimitExceeded:
                    await trio.lowlevel.checkpoint()
                else:
                    admitted += 1

        opened = time.time()
        with trio.move_on_after(seconds):
            async with trio.open_nursery() as nursery:
                for _ in range(8):
                    nursery.start_soon(loop)
        closed = time.time()
        fallbacks = sum(
            component.part.shared.statistics().fallbacks
            for component in gateway.components
            if isinstance(component.part, RateLimitLayer)
            and isinstance(component.part.shared, SharedRateLimiter)
        )
    print(admitted, opened, closed, fallbacks, flush=True)


class Broken:
    """A provider that always fails with a 500."""

    async def generate(self, request: PromptRequest, emit: EventSink) -> None:
        await trio.lowlevel.checkpoint()
        raise ServerError("upstream 500")


async def trip(url: str) -> None:
    """Open the shared breaker of broken/echo (the provider label is the class name)."""
    breaker = BreakerConfig(enabled=True, failure_threshold=1, cooldown=60)
    config = Config(
        resilience=ResilienceConfig(breaker=breaker),
        distributed=DistributedConfig(redis_url=url),
    )
    async with open_gateway(config, worker=Broken()) as gateway:
        try:
            await gateway.pipeline.submit(PromptRequest(input="hi"))
        except WorkerError as exc:
            print(type(exc).__name__, flush=True)


if __name__ == "__main__":
    if sys.argv[1] == "ratelimit":
        url, rate, seconds, start_at = sys.argv[2:6]
        trio.run(hammer, url, float(rate), float(seconds), float(start_at))
    else:
        trio.run(trip, sys.argv[2])
