"""An adaptive concurrency limit against fixed limits, through the served path, while the
upstream's capacity changes mid-run.

The fake provider answers ``--capacity`` calls at once in ``--latency`` seconds each and
queues the rest (its latency climbs, as a saturated inference server's does: a call behind
a queue of q waits about q / capacity * latency more); its capacity goes ``--capacity`` →
``--low`` → ``--capacity``, one ``--phase`` each. ``--clients`` callers, more than the
capacity, make requests to the gateway (hypercorn, the OpenAI-compatible
``/v1/chat/completions``) over HTTP one after another (after ``--warmup`` seconds not
counted), as an official SDK makes them: a refused call (503, 429) is tried again after its
``Retry-After`` while the request's ``--slo`` leaves time; at the SLO the request fails and
its call is cancelled (upstream too). Calls take 0.8 to 1.2 times ``--latency`` (by model,
one per client), so they do not finish in lockstep rounds.

The sizes are chosen so that one machine drives them with CPU to spare: calls of 1.5 s make
64 concurrent calls about 43 answers a second, and 96 clients are cheap at that rate (an
earlier design, 200 ms calls and 320 answers a second, measured the CPU, not the limit).
The run prints the process's CPU use per row; near 100 % of a core the numbers are suspect.

Rows, each a fresh gateway and fake in the same run: ``adaptive`` (the gradient limit with
its default settings, as a user would switch it on) and ``fixed-N`` for
each of ``--fixed``, the limits a user would have chosen before the change (the same
limiter held at N: min = max = N, so waiting and shedding work alike; N at least the
clients is no limit at all). Per row and phase, and over the whole run: successful calls'
p50 and p99 latency, the success rate (requests answered 200 within the SLO), goodput
(successes per second); for ``adaptive`` also the limit sampled once a second. Ends with
one line of JSON.

Everything runs in this one process (fake, gateway, clients), so the numbers include the
clients' own cost; compare rows, not absolute figures.

    python benchmarks/bench_adaptive.py [--quick] [--capacity 64] [--low 16] [--clients 96]
        [--latency 1.5] [--phase 25] [--slo 4.0] [--fixed 32,64,96] [--warmup 10]

The full run takes about 4 * (warmup + 3 phases) = 5 min 40 s; ``--quick`` under a minute.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
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
# Calls take 0.8 to 1.2 times --latency (by model: each client asks one), so they do not
# finish in lockstep rounds as identical calls through a FIFO queue would.
SPREAD = tuple(0.8 + step / 25 for step in range(11))
MODELS = tuple(f"fake-model-{step}" for step in range(len(SPREAD)))


@attrs.frozen
class Call:
    """One client call: its phase, how long it took, and whether it succeeded."""

    phase: int
    seconds: float
    ok: bool


def _adaptive(row: str) -> AdaptiveConfig:
    if row == "adaptive":
        return AdaptiveConfig(enabled=True)  # the defaults: initial 20, window 1 s, ...
    n = int(row.removeprefix("fixed-"))
    return AdaptiveConfig(enabled=True, initial_limit=n, min_limit=n, max_limit=n)


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
    trace: list[list[int]] = [[] for _ in PHASES]
    phase = -1  # warming up: connections open, the limit finds the capacity; not counted
    cpu_before = time.process_time()
    async with open_fake_provider(record=False, capacity=args.capacity) as fake:
        for model, share in zip(MODELS, SPREAD, strict=True):
            fake.set_model(model, Behaviour(text="ok", first_token_delay=share * args.latency))
        config = _config(fake.base_url, _adaptive(row))
        pool = httpx.Limits(max_connections=args.clients, max_keepalive_connections=args.clients)
        async with (
            _serving(config) as (url, app),
            httpx.AsyncClient(base_url=url, limits=pool) as http,
            trio.open_nursery() as nursery,
        ):
            stop = trio.Event()

            async def client(number: int) -> None:
                # One user request at a time, as an official SDK makes it: a refused call
                # (503, 429) is tried again after its Retry-After while the SLO leaves
                # time; the request fails when the SLO passes (its call is cancelled).
                body = {**CHAT, "model": MODELS[number % len(MODELS)]}
                while not stop.is_set():
                    started, at = trio.current_time(), phase
                    ok = False
                    with trio.move_on_after(args.slo):
                        while not ok:
                            response = await http.post("/v1/chat/completions", json=body)
                            ok = response.status_code == 200
                            pause = float(response.headers.get("retry-after", args.latency))
                            if not ok:
                                await trio.sleep(pause)
                    if at >= 0:
                        calls.append(Call(at, trio.current_time() - started, ok))

            async def watch() -> None:
                layer = _limit_layer(app)
                while layer is not None and not stop.is_set():
                    if phase >= 0:
                        trace[phase].append(layer.statistics().limit)
                    await trio.sleep(args.sample)

            for number in range(args.clients):
                nursery.start_soon(client, number)
            await trio.sleep(args.warmup)
            nursery.start_soon(watch)
            for phase, capacity in enumerate((args.capacity, args.low, args.capacity)):  # noqa: B007
                fake.set_capacity(capacity)
                await trio.sleep(args.phase)
            stop.set()
    cpu = (time.process_time() - cpu_before) / (args.warmup + 3 * args.phase)
    return _summary(row, calls, trace, cpu, args)


def _figures(calls: Sequence[Call], seconds: float) -> dict[str, Any]:
    good = sorted(c.seconds for c in calls if c.ok)
    return {
        "calls": len(calls),
        "success_rate": len(good) / len(calls) if calls else 0.0,
        "goodput": len(good) / seconds,
        "p50": _quantile(good, 0.5),
        "p99": _quantile(good, 0.99),
    }


def _summary(
    row: str,
    calls: Sequence[Call],
    trace: Sequence[Sequence[int]],
    cpu: float,
    args: argparse.Namespace,
) -> dict[str, Any]:
    phases = [
        {
            "phase": name,
            **_figures([c for c in calls if c.phase == index], args.phase),
            "limit_trace": list(trace[index]),
        }
        for index, name in enumerate(PHASES)
    ]
    whole = {"phase": "whole run", **_figures(calls, 3 * args.phase)}
    return {"row": row, "cpu_share": round(cpu, 3), "phases": phases, "whole": whole}


def _quantile(values: Sequence[float], q: float) -> float:
    if not values:
        return math.nan
    return values[min(len(values) - 1, math.ceil(q * len(values)) - 1)]


def _print(result: dict[str, Any], args: argparse.Namespace) -> None:
    row = result["row"]
    for p in [*result["phases"], result["whole"]]:
        print(
            f"  {row:<9} {p['phase']:<10} calls {p['calls']:>6}  "
            f"ok {100 * p['success_rate']:5.1f} %  goodput {p['goodput']:6.1f}/s  "
            f"p50 {1000 * p['p50']:6.0f} ms  p99 {1000 * p['p99']:6.0f} ms",
            flush=True,
        )
    for p in result["phases"]:
        if p["limit_trace"]:
            samples = " ".join(str(limit) for limit in p["limit_trace"])
            print(f"  {row:<9} limit in {p['phase']}, every {args.sample:g} s: {samples}")
    print(f"  {row:<9} CPU: {100 * result['cpu_share']:.0f} % of one core", flush=True)


def experiment_conditions(args: argparse.Namespace) -> dict[str, Any]:
    """The experiment's sizes, as this benchmark and ``sim_adaptive.py`` print them."""
    return {
        "capacity": [args.capacity, args.low, args.capacity],
        "clients": args.clients,
        "latency": args.latency,
        "phase_seconds": args.phase,
        "slo": args.slo,
        "warmup_seconds": args.warmup,
    }


