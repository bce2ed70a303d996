"""Memory per concurrent stream: K streams held open at once against ``serve``.

The service runs in its own process (``python -m trio_orchestrator serve``, echo worker, a
config file in a temporary directory) with a token delay that keeps every stream open for
``--hold`` seconds. Client processes (``--clients``, raw sockets under Trio: a few KB each, so
the client does not limit K) open K streaming ``POST /v1/chat/completions`` between them and
read each to its end. The server's resident memory is read from ``/proc/<pid>/status``:

- ``start``: after a small warm-up, before the load;
- ``peak``: once every stream has received its first bytes (all K open at once), and the
  kernel's high-water mark (``VmHWM``) for the whole run;
- ``settled``: ``--settle`` seconds after the last stream ended (the service hands freed
  memory back after a whole ``service.idle_trim_interval`` with no request begun, 5 to 10 s
  after the last one with the default 5 s, hence the default 12 s; run the bench under
  ``PYTHONMALLOC=malloc`` to see most of it come back, the server inherits it).

A stream is *completed* when it answered 200, sent ``data: [DONE]`` and ended its chunked
body; every other stream is *lost*. Ends with one line of JSON.

    python benchmarks/bench_streams.py [--quick] [--streams K] [--hold S] [--clients N]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import queue
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import IO, Any

import attrs
import trio

REPO = Path(__file__).resolve().parent.parent
PROMPT_TOKENS = 10
# Opening connections faster than the server accepts them overflows its listen backlog; the
# kernel then retries the SYN a second or more later, which only slows the ramp.
CONNECTING_AT_ONCE = 64


def raise_fd_limit() -> int:
    """Raise this process's open-file soft limit to the hard one (children inherit it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def memory_kb(pid: int) -> dict[str, int]:
    """``VmRSS`` and ``VmHWM`` of process ``pid``, in KB."""
    found = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            found[name] = int(value.split()[0])
    return found


# ----------------------------------------------------------------------------- the client


def request_bytes(host: str, port: int, tokens: int = PROMPT_TOKENS) -> bytes:
    """One streaming chat request whose echo is ``tokens`` tokens long."""
    words = " ".join(f"w{i}" for i in range(tokens))
    body = json.dumps(
        {"model": "echo", "stream": True, "messages": [{"role": "user", "content": words}]}
    ).encode()
    head = (
        f"POST /v1/chat/completions HTTP/1.1\r\nhost: {host}:{port}\r\n"
        f"content-type: application/json\r\ncontent-length: {len(body)}\r\n"
        "connection: close\r\n\r\n"
    )
    return head.encode() + body


@attrs.define
class OpenCount:
    """Streams that have answered and not ended yet, and the most at once."""

    now: int = 0
    most: int = 0

    def opened(self) -> None:
        self.now += 1
        self.most = max(self.most, self.now)


async def one_stream(
    address: tuple[str, int],
    request: bytes,
    gate: trio.Semaphore,
    opened: trio.Event | None,
    count: OpenCount | None = None,
) -> bool:
    """Open one stream and read it to its end; True if it completed."""
    received = bytearray()
    answered = False
    try:
        async with gate:
            sock = trio.socket.socket()
            await sock.connect(address)
        with sock:
            await sock.send(request)
            first = True
            while True:
                data = await sock.recv(65536)
                if not data:
                    break
                if first:
                    first = False
                    if opened is not None:
                        opened.set()
                    if count is not None:
                        count.opened()
                        answered = True
                received += data
                if received.endswith(b"0\r\n\r\n"):
                    break
    except OSError:
        return False
    finally:
        if answered and count is not None:
            count.now -= 1
        if opened is not None:
            opened.set()  # resolved either way: the "all open" signal must not hang on it
    return (
        received.startswith(b"HTTP/1.1 200")
        and b"data: [DONE]" in received
        and received.endswith(b"0\r\n\r\n")
    )


