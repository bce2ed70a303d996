"""Where the bytes of an open stream are: tracemalloc over K streamed chats held open.

The service runs in this process (:func:`trio_orchestrator.service.serve`, the echo worker
with a token delay that holds every stream open, the configuration of ``bench_streams.py``)
under ``tracemalloc``; a client in another process (raw sockets under Trio, so none of its
bytes are counted) opens K streaming ``POST /v1/chat/completions`` and reads them. Once every
stream has its first bytes, the live allocations are compared with those before the load
(after a warm-up of short streams), and each one is charged to where it was made:

- per file and line, the largest first (``--top``);
- per owner: the file of the allocation (Trio, hypercorn and h11, classes attrs generated,
  this project, the rest);
- and, from ``gc``, the coroutine frames, cancel scopes and Trio tasks each stream holds.

Then the client is stopped (each stream ends as a disconnect) and so is the service. Memory
is not timing-sensitive: run it under ``nice -n 19`` on a shared machine. Ends with one line
of JSON.

    PYTHONPATH=. python benchmarks/trace_streams.py [--quick] [--streams K] [--hold S] [--top N]

(``PYTHONPATH=.``: this checkout's package, not one the environment installed elsewhere.)
"""

from __future__ import annotations

import argparse
import gc
import json
import linecache
import os
import platform
import sys
import tempfile
import tracemalloc
import types
from collections import Counter
from functools import partial
from pathlib import Path
from typing import Any

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_streams import (
    CONNECTING_AT_ONCE,
    one_stream,
    raise_fd_limit,
    request_bytes,
    write_config,
)

from trio_orchestrator.config import parse_config
from trio_orchestrator.service import serve

TOKENS = 10


async def client(host: str, port: int, streams: int, words: int) -> None:
    """Open ``streams`` at once; print OPEN once all have answered, DONE with the count of
    those completed at the end."""
    request = request_bytes(host, port, words)
    gate = trio.Semaphore(CONNECTING_AT_ONCE)
    opened = [trio.Event() for _ in range(streams)]
    completed = 0

    async def run(i: int) -> None:
        nonlocal completed
        completed += await one_stream((host, port), request, gate, opened[i])

    async with trio.open_nursery() as nursery:
        for i in range(streams):
            nursery.start_soon(run, i)
        for event in opened:
            await event.wait()
        print("OPEN", flush=True)
    print(f"DONE {completed}", flush=True)


async def run_client(
    host: str, port: int, streams: int, words: int, opened: trio.Event | None = None
) -> trio.Process:
    """Start a client process; set ``opened`` once all its streams have answered."""
    process = await trio.lowlevel.open_process(
        [sys.executable, __file__, "--client", host, str(port), str(streams), str(words)],
        stdout=-1,
    )
    assert process.stdout is not None
    seen = b""
    while b"OPEN" not in seen:
        data = await process.stdout.receive_some()
        if not data:
            raise RuntimeError("the client ended before its streams were open")
        seen += data
    if opened is not None:
        opened.set()
    return process


def owner(filename: str) -> str:
    """Who made an allocation at ``filename``."""
    if filename.startswith("<attrs generated"):
        return "attrs-generated"
    parts = Path(filename).parts
    for name in ("trio_orchestrator", "hypercorn", "h11", "trio", "outcome", "starlette"):
        if name in parts:
            return "hypercorn+h11" if name in ("hypercorn", "h11") else name
    return "other"


def caller(traceback: tracemalloc.Traceback) -> str:
    """The innermost frame of ``traceback`` in this project or in hypercorn, as file:line."""
    for frame in reversed(traceback):  # innermost first (a traceback runs oldest first)
        name = owner(frame.filename)
        if name in ("trio_orchestrator", "hypercorn+h11"):
            line = linecache.getline(frame.filename, frame.lineno).strip()[:50]
            return f"{'/'.join(Path(frame.filename).parts[-2:])}:{frame.lineno}  {line}"
    return "(none)"


