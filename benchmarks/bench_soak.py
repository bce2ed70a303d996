"""Soak: the service in front of an upstream that fails a seeded share of its answers.

Three phases, each with a fresh fake provider (its own process, ``FaultMix`` with a fixed
seed: 500s, 429s with ``Retry-After``, resets, malformed events, stalls and hangs, the last two
bounded by the provider's timeouts) and a fresh ``trio-orchestrator serve`` (its own
process, launched from a TOML file as an operator would):

- ``on``: ``--fault-rate`` faults, circuit breaker and retry on;
- ``off``: the same faults (same seed), breaker and retry off — the baseline of this run;
- ``outage``: every upstream answer fails, breaker and retry on, for ``--outage`` seconds: the
  breaker should open, and the upstream calls (retry attempts, from ``/metrics``) fall to the
  probe rate.

``--requests`` requests per phase (every other one streamed) at concurrency 64 through
``/v1/chat/completions``. Each phase prints the client's outcome counts (each failure named
for its kind of caller, ``streamed:`` or ``whole:``), the service's own (``/v1/stats``) and
their difference (which must be 0: every request is counted once), the success rate, and
the service's RSS at start, middle and end. Ends with one line of JSON.

    python benchmarks/bench_soak.py [--quick] [--requests N] [--fault-rate R] [--seed S]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import trio

CONCURRENCY = 64
MODEL = "fake-model"
TOKENS = 8


def start_fake(rate: float, seed: int) -> tuple[subprocess.Popen[str], str]:
    """The fake provider in its own process, failing ``rate`` of its answers."""
    code = "from trio_orchestrator.testing.fake_provider import main; main()"
    args = ["--tokens", str(TOKENS), "--fault-rate", str(rate), "--fault-seed", str(seed)]
    process = subprocess.Popen(
        [sys.executable, "-c", code, *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    return process, process.stdout.readline().strip()


def stop_fake(process: subprocess.Popen[str]) -> dict[str, Any]:
    """Stop the fake; return what it saw (its last line of JSON)."""
    assert process.stdin is not None
    assert process.stdout is not None
    process.stdin.close()
    lines = process.stdout.read().strip().splitlines()
    process.wait(30)
    return json.loads(lines[-1]) if lines else {}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def config_toml(upstream: str, port: int, layers: bool, restart_stream: bool) -> str:
    """The service's configuration: one OpenAI-compatible provider (the fake), short
    provider timeouts (a hang or a stall fails in 2 s), metrics on; the breaker and retry
    at their defaults but for ``enabled`` (and ``restart_stream`` when it is False)."""
    on = "true" if layers else "false"
    restart = "" if restart_stream else "restart_stream = false"
    return f"""
[service]
port = {port}

[pipeline]
request_timeout = 30.0

[[providers.providers]]
kind = "openai"
name = "fake"
base_url = "{upstream}/v1"
models = ["{MODEL}"]
max_connections = {CONCURRENCY}
pool_size = {CONCURRENCY}
timeouts = {{ connect = 2.0, first_token = 2.0, idle = 2.0, total = 30.0 }}

[resilience.breaker]
enabled = {on}

[resilience.retry]
enabled = {on}
{restart}

[observability.metrics]
enabled = true

[observability.logging]
requests = false
"""


def start_service(config: str, workdir: Path) -> tuple[subprocess.Popen[bytes], str]:
    """``trio-orchestrator serve`` in its own process; waits until ``/healthz`` answers."""
    path = workdir / "soak.toml"
    path.write_text(config)
    port = free_port()
    command = [sys.executable, "-m", "trio_orchestrator", "serve", "--config", str(path)]
    process = subprocess.Popen(
        [*command, "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "/healthz", timeout=1.0).status_code == 200:
                return process, url
        except httpx.HTTPError:
            pass
        if process.poll() is not None:
            raise RuntimeError("the service exited while starting")
        time.sleep(0.2)
    process.kill()
    raise RuntimeError("the service did not start within 120 s")


def rss_mb(pid: int) -> float | None:
    """The process's resident memory in MB (Linux's /proc; None elsewhere)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    kb = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:"))
    return round(kb / 1024, 1)


async def one(client: httpx.AsyncClient, stream: bool) -> str:
    """One request; its outcome as the client sees it."""
    body = {"model": MODEL, "messages": [{"role": "user", "content": "soak"}], "stream": stream}
    try:
        async with client.stream("POST", "/v1/chat/completions", json=body) as response:
            if response.status_code != 200:
                await response.aread()
                return f"http_{response.status_code}"
            if not stream:
                data = json.loads(await response.aread())
                return "ok" if data.get("choices") else "bad_body"
            done = errored = False
            async for line in response.aiter_lines():
                if line == "data: [DONE]":
                    done = True
                elif line.startswith("data: ") and '"error"' in line[:40]:
                    errored = True
            return "stream_error" if errored else "ok" if done else "stream_cut"
    except httpx.HTTPError as exc:
        return f"transport_{type(exc).__name__}"


