"""Proxy overhead: what the gateway adds between a client and a real upstream.

The fake provider runs in its own process; so does ``trio-orchestrator serve`` (default
settings, one OpenAI-compatible provider: the fake). The same requests go to the fake
directly and through the gateway, and the difference is the gateway's cost:

1. **latency at concurrency 1** (wrk ``-c1``, closed loop): p50 / p90 / p99 directly and
   through the gateway, and the added p50 / p90 / p99 (through minus direct);
2. **open loop at fixed rates** (``--rates``, default 100 and 500 req/s): a generator in its
   own process starts requests on schedule whatever the answers do, so a slow answer is not
   hidden by the generator waiting for it (latency is measured from the scheduled start);
3. **CPU per request** (wrk ``-c16``, closed loop): each server process's user + system CPU
   from ``/proc/<pid>/stat`` over the run, divided by the requests answered -- the gateway's
   and, in the same run, the fake upstream's own (the issue's goal compares the two).

Each for a non-streaming request and a streaming one (8 tokens). With ``--litellm-python``
pointing at a virtualenv with ``litellm[proxy]``, the same rows for LiteLLM's proxy in front
of the same fake (skipped with a message otherwise), and the two side by side: throughput per
core (LiteLLM's CPU per request over the gateway's) and added p50 at c=1 (the gateway's over
LiteLLM's). Needs wrk (Debian's ``wrk``) and Linux.
Ends with one line of JSON.

    python benchmarks/bench_overhead.py [--quick] [--duration S] [--rates R ...]
        [--transport h11|httpcore] [--litellm-python PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import h11
import httpx
import trio

MODEL = "fake-model"
TOKENS = 8
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
BODIES: dict[str, dict[str, Any]] = {
    "json": {"model": MODEL, "messages": [{"role": "user", "content": "hello"}]},
    "stream": {
        "model": MODEL,
        "messages": [{"role": "user", "content": "hello"}],
        "stream": True,
    },
}

#: wrk's script: POST the body, and report as one line of JSON (latencies in microseconds).
WRK_SCRIPT = """
wrk.method = "POST"
wrk.body = {body}
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer sk-bench"
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '{{"requests": %d, "errors": %d, "p50": %d, "p90": %d, "p99": %d}}\\n',
    summary.requests, e.connect + e.read + e.write + e.status + e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99)))
end
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_healthy(url: str, process: subprocess.Popen[Any], path: str) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + path, timeout=1.0).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        if process.poll() is not None:
            raise RuntimeError(f"{url} exited while starting")
        time.sleep(0.2)
    process.kill()
    raise RuntimeError(f"{url} did not start within 120 s")


