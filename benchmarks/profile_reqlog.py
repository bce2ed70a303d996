"""Where spend and the request log spend CPU, counted rather than timed: cProfile call counts
per request of the served gateway with ``[storage]`` off and on, the same requests to each.

The timings of ``bench_reqlog.py`` are only as good as the machine is quiet; a function
call count is not. For each variant (the bench's own two configurations, by
:func:`bench_reqlog.write_config`) a ``serve`` runs in its own process under
:mod:`cProfile`, switched on after a warm-up; a client sends ``--requests`` requests at
concurrency ``--concurrency`` (each streamed answer read to its end), then the profile
stops. The report: function calls per request in each variant and the difference, the same
for the calls in spend's, the request log's and storage's own code (:func:`own_calls`, the
steadier figure), and the functions whose calls per request differ most (``on`` minus
``off``), with their share of the profiled time. Only the event loop's thread is profiled:
the writers' batched SQLite work in worker threads is not in it (``bench_reqlog_parts.py``
times it in process, ``bench_reqlog.py`` has it in the process's CPU).

    python benchmarks/profile_reqlog.py [--shape stream|json] [--requests N] [--top K]
"""

from __future__ import annotations

import argparse
import json
import pstats
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
from bench_overhead import BODIES, free_port, start_fake, wait_healthy
from bench_reqlog import write_config

# The profiled server: serve() until stdin says "quit"; "start" and "stop" switch the
# profiler (stats dumped to argv[2] on "stop"). stdin is read by Trio, not a thread.
SERVER = """
import cProfile, sys, trio
from trio_orchestrator.cli.config import load_checked
from trio_orchestrator.service.server import serve

config = load_checked(sys.argv[1])
profile = cProfile.Profile()

async def main():
    quit = trio.Event()
    async with trio.open_nursery() as nursery:
        async def trigger():
            await quit.wait()
        await nursery.start(lambda task_status: serve(
            config, shutdown_trigger=trigger, task_status=task_status))
        sys.stdout.write("ready\\n"); sys.stdout.flush()
        stdin = trio.lowlevel.FdStream(0)
        buffer = b""
        while not quit.is_set():
            chunk = await stdin.receive_some()
            if not chunk:
                break
            buffer += chunk
            while b"\\n" in buffer:
                line, buffer = buffer.split(b"\\n", 1)
                if line == b"start":
                    profile.enable()
                elif line == b"stop":
                    profile.disable()
                    profile.dump_stats(sys.argv[2])
                elif line == b"quit":
                    quit.set()
                sys.stdout.write("ok\\n"); sys.stdout.flush()

trio.run(main)
"""


def drive(url: str, body: dict[str, Any], requests: int, concurrency: int) -> int:
    """Send ``requests`` requests, ``concurrency`` at a time; the number answered 200."""

    def one(client: httpx.Client) -> bool:
        with client.stream("POST", url + "/v1/chat/completions", json=body) as response:
            for _ in response.iter_bytes():
                pass
            return response.status_code == 200

    limits = httpx.Limits(max_connections=concurrency)
    with httpx.Client(timeout=30, limits=limits) as client, ThreadPoolExecutor(concurrency) as pool:
        return sum(pool.map(lambda _: one(client), range(requests)))


