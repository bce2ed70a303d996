"""Uncontended rate-limit checks per second, against an empty call in the same run.

Measures :meth:`RateLimiter.try_acquire` (the atomic all-levels check and charge) with one
bucket and with three (provider, model and user), never refusing; as a baseline, a loop
calling a function that does nothing with the same arguments. Also the whole
:class:`RateLimitLayer` per request around a worker that emits nothing, against calling that
worker directly. Medians of the repeats are reported. Ends with one line of JSON.

    python benchmarks/bench_ratelimit.py [--quick] [--checks N] [--repeats R]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence

import trio

from trio_orchestrator import PromptRequest, __version__
from trio_orchestrator.resilience import (
    Charge,
    LimitConfig,
    RateLimiter,
    RateLimitLayer,
    RateLimitsConfig,
)
from trio_orchestrator.workers.base import EventSink

HUGE = 1e12  # a rate no benchmark reaches: every check admits


def _charges(scopes: Sequence[str]) -> tuple[RateLimiter, list[Charge]]:
    limiter = RateLimiter([LimitConfig(s, requests_per_second=HUGE) for s in scopes])
    keys = {"provider": "p", "model": "m", "user": "u"}
    return limiter, limiter.charges(keys, 0)


def _noop(charges: Sequence[Charge], now: float) -> tuple[float, bool]:
    return 0.0, False


def _rate(check: Callable[[Sequence[Charge], float], tuple[float, bool]], n: int) -> float:
    """Calls per second of ``check`` over ``n`` calls, the clock advancing each time."""
    _, charges = _charges(("provider", "model", "user"))
    start = time.perf_counter()
    now = 0.0
    for _ in range(n):
        now += 1e-6
        check(charges, now)
    return n / (time.perf_counter() - start)


def _check_rate(scopes: Sequence[str], n: int) -> float:
    limiter, charges = _charges(scopes)
    try_acquire = limiter.try_acquire
    start = time.perf_counter()
    now = 0.0
    for _ in range(n):
        now += 1e-6
        try_acquire(charges, now)
    return n / (time.perf_counter() - start)


class _Silent:
    async def generate(self, request: PromptRequest, emit: EventSink) -> None:
        return None


async def _layer_overhead(n: int) -> tuple[float, float]:
    """Microseconds per request: through the layer, and calling the worker directly."""
    request = PromptRequest(input="hello", meta={"user": "u"})
    limits = [LimitConfig(s, requests_per_second=HUGE) for s in ("provider", "model", "user")]
    layer = RateLimitLayer(_Silent(), RateLimitsConfig(enabled=True, limits=limits))

    async def emit(event: object) -> None:
        return None

    timings = []
    for worker in (layer, _Silent()):
        start = time.perf_counter()
        for _ in range(n):
            await worker.generate(request, emit)
        timings.append((time.perf_counter() - start) / n * 1e6)
    return timings[0], timings[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a run under a minute")
    parser.add_argument("--checks", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    checks = 200_000 if args.quick else args.checks
    repeats = 3 if args.quick else args.repeats
    print(
        f"trio_orchestrator {__version__}, Python {platform.python_version()} "
        f"({sys.implementation.name}), {platform.machine()}, {os.cpu_count()} CPUs; "
        f"{checks} checks x {repeats} repeats"
    )
    baseline = statistics.median(_rate(_noop, checks) for _ in range(repeats))
    one = statistics.median(_check_rate(("model",), checks) for _ in range(repeats))
    three = statistics.median(
        _check_rate(("provider", "model", "user"), checks) for _ in range(repeats)
    )
    layer_runs = [trio.run(_layer_overhead, checks // 10) for _ in range(repeats)]
    layer_us = statistics.median(run[0] for run in layer_runs)
    direct_us = statistics.median(run[1] for run in layer_runs)
    print(f"empty call (baseline):      {baseline:12,.0f} calls/s")
    print(f"check, 1 bucket:            {one:12,.0f} checks/s  ({one / baseline:.2f}x baseline)")
    print(f"check, 3 buckets:           {three:12,.0f} checks/s  ({three / baseline:.2f}x)")
    print(f"layer per request, 3 limits: {layer_us:8.2f} us  (worker alone {direct_us:.2f} us)")
    print(
        json.dumps(
            {
                "benchmark": "ratelimit",
                "quick": args.quick,
                "checks": checks,
                "repeats": repeats,
                "python": platform.python_version(),
                "baseline_calls_per_s": round(baseline),
                "checks_per_s_1_bucket": round(one),
                "checks_per_s_3_buckets": round(three),
                "ratio_1_bucket_to_baseline": round(one / baseline, 3),
                "layer_us_per_request": round(layer_us, 3),
                "worker_alone_us_per_request": round(direct_us, 3),
            }
        )
    )


if __name__ == "__main__":
    main()
