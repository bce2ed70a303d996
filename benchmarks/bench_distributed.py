"""Shared state through Redis: rate-limit checks per second, and pipeline throughput with 1, 2
and 4 processes sharing one Redis.

Starts its own ``redis-server`` (no persistence) on a free loopback port. Measures:

- global rate-limit checks (:class:`SharedRateLimiter`, one Lua script per check, three
  buckets) per second: one task in sequence (latency-bound), and 64 tasks at once on one
  connection pool; baseline: the local in-memory :class:`RateLimiter` in the same run;
- requests per second through whole gateways (``open_gateway(config, worker=EchoWorker())``:
  three global rate limits that never refuse, shared breakers on; metrics and request logs
  off, as in a bare pipeline) in 1, 2 and 4 processes sharing the Redis, each process
  keeping 64 requests in flight; baseline: as many processes with the same limits kept
  locally (per process, not shared), in the same run.

Medians of the repeats. Ends with one line of JSON.

    python benchmarks/bench_distributed.py [--quick] [--seconds S] [--repeats R]
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
from pathlib import Path

import trio

from trio_orchestrator import Config, EchoWorker, PromptRequest, __version__, open_gateway
from trio_orchestrator.distributed import DistributedConfig, SharedRateLimiter, open_redis
from trio_orchestrator.observability import LoggingConfig, MetricsConfig, ObservabilityConfig
from trio_orchestrator.resilience import (
    BreakerConfig,
    LimitConfig,
    RateLimiter,
    RateLimitsConfig,
    ResilienceConfig,
)

HUGE = 1e12  # a rate no benchmark reaches: every check admits
SCOPES = ("provider", "model", "user")
KEYS = {"provider": "p", "model": "m", "user": "u"}
IN_FLIGHT = 64


def _limits() -> list[LimitConfig]:
    return [LimitConfig(scope, requests_per_second=HUGE) for scope in SCOPES]


def _start_redis() -> tuple[subprocess.Popen[bytes], str, str]:
    executable = shutil.which("redis-server")
    if executable is None:
        sys.exit("redis-server is not installed (Debian: apt-get install redis-server)")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    directory = tempfile.mkdtemp(prefix="bench-redis-")
    process = subprocess.Popen(
        [
            *(executable, "--port", str(port), "--bind", "127.0.0.1", "--save", ""),
            *("--appendonly", "no", "--dir", directory),
        ],
        stdout=subprocess.DEVNULL,
    )
    for _ in range(500):
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2) as connection:
                connection.sendall(b"PING\r\n")
                if connection.recv(16).startswith(b"+PONG"):
                    break
        except OSError:
            time.sleep(0.01)
    version = subprocess.run([executable, "--version"], capture_output=True, text=True).stdout
    return process, f"redis://127.0.0.1:{port}/0", version.split()[2]


def _local_checks(n: int) -> float:
    limiter = RateLimiter(_limits())
    charges = limiter.charges(KEYS, 0)
    start = time.perf_counter()
    now = 0.0
    for _ in range(n):
        now += 1e-6
        limiter.try_acquire(charges, now)
    return n / (time.perf_counter() - start)


async def _shared_checks(url: str, n: int, tasks: int) -> float:
    config = DistributedConfig(redis_url=url, operation_timeout=5)
    async with open_redis(config) as redis:
        limiter = SharedRateLimiter(redis, _limits(), "p")
        await limiter.try_acquire(KEYS, 0)  # loads the script

        async def run(count: int) -> None:
            for _ in range(count):
                await limiter.try_acquire(KEYS, 0)

        start = trio.current_time()
        async with trio.open_nursery() as nursery:
            for _ in range(tasks):
                nursery.start_soon(run, n // tasks)
        return (n // tasks * tasks) / (trio.current_time() - start)


def _config(url: str | None) -> Config:
    resilience = ResilienceConfig(
        rate_limits=RateLimitsConfig(enabled=True, limits=_limits()),
        breaker=BreakerConfig(enabled=True),
    )
    # The gateway instruments what it builds; this measures the layers and Redis, not that.
    observability = ObservabilityConfig(
        metrics=MetricsConfig(enabled=False), logging=LoggingConfig(requests=False)
    )
    return Config(
        resilience=resilience,
        distributed=DistributedConfig(redis_url=url),
        observability=observability,
    )


async def _child(url: str | None, seconds: float, start_at: float) -> None:
    """One process: keep IN_FLIGHT requests going for ``seconds``; print how many ended."""
    done = 0
    async with open_gateway(_config(url), worker=EchoWorker()) as gateway:
        pipeline = gateway.pipeline
        await trio.sleep(max(0.0, start_at - time.time()))

        async def loop() -> None:
            nonlocal done
            request = PromptRequest(input="hello there", meta={"user": "u"})
            while True:
                await pipeline.submit(request)
                done += 1

        with trio.move_on_after(seconds):
            async with trio.open_nursery() as nursery:
                for _ in range(IN_FLIGHT):
                    nursery.start_soon(loop)
    print(json.dumps({"done": done}), flush=True)


def _throughput(url: str | None, processes: int, seconds: float) -> float:
    start_at = time.time() + 1.5  # every child set up before the clock starts
    command = [sys.executable, __file__, "--child", url or "", str(seconds), repr(start_at)]
    children = [
        subprocess.Popen(command, stdout=subprocess.PIPE, text=True) for _ in range(processes)
    ]
    total = 0
    for child in children:
        out, _ = child.communicate(timeout=seconds + 60)
        total += json.loads(out.strip().splitlines()[-1])["done"]
    return total / seconds


SERVICE_CONFIG = """
[service]
port = 0
workers = {workers}
[resilience.rate_limits]
enabled = true
limits = [
    {{ scope = "provider", requests_per_second = 1e12, burst = 1e12, mode = "reject" }},
    {{ scope = "model", requests_per_second = 1e12, burst = 1e12, mode = "reject" }},
]
"""


def _service_throughput(url: str | None, workers: int, seconds: float) -> float | str:
    """Requests/s of `trio-orchestrator serve --workers N` under wrk (64 connections), its
    processes sharing rate limits through Redis (``url``) or each keeping its own."""
    import re
    import shutil
    import tempfile

    sys.path.insert(0, str(Path(__file__).parent))
    from bench_service import wrk

    if shutil.which("wrk") is None:
        return "skipped: wrk is not installed (apt-get install wrk)"
    text = SERVICE_CONFIG.format(workers=workers)
    if url is not None:
        text += f'[distributed]\nredis_url = "{url}"\n'
    with tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False) as file:
        file.write(text)
    command = [sys.executable, "-m", "trio_orchestrator", "serve", "--config", file.name]
    server = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert server.stdout is not None
        found = re.search(r"http://\S+", server.stdout.readline())
        assert found, "serve printed no address"
        base = found.group(0)
        time.sleep(1.0)  # let every worker process open its pipeline
        wrk(base + "/v1/chat/completions", 1.0)  # warm-up
        return wrk(base + "/v1/chat/completions", seconds).rps
    finally:
        server.terminate()
        server.wait(timeout=30)
        os.unlink(file.name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a run under a minute")
    parser.add_argument("--seconds", type=float, default=5.0, help="per throughput run")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        url, seconds, start_at = args.child
        trio.run(_child, url or None, float(seconds), float(start_at))
        return
    seconds = 2.0 if args.quick else args.seconds
    repeats = 1 if args.quick else args.repeats
    checks = 5_000 if args.quick else 20_000
    redis, url, redis_version = _start_redis()
    try:
        print(
            f"trio_orchestrator {__version__}, Python {platform.python_version()}, "
            f"redis-server {redis_version} on loopback, {platform.machine()}, "
            f"{os.cpu_count()} CPUs; {checks} checks, {seconds:g} s per throughput run, "
            f"{repeats} repeats, {IN_FLIGHT} requests in flight per process"
        )
        local = statistics.median(_local_checks(checks * 10) for _ in range(repeats))
        serial = statistics.median(trio.run(_shared_checks, url, checks, 1) for _ in range(repeats))
        parallel = statistics.median(
            trio.run(_shared_checks, url, checks, IN_FLIGHT) for _ in range(repeats)
        )
        print(f"local limiter (baseline):     {local:12,.0f} checks/s")
        print(f"Redis limiter, 1 task:        {serial:12,.0f} checks/s")
        print(f"Redis limiter, {IN_FLIGHT} tasks:      {parallel:12,.0f} checks/s")
        local_state, shared = {}, {}
        for processes in (1, 2, 4):
            local_state[processes] = statistics.median(
                _throughput(None, processes, seconds) for _ in range(repeats)
            )
            shared[processes] = statistics.median(
                _throughput(url, processes, seconds) for _ in range(repeats)
            )
            print(
                f"{processes} process(es): local state (baseline) "
                f"{local_state[processes]:8,.0f} requests/s; shared Redis "
                f"{shared[processes]:8,.0f} requests/s ({shared[processes] / shared[1]:.2f}x "
                "1 process)"
            )
        service_local: dict[int, float | str] = {}
        service_shared: dict[int, float | str] = {}
        for workers in (1, 2, 4):
            service_local[workers] = _service_throughput(None, workers, seconds)
            service_shared[workers] = _service_throughput(url, workers, seconds)
            print(
                f"serve --workers {workers}: local limits (baseline) "
                f"{_rate(service_local[workers])}; limits shared through Redis "
                f"{_rate(service_shared[workers])}"
            )
        cores = os.cpu_count() or 1
        if cores <= 2:
            print(
                f"note: {cores} cores, shared with redis-server: scaling flattens past 2 processes"
            )
    finally:
        redis.kill()
        redis.wait()
    print(
        json.dumps(
            {
                "benchmark": "distributed",
                "quick": args.quick,
                "cpus": os.cpu_count(),
                "python": platform.python_version(),
                "redis": redis_version,
                "seconds": seconds,
                "repeats": repeats,
                "local_checks_per_s": round(local),
                "redis_checks_per_s_1_task": round(serial),
                f"redis_checks_per_s_{IN_FLIGHT}_tasks": round(parallel),
                "requests_per_s_local": {str(p): round(r) for p, r in local_state.items()},
                "requests_per_s_shared": {str(p): round(r) for p, r in shared.items()},
                "service_requests_per_s_local": {str(w): _num(r) for w, r in service_local.items()},
                "service_requests_per_s_shared": {
                    str(w): _num(r) for w, r in service_shared.items()
                },
            }
        )
    )


def _rate(value: float | str) -> str:
    return value if isinstance(value, str) else f"{value:8,.0f} requests/s"


def _num(value: float | str) -> float | str:
    return value if isinstance(value, str) else round(value)


if __name__ == "__main__":
    main()
