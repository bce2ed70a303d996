"""Garbage-collector pauses: the latency tail of a proxied request with the heap frozen once
the service listens (``[service] freeze_heap = true``, the default) and without.

The fake provider runs in its own process, and two ``trio-orchestrator serve`` processes in
front of it, the same but for ``freeze_heap``. wrk (closed loop, ``--connections`` at once)
sends the same streamed chat to each in turn, ``--rounds`` times ``--duration`` seconds,
alternating, so that both meet the same machine; each round prints p50, p99, p99.9 and the
slowest answer. A full collection of an unfrozen heap (the modules, the configuration, the
gateway's parts) stalls every request in flight while it runs, every few seconds under
load: it shows in the tail, not at the median. Each gateway runs under a wrapper that times
its collections (``gc.callbacks``) and writes them to a file at exit: the full (generation 2)
collections during the rounds are counted, with their median and longest duration.
Needs wrk (Debian's ``wrk``) and Linux. Ends with one line of JSON.

    python benchmarks/bench_pauses.py [--quick] [--rounds N] [--duration S] [--connections C]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import bench_overhead
from bench_overhead import BODIES, start_fake

#: wrk's script: POST the body; report the latencies (microseconds) as one line of JSON.
WRK_SCRIPT = """
wrk.method = "POST"
wrk.body = {body}
wrk.headers["Content-Type"] = "application/json"
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '{{"requests": %d, "errors": %d, "p50": %d, "p99": %d, "p999": %d, "max": %d}}\\n',
    summary.requests, e.connect + e.read + e.write + e.status + e.timeout,
    latency:percentile(50), latency:percentile(99), latency:percentile(99.9), latency.max))
end
"""

ROWS = ("frozen", "unfrozen")

#: Runs the CLI with every garbage collection timed; writes them to $BENCH_GC_FILE at exit.
TIMED_CLI = """
import atexit, gc, json, os, sys, time
collections, started = [], [0.0]
def timed(phase, info):
    if phase == "start":
        started[0] = time.perf_counter()
    else:
        collections.append((time.time(), info["generation"], time.perf_counter() - started[0]))
gc.callbacks.append(timed)
def write():
    with open(os.environ["BENCH_GC_FILE"], "w") as out:
        json.dump(collections, out)
