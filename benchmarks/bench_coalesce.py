"""Coalescing: N identical concurrent streaming requests, against the same N uncoalesced.

Both runs stream every request through a whole pipeline to an EchoWorker that sleeps
``--token-delay`` seconds between tokens. The coalesced run wraps the worker in a
CoalescingLayer (temperature 0, so the requests are eligible); the baseline sends every
request upstream. Reports the wall time and the process CPU time (medians of the repeats; CPU
time is the steadier figure on a shared machine), the upstream calls, and the memory per
subscriber (tracemalloc peak of one extra run, divided by N). Ends with one line of JSON.

    python benchmarks/bench_coalesce.py [--quick] [--requests N] [--tokens T] [--repeats R]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
import tracemalloc

import attrs
import trio

from trio_orchestrator import (
    Config,
    EchoWorker,
    GenerationParams,
    PipelineConfig,
    PromptRequest,
    __version__,
    open_pipeline,
)
from trio_orchestrator.resilience import CoalescingConfig, CoalescingLayer
from trio_orchestrator.workers import EventSink, ModelWorker


@attrs.define(eq=False)
class Counting:
    """Counts the calls that reach the worker."""

    inner: ModelWorker
    calls: int = 0

    async def generate(self, request: PromptRequest, emit: EventSink) -> None:
        self.calls += 1
        await self.inner.generate(request, emit)


async def run_once(n: int, tokens: int, delay: float, coalesce: bool) -> tuple[float, float, int]:
    """Stream ``n`` identical requests at once; return (seconds, CPU seconds, upstream calls)."""
    config = Config(
        PipelineConfig(
            rag_capacity=n,
            assemble_capacity=n,
            inference_capacity=n,
            post_capacity=n,
            stream_capacity=n,
            inference_concurrency=n,
        )
    )
    request = PromptRequest(
        input=" ".join(f"tok{i}" for i in range(tokens)), params=GenerationParams(temperature=0)
    )
    upstream = Counting(EchoWorker(token_delay=delay))
    received = 0
    async with trio.open_nursery() as layers:
        worker: ModelWorker = (
            CoalescingLayer(upstream, CoalescingConfig(), layers) if coalesce else upstream
        )
        async with open_pipeline(worker, config) as pipeline:

            async def subscriber() -> None:
                nonlocal received
                async with pipeline.stream(request) as events:
                    async for _ in events:
                        received += 1

            start, cpu = time.perf_counter(), time.process_time()
            async with trio.open_nursery() as callers:
                for _ in range(n):
                    callers.start_soon(subscriber)
            elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
    assert received == n * (tokens + 2), received  # every token, then Usage and Done
    return elapsed, cpu, upstream.calls


def memory_per_subscriber(n: int, tokens: int, delay: float, coalesce: bool) -> float:
    """Bytes of peak traced memory per subscriber for one run."""
    tracemalloc.start()
    try:
        trio.run(run_once, n, tokens, delay, coalesce)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return peak / n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a run under a minute")
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--tokens", type=int, default=None, help="64, or 16 with --quick")
    parser.add_argument("--token-delay", type=float, default=0.002)
    parser.add_argument("--repeats", type=int, default=None)
    args = parser.parse_args()
    n, delay = args.requests, args.token_delay
    tokens = args.tokens or (16 if args.quick else 64)
    repeats = args.repeats or (3 if args.quick else 5)
    print(
        f"conditions: {n} identical concurrent streaming requests, {tokens} tokens each, "
        f"{delay * 1e3:g} ms between tokens, {repeats} repeats, Python "
        f"{platform.python_version()}, trio {trio.__version__}, {os.cpu_count()} CPUs",
        file=sys.stderr,
    )
    times: dict[bool, list[float]] = {True: [], False: []}
    cpus: dict[bool, list[float]] = {True: [], False: []}
    calls: dict[bool, int] = {}
    for _ in range(repeats):  # interleaved, so drift on a noisy machine hits both alike
        for coalesce in (True, False):
            elapsed, cpu, calls[coalesce] = trio.run(run_once, n, tokens, delay, coalesce)
            times[coalesce].append(elapsed)
            cpus[coalesce].append(cpu)
    memory = {c: memory_per_subscriber(n, tokens, delay, c) for c in (True, False)}
    result = {
        "benchmark": "bench_coalesce",
        "version": __version__,
        "python": platform.python_version(),
        "trio": trio.__version__,
        "cpus": os.cpu_count(),
        "requests": n,
        "tokens": tokens,
        "token_delay": delay,
        "repeats": repeats,
        "coalesced_upstream_calls": calls[True],
        "baseline_upstream_calls": calls[False],
        "coalesced_seconds": round(statistics.median(times[True]), 4),
        "baseline_seconds": round(statistics.median(times[False]), 4),
        "speedup": round(statistics.median(times[False]) / statistics.median(times[True]), 2),
        "coalesced_cpu_seconds": round(statistics.median(cpus[True]), 4),
        "baseline_cpu_seconds": round(statistics.median(cpus[False]), 4),
        "cpu_ratio": round(statistics.median(cpus[False]) / statistics.median(cpus[True]), 2),
        "coalesced_bytes_per_subscriber": round(memory[True]),
        "baseline_bytes_per_subscriber": round(memory[False]),
    }
    for label, key in (("coalesced", True), ("baseline ", False)):
        print(
            f"{label}: {calls[key]:>5} upstream calls, "
            f"{statistics.median(times[key]) * 1e3:8.1f} ms wall, "
            f"{statistics.median(cpus[key]) * 1e3:8.1f} ms CPU (medians), "
            f"{memory[key] / 1024:6.1f} KiB peak per subscriber",
            file=sys.stderr,
        )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