async def client(host: str, port: int, streams: int, out: IO[str]) -> None:
    """Run ``streams`` at once; print OPEN once all have answered, then the counts (the
    completed streams, and the most that were open at once)."""
    request = request_bytes(host, port)
    gate = trio.Semaphore(CONNECTING_AT_ONCE)
    opened = [trio.Event() for _ in range(streams)]
    completed = 0
    count = OpenCount()

    async def run(i: int) -> None:
        nonlocal completed
        if await one_stream((host, port), request, gate, opened[i], count):
            completed += 1

    async def announce() -> None:
        for event in opened:
            await event.wait()
        print("OPEN", file=out, flush=True)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(announce)
        for i in range(streams):
            nursery.start_soon(run, i)
    print(f"DONE {completed} {count.most}", file=out, flush=True)


# ----------------------------------------------------------------------------- the run


def write_config(directory: str, streams: int, token_delay: float) -> str:
    """A configuration that admits ``streams`` at once and holds each open."""
    room = max(streams, 1024)
    path = os.path.join(directory, "streams.toml")
    Path(path).write_text(
        "[service]\nport = 0\n"
        f"[service.echo]\ntoken_delay = {token_delay}\n"
        "[pipeline]\n"
        f"inference_concurrency = {room}\n"
        f"rag_capacity = {room}\nassemble_capacity = {room}\ninference_capacity = {room}\n"
        f"post_capacity = {room}\nstream_capacity = {room}\n"
        "request_timeout = 600.0\n"
    )
    return path


def start_server(config: str) -> tuple[subprocess.Popen[str], str, int]:
    """Start ``serve`` and return the process, host and port it listens on."""
    server = subprocess.Popen(
        [sys.executable, "-m", "trio_orchestrator", "serve", "--config", config],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},  # this checkout's package
    )
    assert server.stdout is not None
    for line in server.stdout:
        if "serving on http://" in line:
            url = line.split("serving on ")[1].split()[0]
            host, port = url.removeprefix("http://").rsplit(":", 1)
            return server, host, int(port)
    raise RuntimeError("the server exited before it listened")


