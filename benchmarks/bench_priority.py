"""Priority admission's cost: pipeline throughput with priority on, against it off.

Two loads, each run with ``priority.enabled`` true and (baseline) false, interleaved and
repeated; medians are reported. *Unsaturated*: fewer concurrent callers than inference
slots, so every request takes the fast path (no heap work). *Saturated*: four times as many
callers as slots, so requests wait in the ranked queue. Both wall-clock requests per second
and process CPU microseconds per request are reported; the workload is CPU-bound, so the CPU
figure is the steadier one on a shared machine. Ends with one line of JSON.

    python benchmarks/bench_priority.py [--quick] [--requests N] [--repeats R]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time

import trio

from trio_orchestrator import (
    Config,
    EchoWorker,
    PipelineConfig,
    Priority,
    PromptRequest,
    __version__,
    open_pipeline,
)
from trio_orchestrator.config.model import PriorityConfig

SLOTS = 64


async def rps(n: int, callers: int, enabled: bool) -> tuple[float, float]:
    """(Requests per second, CPU µs per request) from ``callers`` concurrent submitters."""
    config = Config(
        PipelineConfig(inference_concurrency=SLOTS, priority=PriorityConfig(enabled=enabled))
    )
    per_caller = n // callers
    requests = [PromptRequest(input="hello", priority=Priority(i % 4)) for i in range(callers)]
    async with open_pipeline(EchoWorker(), config) as pipeline:

        async def caller(request: PromptRequest) -> None:
            for _ in range(per_caller):
                await pipeline.submit(request)

        start, cpu = time.perf_counter(), time.process_time()
        async with trio.open_nursery() as nursery:
            for request in requests:
                nursery.start_soon(caller, request)
        elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
    done = per_caller * callers
    return done / elapsed, cpu / done * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a run under a minute")
    parser.add_argument("--requests", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=None)
    args = parser.parse_args()
    n = args.requests or (20_000 if args.quick else 100_000)
    repeats = args.repeats or (3 if args.quick else 7)
    loads = {"unsaturated": SLOTS // 2, "saturated": SLOTS * 4}
    print(
        f"conditions: {n} requests, {SLOTS} inference slots, callers {loads}, {repeats} repeats,"
        f" Python {platform.python_version()}, trio {trio.__version__}, {os.cpu_count()} CPUs",
        file=sys.stderr,
    )
    runs: dict[tuple[str, bool], list[tuple[float, float]]] = {}
    for _ in range(repeats):  # interleaved, so drift on a noisy machine hits both alike
        for load, callers in loads.items():
            for enabled in (True, False):
                runs.setdefault((load, enabled), []).append(trio.run(rps, n, callers, enabled))
    result: dict[str, object] = {
        "benchmark": "bench_priority",
        "version": __version__,
        "python": platform.python_version(),
        "trio": trio.__version__,
        "cpus": os.cpu_count(),
        "requests": n,
        "slots": SLOTS,
        "repeats": repeats,
    }
    for load in loads:
        on = statistics.median(r for r, _ in runs[load, True])
        off = statistics.median(r for r, _ in runs[load, False])
        cpu_on = statistics.median(c for _, c in runs[load, True])
        cpu_off = statistics.median(c for _, c in runs[load, False])
        result[f"{load}_priority_rps"] = round(on)
        result[f"{load}_baseline_rps"] = round(off)
        result[f"{load}_priority_cpu_us"] = round(cpu_on, 2)
        result[f"{load}_baseline_cpu_us"] = round(cpu_off, 2)
        result[f"{load}_cpu_ratio"] = round(cpu_on / cpu_off, 3)
        print(
            f"{load:>11}: priority {on:>9,.0f} req/s {cpu_on:6.1f} µs CPU/req; "
            f"off {off:>9,.0f} req/s {cpu_off:6.1f} µs CPU/req; "
            f"CPU ratio {cpu_on / cpu_off:.3f}",
            file=sys.stderr,
        )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
