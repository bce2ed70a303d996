"""The service's HTTP throughput against the floor hypercorn's Trio worker allows.

Scenarios, each a server process of its own on 127.0.0.1, all loaded by the same generator
(``wrk``, or an in-Python httpx generator when wrk is absent) at 64 connections:

- ``raw``: a bare ASGI app that echoes the request body, under hypercorn's Trio worker — the
  floor for any application on this server (the issue's reference);
- ``raw_own``: the same app under the service's own HTTP/1.1 server
  (``trio_orchestrator.service.h1server``, ``[service] server = "httptools"``, the default);
- ``service``: ``POST /v1/chat/completions`` (non-streaming) with the echo worker.

The third row is the service in front of the fake provider (its own process, answering at
once), through the OpenAI-compatible worker: what the gateway costs when it has an upstream.

Each scenario runs ``--repeats`` times, round by round (each scenario in turn, so that a slow
spell of the machine falls on a whole round); medians of requests/s, p50 and p99 are reported, and
the service's ratio to the floor. Ends with one line of JSON.

    python benchmarks/bench_service.py [--quick] [--duration S] [--repeats R]
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
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any, cast

import attrs
import trio

CONNECTIONS = 64
PROMPT = {"model": "echo", "messages": [{"role": "user", "content": "hello from the benchmark"}]}
BODY = json.dumps(PROMPT)


async def raw_echo_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """A bare ASGI app: answer each request with its own body, as JSON."""
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    body = b""
    more = True
    while more:
        message = await receive()
        body += message.get("body", b"")
        more = message.get("more_body", False)
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _serve(scenario: str, upstream: str | None = None) -> None:
    from hypercorn.config import Config as HypercornConfig
    from hypercorn.trio import serve as hypercorn_serve
    from hypercorn.utils import wrap_app

    from trio_orchestrator.config import Config
    from trio_orchestrator.config.service import ServiceConfig
    from trio_orchestrator.service import serve
    from trio_orchestrator.service.h1server import serve_http1

    async with trio.open_nursery() as nursery:
        if scenario == "raw":
            hconfig = HypercornConfig()
            hconfig.bind = ["127.0.0.1:0"]
            hconfig.accesslog = None
            binds = await nursery.start(hypercorn_serve, raw_echo_app, hconfig)
            url = binds[0]
        elif scenario == "raw_own":
            hconfig = HypercornConfig()
            hconfig.bind = ["127.0.0.1:0"]
            sockets = hconfig.create_sockets()
            for sock in sockets.insecure_sockets:
                sock.listen(hconfig.backlog)
            wrapped = wrap_app(cast(Any, raw_echo_app), hconfig.wsgi_max_body_size, "asgi")
            server = partial(
                serve_http1,
                raw_echo_app,
                wrapped,
                hconfig,
                sockets=sockets,
                shutdown_trigger=trio.sleep_forever,
            )
            binds = await nursery.start(server)
            url = binds[0]
        else:
            config = Config(service=ServiceConfig(port=0))
            if upstream is not None:
                from trio_orchestrator.config import parse_config

                config = parse_config(
                    f'[service]\nport = 0\n[[providers.providers]]\nkind = "openai"\n'
                    f'name = "fake"\nbase_url = "{upstream}/v1"\n'
                )
            # This process is the service's own, as under `trio-orchestrator serve`.
            url = await nursery.start(partial(serve, config, own_process=True))
        print(f"LISTENING {url}", flush=True)


# Scenario name -> the path to load.
SCENARIOS: dict[str, str] = {
    "raw": "/",
    "raw_own": "/",
    "service": "/v1/chat/completions",
    "fake_provider": "/v1/chat/completions",
}


@attrs.frozen
class Result:
    rps: float
    p50_ms: float
    p99_ms: float


_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


def _ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s)", text)
    assert match, text
    return float(match.group(1)) * _UNITS[match.group(2)]


def wrk(url: str, duration: float) -> Result:
    """Load ``url`` with wrk (POST, the benchmark body) and parse its report."""
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(
            'wrk.method = "POST"\n'
            f"wrk.body = {json.dumps(BODY)}\n"
            'wrk.headers["Content-Type"] = "application/json"\n'
        )
    command = [
        "wrk",
        "-t2",
        f"-c{CONNECTIONS}",
        f"-d{max(1, round(duration))}s",
        "--latency",
        "-s",
        script.name,
    ]
    out = subprocess.run([*command, url], capture_output=True, text=True, check=True).stdout
    os.unlink(script.name)
    if "Non-2xx" in out or "Socket errors" in out:
        raise RuntimeError(f"the load run had errors:\n{out}")
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    # The latency distribution's own lines ("     50%    1.23ms"); anchored, because a
    # thread-stats column can end in "…50%" too.
    p50 = _ms(re.search(r"^\s+50%\s+(\S+)$", out, re.M).group(1))  # type: ignore[union-attr]
    p99 = _ms(re.search(r"^\s+99%\s+(\S+)$", out, re.M).group(1))  # type: ignore[union-attr]
    return Result(rps, p50, p99)


def httpx_load(url: str, duration: float) -> Result:
    """The fallback generator: 64 httpx clients in one Trio run, each POSTing in a loop."""
    import httpx

    latencies: list[float] = []

    async def client(deadline: float) -> None:
        async with httpx.AsyncClient() as http:
            while time.perf_counter() < deadline:
                start = time.perf_counter()
                response = await http.post(url, content=BODY)
                response.raise_for_status()
                latencies.append(time.perf_counter() - start)

    async def main() -> float:
        start = time.perf_counter()
        async with trio.open_nursery() as nursery:
            for _ in range(CONNECTIONS):
                nursery.start_soon(client, start + duration)
        return time.perf_counter() - start

    elapsed = trio.run(main)
    latencies.sort()

    def pick(q: float) -> float:
        return latencies[int(q * (len(latencies) - 1))] * 1000

    return Result(len(latencies) / elapsed, pick(0.5), pick(0.99))


def run_scenario(scenario: str, load: Callable[[str, float], Result], duration: float) -> Result:
    """Start the scenario's server process, warm it up, load it once, stop it."""
    command = [sys.executable, __file__, "--serve", scenario]
    fake = None
    if scenario == "fake_provider":
        sys.path.insert(0, str(Path(__file__).parent))
        from bench_gateway import start_fake

        fake, upstream = start_fake(8)
        command += ["--upstream", upstream]
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        base = line.split()[1]
        url = base + SCENARIOS[scenario]
        load(url, 1.0)  # warm-up
        return load(url, duration)
    finally:
        process.terminate()
        process.wait(timeout=30)
        if fake is not None:
            fake.terminate()
            fake.wait(timeout=30)


