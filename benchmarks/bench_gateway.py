"""Gateway overhead: this project's pipeline + OpenAIWorker against the bare HTTP client, and
against LiteLLM's Router, all calling the same fake provider over real HTTP.

Rows, for each HTTP client library (httpx, httpx2) and each concurrency:

1. ``bare``: the bare client (``AsyncClient`` with ``max_connections`` = the concurrency)
   POSTs a streaming ``/v1/chat/completions`` and reads the whole SSE body (the floor: no
   parsing, no pipeline);
2. ``pipeline``: what a user of ``[providers]`` gets: ``open_gateway(config)`` (the
   OpenAI-compatible worker on the client ``make_client`` builds: ``max_connections`` =
   the concurrency, split into pools of ``pool_size`` 16), with the circuit breaker and
   retry layers on, and ``gateway.pipeline.submit`` (SSE parsed into events, accumulated,
   every pipeline stage; stage capacities raised to the concurrency so nothing is shed;
   metrics and request logs off, so the row measures the pipeline and its layers);
3. ``litellm``: ``Router.acompletion(stream=True)`` under asyncio, in its own process and
   virtualenv (``--litellm-python``, default ``.venv-litellm/bin/python``); skipped with a
   message when that interpreter or LiteLLM is missing.

``--kinds anthropic …`` adds a ``pipeline <kind>`` row for each other provider kind (the same
pipeline, that kind's worker, the fake answering in that kind's wire format) and prints its
CPU per request over the OpenAI-compatible row's: what the translation costs.

One more row shows where the pipeline's margin comes from: ``bare sharded``, the bare client
on this project's ``ShardedTransport`` (the same pools as row 2).

The fake provider runs in its own process and answers at once (8 tokens), and takes any SigV4
signature from its key id without signing the request again (``--fake-checks-sigv4`` to
check each: the fake then spends several times the gateway's signing cost per request, on
the same cores), so CPU per request
is the client process's CPU time (``time.process_time``) divided by requests. Each row is
the median of ``--repeats`` runs; the rows take turns, one run each per round. Ends with one
line of JSON.

    python benchmarks/bench_gateway.py [--quick] [--requests N] [--repeats R] [--kinds K ...]
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, cast

import httpx
import trio

from trio_orchestrator import PromptRequest, open_gateway
from trio_orchestrator.config import Config, PipelineConfig
from trio_orchestrator.observability import LoggingConfig, MetricsConfig, ObservabilityConfig
from trio_orchestrator.resilience import BreakerConfig, ResilienceConfig, RetryConfig
from trio_orchestrator.testing.fake_bedrock import CREDENTIALS as FAKE_AWS_CREDENTIALS
from trio_orchestrator.types import GenerationParams
from trio_orchestrator.workers import ProviderConfig, ProvidersConfig
from trio_orchestrator.workers.transport import sharded_client

POOL_SIZE = ProviderConfig(kind="openai").pool_size

HERE = Path(__file__).resolve().parent
BODY = {
    "model": "fake-model",
    "messages": [{"role": "user", "content": "hello"}],
    "stream": True,
    "stream_options": {"include_usage": True},
}


#: Where the fake writes the service-account key it trusts (the ``vertex`` row's).
VERTEX_KEY_DIR = tempfile.mkdtemp(prefix="bench-vertex-")


def start_fake(tokens: int, check_sigv4: bool = False) -> tuple[subprocess.Popen[str], str]:
    """Start the fake provider in its own process; return it and its base URL."""
    code = "from trio_orchestrator.testing.fake_provider import main; main()"
    arguments = ["--tokens", str(tokens), "--vertex-key-dir", VERTEX_KEY_DIR]
    if not check_sigv4:
        arguments.append("--no-sigv4-check")
    process = subprocess.Popen(
        [sys.executable, "-c", code, *arguments],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    return process, process.stdout.readline().strip()


def library_module(library: str) -> Any:
    if library == "httpx2":
        import httpx2

        return httpx2
    return httpx


def new_client(library: str, concurrency: int) -> httpx.AsyncClient:
    module = library_module(library)
    limits = module.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    return cast(httpx.AsyncClient, module.AsyncClient(limits=limits, timeout=None))


async def drive(n: int, concurrency: int, call: Callable[[], Awaitable[None]]) -> dict[str, float]:
    """Run ``n`` calls, ``concurrency`` at a time; return rps, latencies and CPU per request."""
    latencies: list[float] = []
    remaining, errors = n, 0

    async def caller() -> None:
        nonlocal remaining, errors
        while remaining > 0:
            remaining -= 1
            start = time.perf_counter()
            try:
                await call()
            except Exception:
                errors += 1  # counted and reported, not hidden in the latencies
                continue
            latencies.append(time.perf_counter() - start)

    cpu, wall = time.process_time(), time.perf_counter()
    async with trio.open_nursery() as nursery:
        for _ in range(concurrency):
            nursery.start_soon(caller)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    latencies = sorted(latencies) or [math.nan]
    return {
        "rps": (n - errors) / wall,
        "p50_ms": latencies[len(latencies) // 2] * 1000,
        "p99_ms": latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1000,
        "cpu_ms_per_request": cpu / n * 1000,
        "errors": errors,
    }


async def bare(url: str, library: str, n: int, concurrency: int) -> dict[str, float]:
    return await bare_on(new_client(library, concurrency), url, n, concurrency)


async def bare_sharded(url: str, library: str, n: int, concurrency: int) -> dict[str, float]:
    client = sharded_client(library_module(library), concurrency, POOL_SIZE)
    return await bare_on(client, url, n, concurrency)


async def bare_on(
    client: httpx.AsyncClient, url: str, n: int, concurrency: int
) -> dict[str, float]:
    async with client:

        async def call() -> None:
            async with client.stream("POST", url + "/v1/chat/completions", json=BODY) as r:
                await r.aread()
                assert r.status_code == 200

        await drive(min(n, concurrency), concurrency, call)  # warm the connection pool
        return await drive(n, concurrency, call)


#: How each provider kind reaches the fake provider (which speaks every wire format): the
#: provider configuration for the fake at ``url``. ``--kinds`` picks the rows.
KIND_PROVIDERS: dict[str, Callable[[str, int], ProviderConfig]] = {
    "openai": lambda url, connections: ProviderConfig(
        kind="openai", name="fake", base_url=url + "/v1", max_connections=connections
    ),
    # The same with a key (a key pool of one), as every other kind here has: the fair
    # baseline for their CPU per request (``--kinds openai-key …`` compares against it).
    "openai-key": lambda url, connections: ProviderConfig(
        kind="openai",
        name="fake",
        base_url=url + "/v1",
        api_keys=["sk-fake"],
        max_connections=connections,
    ),
    "anthropic": lambda url, connections: ProviderConfig(
        kind="anthropic",
        name="fake",
        base_url=url,
        api_keys=["sk-fake"],
        max_connections=connections,
    ),
    # Signed with SigV4 (botocore) as most Bedrock users call it, the fake checking each
    # signature; a Bedrock API key (bearer) would cost less.
    "bedrock": lambda url, connections: ProviderConfig(
        kind="bedrock",
        name="fake",
        base_url=url,
        region="us-east-1",
        aws_access_key_id=next(iter(FAKE_AWS_CREDENTIALS)),
        aws_secret_access_key=next(iter(FAKE_AWS_CREDENTIALS.values())),
        max_connections=connections,
    ),
    # The same with a Bedrock API key (a bearer token, no signing): the translation alone.
    "bedrock-apikey": lambda url, connections: ProviderConfig(
        kind="bedrock",
        name="fake",
        base_url=url,
        region="us-east-1",
        api_keys=["fake-bedrock-api-key"],
        max_connections=connections,
    ),
    # Vertex AI shares gemini's translation; only its (hourly) token exchange differs.
    "gemini": lambda url, connections: ProviderConfig(
        kind="gemini",
        name="fake",
        base_url=url,
        api_keys=["fake-google-key"],
        max_connections=connections,
    ),
    # Gemini's translation behind a service account's OAuth token (exchanged at the fake
    # once, then cached to its expiry): the key file the fake trusts.
    "vertex": lambda url, connections: ProviderConfig(
        kind="vertex",
        name="fake",
        base_url=url,
        api_keys=[],
        credentials_file=str(Path(VERTEX_KEY_DIR) / "service-account.json"),
        max_connections=connections,
    ),
    "azure": lambda url, connections: ProviderConfig(
        kind="azure",
        name="fake",
        base_url=url,
        api_keys=["sk-fake"],
        deployments={"fake-model": "fake-deployment"},
        max_connections=connections,
    ),
    "groq": lambda url, connections: ProviderConfig(
        kind="groq",
        name="fake",
        base_url=url + "/v1",
        api_keys=["sk-fake"],
        max_connections=connections,
    ),
}


async def pipeline(url: str, library: str, n: int, concurrency: int) -> dict[str, float]:
    return await pipeline_of("openai", url, library, n, concurrency)


async def pipeline_of(
    kind: str, url: str, library: str, n: int, concurrency: int
) -> dict[str, float]:
    # Stage capacities at least the concurrency: with smaller ones the pipeline sheds the
    # overflow by design (backpressure), which is not what this row measures.
    room = max(concurrency, 512)
    provider = KIND_PROVIDERS[kind](url, concurrency)
    config = Config(
        PipelineConfig(
            rag_capacity=room,
            assemble_capacity=room,
            inference_capacity=max(room, 1024),
            post_capacity=room,
            stream_capacity=room,
            inference_concurrency=concurrency,
        ),
        providers=ProvidersConfig((provider,), http_client=cast(Any, library)),
        resilience=ResilienceConfig(
            breaker=BreakerConfig(enabled=True), retry=RetryConfig(enabled=True)
        ),
        observability=ObservabilityConfig(
            metrics=MetricsConfig(enabled=False), logging=LoggingConfig(requests=False)
        ),
    )
    request = PromptRequest(input="hello", params=GenerationParams(model="fake-model"))
    async with open_gateway(config) as gateway:
        p = gateway.pipeline

        async def call() -> None:
            completion = await p.submit(request)
            assert completion.finish_reason == "stop"

        await drive(min(n, concurrency), concurrency, call)
        return await drive(n, concurrency, call)


ROWS: dict[str, Callable[[str, str, int, int], Awaitable[dict[str, float]]]] = {
    "bare": bare,
    "bare sharded": bare_sharded,
    "pipeline": pipeline,
}


def litellm(python: str, url: str, n: int, concurrency: int) -> dict[str, float] | str:
    """Run the LiteLLM row in its own interpreter; a message says why when it cannot."""
    if not Path(python).exists():
        return f"skipped: no LiteLLM virtualenv at {python} (see --litellm-python)"
    script = str(HERE / "_litellm_router.py")
    done = subprocess.run(
        [python, script, url + "/v1", str(n), str(concurrency)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        return "skipped: " + (done.stderr.strip().splitlines() or ["LiteLLM failed"])[-1]
    return cast(dict[str, float], json.loads(done.stdout.strip().splitlines()[-1]))


def median_row(runs: list[dict[str, float]]) -> dict[str, float]:
    return {key: round(statistics.median(r[key] for r in runs), 3) for key in runs[0]}


def show(name: str, row: dict[str, float] | str) -> None:
    if isinstance(row, str):
        print(f"  {name:<28} {row}")
        return
    print(
        f"  {name:<28} {row['rps']:>9.0f} req/s   p50 {row['p50_ms']:>8.2f} ms   "
        f"p99 {row['p99_ms']:>8.2f} ms   CPU {row['cpu_ms_per_request']:.3f} ms/req"
        f"   errors {row.get('errors', 0):.0f}"
    )


def ratio(a: dict[str, float] | str, b: dict[str, float] | str, key: str) -> float | None:
    if isinstance(a, str) or isinstance(b, str) or not b[key]:
        return None
    return round(a[key] / b[key], 3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a run under a minute")
    parser.add_argument("--requests", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--concurrency", type=int, nargs="*", default=None)
    parser.add_argument("--libraries", nargs="*", default=["httpx", "httpx2"])
    parser.add_argument("--litellm-python", default=str(HERE.parent / ".venv-litellm/bin/python"))
    parser.add_argument(
        "--kinds",
        nargs="*",
        default=["openai"],
        choices=sorted(KIND_PROVIDERS),
        help="provider kinds to run the pipeline row for (each against the fake's wire "
        "format for it); rows past openai print their CPU per request over openai's",
    )
    parser.add_argument(
        "--fake-checks-sigv4",
        action="store_true",
        help="the fake re-signs each SigV4 Bedrock request to check it (off by default: the "
        "check costs the fake, on the same cores, several times what signing costs the "
        "gateway; the conformance tests check every signature)",
    )
    args = parser.parse_args()
    rows_to_run = dict(ROWS)
    for kind in args.kinds:
        if kind != "openai":
            rows_to_run[f"pipeline {kind}"] = functools.partial(pipeline_of, kind)
    n = args.requests or (600 if args.quick else 4000)
    repeats = args.repeats or (1 if args.quick else 3)
    concurrencies = args.concurrency or ([64] if args.quick else [64, 1024])

    fake, url = start_fake(tokens=8, check_sigv4=args.fake_checks_sigv4)
    checks = "re-checks" if args.fake_checks_sigv4 else "does not re-check"
    print(
        f"bench_gateway: {n} requests x {repeats} repeats (medians), fake provider in its own "
        f"process answering 8 tokens at once (it {checks} SigV4 signatures); "
        f"Python {platform.python_version()}, "
        f"{os.cpu_count()} CPUs; pipeline rows with the breaker and retry layers on, "
        f"pools of {POOL_SIZE} connections"
    )
    results: dict[str, Any] = {}
    try:
        for concurrency in concurrencies:
            print(f"concurrency {concurrency}:")
            lite = litellm(args.litellm_python, url, n, concurrency)
            show("litellm Router", lite)
            results[f"c{concurrency}/litellm"] = lite
            for library in args.libraries:
                # Rows take turns, one run each per round, so a drift of the machine (or of
                # the fake's process) over the run falls on every row alike.
                runs: dict[str, list[dict[str, float]]] = {name: [] for name in rows_to_run}
                for _ in range(repeats):
                    for name, run in rows_to_run.items():
                        runs[name].append(trio.run(run, url, library, n, concurrency))
                rows = {name: median_row(row_runs) for name, row_runs in runs.items()}
                for name, row in rows.items():
                    show(f"{library} {name}", row)
                    results[f"c{concurrency}/{library}/{name}"] = row
                over_bare = ratio(rows["pipeline"], rows["bare"], "rps")
                over_lite = ratio(rows["pipeline"], lite, "rps")
                cpu_vs_lite = ratio(lite, rows["pipeline"], "cpu_ms_per_request")
                print(
                    f"  {library}: pipeline/bare {over_bare}x req/s; pipeline/litellm "
                    f"{over_lite}x req/s, {cpu_vs_lite}x less CPU per request"
                )
                results[f"c{concurrency}/{library}/ratios"] = {
                    "pipeline_over_bare_rps": over_bare,
                    "pipeline_over_litellm_rps": over_lite,
                    "litellm_cpu_over_pipeline_cpu": cpu_vs_lite,
                }
                # Against the keyed OpenAI-compatible row when it ran (every other kind has
                # a key pool too), else the plain one.
                base = "openai-key" if "openai-key" in args.kinds else "openai"
                base_row = rows["pipeline" if base == "openai" else f"pipeline {base}"]
                for kind in args.kinds:
                    if kind not in ("openai", base):
                        cpu = ratio(rows[f"pipeline {kind}"], base_row, "cpu_ms_per_request")
                        print(f"  {library}: pipeline {kind} / {base} CPU per request {cpu}x")
                        results[f"c{concurrency}/{library}/ratios"][f"{kind}_cpu_over_{base}"] = cpu
    finally:
        assert fake.stdin is not None
        fake.stdin.close()
        fake.wait(10)
    conditions = {
        "requests": n,
        "repeats": repeats,
        "concurrency": concurrencies,
        "tokens": 8,
        "pool_size": POOL_SIZE,
        "layers": ["circuit_breaker", "retry"],
        "kinds": args.kinds,
        "fake_checks_sigv4": args.fake_checks_sigv4,
    }
    print(json.dumps({"bench": "gateway", "conditions": conditions, "results": results}))


if __name__ == "__main__":
    main()