def profile_variant(
    upstream: str, workdir: Path, variant: str, body: dict[str, Any], args: argparse.Namespace
) -> pstats.Stats:
    """Profile ``args.requests`` requests through a gateway with storage ``variant``."""
    port = free_port()
    config = write_config(upstream, workdir, variant, port)
    out = workdir / f"{variant}.prof"
    server = subprocess.Popen(
        [sys.executable, "-c", SERVER, str(config), str(out)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert server.stdin is not None
    assert server.stdout is not None

    def say(line: str) -> None:
        assert server.stdin is not None
        assert server.stdout is not None
        server.stdin.write(line + "\n")
        server.stdin.flush()
        server.stdout.readline()

    try:
        assert server.stdout.readline().strip() == "ready"
        url = f"http://127.0.0.1:{port}"
        wait_healthy(url, server, "/healthz")
        drive(url, body, args.warmup, args.concurrency)
        say("start")
        answered = drive(url, body, args.requests, args.concurrency)
        say("stop")
        say("quit")
        server.wait(60)
    finally:
        if server.poll() is None:
            server.kill()
    if answered != args.requests:
        raise RuntimeError(f"{variant}: {answered} of {args.requests} answered 200")
    return pstats.Stats(str(out))


def per_function(stats: pstats.Stats, requests: int) -> dict[str, tuple[float, float]]:
    """Each function's calls per request and its own time (tottime, seconds)."""
    table: dict[str, tuple[float, float]] = {}
    for (path, line, name), (_cc, calls, tottime, _ct, _callers) in stats.stats.items():  # type: ignore[attr-defined]
        short = path.split("site-packages/")[-1].split("trio_orchestrator/")[-1]
        table[f"{short}:{line}({name})"] = (calls / requests, tottime)
    return table


# Where spend's and the request log's own work is (with the key-policy layer, pricing and
# attrs, which their records go through): the calls made there, and the builtins called
# from there, are their share -- steadier than the whole count, in which the Trio run
# loop's scheduling varies by a few calls per request from run to run.
_OURS = (
    "observability/requestlog",
    "observability/spend",
    "storage/",
    "gateway.py",
    "catalogue/",
    "routing/keys.py",
    "workers/config.py",
    "attr/",
)


def own_calls(stats: pstats.Stats, requests: int) -> float:
    """Calls per request in spend's, the request log's and storage's code (see ``_OURS``)."""

    def ours(path: str) -> bool:
        return any(part in path for part in _OURS)

    total = 0
    for (path, _line, _name), (_cc, calls, _tt, _ct, callers) in stats.stats.items():  # type: ignore[attr-defined]
        if ours(path):
            total += calls
        elif path == "~":  # a builtin: count its calls from our code
            total += sum(
                c[1] if isinstance(c, tuple) else c
                for (where, _l, _n), c in callers.items()
                if ours(where)
            )
    return total / requests


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", choices=sorted(BODIES), default="stream")
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--warmup", type=int, default=50)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--keep", type=Path, default=None, help="keep the .prof files here")
    args = parser.parse_args()
    body = BODIES[args.shape]
    fake, upstream = start_fake()
    tables: dict[str, dict[str, tuple[float, float]]] = {}
    totals: dict[str, float] = {}
    own: dict[str, float] = {}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for variant in ("off", "on"):
                stats = profile_variant(upstream, Path(tmp), variant, body, args)
                if args.keep is not None:
                    args.keep.mkdir(parents=True, exist_ok=True)
                    stats.dump_stats(args.keep / f"{args.shape}-{variant}.prof")
                tables[variant] = per_function(stats, args.requests)
                totals[variant] = stats.total_calls / args.requests  # type: ignore[attr-defined]
                own[variant] = own_calls(stats, args.requests)
    finally:
        assert fake.stdin is not None
        fake.stdin.close()
        fake.wait(10)
    off, on = tables["off"], tables["on"]
    print(
        f"profile_reqlog ({args.shape}, {args.requests} requests, c={args.concurrency}): "
        f"function calls per request off {totals['off']:.1f}, on {totals['on']:.1f}, "
        f"on - off {totals['on'] - totals['off']:+.1f}; in spend's, the request log's and "
        f"storage's code off {own['off']:.1f}, on {own['on']:.1f}, "
        f"on - off {own['on'] - own['off']:+.1f}"
    )
    on_time = sum(t for _c, t in on.values()) or 1.0
    names = set(off) | set(on)
    diffs = sorted(
        names,
        key=lambda n: -abs(on.get(n, (0.0, 0.0))[0] - off.get(n, (0.0, 0.0))[0]),
    )
    print(f"  {'calls/req off':>13} {'on':>8} {'on-off':>8} {'on tottime %':>12}  function")
    for name in diffs[: args.top]:
        c_off = off.get(name, (0.0, 0.0))[0]
        c_on, t_on = on.get(name, (0.0, 0.0))
        if abs(c_on - c_off) < 0.05:
            break
        share = 100 * t_on / on_time
        print(f"  {c_off:13.2f} {c_on:8.2f} {c_on - c_off:+8.2f} {share:11.2f}%  {name}")
    print(
        json.dumps(
            {
                "profile": "reqlog",
                "shape": args.shape,
                "calls_per_request": totals,
                "own_calls_per_request": own,
            }
        )
    )


if __name__ == "__main__":
    main()