def run_clients(host: str, port: int, streams: int, processes: int) -> list[subprocess.Popen[str]]:
    """Start the client processes, ``streams`` spread across them."""
    share = [streams // processes + (i < streams % processes) for i in range(processes)]
    return [
        subprocess.Popen(
            [sys.executable, __file__, "--client", host, str(port), str(n)],
            stdout=subprocess.PIPE,
            text=True,
        )
        for n in share
        if n
    ]


class Sampler(threading.Thread):
    """Polls the server's RSS while the load runs and keeps the largest reading."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.largest = 0
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.wait(0.2):
            self.largest = max(self.largest, memory_kb(self.pid)["VmRSS"])


def _forward(proc: subprocess.Popen[str], lines: queue.Queue[str]) -> None:
    assert proc.stdout is not None
    done = False
    for line in proc.stdout:
        done = done or line.startswith("DONE")
        lines.put(line)
    if not done:
        lines.put("EOF")


def load(host: str, port: int, streams: int, processes: int, pid: int) -> dict[str, Any]:
    """Run ``streams`` at once; return the counts and the RSS with all of them open."""
    clients = run_clients(host, port, streams, processes)
    sampler = Sampler(pid)
    sampler.start()
    began = time.perf_counter()
    all_open: int | None = None
    open_after: float | None = None
    completed = most_open = 0
    lines: queue.Queue[str] = queue.Queue()
    readers = [threading.Thread(target=_forward, args=(proc, lines)) for proc in clients]
    for reader in readers:
        reader.start()
    waiting_open = waiting_done = len(clients)
    while waiting_done:
        line = lines.get()
        if line.startswith("OPEN"):
            waiting_open -= 1
            if waiting_open == 0:
                all_open = memory_kb(pid)["VmRSS"]
                open_after = time.perf_counter() - began
        elif line.startswith("DONE"):
            waiting_done -= 1
            done, most = map(int, line.split()[1:])
            completed, most_open = completed + done, most_open + most
        elif line == "EOF":
            waiting_done -= 1  # a client that died without its counts
    for proc in clients:
        proc.wait()
    sampler.stop.set()
    sampler.join()
    return {
        "completed": completed,
        "lost": streams - completed,  # a client that died without its counts lost its share
        # Summed over the client processes: their peaks may not coincide, so this is an
        # upper bound; equal to K when every stream was open at the time of "all open".
        "most_open_at_once": most_open,
        "rss_all_open_kb": all_open,
        "rss_sampled_max_kb": sampler.largest,
        "all_open_after_s": None if open_after is None else round(open_after, 2),
        "load_s": round(time.perf_counter() - began, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="K=1000, a run under a minute")
    parser.add_argument("--streams", type=int, default=10_000, help="K, streams open at once")
    parser.add_argument("--hold", type=float, help="seconds each stream stays open")
    parser.add_argument("--clients", type=int, default=2, help="client processes")
    # Longer than service.idle_trim_interval (5 s): the service trims once it has been idle.
    parser.add_argument("--settle", type=float, default=12.0, help="seconds idle before 'settled'")
    parser.add_argument("--client", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.client:
        host, port, count = args.client
        trio.run(client, host, int(port), int(count), sys.stdout)
        return
    streams = 1000 if args.quick else args.streams
    # Long enough for every stream to be open before the first ends: the ramp runs at some
    # hundreds of streams per second on a small machine.
    hold = args.hold or (20.0 if args.quick else max(30.0, streams / 50))
    fd_limit = raise_fd_limit()
    with tempfile.TemporaryDirectory() as directory:
        config = write_config(directory, streams, hold / (PROMPT_TOKENS - 1))
        server, host, port = start_server(config)
        try:
            warm = run_clients(host, port, 20, 1)[0]
            warm.communicate()
            time.sleep(1.0)
            start = memory_kb(server.pid)["VmRSS"]
            result = load(host, port, streams, args.clients, server.pid)
            time.sleep(args.settle)
            after = memory_kb(server.pid)
        finally:
            server.terminate()
            server.wait(timeout=30)
    peak = result["rss_all_open_kb"] or result["rss_sampled_max_kb"]
    figures = {
        "benchmark": "streams",
        "streams": streams,
        "hold_s": hold,
        "clients": args.clients,
        "fd_limit": fd_limit,
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        **result,
        "rss_start_kb": start,
        "rss_peak_kb": peak,
        "rss_hwm_kb": after["VmHWM"],
        "rss_settled_kb": after["VmRSS"],
        "kb_per_stream": round((peak - start) / streams, 2),
        # False when the ramp outlasted --hold (a loaded machine): the first streams ended
        # before the last opened, and kb_per_stream understates the cost of one.
        "all_open_at_once": result["most_open_at_once"] >= streams,
    }
    print(f"streams {streams}, held {hold:.1f} s each, {args.clients} client processes")
    print(f"completed {result['completed']}, lost {result['lost']}")
    print(
        f"all open after {result['all_open_after_s']} s (at most {result['most_open_at_once']} "
        f"at once); load took {result['load_s']} s"
    )
    mb = {k: figures[k] / 1024 for k in ("rss_start_kb", "rss_peak_kb", "rss_hwm_kb")}
    print(
        f"server RSS: start {mb['rss_start_kb']:.1f} MB, all open {mb['rss_peak_kb']:.1f} MB, "
        f"high-water {mb['rss_hwm_kb']:.1f} MB, settled {after['VmRSS'] / 1024:.1f} MB "
        f"({args.settle:.0f} s after)"
    )
    print(f"{figures['kb_per_stream']} KB per stream (all open - start) / K")
    if not figures["all_open_at_once"]:
        print(
            f"warning: at most {result['most_open_at_once']} of {streams} were open at once "
            "(the ramp outlasted --hold): KB per stream is too low; run again with a longer --hold"
        )
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
