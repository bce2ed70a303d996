"""Routing decisions per second with 50 deployments, per strategy, against a pick-first baseline.

Two baselines: ``baseline`` resolves the requested name with one dict lookup and returns the
first deployment (routing that decides nothing); ``naive-cost`` sorts the 50 by price (a
router with no checks). ``decide()`` estimates tokens, runs
the pre-call check, consults health and budgets, and orders all 50 by the strategy. A second
figure is the whole call overhead: ``collect()`` through the router around an ``EchoWorker``
against the bare ``EchoWorker``. Medians over repeats. Ends with one line of JSON.

    python benchmarks/bench_router.py [--quick] [--decisions N] [--repeats R]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import sys
import time
from collections.abc import Callable

import trio

from trio_orchestrator import EchoWorker, GenerationParams, PromptRequest, __version__, collect
from trio_orchestrator.routing import (
    AutoConfig,
    BudgetConfig,
    ModelDeployment,
    RouterWorker,
    RoutingConfig,
)

DEPLOYMENTS = 50
STRATEGIES = ("cost", "latency", "reliability", "weighted", "least-loaded", "bandit")


def deployments() -> list[ModelDeployment]:
    rng = random.Random(1)
    return [
        ModelDeployment(
            name=f"d{i}",
            model="m",
            provider=f"p{i % 5}",
            context_window=rng.choice((8192, 32768, 128000)),
            input_price=rng.uniform(0.1, 10),
            output_price=rng.uniform(0.1, 30),
            capabilities=("streaming", "tools"),
            weight=rng.uniform(0.5, 3),
            groups=("cheap",) if i % 2 else ("strong",),
        )
        for i in range(DEPLOYMENTS)
    ]


def make_router(strategy: str) -> RouterWorker:
    config = RoutingConfig(
        strategy=strategy,
        auto=AutoConfig(),
        budgets=BudgetConfig(per_api_key={"k": 1e9}),
    )
    echo = EchoWorker()
    return RouterWorker({d.name: (d, echo) for d in deployments()}, config, rng=random.Random(2))


REQUEST = PromptRequest(
    input="Explain how a circuit breaker differs from a retry budget, briefly.",
    params=GenerationParams(model="m", max_tokens=256),
    meta={"api_key_id": "k"},
)


def rate(fn: Callable[[], object], n: int) -> float:
    start = time.perf_counter()
    for _ in range(n):
        fn()
    return n / (time.perf_counter() - start)


def decider(router: RouterWorker, request: PromptRequest) -> Callable[[], object]:
    return lambda: router.decide(request)


async def warm(router: RouterWorker) -> None:
    """Give the tracker and bandit something to read, as in a running service."""
    for _ in range(200):
        await collect(router, REQUEST)


async def measure(n: int, repeats: int) -> dict[str, float]:
    table = {d.name: d for d in deployments()}
    by_model = {"m": list(table.values())}
    figures: dict[str, list[float]] = {"baseline": []}

    def pick_first() -> ModelDeployment:
        return by_model[REQUEST.params.model][0]

    routers = {s: make_router(s) for s in STRATEGIES}
    routers["auto"] = make_router("cost")
    for router in routers.values():
        await warm(router)
    auto_request = PromptRequest(input=REQUEST.input, params=GenerationParams(model="auto"))

    def naive_cost() -> list[ModelDeployment]:
        chosen = by_model[REQUEST.params.model]
        return sorted(chosen, key=lambda d: d.cost(100, 256))

    figures["naive-cost"] = []
    for _ in range(repeats):
        figures["baseline"].append(rate(pick_first, n))
        figures["naive-cost"].append(rate(naive_cost, n))
        for name, router in routers.items():
            req = auto_request if name == "auto" else REQUEST
            figures.setdefault(name, []).append(rate(decider(router, req), n))
    return {name: statistics.median(values) for name, values in figures.items()}


async def call_overhead(n: int, repeats: int) -> tuple[float, float]:
    """Microseconds per collect(): through the router, and on the bare EchoWorker."""
    router, echo = make_router("cost"), EchoWorker()
    routed: list[float] = []
    bare: list[float] = []
    for _ in range(repeats):
        for worker, out in ((router, routed), (echo, bare)):
            start = time.perf_counter()
            for _ in range(n):
                await collect(worker, REQUEST)
            out.append((time.perf_counter() - start) / n * 1e6)
    return statistics.median(routed), statistics.median(bare)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a run under a minute")
    parser.add_argument("--decisions", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=None)
    args = parser.parse_args()
    n = args.decisions or (2000 if args.quick else 20000)
    repeats = args.repeats or (3 if args.quick else 7)
    print(
        f"trio_orchestrator {__version__}, Python {platform.python_version()}, "
        f"{platform.machine()}, {os.cpu_count()} CPUs; {DEPLOYMENTS} deployments, "
        f"{n} decisions x {repeats} repeats (medians)"
    )
    rates = trio.run(measure, n, repeats)
    routed_us, bare_us = trio.run(call_overhead, max(n // 10, 100), repeats)
    base = rates["baseline"]
    for name, value in rates.items():
        print(f"  {name:>13}: {value:>12,.0f} decisions/s  ({base / value:,.1f}x baseline time)")
    print(f"  collect() via router: {routed_us:.1f} µs, bare EchoWorker: {bare_us:.1f} µs")
    result = {
        "benchmark": "router",
        "version": __version__,
        "python": platform.python_version(),
        "deployments": DEPLOYMENTS,
        "decisions": n,
        "repeats": repeats,
        "decisions_per_second": {k: round(v) for k, v in rates.items()},
        "collect_us": {"router": round(routed_us, 2), "bare": round(bare_us, 2)},
    }
    sys.stdout.flush()
    print(json.dumps(result, sort_keys=True))


if __name__ == "__main__":
    main()
