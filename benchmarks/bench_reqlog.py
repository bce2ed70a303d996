"""What spend and the request log cost: CPU per request of the same served gateway with
storage off and with spend + the request log on (SQLite on disk), in the same run.

The fake provider runs in its own process, and so do two ``trio-orchestrator serve``
processes in front of it, identical but for ``[storage]``:

- ``off``: ``backend = "none"`` (no spend, no request log, no key-policy layer);
- ``on``: ``backend = "sqlite"`` with a database file, spend and the request log written in
  batches by their writers (the defaults: ``flush_interval = 1``, ``flush_batch = 500``).

wrk drives each at concurrency 16 for ``--duration`` seconds, the two taking turns for
``--repeats`` rounds; each gateway process's user + system CPU is read from
``/proc/<pid>/stat`` around its run and divided by the requests answered. The figure is the
median over rounds, and the ratio ``on / off`` is the issue's goal (<= 1.05); each round's
own ratio is printed beside it, to show the noise. Each gateway serves a warm-up run of
each shape first, and the shapes and the gateways' turns interleave (see :func:`measure`).
The writers' own work (the SQLite writes in worker threads) is in the ``on`` process's CPU:
that is the point; its worker threads' share is shown beside it (``/proc/<pid>/task``).
Rows for a non-streaming and a streaming request. At the end the ``on`` gateway's
request log counters (written, dropped) are read from ``/metrics`` to show the records were
kept. Needs wrk (Debian's ``wrk``) and Linux. Ends with one line of JSON.

    python benchmarks/bench_reqlog.py [--quick] [--duration S] [--repeats R]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import httpx
from bench_overhead import (
    BODIES,
    CLOCK_TICKS,
    MODEL,
    cpu_row,
    free_port,
    start_fake,
    wait_healthy,
)

GOAL = 1.05


def write_config(upstream: str, workdir: Path, variant: str, port: int) -> Path:
    """The gateway's configuration file for storage ``variant`` (``off`` or ``on``)."""
    storage = (
        f'backend = "sqlite"\npath = "{workdir / f"{variant}.sqlite"}"\n'
        if variant == "on"
        else 'backend = "none"\n'
    )
    config = workdir / f"{variant}.toml"
    config.write_text(
        f"""
[service]
port = {port}

[[providers.providers]]
kind = "openai"
name = "fake"
base_url = "{upstream}/v1"
models = ["{MODEL}"]

[storage]
{storage}"""
    )
    return config


def start_gateway(
    upstream: str, workdir: Path, variant: str
) -> tuple[subprocess.Popen[bytes], str]:
    """``trio-orchestrator serve`` in front of the fake, with storage ``variant``."""
    port = free_port()
    config = write_config(upstream, workdir, variant, port)
    command = [sys.executable, "-m", "trio_orchestrator", "serve", "--config", str(config)]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    wait_healthy(url, process, "/healthz")
    return process, url


def counters(url: str) -> dict[str, float]:
    """The request log's and spend's writer counters, from ``/metrics``."""
    text = httpx.get(url + "/metrics", timeout=10).text
    found = re.findall(
        r"^trio_orchestrator_(request_log|storage)_(\w+?)(?:_total)? (\S+)$", text, re.M
    )
    return {f"{kind}_{name}": float(value) for kind, name, value in found}


Gateways = dict[str, tuple[subprocess.Popen[bytes], str]]