_KIND = {True: "streamed", False: "whole"}


async def drive(
    url: str, n: int | None, seconds: float | None, on_half: Any = None
) -> tuple[Counter[str], float]:
    """``n`` requests (or as many as fit in ``seconds``), 64 at a time, every other one
    streamed; returns the outcomes (a failure named ``streamed:`` or ``whole:`` and its
    kind) and the wall time."""
    outcomes: Counter[str] = Counter()
    started = 0
    start = time.perf_counter()
    half_called = False
    limits = httpx.Limits(max_connections=CONCURRENCY, max_keepalive_connections=CONCURRENCY)
    timeout = httpx.Timeout(120.0)

    def more() -> bool:
        if n is not None:
            return started < n
        assert seconds is not None
        return time.perf_counter() - start < seconds

    async def caller(client: httpx.AsyncClient) -> None:
        nonlocal started, half_called
        while more():
            started += 1
            stream = started % 2 == 0
            outcome = await one(client, stream)
            # A failure says which kind of caller it hit: what fails at a setting is the
            # first thing to know about it.
            outcomes[outcome if outcome == "ok" else f"{_KIND[stream]}:{outcome}"] += 1
            if on_half is not None and not half_called and n and sum(outcomes.values()) >= n / 2:
                half_called = True
                on_half()

    client = httpx.AsyncClient(base_url=url, limits=limits, timeout=timeout)
    async with client, trio.open_nursery() as nursery:
        for _ in range(CONCURRENCY):
            nursery.start_soon(caller, client)
    return outcomes, time.perf_counter() - start


async def service_counts(url: str) -> dict[str, int]:
    async with httpx.AsyncClient(base_url=url) as client:
        stats = (await client.get("/v1/stats")).json()["pipeline"]
    keys = ("submitted", "completed", "failed", "shed", "expired", "cancelled", "in_flight")
    return {key: int(stats[key]) for key in keys}


async def metric(url: str, name: str) -> float:
    """The sum of a metric's samples on the service's ``/metrics``."""
    async with httpx.AsyncClient(base_url=url) as client:
        text = (await client.get("/metrics")).text
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith((name + "{", name + " "))
    )


def compare(outcomes: Counter[str], counts: dict[str, int]) -> dict[str, int]:
    """Client against service: each difference must be 0."""
    ok = outcomes["ok"]
    bad = sum(outcomes.values()) - ok
    ended_badly = counts["failed"] + counts["shed"] + counts["expired"] + counts["cancelled"]
    return {
        "requests": sum(outcomes.values()) - counts["submitted"],
        "completed": ok - counts["completed"],
        "not_completed": bad - ended_badly,
    }


def run_phase(
    name: str, rate: float, seed: int, layers: bool, restart: bool, n: int, workdir: Path
) -> dict[str, Any]:
    fake, upstream = start_fake(rate, seed)
    service, url = start_service(config_toml(upstream, 0, layers, restart), workdir)
    try:
        rss = {"start": rss_mb(service.pid)}

        def at_half() -> None:
            rss["middle"] = rss_mb(service.pid)

        outcomes, wall = trio.run(drive, url, n, None, at_half)
        rss["end"] = rss_mb(service.pid)
        counts = trio.run(service_counts, url)
        attempts = trio.run(metric, url, "trio_orchestrator_retry_attempts_total")
        opened = trio.run(metric, url, "trio_orchestrator_breaker_times_opened_total")
    finally:
        service.terminate()
        service.wait(60)
        seen = stop_fake(fake)
    total = sum(outcomes.values())
    row = {
        "fault_rate": rate,
        "layers": layers,
        "requests": total,
        "success_rate": round(outcomes["ok"] / total, 4) if total else 0.0,
        "client": dict(sorted(outcomes.items())),
        "service": counts,
        "difference": compare(outcomes, counts),
        "rss_mb": rss,
        "upstream_requests": seen.get("requests"),
        "faults_injected": seen.get("faults"),
        "retry_attempts": attempts,
        "breaker_opened": opened,
        "wall_s": round(wall, 2),
    }
    print(
        f"{name:<7} faults {rate:.0%}  layers {'on ' if layers else 'off'}  "
        f"success {row['success_rate']:.2%} of {total}  ({total / wall:.0f} req/s)\n"
        f"        client  {row['client']}\n"
        f"        service {counts}\n"
        f"        difference {row['difference']}  (must be all 0)\n"
        f"        upstream requests {seen.get('requests')}, faults {seen.get('faults')}, "
        f"breaker opened {opened:.0f}x\n"
        f"        RSS MB start {rss['start']} middle {rss.get('middle')} end {rss['end']}"
    )
    return row


