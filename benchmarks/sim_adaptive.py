"""bench_adaptive's experiment as a simulation on Trio's mock clock: the real
adaptive limit against fixed limits, in front of a modelled queueing upstream whose
capacity changes mid-run.

What is real: :class:`~trio_orchestrator.resilience.AdaptiveLimitLayer` (its limiter, its
queue, its sheds and its samples) and the algorithm behind it, with their default settings
for the ``adaptive`` row. What is modelled: the upstream (``--capacity`` calls at once,
first come first served, the rest queue: a saturated inference server; a call its client
abandons leaves the queue, as a closed connection does at the fake provider), the service's
answer to a shed call (503 with ``Retry-After`` = the limit's ``retry_after`` rounded up,
at least 1 s, as ``service/errors.py`` writes it) and the network (no time). The clients
behave as bench_adaptive's do, the same for every row: one request at a time, a 503 tried
again after its ``Retry-After`` while the ``--slo`` leaves time, and at the SLO the request
fails and its call is abandoned -- a cancellation by the client, not by the call's own
deadline (that is the service's ``request_timeout``, minutes away), as on the served path.
Calls take 0.8 to 1.2 times ``--latency`` (by client), capacity goes ``--capacity`` →
``--low`` → ``--capacity``, one ``--phase`` each, after ``--warmup`` seconds not counted.

It measures the algorithm, not a CPU, and the full run takes a few seconds of real time. A
run differs from the next only where Trio breaks a tie between timers due at the same
instant by object ids, which differ from one process to the next (``PYTHONHASHSEED`` does
not fix them): compare means over ``--seed`` values. Use it to tune the algorithm;
bench_adaptive checks the served path.

Rows: ``adaptive`` (the defaults, as a user switches it on) and ``fixed-N`` for each of
``--fixed`` (the same limiter held at N). Per row and phase, and over the whole run:
success rate (requests answered within the SLO), goodput, p50/p99 of the successful
requests' times (retries included), and for ``adaptive`` the limit each second. Ends with
one line of JSON.

    python benchmarks/sim_adaptive.py [--capacity 64] [--low 16] [--clients 96]
        [--latency 1.5] [--phase 25] [--slo 4.0] [--fixed 32,64,96] [--warmup 10]
        [--seed 0] [--set key=value ...]

``--set`` changes a setting of the adaptive row (``--set window=2 --set tolerance=1.5``):
for tuning.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections.abc import Sequence
from typing import Any

import attrs
import trio
import trio.testing
from bench_adaptive import experiment_arguments, experiment_conditions

from trio_orchestrator.events import Done, StreamEvent, TextDelta
from trio_orchestrator.resilience import AdaptiveConfig, AdaptiveLimitLayer, ConcurrencyLimited
from trio_orchestrator.types import GenerationParams, PromptRequest
from trio_orchestrator.workers.base import EventSink

PHASES = ("high", "low", "recovered")
SPREAD = tuple(0.8 + step / 25 for step in range(11))  # bench_adaptive's
REQUEST_TIMEOUT = 300.0  # the service's default request_timeout: a call's own deadline


@attrs.define(eq=False)
class Upstream:
    """``capacity`` calls at once, first come first served; the rest queue."""

    capacity: int
    latency: float
    _slots: trio.CapacityLimiter = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        self._slots = trio.CapacityLimiter(self.capacity)

    def set_capacity(self, capacity: int) -> None:
        self._slots.total_tokens = capacity

    async def generate(self, request: PromptRequest, emit: EventSink) -> None:
        share = SPREAD[int(request.params.model.rsplit("-", 1)[1])]
        async with self._slots:
            await trio.sleep(share * self.latency + _tie_break(int(str(request.input))))
        await emit(TextDelta("ok"))
        await emit(Done("stop", "ok"))


@attrs.frozen
class Call:
    """One client request: its phase, how long it took, whether it succeeded."""

    phase: int
    seconds: float
    ok: bool


def _adaptive(row: str, changes: dict[str, Any]) -> AdaptiveConfig:
    if row == "adaptive":
        return AdaptiveConfig(enabled=True, **changes)
    n = int(row.removeprefix("fixed-"))
    return AdaptiveConfig(enabled=True, initial_limit=n, min_limit=n, max_limit=n)


async def _ignore(_event: StreamEvent) -> None:
    pass


def _tie_break(number: int) -> float:
    """A client's own microseconds, added to each of its waits: Trio orders timers due at
    the same instant by their objects' ids, which differ from run to run."""
    return number * 1e-6


async def _request(layer: AdaptiveLimitLayer, number: int, slo: float) -> bool:
    """One request as bench_adaptive's client makes it; True when answered within ``slo``."""
    model = f"m-{number % len(SPREAD)}"
    request = PromptRequest(input=str(number), params=GenerationParams(model=model))
    with trio.CancelScope() as client:  # the client's SLO: it cancels, it is no deadline

        async def give_up() -> None:
            await trio.sleep(slo + _tie_break(number))
            client.cancel()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(give_up)
            while True:
                try:
                    with trio.fail_after(REQUEST_TIMEOUT):
                        await layer.generate(request, _ignore)
                except ConcurrencyLimited as exc:
                    retry_after = max(1, math.ceil(exc.retry_after or 1.0))
                    await trio.sleep(retry_after + _tie_break(number))
                    continue
                nursery.cancel_scope.cancel()
                return True
    return False