def thread_seconds(pid: int) -> float:
    """User + system CPU so far of the process's threads but its main one (the Trio worker
    threads the writers' SQLite work runs in), from ``/proc/<pid>/task``. A thread that
    ended is missing from the sum (Trio's idle ones end after 10 s; the writers' flush
    every second keeps theirs)."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        if task.name == str(pid):
            continue
        try:
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except FileNotFoundError:  # ended meanwhile
            continue
        total += int(fields[11]) + int(fields[12])
    return total / CLOCK_TICKS


def measure(
    gateways: Gateways, args: argparse.Namespace
) -> tuple[dict[str, dict[str, list[float]]], dict[str, dict[str, int]]]:
    """Each shape's CPU per request (ms) of each gateway, one figure per round; and the
    requests each answered.

    Why the order: each gateway first serves an unmeasured warm-up run of each shape; then
    in every round each shape is measured on both gateways back to back, the gateway that
    goes first alternating from round to round. So both shapes meet the ``on`` database at
    the same sizes (it grows by every request, and an insert costs more in a bigger one;
    the shapes used to run one after the other, all the streamed rounds against the
    larger database), and neither gateway always takes the first turn after the other's.
    """
    for process, url in gateways.values():
        for body in BODIES.values():
            cpu_row(url, body, 1.0, {"gateway": process.pid})
    cpu: dict[str, dict[str, list[float]]] = {
        s: {"off": [], "on": [], "on_threads": []} for s in BODIES
    }
    answered = {s: {"off": 0, "on": 0} for s in BODIES}
    for round_ in range(args.repeats):
        order = ("off", "on") if round_ % 2 == 0 else ("on", "off")
        for shape, body in BODIES.items():
            for variant in order:
                process, url = gateways[variant]
                threads = thread_seconds(process.pid)
                row = cpu_row(url, body, args.duration, {"gateway": process.pid})
                threads = thread_seconds(process.pid) - threads
                if row["errors"]:
                    print(f"  warning: {shape} {variant}: {row['errors']:g} wrk errors")
                cpu[shape][variant].append(row["gateway_cpu_ms"])
                answered[shape][variant] += int(row["requests"])
                if variant == "on":
                    per_request = threads * 1000 / max(1, row["requests"])
                    cpu[shape]["on_threads"].append(round(per_request, 4))
    return cpu, answered


def summary(cpu: dict[str, list[float]]) -> dict[str, Any]:
    """The medians, their ratio (the goal's figure) and each round's own ratio (how much
    the rounds disagree: the noise the median is taken over)."""
    off, on = (statistics.median(cpu[v]) for v in ("off", "on"))
    rounds = [round(b / a, 3) if a else None for a, b in zip(cpu["off"], cpu["on"], strict=True)]
    return {
        "off_cpu_ms": round(off, 4),
        "on_cpu_ms": round(on, 4),
        "on_threads_cpu_ms": round(statistics.median(cpu["on_threads"]), 4),
        "ratio": round(on / off, 3) if off else None,
        "round_ratios": rounds,
        "cpu_ms": cpu,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a run of well under a minute")
    parser.add_argument("--duration", type=float, default=None, help="seconds per wrk run")
    parser.add_argument("--repeats", type=int, default=None, help="rounds (medians)")
    args = parser.parse_args()
    args.duration = args.duration or (2.0 if args.quick else 10.0)
    args.repeats = args.repeats or (2 if args.quick else 5)
    if shutil.which("wrk") is None:
        sys.exit("bench_reqlog needs wrk (apt install wrk)")
    print(
        f"bench_reqlog: the fake provider and two gateways (storage off / spend + request log "
        f"on SQLite) in their own processes; wrk c=16, {args.repeats} interleaved rounds of "
        f"{args.duration:g} s each, CPU per request from /proc, medians; "
        f"Python {platform.python_version()}, {os.cpu_count()} CPUs"
    )
    fake, upstream = start_fake()
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        gateways = {v: start_gateway(upstream, Path(tmp), v) for v in ("off", "on")}
        try:
            runs, answered = measure(gateways, args)
            for shape, cpu in runs.items():
                results[shape] = {**summary(cpu), "requests": answered[shape]}
                row = results[shape]
                print(
                    f"  {shape}: CPU per request off {row['off_cpu_ms']:.3f} ms, on "
                    f"{row['on_cpu_ms']:.3f} ms (of which its worker threads "
                    f"{row['on_threads_cpu_ms']:.3f} ms), ratio {row['ratio']} (goal <= {GOAL}); "
                    f"each round's on/off {row['round_ratios']}"
                )
            results["on_counters"] = counters(gateways["on"][1])
            print(f"  the 'on' gateway's writers: {results['on_counters']}")
        finally:
            for process, _url in gateways.values():
                process.terminate()
                process.wait(30)
    assert fake.stdin is not None
    fake.stdin.close()
    fake.wait(10)
    conditions = {
        "duration_s": args.duration,
        "repeats": args.repeats,
        "connections": 16,
        "cpus": os.cpu_count(),
        "goal": GOAL,
    }
    print(json.dumps({"bench": "reqlog", "conditions": conditions, "results": results}))


if __name__ == "__main__":
    main()
