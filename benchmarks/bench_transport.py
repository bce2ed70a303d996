"""The provider HTTP path: client CPU per request, httpcore's transport against the h11 one.

The fake provider runs in its own process (hypercorn, as in ``bench_overhead.py``). This
process POSTs chat requests to it the way the workers do (``client.build_request`` handed
straight to the client's transport, the body read whole, the response closed), through:

- ``httpx`` + httpcore (``httpx.AsyncHTTPTransport``), ``httpx2`` + httpcore2 (the default
  ``[providers] http_client``), and
- :class:`~trio_orchestrator.workers.h11transport.H11Transport` under each library
  (``[providers] transport = "h11"``).

For each: ``--requests`` sequential requests, then the same number at concurrency
``--concurrency``, for a non-streaming answer and a streamed one (8 tokens). The figure is
this process's CPU (``time.process_time``) per request, in microseconds: the client side
only (the fake's CPU is another process's). Variants take turns within each repeat, so
they share the machine's noise; medians of ``--repeats``; ratios h11 ÷ httpcore of the
same library, from the same run.

With ``--gateway`` (needs wrk), also the whole served path: two ``trio-orchestrator serve``
processes in front of the same fake, ``[providers] transport = "httpcore"`` and ``"h11"``
(otherwise default settings), driven in turns by wrk at c=16 for ``--duration`` seconds;
each gateway's CPU per request and the fake's, from ``/proc`` (as ``bench_overhead.py``).
Ends with one line of JSON.

    python benchmarks/bench_transport.py [--quick] [--requests N] [--repeats R] [--gateway]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import orjson
import trio

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_overhead import BODIES, cpu_row, free_port, start_fake, wait_healthy

from trio_orchestrator.workers.h11transport import H11Transport


def _libraries() -> dict[str, Any]:
    libraries: dict[str, Any] = {"httpx": httpx}
    try:
        import httpx2

        libraries["httpx2"] = httpx2
    except ImportError:  # pragma: no cover - httpx2 is a dependency
        pass
    return libraries


def variants() -> dict[str, Callable[[], Any]]:
    """name -> a factory of a fresh client (its pool as large as the gateway's)."""
    made: dict[str, Callable[[], Any]] = {}
    for name, module in _libraries().items():
        limits = module.Limits(max_connections=1024, max_keepalive_connections=1024)

        def httpcore_client(module: Any = module, limits: Any = limits) -> Any:
            return module.AsyncClient(transport=module.AsyncHTTPTransport(limits=limits))

        def h11_client(module: Any = module, limits: Any = limits) -> Any:
            return module.AsyncClient(transport=H11Transport(limits=limits, module=module))

        made[f"{name}+httpcore"] = httpcore_client
        made[f"{name}+h11"] = h11_client
    return made


async def one(client: Any, url: Any, body: bytes) -> None:
    """One call as the workers make it: the transport directly, the body read whole."""
    request = client.build_request(
        "POST",
        url,
        content=body,
        headers={"content-type": "application/json", "authorization": "Bearer sk-bench"},
        extensions={"timeout": {"connect": 10.0, "read": None, "write": 10.0, "pool": None}},
    )
    response = await client._transport_for_url(request.url).handle_async_request(request)
    try:
        await response.aread()
    finally:
        await response.aclose()
    assert response.status_code == 200, response.status_code


async def run_variant(
    factory: Callable[[], Any], upstream: str, kind: str, n: int, c: int
) -> dict[str, float]:
    """CPU µs per request, sequential and at concurrency ``c``, for one fresh client."""
    body = orjson.dumps(BODIES[kind])
    async with factory() as client:
        url = type(client.base_url)(upstream + "/v1/chat/completions")
        for _ in range(min(50, n)):  # warm the pool and the code paths
            await one(client, url, body)
        start = time.process_time()
        for _ in range(n):
            await one(client, url, body)
        sequential = (time.process_time() - start) / n * 1e6

        async def worker(count: int) -> None:
            for _ in range(count):
                await one(client, url, body)

        start = time.process_time()
        async with trio.open_nursery() as nursery:
            for i in range(c):
                nursery.start_soon(worker, n // c + (i < n % c))
        concurrent = (time.process_time() - start) / n * 1e6
    return {"sequential_us": sequential, "concurrent_us": concurrent}


def start_gateway(
    upstream: str, workdir: Path, transport: str
) -> tuple[subprocess.Popen[bytes], str]:
    """``trio-orchestrator serve`` in front of the fake, on ``[providers] transport``."""
    port = free_port()
    config = workdir / f"{transport}.toml"
    config.write_text(
        f'[service]\nport = {port}\n[providers]\ntransport = "{transport}"\n'
        f'[[providers.providers]]\nkind = "openai"\nname = "fake"\n'
        f'base_url = "{upstream}/v1"\nmodels = ["fake-model"]\n'
    )
    command = [sys.executable, "-m", "trio_orchestrator", "serve", "--config", str(config)]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    wait_healthy(url, process, "/healthz")
    return process, url


def gateway_rows(upstream: str, fake_pid: int, seconds: float, repeats: int) -> dict[str, Any]:
    """Gateway and fake CPU per request (ms) at c=16, for each transport, medians."""
    samples: dict[str, dict[str, list[float]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        gateways = {t: start_gateway(upstream, Path(tmp), t) for t in ("httpcore", "h11")}
        try:
            for _ in range(repeats):
                for kind, body in BODIES.items():
                    for transport, (process, url) in gateways.items():
                        pids = {"gateway": process.pid, "upstream": fake_pid}
                        row = cpu_row(url, body, seconds, pids)
                        assert row["errors"] == 0, row
                        label = f"gateway {transport} {kind}"
                        for key in ("gateway_cpu_ms", "upstream_cpu_ms"):
                            samples.setdefault(label, {}).setdefault(key, []).append(row[key])
        finally:
            for process, _ in gateways.values():
                process.terminate()
                process.wait(30)
    rows: dict[str, Any] = {}
    for label, runs in samples.items():
        median = {key: round(statistics.median(values), 4) for key, values in runs.items()}
        median["gateway_over_upstream"] = round(
            median["gateway_cpu_ms"] / median["upstream_cpu_ms"], 3
        )
        rows[label] = median
        print(
            f"{label:<26} gateway {median['gateway_cpu_ms']:.3f} ms/req, fake "
            f"{median['upstream_cpu_ms']:.3f} ms/req ({median['gateway_over_upstream']}x)"
        )
    for kind in BODIES:
        ratio = (
            rows[f"gateway h11 {kind}"]["gateway_cpu_ms"]
            / rows[f"gateway httpcore {kind}"]["gateway_cpu_ms"]
        )
        rows[f"gateway h11/httpcore {kind}"] = round(ratio, 3)
        print(f"gateway CPU per request, h11 ÷ httpcore, {kind}: {ratio:.3f}")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a run well under a minute")
    parser.add_argument("--requests", type=int, default=None, help="requests per measurement")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--gateway", action="store_true", help="also through serve (wrk)")
    parser.add_argument("--duration", type=float, default=None, help="seconds per wrk run")
    args = parser.parse_args()
    n = args.requests or (300 if args.quick else 3000)
    repeats = args.repeats or (3 if args.quick else 7)
    print(
        f"bench_transport: client CPU per request (time.process_time), {n} POSTs sequential "
        f"and at c={args.concurrency}, to the fake provider in its own process; medians of "
        f"{repeats} repeats, variants interleaved; Python {platform.python_version()}, "
        f"{os.cpu_count()} CPUs"
    )
    fake, upstream = start_fake()
    made = variants()
    samples: dict[str, dict[str, list[float]]] = {}
    gateway: dict[str, Any] = {}
    try:
        for _ in range(repeats):
            for kind in ("json", "stream"):
                for name, factory in made.items():
                    row = trio.run(run_variant, factory, upstream, kind, n, args.concurrency)
                    for key, value in row.items():
                        samples.setdefault(f"{name} {kind}", {}).setdefault(key, []).append(value)
        if args.gateway:
            duration = args.duration or (2.0 if args.quick else 10.0)
            gateway = gateway_rows(upstream, fake.pid, duration, repeats)
    finally:
        assert fake.stdin is not None
        fake.stdin.close()
        fake.wait(10)
    results = {
        label: {key: round(statistics.median(values), 1) for key, values in row.items()}
        for label, row in samples.items()
    }
    print(f"{'variant':<26}{'sequential µs/req':>20}{'c=' + str(args.concurrency) + ' µs/req':>18}")
    for label, row in results.items():
        print(f"{label:<26}{row['sequential_us']:>20.1f}{row['concurrent_us']:>18.1f}")
    ratios: dict[str, float] = {}
    for library in _libraries():
        for kind in ("json", "stream"):
            base, ours = results[f"{library}+httpcore {kind}"], results[f"{library}+h11 {kind}"]
            for key in ("sequential_us", "concurrent_us"):
                ratios[f"{library} {kind} {key[:-3]}"] = round(ours[key] / base[key], 3)
    print("h11 ÷ httpcore (CPU per request, same library, same run):")
    for label, ratio in ratios.items():
        print(f"  {label:<32}{ratio:.3f}")
    conditions = {
        "requests": n,
        "concurrency": args.concurrency,
        "repeats": repeats,
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "gateway_seconds": (args.duration or (2.0 if args.quick else 10.0))
        if args.gateway
        else None,
    }
    print(
        json.dumps(
            {
                "bench": "transport",
                "conditions": conditions,
                "results": results,
                "ratios": ratios,
                "gateway": gateway,
            }
        )
    )


if __name__ == "__main__":
    main()