def live_counts() -> Counter[str]:
    """Coroutine frames (by qualified name), cancel scopes and tasks alive now."""
    gc.collect()
    found: Counter[str] = Counter()
    for thing in gc.get_objects():
        if isinstance(thing, types.CoroutineType):
            found["frames"] += 1
            found[f"frame {thing.cr_code.co_qualname}"] += 1
        elif isinstance(thing, trio.CancelScope):
            found["cancel scopes"] += 1
        elif isinstance(thing, trio.lowlevel.Task):
            found["tasks"] += 1
    return found


async def measure(streams: int, hold: float, top: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as directory:
        path = write_config(directory, streams, hold / (TOKENS - 1))
        with open(path) as file:  # noqa: ASYNC230 -- before the service starts
            config = parse_config(file.read())
    async with trio.open_nursery() as nursery:
        stop = trio.Event()
        url: str = await nursery.start(partial(serve, config, shutdown_trigger=stop.wait))
        host, port = url.removeprefix("http://").rsplit(":", 1)
        warm = await run_client(host, int(port), 20, 1)
        await warm.wait()
        await trio.sleep(0.5)
        before_counts = live_counts()
        before = tracemalloc.take_snapshot()
        load = await run_client(host, int(port), streams, TOKENS)
        await trio.sleep(1.0)  # the last first-bytes written, every stream waiting
        after = tracemalloc.take_snapshot()
        after_counts = live_counts()
        load.kill()
        await load.wait()
        stop.set()
    filters = [tracemalloc.Filter(False, tracemalloc.__file__)]
    after, before = after.filter_traces(filters), before.filter_traces(filters)
    diff = after.compare_to(before, "lineno")
    total = sum(stat.size_diff for stat in diff)
    owners: Counter[str] = Counter()
    for stat in diff:
        owners[owner(stat.traceback[0].filename)] += stat.size_diff
    callers: Counter[str] = Counter()
    for stat in after.compare_to(before, "traceback"):
        callers[caller(stat.traceback)] += stat.size_diff
    print(f"{streams} streams held open; tracemalloc, live bytes while open minus before")
    print(f"  {total / streams:,.0f} B per stream")
    for name, size in owners.most_common():
        print(f"  {name:<20} {size / streams:8,.0f} B")
    print("charged to the innermost line of this project or hypercorn that caused them:")
    for site, size in callers.most_common(top):
        print(f"  {size / streams:7,.0f}  {site}")
    print(f"largest {top} allocation sites, bytes per stream (count per stream):")
    for stat in sorted(diff, key=lambda s: -s.size_diff)[:top]:
        frame = stat.traceback[0]
        line = linecache.getline(frame.filename, frame.lineno).strip()[:60]
        short = "/".join(Path(frame.filename).parts[-2:])
        print(
            f"  {stat.size_diff / streams:7,.0f}  ({stat.count_diff / streams:5.2f})  "
            f"{short}:{frame.lineno}  {line}"
        )
    per = {
        key: (after_counts[key] - before_counts[key]) / streams
        for key in after_counts
        if key in ("frames", "cancel scopes", "tasks")
        or abs(after_counts[key] - before_counts[key]) >= streams / 2
    }
    print("per stream, from gc:")
    for key, value in sorted(per.items(), key=lambda item: item[0]):
        print(f"  {key:<50} {value:6.2f}")
    return {
        "bytes_per_stream": round(total / streams),
        "owners": {name: round(size / streams) for name, size in owners.most_common()},
        "frames_per_stream": per.get("frames"),
        "cancel_scopes_per_stream": per.get("cancel scopes"),
        "tasks_per_stream": per.get("tasks"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="K=300")
    parser.add_argument("--streams", type=int, default=1000, help="K, streams open at once")
    parser.add_argument("--hold", type=float, default=60.0, help="seconds a stream would last")
    parser.add_argument("--top", type=int, default=30, help="allocation sites to show")
    parser.add_argument("--frames", type=int, default=30, help="frames kept per allocation")
    parser.add_argument("--client", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.client:
        host, port, count, words = args.client
        trio.run(client, host, int(port), int(count), int(words))
        return
    streams = 300 if args.quick else args.streams
    raise_fd_limit()
    tracemalloc.start(args.frames)
    figures = trio.run(measure, streams, args.hold, args.top)
    figures = {
        "benchmark": "trace_streams",
        "streams": streams,
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        **figures,
    }
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
