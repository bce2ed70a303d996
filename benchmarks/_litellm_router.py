"""The LiteLLM row of bench_gateway.py, run in LiteLLM's own virtualenv (it needs asyncio).

    python benchmarks/_litellm_router.py BASE_URL REQUESTS CONCURRENCY

Streams ``REQUESTS`` chat completions through ``Router.acompletion``, ``CONCURRENCY`` at a
time, after a warm-up; prints one line of JSON: rps, p50/p99 latency, CPU ms per request.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from typing import Any

os.environ.setdefault("LITELLM_LOG", "ERROR")


async def drive(router: Any, n: int, concurrency: int) -> dict[str, float]:
    latencies: list[float] = []
    remaining = n

    async def caller() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            start = time.perf_counter()
            stream = await router.acompletion(
                model="fake-model",
                messages=[{"role": "user", "content": "hello"}],
                stream=True,
                stream_options={"include_usage": True},
            )
            async for _ in stream:
                pass
            latencies.append(time.perf_counter() - start)

    cpu, wall = time.process_time(), time.perf_counter()
    await asyncio.gather(*(caller() for _ in range(concurrency)))
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    latencies.sort()
    return {
        "rps": n / wall,
        "p50_ms": latencies[len(latencies) // 2] * 1000,
        "p99_ms": latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1000,
        "cpu_ms_per_request": cpu / n * 1000,
    }


async def main(base_url: str, n: int, concurrency: int) -> None:
    from litellm import Router

    params = {"model": "openai/fake-model", "api_base": base_url, "api_key": "sk-fake"}
    router = Router(model_list=[{"model_name": "fake-model", "litellm_params": params}])
    await drive(router, min(n, concurrency), concurrency)
    print(json.dumps(await drive(router, n, concurrency)))


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3])))