def experiment_arguments(parser: argparse.ArgumentParser) -> None:
    """The experiment's sizes, shared with ``sim_adaptive.py`` (which replays it)."""
    parser.add_argument("--capacity", type=int, default=64, help="upstream capacity (64)")
    parser.add_argument("--low", type=int, default=16, help="capacity in the middle phase (16)")
    parser.add_argument("--clients", type=int, default=96, help="concurrent callers (96)")
    parser.add_argument("--latency", type=float, default=1.5, help="seconds per call (1.5)")
    parser.add_argument("--phase", type=float, default=25.0, help="seconds per phase (25)")
    parser.add_argument("--slo", type=float, default=4.0, help="requests fail after (4.0)")
    parser.add_argument("--fixed", default="32,64,96", help="fixed limits to compare")
    parser.add_argument("--warmup", type=float, default=10.0, help="seconds not counted (10)")


def _arguments(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a run under a minute")
    experiment_arguments(parser)
    args = parser.parse_args(argv)
    if args.quick:
        args.capacity, args.low, args.clients = 8, 2, 12
        args.latency, args.phase, args.slo, args.fixed = 0.5, 4.0, 2.0, "4,8,12"
        args.warmup = 2.0
    args.sample = min(1.0, args.phase / 10)
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = _arguments(argv)
    rows = ["adaptive", *(f"fixed-{n}" for n in args.fixed.split(",") if n)]
    conditions = {
        **experiment_conditions(args),
        "sample_seconds": args.sample,
        "loadavg_at_start": os.getloadavg(),
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
        _print(result, args)
        results.append(result)
    print(json.dumps({"benchmark": "adaptive", "conditions": conditions, "results": results}))


if __name__ == "__main__":
    main()
