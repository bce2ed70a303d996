"""What observability costs: pipeline throughput uninstrumented, with metrics, with per-stage
timing, and with tracing, measured in the same process, interleaved, medians reported.

Variants (each an EchoWorker pipeline, many concurrent callers):

- ``off``: no instrumentation (the baseline; no hooks, no listeners);
- ``metrics``: request metrics and scrape-time collectors, ``stage_timing = false``;
- ``metrics+stages``: the default metrics configuration (per-stage processing time too);
- ``tracing``: spans for every request and stage (an SDK provider that exports nowhere).

Ends with one line of JSON.

    python benchmarks/bench_observability.py [--quick] [--requests N] [--repeats R]
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
from prometheus_client import CollectorRegistry

from trio_orchestrator import Config, EchoWorker, PromptRequest, __version__, open_pipeline
from trio_orchestrator.observability import (
    MetricsConfig,
    ObservabilityConfig,
    TracingConfig,
    instrument_pipeline,
)

VARIANTS = ("off", "metrics", "metrics+stages", "tracing")


def config_for(variant: str) -> Config:
    """The observability configuration of ``variant``."""
    observability = {
        "off": ObservabilityConfig(),
        "metrics": ObservabilityConfig(metrics=MetricsConfig(stage_timing=False)),
        "metrics+stages": ObservabilityConfig(),
        "tracing": ObservabilityConfig(
            metrics=MetricsConfig(enabled=False), tracing=TracingConfig(enabled=True)
        ),
    }[variant]
    return attrs.evolve(Config(), observability=observability)


async def rps(variant: str, n: int, callers: int) -> float:
    """Requests per second through one pipeline instrumented as ``variant`` says."""
    from opentelemetry.sdk.trace import TracerProvider

    request = PromptRequest(input="hello")
    per_caller = n // callers
    async with open_pipeline(EchoWorker(), config_for(variant)) as pipeline:
        if variant != "off":
            instrument_pipeline(
                pipeline, registry=CollectorRegistry(), tracer_provider=TracerProvider()
            )

        async def caller() -> None:
            for _ in range(per_caller):
                await pipeline.submit(request)

        start = time.perf_counter()
        async with trio.open_nursery() as nursery:
            for _ in range(callers):
                nursery.start_soon(caller)
        elapsed = time.perf_counter() - start
    return per_caller * callers / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a run under a minute")
    parser.add_argument("--requests", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--callers", type=int, default=256)
    args = parser.parse_args()
    n = args.requests or (10_000 if args.quick else 50_000)
    repeats = args.repeats or (5 if args.quick else 9)

    runs: dict[str, list[float]] = {variant: [] for variant in VARIANTS}
    for _ in range(repeats):  # interleaved, so drift on a noisy machine hits all alike
        for variant in VARIANTS:
            runs[variant].append(trio.run(rps, variant, n, args.callers))
    medians = {variant: statistics.median(values) for variant, values in runs.items()}
    base = medians["off"]
    result = {
        "benchmark": "bench_observability",
        "version": __version__,
        "python": platform.python_version(),
        "trio": trio.__version__,
        "cpus": os.cpu_count(),
        "machine": platform.machine(),
        "requests": n,
        "callers": args.callers,
        "repeats": repeats,
        **{f"{variant}_rps": round(rate) for variant, rate in medians.items()},
        **{
            f"{variant}_us_per_request_added": round(1e6 / medians[variant] - 1e6 / base, 2)
            for variant in VARIANTS[1:]
        },
        **{f"{variant}_ratio": round(medians[variant] / base, 3) for variant in VARIANTS[1:]},
    }
    print(
        f"conditions: {n} requests, {args.callers} concurrent callers, {repeats} repeats "
        f"interleaved, Python {result['python']}, trio {result['trio']}, {result['cpus']} CPUs",
        file=sys.stderr,
    )
    for variant in VARIANTS:
        line = f"{variant:<15}: {round(medians[variant]):>8,} requests/s (median)"
        if variant != "off":
            line += (
                f", x{result[f'{variant}_ratio']} of off, "
                f"+{result[f'{variant}_us_per_request_added']} µs/request"
            )
        print(line, file=sys.stderr)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
