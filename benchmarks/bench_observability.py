"""What observability costs: pipeline throughput uninstrumented, with metrics, with per-stage
timing, and with tracing, measured in the same process, interleaved, medians reported.

Variants (each an EchoWorker pipeline, many concurrent callers):

- ``off``: no instrumentation (the baseline; no hooks, no listeners);
- ``metrics``: request metrics and scrape-time collectors, ``stage_timing = false``;
- ``metrics+stages``: the default metrics configuration (per-stage processing time too);
- ``tracing``: spans for every request and stage (an SDK provider that exports nowhere).

Each variant reports requests per second (wall clock) and CPU microseconds per request
(``time.process_time``: on a machine shared with other work this is the steadier figure; the
pipeline runs on one thread). Ends with one line of JSON.

    python benchmarks/bench_observability.py [--quick] [--requests N] [--repeats R]
        [--only VARIANT ...]

``--only off`` needs nothing from ``trio_orchestrator.observability``, so it also runs against
an older checkout (``PYTHONPATH=/path/to/checkout``) to measure the hook points themselves.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time

import attrs
import trio

from trio_orchestrator import Config, EchoWorker, PromptRequest, __version__, open_pipeline

VARIANTS = ("off", "metrics", "metrics+stages", "tracing")


def config_for(variant: str) -> Config:
    """The observability configuration of ``variant``."""
    if variant == "off":
        return Config()
    from trio_orchestrator.observability import MetricsConfig, ObservabilityConfig, TracingConfig

    observability = {
        "off": ObservabilityConfig(),
        "metrics": ObservabilityConfig(metrics=MetricsConfig(stage_timing=False)),
        "metrics+stages": ObservabilityConfig(),
        "tracing": ObservabilityConfig(
            metrics=MetricsConfig(enabled=False), tracing=TracingConfig(enabled=True)
        ),
    }[variant]
    return attrs.evolve(Config(), observability=observability)


async def rps(variant: str, n: int, callers: int) -> tuple[float, float]:
    """Requests per second, and CPU µs per request, through one pipeline instrumented as
    ``variant`` says."""
    request = PromptRequest(input="hello")
    per_caller = n // callers
    async with open_pipeline(EchoWorker(), config_for(variant)) as pipeline:
        if variant != "off":
            from opentelemetry.sdk.trace import TracerProvider
            from prometheus_client import CollectorRegistry

            from trio_orchestrator.observability import instrument_pipeline

            instrument_pipeline(
                pipeline, registry=CollectorRegistry(), tracer_provider=TracerProvider()
            )

        async def caller() -> None:
            for _ in range(per_caller):
                await pipeline.submit(request)

        start, cpu = time.perf_counter(), time.process_time()
        async with trio.open_nursery() as nursery:
            for _ in range(callers):
                nursery.start_soon(caller)
        elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
    done = per_caller * callers
    return done / elapsed, cpu / done * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a run under a minute")
    parser.add_argument("--requests", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--callers", type=int, default=256)
    parser.add_argument("--only", nargs="+", choices=VARIANTS, default=VARIANTS)
    args = parser.parse_args()
    variants = [v for v in VARIANTS if v in args.only]
    n = args.requests or (10_000 if args.quick else 50_000)
    repeats = args.repeats or (5 if args.quick else 9)

    runs: dict[str, list[tuple[float, float]]] = {variant: [] for variant in variants}
    for _ in range(repeats):  # interleaved, so drift on a noisy machine hits all alike
        for variant in variants:
            runs[variant].append(trio.run(rps, variant, n, args.callers))
    rates = {v: statistics.median(r for r, _ in runs[v]) for v in variants}
    cpu = {v: statistics.median(c for _, c in runs[v]) for v in variants}
    result: dict[str, object] = {
        "benchmark": "bench_observability",
        "version": __version__,
        "python": platform.python_version(),
        "trio": trio.__version__,
        "cpus": os.cpu_count(),
        "machine": platform.machine(),
        "requests": n,
        "callers": args.callers,
        "repeats": repeats,
        **{f"{v}_rps": round(rates[v]) for v in variants},
        **{f"{v}_cpu_us_per_request": round(cpu[v], 2) for v in variants},
    }
    if "off" in variants:
        for v in variants[1:]:
            result[f"{v}_cpu_us_added"] = round(cpu[v] - cpu["off"], 2)
            result[f"{v}_rps_ratio"] = round(rates[v] / rates["off"], 3)
    print(
        f"conditions: {n} requests, {args.callers} concurrent callers, {repeats} repeats "
        f"interleaved, Python {result['python']}, trio {result['trio']}, {result['cpus']} CPUs",
        file=sys.stderr,
    )
    for v in variants:
        line = f"{v:<15}: {round(rates[v]):>8,} requests/s, {cpu[v]:6.2f} CPU µs/request"
        if v != "off" and "off" in variants:
            line += f" (+{result[f'{v}_cpu_us_added']} µs, rps x{result[f'{v}_rps_ratio']})"
        print(line, file=sys.stderr)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