async def _app_cost(app: Any, n: int, root_path: str = "") -> float:
    """Microseconds of CPU per request for ``app`` called in-process, 64 callers at once."""
    body = BODY.encode()
    path = root_path + "/v1/chat/completions"
    scope = {
        "type": "http", "asgi": {"version": "3.0", "spec_version": "2.1"}, "http_version": "1.1",
        "method": "POST", "scheme": "http", "path": path, "raw_path": path.encode(),
        "query_string": b"", "root_path": root_path,
        "headers": [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))],
        "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 2),
    }  # fmt: skip

    async def one() -> None:
        messages = [{"type": "http.request", "body": body, "more_body": False}]

        async def receive() -> dict[str, Any]:
            if messages:
                return messages.pop()
            await trio.sleep_forever()  # the client stays: no disconnect
            raise AssertionError

        sent: list[dict[str, Any]] = []

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        await app(dict(scope), receive, send)
        assert sent[0]["status"] == 200, sent

    async def caller() -> None:
        for _ in range(n // CONNECTIONS):
            await one()

    start = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for _ in range(CONNECTIONS):
            nursery.start_soon(caller)
    return (time.perf_counter() - start) / (n // CONNECTIONS * CONNECTIONS) * 1e6


@asynccontextmanager
async def _lifespan(app: Any) -> AsyncIterator[None]:
    """Run ``app``'s ASGI lifespan around the block, as the server does."""
    to_app, app_receives = trio.open_memory_channel[dict[str, Any]](1)
    app_sends, from_app = trio.open_memory_channel[dict[str, Any]](1)
    scope = {"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}
    async with trio.open_nursery() as nursery:
        nursery.start_soon(app, scope, app_receives.receive, app_sends.send)
        await to_app.send({"type": "lifespan.startup"})
        assert (await from_app.receive())["type"] == "lifespan.startup.complete"
        yield
        await to_app.send({"type": "lifespan.shutdown"})
        assert (await from_app.receive())["type"] == "lifespan.shutdown.complete"


async def app_costs(n: int) -> dict[str, float]:
    """In-process CPU per request of each layer: where the time over the floor goes."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route

    from trio_orchestrator import EchoWorker, PromptRequest, open_pipeline
    from trio_orchestrator.config import Config
    from trio_orchestrator.config.service import ServiceConfig
    from trio_orchestrator.service import create_app, fastpath

    async def constant(request: Request) -> Response:
        await request.body()
        return JSONResponse({"ok": True})

    costs = {"raw_asgi": await _app_cost(raw_echo_app, n)}
    costs["starlette_route"] = await _app_cost(
        Starlette(routes=[Route("/v1/chat/completions", constant, methods=["POST"])]), n
    )
    async with open_pipeline(EchoWorker()) as pipeline:

        async def through_pipeline(request: Request) -> Response:
            await request.body()
            completion = await pipeline.try_submit(PromptRequest(input="hello"))
            return JSONResponse({"text": completion.text})

        route = Route("/v1/chat/completions", through_pipeline, methods=["POST"])
        costs["starlette_plus_pipeline"] = await _app_cost(Starlette(routes=[route]), n)
    # The service as served: its lifespan opens the pipeline, with metrics on.
    app = create_app(Config(service=ServiceConfig(port=0)))
    async with _lifespan(app):
        await _app_cost(app, n // 4)  # warm-up
        costs["service"] = await _app_cost(app, n)
        # Under a root_path the request misses the fast path and takes Starlette's route.
        costs["service_via_starlette_route"] = await _app_cost(app, n, root_path="/gw")
        watched = fastpath.complete_unless_gone  # type: ignore[attr-defined]

        async def unwatched(receive: Any, pipeline: Any, request: Any) -> Any:
            return await pipeline.try_submit(request)

        fastpath.complete_unless_gone = unwatched  # type: ignore[attr-defined]
        try:
            costs["service_without_disconnect_watch"] = await _app_cost(app, n)
        finally:
            fastpath.complete_unless_gone = watched  # type: ignore[attr-defined]
    return costs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one short run per scenario")
    parser.add_argument("--duration", type=float, default=None, help="seconds per run")
    parser.add_argument("--repeats", type=int, default=None, help="runs per scenario")
    parser.add_argument("--serve", choices=sorted(SCENARIOS), help=argparse.SUPPRESS)
    parser.add_argument("--upstream", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        trio.run(_serve, args.serve, args.upstream)
        return
    duration = args.duration or (5.0 if args.quick else 10.0)
    repeats = args.repeats or (1 if args.quick else 3)
    generator = "wrk" if shutil.which("wrk") else "httpx"
    load = wrk if generator == "wrk" else httpx_load
    print(
        f"# bench_service: python {platform.python_version()}, {os.cpu_count()} CPUs, "
        f"{CONNECTIONS} connections, {generator}, {duration:g}s x {repeats} per scenario"
    )
    # Round by round, each scenario in turn: a slow spell of this machine then falls on
    # every scenario of a round, not on all the runs of one.
    by_scenario: dict[str, list[Result]] = {scenario: [] for scenario in SCENARIOS}
    for round_number in range(repeats):
        for scenario in SCENARIOS:
            by_scenario[scenario].append(run_scenario(scenario, load, duration))
        ran = {scenario: runs[-1].rps for scenario, runs in by_scenario.items()}
        print(
            f"# round {round_number + 1}: "
            + ", ".join(f"{scenario} {rps:.0f}" for scenario, rps in ran.items())
            + f" req/s; fake_provider / raw {ran['fake_provider'] / ran['raw']:.2f}x",
            flush=True,
        )
    medians: dict[str, dict[str, float]] = {}
    for scenario, runs in by_scenario.items():
        median = {
            "rps": statistics.median(r.rps for r in runs),
            "p50_ms": statistics.median(r.p50_ms for r in runs),
            "p99_ms": statistics.median(r.p99_ms for r in runs),
        }
        medians[scenario] = median
        print(
            f"{scenario:>13}: {median['rps']:8.0f} req/s   p50 {median['p50_ms']:7.2f} ms   "
            f"p99 {median['p99_ms']:7.2f} ms"
        )
    ratio = medians["service"]["rps"] / medians["raw"]["rps"]
    print(f"service / raw floor: {ratio:.2f}x")
    own_ratio = medians["raw_own"]["rps"] / medians["raw"]["rps"]
    print(f"raw app under the service's server / under hypercorn: {own_ratio:.2f}x")
    upstream_ratio = medians["fake_provider"]["rps"] / medians["raw"]["rps"]
    print(f"service with a fake upstream / raw floor: {upstream_ratio:.2f}x")
    costs = trio.run(app_costs, 3200 if args.quick else 12800)
    print("in-process CPU per request (64 callers, no network), microseconds:")
    for name, cost in costs.items():
        print(f"  {name:>34}: {cost:7.1f}")
    summary = {
        "benchmark": "service",
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "connections": CONNECTIONS,
        "generator": generator,
        "duration_s": duration,
        "repeats": repeats,
        **{name: {k: round(v, 2) for k, v in m.items()} for name, m in medians.items()},
        "service_over_raw": round(ratio, 3),
        "raw_own_over_raw": round(own_ratio, 3),
        "fake_provider_over_raw": round(upstream_ratio, 3),
        "in_process_us_per_request": {k: round(v, 1) for k, v in costs.items()},
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