atexit.register(write)
sys.argv = ["trio-orchestrator", *sys.argv[1:]]
from trio_orchestrator.cli import main
main()
"""


def start_gateway(
    upstream: str, workdir: Path, frozen: bool
) -> tuple[subprocess.Popen[bytes], str]:
    """``trio-orchestrator serve`` with the fake as its one provider, its collections
    timed into ``gc_file(workdir, frozen)`` at exit."""
    return bench_overhead.start_gateway(
        upstream,
        workdir,
        service=f"freeze_heap = {str(frozen).lower()}",
        launcher=("-c", TIMED_CLI),
        env={**os.environ, "BENCH_GC_FILE": str(gc_file(workdir, frozen))},
    )


def gc_file(workdir: Path, frozen: bool) -> Path:
    return workdir / f"gc-{ROWS[0] if frozen else ROWS[1]}.json"


def full_collections(path: Path, windows: list[tuple[float, float]]) -> dict[str, float]:
    """The full collections a gateway timed within ``windows`` (its own rounds, wall clock;
    not those while another gateway's round left it idle, when it collects the whole heap
    on purpose): how many, and their median and longest duration in ms."""
    seconds = [
        duration
        for at, generation, duration in json.loads(path.read_text())
        if generation == 2 and any(start <= at <= end for start, end in windows)
    ]
    return {
        "count": len(seconds),
        "median_ms": round(1000 * statistics.median(seconds), 3) if seconds else 0.0,
        "max_ms": round(1000 * max(seconds), 3) if seconds else 0.0,
    }


def wrk(url: str, connections: int, seconds: float) -> dict[str, float]:
    """One closed-loop wrk run of the streamed chat against ``url``; latencies in ms."""
    row = bench_overhead.run_wrk(url, WRK_SCRIPT, BODIES["stream"], connections, seconds)
    return {
        "requests": row["requests"],
        "errors": row["errors"],
        **{key: row[key] / 1000 for key in ("p50", "p99", "p999", "max")},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one short round")
    parser.add_argument("--rounds", type=int, default=None, help="rounds per row (5)")
    parser.add_argument("--duration", type=float, default=None, help="seconds per run (10)")
    parser.add_argument("--connections", type=int, default=16, help="wrk connections (16)")
    args = parser.parse_args()
    args.rounds = args.rounds or (1 if args.quick else 5)
    args.duration = args.duration or (3.0 if args.quick else 10.0)
    if shutil.which("wrk") is None:
        sys.exit("bench_pauses needs wrk (apt install wrk)")
    conditions = {
        "rounds": args.rounds,
        "seconds": args.duration,
        "connections": args.connections,
        "body": "stream",
        "loadavg_at_start": os.getloadavg(),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
    }
    print(
        f"bench_pauses: the fake provider and two gateways (trio-orchestrator serve, defaults "
        f"but freeze_heap) in their own processes; wrk c={args.connections}, streamed chat, "
        f"{args.rounds} rounds of {args.duration:g} s per gateway, alternating, medians; "
        f"Python {platform.python_version()}, {os.cpu_count()} CPUs",
        flush=True,
    )
    fake, upstream = start_fake()
    runs: dict[str, list[dict[str, float]]] = {row: [] for row in ROWS}
    windows: dict[str, list[tuple[float, float]]] = {row: [] for row in ROWS}
    with tempfile.TemporaryDirectory() as tmp:
        gateways = {row: start_gateway(upstream, Path(tmp), row == "frozen") for row in ROWS}
        try:
            for _, url in gateways.values():
                wrk(url, args.connections, 2)  # warm: connections, caches, the first collections
            for number in range(args.rounds):
                for row, (_, url) in gateways.items():
                    start = time.time()
                    result = wrk(url, args.connections, args.duration)
                    windows[row].append((start, time.time()))
                    runs[row].append(result)
                    print(
                        f"  round {number + 1} {row:<8}  p50 {result['p50']:7.3f} ms  "
                        f"p99 {result['p99']:7.3f}  p99.9 {result['p999']:7.3f}  "
                        f"max {result['max']:7.3f}  ({result['requests']:.0f} requests, "
                        f"{result['errors']:.0f} errors)",
                        flush=True,
                    )
        finally:
            for process, _ in gateways.values():
                process.terminate()
                process.wait(30)
        pauses = {
            row: full_collections(gc_file(Path(tmp), row == ROWS[0]), windows[row]) for row in ROWS
        }
    assert fake.stdin is not None
    fake.stdin.close()
    fake.wait(10)
    medians = {
        row: {key: round(statistics.median(r[key] for r in results), 3) for key in results[0]}
        for row, results in runs.items()
    }
    for row, median in medians.items():
        print(
            f"{row:<8} medians: p50 {median['p50']:.3f} ms  p99 {median['p99']:.3f}  "
            f"p99.9 {median['p999']:.3f}  max {median['max']:.3f}; full collections during "
            f"the rounds: {pauses[row]['count']}, median {pauses[row]['median_ms']:.3f} ms, "
            f"longest {pauses[row]['max_ms']:.3f} ms"
        )
    ratios = {
        key: round(medians["unfrozen"][key] / medians["frozen"][key], 2)
        for key in ("p50", "p99", "p999", "max")
    }
    print(f"unfrozen / frozen: {ratios}")
    print(
        json.dumps(
            {
                "benchmark": "pauses",
                "conditions": conditions,
                "runs": runs,
                "medians": medians,
                "full_collections": pauses,
                "unfrozen_over_frozen": ratios,
            }
        )
    )


if __name__ == "__main__":
    main()