def run_outage(seed: int, seconds: float, workdir: Path) -> dict[str, Any]:
    """Every answer fails: the upstream calls per second in the second half of the run."""
    fake, upstream = start_fake(1.0, seed)
    service, url = start_service(config_toml(upstream, 0, True, True), workdir)
    samples: dict[str, float] = {}

    async def main() -> Counter[str]:
        async def sample_at_half() -> None:
            await trio.sleep(seconds / 2)
            samples["t0"] = time.perf_counter()
            samples["a0"] = await metric(url, "trio_orchestrator_retry_attempts_total")

        async with trio.open_nursery() as nursery:
            nursery.start_soon(sample_at_half)
            outcomes, _ = await drive(url, None, seconds)
        samples["t1"] = time.perf_counter()
        samples["a1"] = await metric(url, "trio_orchestrator_retry_attempts_total")
        samples["opened"] = await metric(url, "trio_orchestrator_breaker_times_opened_total")
        return outcomes

    try:
        outcomes = trio.run(main)
    finally:
        service.terminate()
        service.wait(60)
        seen = stop_fake(fake)
    calls_per_s = (samples["a1"] - samples["a0"]) / (samples["t1"] - samples["t0"])
    total = sum(outcomes.values())
    # Defaults: 3 probes per round, each retried up to 3 times, a round per 5 s cool-down
    # at the least (the cool-down doubles per failed round).
    bound = 3 * 3 / 5.0
    row = {
        "seconds": seconds,
        "requests": total,
        "client": dict(sorted(outcomes.items())),
        "upstream_requests": seen.get("requests"),
        "breaker_opened": samples["opened"],
        "upstream_calls_per_s_second_half": round(calls_per_s, 2),
        "probe_rate_bound_per_s": bound,
        "client_requests_per_s": round(total / seconds, 1),
    }
    print(
        f"outage  faults 100%  layers on  {total} requests in {seconds:.0f} s "
        f"({total / seconds:.0f} req/s), client {row['client']}\n"
        f"        breaker opened {samples['opened']:.0f}x; upstream calls/s in the second "
        f"half {calls_per_s:.2f} (probe bound {bound:.2f}); upstream requests in all "
        f"{seen.get('requests')}"
    )
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a run under two minutes")
    parser.add_argument("--requests", type=int, default=None, help="requests per phase")
    parser.add_argument("--fault-rate", type=float, default=0.2)
    parser.add_argument("--seed", type=int, default=16)
    parser.add_argument("--outage", type=float, default=None, help="seconds of the outage")
    parser.add_argument(
        "--no-restart-stream",
        action="store_true",
        help="retry.restart_stream off (the default is on)",
    )
    args = parser.parse_args()
    n = args.requests or (400 if args.quick else 20_000)
    outage = args.outage or (12.0 if args.quick else 60.0)
    restart = not args.no_restart_stream
    print(
        f"bench_soak: {n} requests per phase at concurrency {CONCURRENCY}, every other one "
        f"streamed; fake provider (own process, seed {args.seed}, {TOKENS} tokens) failing "
        f"{args.fault_rate:.0%} of answers; service = trio-orchestrator serve (own process); "
        f"retry.restart_stream {restart}; Python {platform.python_version()}, "
        f"{os.cpu_count()} CPUs"
    )
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        on = run_phase("on", args.fault_rate, args.seed, True, restart, n, workdir)
        off = run_phase("off", args.fault_rate, args.seed, False, restart, n, workdir)
        down = run_outage(args.seed, outage, workdir)
    counted_once = all(v == 0 for row in (on, off) for v in row["difference"].values())
    print(
        f"success with layers on {on['success_rate']:.2%} vs off {off['success_rate']:.2%}; "
        f"every request counted once: {counted_once}"
    )
    conditions = {
        "requests_per_phase": n,
        "concurrency": CONCURRENCY,
        "fault_rate": args.fault_rate,
        "seed": args.seed,
        "tokens": TOKENS,
        "restart_stream": restart,
        "outage_seconds": outage,
        "quick": args.quick,
    }
    results = {
        "on": on,
        "off": off,
        "outage": down,
        "on_minus_off": round(on["success_rate"] - off["success_rate"], 4),
        "counted_once": counted_once,
    }
    print(json.dumps({"bench": "soak", "conditions": conditions, "results": results}))


if __name__ == "__main__":
    main()