async def _run_row(row: str, args: argparse.Namespace) -> dict[str, Any]:
    calls: list[Call] = []
    trace: list[list[int]] = [[] for _ in PHASES]
    phase = -1
    upstream = Upstream(args.capacity, args.latency)
    layer = AdaptiveLimitLayer(upstream, _adaptive(row, args.changes), provider="sim")

    async def client(number: int) -> None:
        await trio.sleep(_tie_break(number))
        while True:
            started, at = trio.current_time(), phase
            ok = await _request(layer, number, args.slo)
            if at >= 0:
                calls.append(Call(at, trio.current_time() - started, ok))

    async def watch() -> None:
        await trio.sleep(0.5)  # between the phase changes
        while True:
            if phase >= 0:
                trace[phase].append(layer.statistics().limit)
            await trio.sleep(1.0)

    async with trio.open_nursery() as nursery:
        for number in range(args.clients):
            nursery.start_soon(client, number)
        await trio.sleep(args.warmup)
        nursery.start_soon(watch)
        for phase, capacity in enumerate((args.capacity, args.low, args.capacity)):  # noqa: B007
            upstream.set_capacity(capacity)
            await trio.sleep(args.phase)
        nursery.cancel_scope.cancel()
    return _summary(row, calls, trace, args)


def _figures(calls: Sequence[Call], seconds: float) -> dict[str, Any]:
    good = sorted(c.seconds for c in calls if c.ok)
    return {
        "calls": len(calls),
        "success_rate": round(len(good) / len(calls), 4) if calls else 0.0,
        "goodput": round(len(good) / seconds, 2),
        "p50": round(_quantile(good, 0.5), 3),
        "p99": round(_quantile(good, 0.99), 3),
    }


def _summary(
    row: str, calls: Sequence[Call], trace: Sequence[Sequence[int]], args: argparse.Namespace
) -> dict[str, Any]:
    phases = [
        {
            "phase": name,
            **_figures([c for c in calls if c.phase == index], args.phase),
            "limit_trace": list(trace[index]) if row == "adaptive" else [],
        }
        for index, name in enumerate(PHASES)
    ]
    return {"row": row, "phases": phases, "whole": _figures(calls, 3 * args.phase)}


def _quantile(values: Sequence[float], q: float) -> float:
    if not values:
        return math.nan
    return values[min(len(values) - 1, math.ceil(q * len(values)) - 1)]


def _print(result: dict[str, Any]) -> None:
    row = result["row"]
    for p in [*result["phases"], {"phase": "whole run", **result["whole"]}]:
        print(
            f"  {row:<9} {p['phase']:<10} calls {p['calls']:>6}  "
            f"ok {100 * p['success_rate']:5.1f} %  goodput {p['goodput']:6.1f}/s  "
            f"p50 {1000 * p['p50']:6.0f} ms  p99 {1000 * p['p99']:6.0f} ms"
        )
    for p in result["phases"]:
        if p["limit_trace"]:
            samples = " ".join(str(limit) for limit in p["limit_trace"])
            print(f"  {row:<9} limit in {p['phase']}, every 1 s: {samples}")


def _setting(text: str) -> tuple[str, Any]:
    key, _, value = text.partition("=")
    field = attrs.fields_dict(AdaptiveConfig)[key]
    kind = {"int": int, "float": float, "str": str}[str(field.type)]
    return key, kind(value)


def _arguments(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    experiment_arguments(parser)
    parser.add_argument("--seed", type=int, default=0, help="the scheduler's seed (0)")
    parser.add_argument("--set", action="append", default=[], type=_setting, dest="changes")
    args = parser.parse_args(argv)
    args.changes = dict(args.changes)
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = _arguments(argv)
    rows = ["adaptive", *(f"fixed-{n}" for n in args.fixed.split(",") if n)]
    conditions = {
        **experiment_conditions(args),
        "adaptive_changes": args.changes,
        "seed": args.seed,
        "rows": rows,
        "clock": "trio.testing.MockClock(autojump_threshold=0)",
    }
    print(
        f"sim_adaptive: upstream capacity {args.capacity} → {args.low} → {args.capacity} "
        f"concurrent ({args.latency * 1000:.0f} ms per call, queued beyond), {args.clients} "
        f"clients, SLO {args.slo} s, {args.phase:g} s per phase, simulated time"
        + (f"; adaptive row with {args.changes}" if args.changes else "")
    )
    results = []
    began = time.perf_counter()
    for row in rows:
        clock = trio.testing.MockClock(autojump_threshold=0)
        # Trio reverses its run queue at random (each task can run before any other);
        # seeded, runs differ only in ties between timers (broken by object ids).
        trio._core._run._r.seed(args.seed)
        result = trio.run(_run_row, row, args, clock=clock)
        _print(result)
        results.append(result)
    print(f"  (ran in {time.perf_counter() - began:.1f} s of real time)")
    print(json.dumps({"benchmark": "sim_adaptive", "conditions": conditions, "results": results}))


if __name__ == "__main__":
    main()
