"""End-to-end pipeline throughput against a bare chain of five Trio memory channels.

Both run in the same process, one after the other, repeated; medians are reported with their
ratio, plus the per-token cost of streaming a 256-token answer. Ends with one line of JSON.

    python benchmarks/bench_pipeline.py [--quick] [--requests N] [--repeats R]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import statistics
import sys
import time

import trio

from trio_orchestrator import EchoWorker, PromptRequest, __version__, open_pipeline

CAPACITIES = (512, 512, 1024, 512, 256)


async def bare_chain(n: int) -> float:
    """Items per second through five chained memory channels, one task per hop."""
    channels = [trio.open_memory_channel[int](cap) for cap in CAPACITIES]

    async def relay(
        receive: trio.MemoryReceiveChannel[int], send: trio.MemorySendChannel[int]
    ) -> None:
        async with receive, send:
            async for item in receive:
                await send.send(item)

    async def produce(send: trio.MemorySendChannel[int]) -> None:
        async with send:
            for i in range(n):
                await send.send(i)

    start = time.perf_counter()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(produce, channels[0][0])
        for (_, receive), (send, _) in itertools.pairwise(channels):
            nursery.start_soon(relay, receive, send)
        async with channels[-1][1] as last:
            async for _ in last:
                pass
    return n / (time.perf_counter() - start)


async def pipeline_rps(n: int, callers: int, metrics: bool = False) -> float:
    """Requests per second through the whole pipeline with EchoWorker (no delay)."""
    request = PromptRequest(input="hello")
    per_caller = n // callers

    async with open_pipeline(EchoWorker()) as pipeline:
        if metrics:
            from prometheus_client import CollectorRegistry

            from trio_orchestrator.observability import instrument_pipeline

            instrument_pipeline(pipeline, registry=CollectorRegistry())

        async def caller() -> None:
            for _ in range(per_caller):
                await pipeline.submit(request)

        start = time.perf_counter()
        async with trio.open_nursery() as nursery:
            for _ in range(callers):
                nursery.start_soon(caller)
        elapsed = time.perf_counter() - start
        assert pipeline.statistics().completed == per_caller * callers
    return per_caller * callers / elapsed


async def stream_per_token(tokens: int, repeats: int) -> tuple[float, float]:
    """Microseconds per token: streaming a long answer, and the same answer via submit."""
    request = PromptRequest(input=" ".join(["tok"] * tokens))
    async with open_pipeline(EchoWorker()) as pipeline:
        start = time.perf_counter()
        for _ in range(repeats):
            async with pipeline.stream(request) as events:
                async for _ in events:
                    pass
        streamed = (time.perf_counter() - start) / (repeats * tokens)
        start = time.perf_counter()
        for _ in range(repeats):
            await pipeline.submit(request)
        whole = (time.perf_counter() - start) / (repeats * tokens)
    return streamed * 1e6, whole * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a run under a minute")
    parser.add_argument("--requests", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--callers", type=int, default=256)
    parser.add_argument(
        "--metrics", action="store_true", help="instrument the pipeline (default observability)"
    )
    args = parser.parse_args()
    n = args.requests or (20_000 if args.quick else 100_000)
    repeats = args.repeats or (3 if args.quick else 7)

    bare, piped = [], []
    for _ in range(repeats):  # interleaved, so drift on a noisy machine hits both alike
        bare.append(trio.run(bare_chain, n))
        piped.append(trio.run(pipeline_rps, n, args.callers, args.metrics))
    streamed, whole = trio.run(stream_per_token, 256, 50 if args.quick else 200)
    result = {
        "benchmark": "bench_pipeline",
        "version": __version__,
        "python": platform.python_version(),
        "trio": trio.__version__,
        "cpus": os.cpu_count(),
        "machine": platform.machine(),
        "requests": n,
        "callers": args.callers,
        "metrics": args.metrics,
        "repeats": repeats,
        "bare_chain_rps": round(statistics.median(bare)),
        "pipeline_rps": round(statistics.median(piped)),
        "ratio": round(statistics.median(piped) / statistics.median(bare), 3),
        "stream_us_per_token": round(streamed, 2),
        "submit_us_per_token": round(whole, 2),
    }
    print(
        f"conditions: {n} requests, {args.callers} concurrent callers, {repeats} repeats, "
        f"metrics {'on' if args.metrics else 'off'}, "
        f"Python {result['python']}, trio {result['trio']}, {result['cpus']} CPUs",
        file=sys.stderr,
    )
    print(
        f"bare 5-channel chain : {result['bare_chain_rps']:>9,} items/s (median)", file=sys.stderr
    )
    print(
        f"pipeline, EchoWorker : {result['pipeline_rps']:>9,} requests/s (median)", file=sys.stderr
    )
    print(f"ratio                : {result['ratio']}", file=sys.stderr)
    print(
        f"256-token stream     : {result['stream_us_per_token']} µs/token streamed, "
        f"{result['submit_us_per_token']} µs/token via submit",
        file=sys.stderr,
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
