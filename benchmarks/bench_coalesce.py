"""Coalescing: N identical concurrent streaming requests, against the same N uncoalesced.

Both runs stream every request through a whole pipeline to an EchoWorker that sleeps
``--token-delay`` seconds between tokens. The coalesced run wraps the worker in a
CoalescingLayer (temperature 0, so the requests are eligible); the baseline sends every
request upstream. Reports the wall time and the process CPU time (medians of the repeats; CPU
time is the steadier figure on a shared machine), the upstream calls, and the memory per
subscriber (tracemalloc peak of one extra run, divided by N). A second, pipeline-free
measurement calls the layer (or the bare worker) directly from N tasks, to show the layer's
own cost per subscriber without the pipeline's per-request state. Ends with one line of JSON.

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
from collections.abc import Awaitable, Callable

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


async def layer_only(n: int, tokens: int, delay: float, coalesce: bool) -> tuple[float, int]:
    """``n`` tasks call the layer (or the bare worker) directly; return (seconds, calls)."""
    request = PromptRequest(
        input=" ".join(f"tok{i}" for i in range(tokens)), params=GenerationParams(temperature=0)
    )
    upstream = Counting(EchoWorker(token_delay=delay))
    received = 0

    async def emit(event: object) -> None:
        nonlocal received
        received += 1

    start = time.perf_counter()
    async with trio.open_nursery() as nursery:
        worker: ModelWorker = (
            CoalescingLayer(upstream, CoalescingConfig(), nursery) if coalesce else upstream
        )
        for _ in range(n):
            nursery.start_soon(worker.generate, request, emit)
    assert received == n * (tokens + 2), received
    return time.perf_counter() - start, upstream.calls


def memory_per_subscriber(
    n: int,
    tokens: int,
    delay: float,
    coalesce: bool,
    run: Callable[[int, int, float, bool], Awaitable[object]] = run_once,
) -> float:
    """Bytes of peak traced memory per subscriber for one run of ``run``."""
    tracemalloc.start()
    try:
        trio.run(run, n, tokens, delay, coalesce)
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
    bare_times: dict[bool, list[float]] = {True: [], False: []}
    for _ in range(repeats):
        for coalesce in (True, False):
            bare_times[coalesce].append(trio.run(layer_only, n, tokens, delay, coalesce)[0])
    bare_memory = {c: memory_per_subscriber(n, tokens, delay, c, layer_only) for c in (True, False)}
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
        "layer_only_coalesced_seconds": round(statistics.median(bare_times[True]), 4),
        "layer_only_baseline_seconds": round(statistics.median(bare_times[False]), 4),
        "layer_only_coalesced_bytes_per_subscriber": round(bare_memory[True]),
        "layer_only_baseline_bytes_per_subscriber": round(bare_memory[False]),
    }
    for label, key in (("coalesced", True), ("baseline ", False)):
        print(
            f"{label}: {calls[key]:>5} upstream calls, "
            f"{statistics.median(times[key]) * 1e3:8.1f} ms wall, "
            f"{statistics.median(cpus[key]) * 1e3:8.1f} ms CPU (medians), "
            f"{memory[key] / 1024:6.1f} KiB peak per subscriber",
            file=sys.stderr,
        )
    for label, key in (("layer only, coalesced", True), ("layer only, baseline ", False)):
        print(
            f"{label}: {statistics.median(bare_times[key]) * 1e3:8.1f} ms wall (median), "
            f"{bare_memory[key] / 1024:6.2f} KiB peak per subscriber",
            file=sys.stderr,
        )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
