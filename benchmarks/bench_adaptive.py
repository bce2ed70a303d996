"""An adaptive concurrency limit against fixed limits, through the served path, while the
upstream's capacity changes mid-run.

The fake provider answers ``--capacity`` calls at once in ``--latency`` seconds each and
queues the rest (its latency climbs, as a saturated inference server's does); its capacity
goes ``--capacity`` → ``--low`` → ``--capacity``, one ``--phase`` each. ``--clients``
callers, more than the capacity, call the gateway (hypercorn, the OpenAI-compatible
``/v1/chat/completions``) in a loop over HTTP (after ``--warmup`` seconds not counted),
each giving up after ``--slo`` seconds (a
timed-out call is a failure, and its upstream call is cancelled); a caller refused (503,
429) waits its ``Retry-After`` before calling again, as the official SDKs do (one
``--latency`` after a timeout).

Rows, each a fresh gateway and fake in the same run: ``adaptive`` (the gradient limit,
defaults but a shorter window of 5 calls or more), ``fixed-N`` for each of ``--fixed``
(the same limiter held at N: min = max = N, so shedding works alike), and ``unlimited``
(no limit at the gateway).
Per row and phase: successful calls' p50 and p99 latency, the success rate (answered 200
within the SLO, of all calls), goodput (successes per second); for ``adaptive`` also the
limit's mean in the phase. Ends with one line of JSON.

Everything runs in this one process (fake, gateway, clients), so the numbers include the
clients' own cost; compare rows, not absolute figures.

    python benchmarks/bench_adaptive.py [--quick] [--capacity 64] [--low 16] [--clients 96]
        [--latency 0.2] [--phase 20] [--slo 1.0] [--fixed 16,32,64]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

import attrs
import httpx
import trio

from trio_orchestrator import __version__
from trio_orchestrator.config import Config
from trio_orchestrator.config.service import ServiceConfig
from trio_orchestrator.resilience import AdaptiveConfig, AdaptiveLimitLayer
from trio_orchestrator.testing.fake_provider import Behaviour, open_fake_provider
from trio_orchestrator.workers.config import ProviderConfig, ProvidersConfig

CHAT = {"model": "fake-model", "messages": [{"role": "user", "content": "hi"}]}
PHASES = ("high", "low", "recovered")


@attrs.frozen
class Call:
    """One client call: its phase, how long it took, and whether it succeeded."""

    phase: int
    seconds: float
    ok: bool


def _adaptive(row: str, args: argparse.Namespace) -> AdaptiveConfig:
    if row == "unlimited":
        return AdaptiveConfig(enabled=False)
    shared = {"max_waiting": args.clients // 8, "max_wait": args.latency}
    if row == "adaptive":
        window = min(1.0, args.phase / 10)
        return AdaptiveConfig(
            enabled=True,
            initial_limit=16,
            max_limit=4 * args.capacity,
            window=window,
            min_samples=5,
            **shared,
        )
    n = int(row.removeprefix("fixed-"))
    return AdaptiveConfig(enabled=True, initial_limit=n, min_limit=n, max_limit=n, **shared)


def _config(url: str, adaptive: AdaptiveConfig) -> Config:
    provider = ProviderConfig(
        kind="openai",
        name="fake",
        base_url=url + "/v1",
        adaptive=adaptive,
        max_connections=256,
        pool_size=256,  # one pool: each builds an SSL context, slow to start
    )
    return Config(service=ServiceConfig(port=0), providers=ProvidersConfig((provider,)))


@asynccontextmanager
async def _serving(config: Config) -> AsyncIterator[tuple[str, Any]]:
    """The service on a free loopback port: its URL and its application."""
    from hypercorn.trio import serve

    from trio_orchestrator.service import create_app
    from trio_orchestrator.service.server import hypercorn_config

    app = create_app(config)
    async with trio.open_nursery() as nursery:
        stop = trio.Event()
        server = partial(serve, app, hypercorn_config(config), shutdown_trigger=stop.wait)
        binds: list[str] = await nursery.start(server)
        try:
            yield binds[0], app
        finally:
            stop.set()


def _limit_layer(app: Any) -> AdaptiveLimitLayer | None:
    gateway = app.state.service.gateway
    for component in gateway.components:
        if isinstance(component.part, AdaptiveLimitLayer):
            return component.part
    return None


async def _run_row(row: str, args: argparse.Namespace) -> dict[str, Any]:
    calls: list[Call] = []
    limits: list[list[int]] = [[] for _ in PHASES]
    phase = -1  # warming up: connections open, the limit finds the capacity; not counted
    behaviour = Behaviour(text="ok", first_token_delay=args.latency)
    async with open_fake_provider(behaviour, record=False, capacity=args.capacity) as fake:
        config = _config(fake.base_url, _adaptive(row, args))
        pool = httpx.Limits(max_connections=args.clients, max_keepalive_connections=args.clients)
        async with (
            _serving(config) as (url, app),
            httpx.AsyncClient(base_url=url, limits=pool) as http,
            trio.open_nursery() as nursery,
        ):
            stop = trio.Event()

            async def client() -> None:
                while not stop.is_set():
                    started, at = trio.current_time(), phase
                    ok, pause = False, args.latency
                    with trio.move_on_after(args.slo):
                        response = await http.post("/v1/chat/completions", json=CHAT)
                        ok = response.status_code == 200
                        pause = float(response.headers.get("retry-after", pause))
                    if at >= 0:
                        calls.append(Call(at, trio.current_time() - started, ok))
                    if not ok:
                        await trio.sleep(pause)

            async def watch() -> None:
                layer = _limit_layer(app)
                while layer is not None and not stop.is_set():
                    if phase >= 0:
                        limits[phase].append(layer.statistics().limit)
                    await trio.sleep(args.phase / 50)

            for _ in range(args.clients):
                nursery.start_soon(client)
            nursery.start_soon(watch)
            await trio.sleep(args.warmup)
            for phase, capacity in enumerate((args.capacity, args.low, args.capacity)):  # noqa: B007
                fake.set_capacity(capacity)
                await trio.sleep(args.phase)
            stop.set()
    return _summary(row, calls, limits, args)


def _summary(
    row: str, calls: Sequence[Call], limits: Sequence[Sequence[int]], args: argparse.Namespace
) -> dict[str, Any]:
    phases = []
    for index, name in enumerate(PHASES):
        mine = [c for c in calls if c.phase == index]
        good = sorted(c.seconds for c in mine if c.ok)
        phases.append(
            {
                "phase": name,
                "calls": len(mine),
                "success_rate": len(good) / len(mine) if mine else 0.0,
                "goodput": len(good) / args.phase,
                "p50": _quantile(good, 0.5),
                "p99": _quantile(good, 0.99),
                "mean_limit": statistics.fmean(limits[index]) if limits[index] else None,
            }
        )
    return {"row": row, "phases": phases}


def _quantile(values: Sequence[float], q: float) -> float:
    if not values:
        return math.nan
    return values[min(len(values) - 1, math.ceil(q * len(values)) - 1)]


def _print(result: dict[str, Any]) -> None:
    for p in result["phases"]:
        limit = "" if p["mean_limit"] is None else f"  limit≈{p['mean_limit']:.0f}"
        print(
            f"  {result['row']:<10} {p['phase']:<9} calls {p['calls']:>6}  "
            f"ok {100 * p['success_rate']:5.1f} %  goodput {p['goodput']:7.1f}/s  "
            f"p50 {1000 * p['p50']:7.0f} ms  p99 {1000 * p['p99']:7.0f} ms{limit}",
            flush=True,
        )


def _arguments(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a run under a minute")
    parser.add_argument("--capacity", type=int, default=64, help="upstream capacity (64)")
    parser.add_argument("--low", type=int, default=16, help="capacity in the middle phase (16)")
    parser.add_argument("--clients", type=int, default=96, help="concurrent callers (96)")
    parser.add_argument("--latency", type=float, default=0.2, help="seconds per call (0.2)")
    parser.add_argument("--phase", type=float, default=20.0, help="seconds per phase (20)")
    parser.add_argument("--slo", type=float, default=1.0, help="callers give up after (1.0)")
    parser.add_argument("--fixed", default="16,32,64", help="fixed limits to compare")
    parser.add_argument("--warmup", type=float, default=5.0, help="seconds not counted (5)")
    args = parser.parse_args(argv)
    if args.quick:
        args.capacity, args.low, args.clients = 8, 2, 12
        args.latency, args.phase, args.slo, args.fixed = 0.2, 3.0, 1.0, "2,4,8"
        args.warmup = 1.0
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = _arguments(argv)
    rows = ["adaptive", *(f"fixed-{n}" for n in args.fixed.split(",") if n), "unlimited"]
    conditions = {
        "capacity": [args.capacity, args.low, args.capacity],
        "clients": args.clients,
        "latency": args.latency,
        "phase_seconds": args.phase,
        "slo": args.slo,
        "warmup_seconds": args.warmup,
        "rows": rows,
        "quick": args.quick,
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "version": __version__,
    }
    print(
        f"bench_adaptive: upstream capacity {args.capacity} → {args.low} → {args.capacity} "
        f"concurrent ({args.latency * 1000:.0f} ms per call, queued beyond), {args.clients} "
        f"clients, SLO {args.slo} s, {args.phase:g} s per phase; python "
        f"{platform.python_version()} on {sys.platform}, {os.cpu_count()} CPUs",
        flush=True,
    )
    results = []
    for row in rows:
        result = trio.run(_run_row, row, args)
        _print(result)
        results.append(result)
    print(json.dumps({"benchmark": "adaptive", "conditions": conditions, "results": results}))


if __name__ == "__main__":
    main()