def start_fake() -> tuple[subprocess.Popen[str], str]:
    """The fake provider in its own process (answers at once, ``TOKENS`` tokens)."""
    code = "from trio_orchestrator.testing.fake_provider import main; main()"
    process = subprocess.Popen(
        [sys.executable, "-c", code, "--tokens", str(TOKENS)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    return process, process.stdout.readline().strip()


def start_gateway(
    upstream: str,
    workdir: Path,
    transport: str | None = None,
    *,
    service: str = "",
    launcher: Sequence[str] = ("-m", "trio_orchestrator"),
    env: Mapping[str, str] | None = None,
) -> tuple[subprocess.Popen[bytes], str]:
    """``trio-orchestrator serve`` with its defaults and the fake as its one provider (and
    ``[providers] transport`` when given).

    Args:
        upstream: the fake provider's URL.
        workdir: where the configuration file goes.
        transport: ``[providers] transport``, if not the default.
        service: more ``[service]`` lines.
        launcher: the Python arguments that run the CLI (``-c CODE`` for a wrapped one).
        env: the process's environment, if not this one's.
    """
    port = free_port()
    config = workdir / f"gateway-{port}.toml"
    providers = "" if transport is None else f'[providers]\ntransport = "{transport}"\n'
    config.write_text(
        f"""
[service]
port = {port}
{service}

{providers}
[[providers.providers]]
kind = "openai"
name = "fake"
base_url = "{upstream}/v1"
models = ["{MODEL}"]
"""
    )
    command = [sys.executable, *launcher, "serve", "--config", str(config)]
    process = subprocess.Popen(
        command,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=None if env is None else dict(env),
    )
    url = f"http://127.0.0.1:{port}"
    wait_healthy(url, process, "/healthz")
    return process, url


def start_litellm(python: str, upstream: str, workdir: Path) -> tuple[subprocess.Popen[bytes], str]:
    """LiteLLM's proxy (``litellm --config``) in front of the same fake."""
    port = free_port()
    config = workdir / "litellm.yaml"
    config.write_text(
        "model_list:\n"
        f"  - model_name: {MODEL}\n"
        "    litellm_params:\n"
        f"      model: openai/{MODEL}\n"
        f"      api_base: {upstream}/v1\n"
        "      api_key: sk-fake\n"
    )
    litellm = str(Path(python).parent / "litellm")
    command = [litellm, "--config", str(config), "--port", str(port), "--host", "127.0.0.1"]
    command += ["--telemetry", "False"]
    environment = os.environ | {
        # The bench's bearer token as its master key (newer proxies refuse to start without
        # one, and call "sk-bench" weak); its model price map from the package, not fetched.
        "LITELLM_MASTER_KEY": "sk-bench",
        "LITELLM_DANGEROUSLY_PERMIT_WEAK_OR_UNSET_MASTER_KEY": "true",
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",
    }
    process = subprocess.Popen(
        command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=environment
    )
    url = f"http://127.0.0.1:{port}"
    wait_healthy(url, process, "/health/liveliness")
    return process, url


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process so far (Linux's /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def run_wrk(
    url: str, script: str, body: dict[str, Any], connections: int, seconds: float
) -> dict[str, Any]:
    """One closed-loop wrk run against ``url``'s chat completions with the Lua ``script``
    (a format string taking ``body``), which prints one line of JSON at its end: that line.
    """
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as lua:
        lua.write(script.format(body=json.dumps(json.dumps(body))))
    command = [
        *("wrk", "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s"),
        *("-s", lua.name, url + "/v1/chat/completions"),
    ]
    try:
        out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    finally:
        os.unlink(lua.name)
    row: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    return row


def wrk(url: str, body: dict[str, Any], connections: int, seconds: float) -> dict[str, float]:
    """A closed-loop wrk run against ``url``'s chat completions; latencies in ms."""
    row = run_wrk(url, WRK_SCRIPT, body, connections, seconds)
    return {
        "requests": row["requests"],
        "errors": row["errors"],
        "p50_ms": row["p50"] / 1000,
        "p90_ms": row["p90"] / 1000,
        "p99_ms": row["p99"] / 1000,
    }


class LoopTarget:
    """One server an open-loop generator sends to: its idle keep-alive connections (a new one
    when none is idle), and the answers' latencies from each request's scheduled start."""

    def __init__(self, host: str, port: int, payload: bytes) -> None:
        self.host = host
        self.port = port
        self.payload = payload
        self.idle: list[tuple[trio.SocketStream, h11.Connection]] = []
        self.latencies: list[float] = []
        self.errors = 0
        self.head = [
            ("Host", f"{host}:{port}"),
            ("Content-Type", "application/json"),
            ("Authorization", "Bearer sk-bench"),
            ("Content-Length", str(len(payload))),
        ]

    async def one(self, scheduled: float) -> None:
        """One request, read to its end; the connection kept when both sides are done."""
        if self.idle:
            stream, conn = self.idle.pop()
        else:
            stream = await trio.open_tcp_stream(self.host, self.port)
            conn = h11.Connection(h11.CLIENT)
        try:
            request = h11.Request(method="POST", target="/v1/chat/completions", headers=self.head)
            await stream.send_all(conn.send(request) + conn.send(h11.Data(data=self.payload)))
            await stream.send_all(conn.send(h11.EndOfMessage()) or b"")
            status = 0
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    conn.receive_data(await stream.receive_some(65536))
                    continue
                if isinstance(event, h11.Response):
                    status = event.status_code
                if isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
                    break
        except (OSError, trio.BrokenResourceError, h11.ProtocolError):
            self.errors += 1
            await stream.aclose()
            return
        self.latencies.append(trio.current_time() - scheduled)
        if status != 200:
            self.errors += 1
        if conn.our_state is h11.DONE and conn.their_state is h11.DONE:
            conn.start_next_cycle()
            self.idle.append((stream, conn))
        else:
            await stream.aclose()

    async def aclose(self) -> None:
        for stream, _ in self.idle:
            await stream.aclose()
        self.idle.clear()

    def summary(self) -> dict[str, float]:
        """Requests answered, errors, and latency percentiles in ms."""
        latencies = sorted(self.latencies)

        def at(q: float) -> float:
            return round(latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1000, 3)

        return {
            "requests": len(latencies),
            "errors": self.errors,
            "p50_ms": at(0.50),
            "p90_ms": at(0.90),
            "p99_ms": at(0.99),
        }


async def _open_loop(
    host: str, port: int, payload: bytes, rate: float, seconds: float
) -> dict[str, float]:
    """Start one request every ``1 / rate`` seconds, whatever the answers do."""
    target = LoopTarget(host, port, payload)
    async with trio.open_nursery() as nursery:
        start = trio.current_time()
        for i in range(int(rate * seconds)):
            scheduled = start + i / rate
            await trio.sleep_until(scheduled)
            nursery.start_soon(target.one, scheduled)
    await target.aclose()
    return target.summary()


def open_loop(url: str, body: dict[str, Any], rate: float, seconds: float) -> dict[str, float]:
    """The open-loop generator in its own process (its CPU is not the servers')."""
    code = (
        "import json, sys, trio; from bench_overhead import _open_loop; "
        "a = json.loads(sys.argv[1]); "
        "print(json.dumps(trio.run(_open_loop, a['host'], a['port'], a['payload'].encode(), "
        "a['rate'], a['seconds'])))"
    )
    host, port = url.removeprefix("http://").rsplit(":", 1)
    arguments = {
        "host": host,
        "port": int(port),
        "payload": json.dumps(body),
        "rate": rate,
        "seconds": seconds,
    }
    row: dict[str, float] = in_child(code, arguments)
    return row


def in_child(code: str, arguments: dict[str, Any]) -> Any:
    """Run ``code`` in a Python process of its own (its CPU is not the servers'), with
    ``arguments`` as JSON in ``sys.argv[1]``; the JSON of its last line of output."""
    out = subprocess.run(
        [sys.executable, "-c", code, json.dumps(arguments)],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).resolve().parent,
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


def added(through: dict[str, float], direct: dict[str, float]) -> dict[str, float]:
    return {
        f"added_{key}": round(through[key] - direct[key], 3)
        for key in ("p50_ms", "p90_ms", "p99_ms")
    }


def show(label: str, row: dict[str, float]) -> None:
    print(
        f"  {label:<34} p50 {row['p50_ms']:7.3f} ms  p90 {row['p90_ms']:7.3f} ms  "
        f"p99 {row['p99_ms']:7.3f} ms  ({row['requests']:.0f} requests, "
        f"{row['errors']:.0f} errors)"
    )


def cpu_row(
    url: str, body: dict[str, Any], seconds: float, servers: dict[str, int]
) -> dict[str, float]:
    """CPU per request (ms) of each server process over one closed-loop run at c=16."""
    before = {name: cpu_seconds(pid) for name, pid in servers.items()}
    run = wrk(url, body, 16, seconds)
    row = {"requests": run["requests"], "errors": run["errors"]}
    for name, pid in servers.items():
        row[f"{name}_cpu_ms"] = round(
            (cpu_seconds(pid) - before[name]) * 1000 / max(1, run["requests"]), 4
        )
    return row


def measure(
    name: str,
    through: str,
    direct: str,
    pids: dict[str, int],
    args: argparse.Namespace,
) -> dict[str, Any]:
    """Every row for one gateway (``through``) in front of the fake at ``direct``."""
    results: dict[str, Any] = {}
    for shape, body in BODIES.items():
        print(f"{name}, {'streaming' if shape == 'stream' else 'non-streaming'}:")
        # c=1 latency: direct and through take turns, ``--repeats`` rounds; medians.
        rounds: dict[str, list[dict[str, float]]] = {"direct": [], "through": []}
        for _ in range(args.repeats):
            rounds["direct"].append(wrk(direct, body, 1, args.duration))
            rounds["through"].append(wrk(through, body, 1, args.duration))
        c1 = {side: median_row(runs) for side, runs in rounds.items()}
        show("c=1 direct", c1["direct"])
        show(f"c=1 through {name}", c1["through"])
        c1["added"] = added(c1["through"], c1["direct"])
        print(f"  c=1 added: {c1['added']}")
        results[f"{shape}/c1"] = c1
        for rate in args.rates:
            direct_row = open_loop(direct, body, rate, args.duration)
            through_row = open_loop(through, body, rate, args.duration)
            show(f"{rate:g} req/s direct", direct_row)
            show(f"{rate:g} req/s through {name}", through_row)
            results[f"{shape}/rate{rate:g}"] = {
                "direct": direct_row,
                "through": through_row,
                "added": added(through_row, direct_row),
            }
        cpu = cpu_row(through, body, args.duration, pids)
        ratio = round(cpu[f"{name}_cpu_ms"] / cpu["upstream_cpu_ms"], 3)
        print(
            f"  CPU per request at c=16: {name} {cpu[f'{name}_cpu_ms']:.3f} ms, the fake "
            f"upstream {cpu['upstream_cpu_ms']:.3f} ms ({ratio}x)"
        )
        cpu["gateway_over_upstream"] = ratio
        results[f"{shape}/cpu"] = cpu
    return results


def side_by_side(ours: dict[str, Any], litellm: dict[str, Any]) -> dict[str, float]:
    """The issue's two comparisons, per shape: throughput per core (the inverse of CPU per
    request at c=16: LiteLLM's CPU per request over ours) and added p50 latency at c=1 (ours
    over LiteLLM's)."""
    row: dict[str, float] = {}
    print("side by side (same run, same fake upstream):")
    for shape in BODIES:
        cpu = litellm[f"{shape}/cpu"]["litellm_cpu_ms"] / ours[f"{shape}/cpu"]["gateway_cpu_ms"]
        ours_added = ours[f"{shape}/c1"]["added"]["added_p50_ms"]
        latency = ours_added / litellm[f"{shape}/c1"]["added"]["added_p50_ms"]
        print(
            f"  {shape}: throughput per core {cpu:.1f}x LiteLLM's; added p50 at c=1 "
            f"{latency:.2f} of LiteLLM's"
        )
        row[f"{shape}_throughput_per_core_x"] = round(cpu, 2)
        row[f"{shape}_added_p50_fraction"] = round(latency, 3)
    return row


def median_row(runs: list[dict[str, float]]) -> dict[str, float]:
    return {key: round(statistics.median(r[key] for r in runs), 3) for key in runs[0]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a run of about a minute")
    parser.add_argument("--duration", type=float, default=None, help="seconds per run")
    parser.add_argument("--repeats", type=int, default=None, help="c=1 rounds (medians)")
    parser.add_argument("--rates", type=float, nargs="*", default=[100.0, 500.0])
    parser.add_argument(
        "--litellm-python", default=None, help="a virtualenv's python with litellm[proxy]"
    )
    parser.add_argument(
        "--transport",
        choices=["h11", "httpcore"],
        default=None,
        help="the gateway's [providers] transport (default: the configuration's default)",
    )
    args = parser.parse_args()
    args.duration = args.duration or (2.0 if args.quick else 10.0)
    args.repeats = args.repeats or (1 if args.quick else 3)
    if shutil.which("wrk") is None:
        sys.exit("bench_overhead needs wrk (apt install wrk)")
    print(
        f"bench_overhead: fake provider ({TOKENS} tokens, answers at once) and the gateway "
        f"(trio-orchestrator serve, default settings, transport {args.transport or 'default'}) "
        f"in their own processes; wrk c=1 "
        f"({args.repeats} rounds, {args.duration:g} s each, medians), open loop at "
        f"{args.rates} req/s, CPU from /proc at c=16; Python {platform.python_version()}, "
        f"{os.cpu_count()} CPUs"
    )
    fake, upstream = start_fake()
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        gateway, url = start_gateway(upstream, Path(tmp), args.transport)
        try:
            pids = {"gateway": gateway.pid, "upstream": fake.pid}
            results["trio_orchestrator"] = measure("gateway", url, upstream, pids, args)
        finally:
            gateway.terminate()
            gateway.wait(30)
        if args.litellm_python and Path(args.litellm_python).exists():
            lite, lite_url = start_litellm(args.litellm_python, upstream, Path(tmp))
            try:
                pids = {"litellm": lite.pid, "upstream": fake.pid}
                results["litellm"] = measure("litellm", lite_url, upstream, pids, args)
            finally:
                lite.terminate()
                lite.wait(30)
        else:
            results["litellm"] = "skipped: no --litellm-python with litellm[proxy]"
            print("litellm: skipped (give --litellm-python, a virtualenv with litellm[proxy])")
    assert fake.stdin is not None
    fake.stdin.close()
    fake.wait(10)
    if isinstance(results["litellm"], dict):
        results["side_by_side"] = side_by_side(results["trio_orchestrator"], results["litellm"])
    conditions = {
        "duration_s": args.duration,
        "repeats": args.repeats,
        "rates": args.rates,
        "tokens": TOKENS,
        "transport": args.transport or "default",
        "cpus": os.cpu_count(),
    }
    print(json.dumps({"bench": "overhead", "conditions": conditions, "results": results}))


if __name__ == "__main__":
    main()
