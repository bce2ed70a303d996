"""An A/B experiment that rolls itself back: a new model answering 10 % of the traffic fails
30 % of its requests, and the gateway sends everything back to control on its own.

    pip install 'trio-orchestrator[examples]'   # the OpenAI SDK
    python examples/experiments.py

Two fake, local OpenAI-compatible upstreams: one serves ``gpt-4o-mini`` and is healthy; the
other serves ``gpt-4o-mini-next`` and fails 30 % of its requests with a 500. The experiment
``next-model`` sends half of the requests for ``gpt-4o-mini`` to ``gpt-4o-mini-next``
(sticky by session), with a system prompt of its own. Each answer names its variant in the
``x-experiment`` header; a thumbs-up is posted for one of them; after 40 requests per arm
the guard rails compare the error rates, and the experiment rolls back. See
docs/experiments.md.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import httpx
import openai
import trio

from trio_orchestrator.config import Config, parse_config
from trio_orchestrator.service import serve
from trio_orchestrator.testing.fake_provider import FaultMix, open_fake_provider


def configuration(healthy: str, flaky: str) -> Config:
    return parse_config(f"""
[service]
port = 0

[[providers.providers]]
kind = "openai"
name = "stable"
base_url = "{healthy}"
models = ["gpt-4o-mini"]

[[providers.providers]]
kind = "openai"
name = "next"
base_url = "{flaky}"
models = ["gpt-4o-mini-next"]

[[experiments.experiments]]
id = "next-model"
models = ["gpt-4o-mini"]
sticky = "session"

[experiments.experiments.guard]
min_samples = 40
error_margin = 0.05

[[experiments.experiments.variants]]
name = "control"
share = 0.5

[[experiments.experiments.variants]]
name = "next"
share = 0.5
model = "gpt-4o-mini-next"
system_prefix = "Answer briefly. "
""")


async def ask(client: openai.AsyncOpenAI, session: str) -> tuple[str, str]:
    """One question in ``session``: its variant and request id (or the error)."""
    try:
        raw = await client.chat.completions.with_raw_response.create(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": "Hello there!"}],
            extra_headers={"x-session-id": session},
        )
    except openai.APIStatusError as exc:
        return exc.response.headers.get("x-experiment", "?"), "failed"
    return raw.headers["x-experiment"], raw.headers["x-request-id"]


def show(report: dict[str, Any]) -> None:
    print(f"experiment {report['id']}: {report['status']}", report["reason"] or "")
    for variant in report["variants"]:
        rate = variant["success_rate"]
        print(
            f"  {variant['name']:8} n={variant['requests']:3} errors={variant['errors']:2}",
            f"success {rate['estimate']:.2f} [{rate['low']:.2f}, {rate['high']:.2f}]",
            f"feedback n={variant['feedback']['n']}",
        )


async def main() -> None:
    flaky_faults = FaultMix(rate=0.3, kinds=("500",), seed=1)
    async with (
        open_fake_provider(models=("gpt-4o-mini",)) as healthy,
        open_fake_provider(models=("gpt-4o-mini-next",), faults=flaky_faults) as flaky,
        trio.open_nursery() as nursery,
    ):
        config = configuration(healthy.openai_base_url, flaky.openai_base_url)
        stop = trio.Event()
        url = await nursery.start(partial(serve, config, shutdown_trigger=stop.wait))
        sdk = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0)
        async with sdk, httpx.AsyncClient(base_url=url) as http:
            request_id, n = "failed", 0
            while request_id == "failed":  # the first answered request
                n += 1
                header, request_id = await ask(sdk, f"session-{n}")
            print(f"session-{n} meets {header}; a thumbs-up for its answer")
            await http.post("/v1/feedback", json={"request_id": request_id, "thumbs": "up"})
            for i in range(400):
                await ask(sdk, f"session-{i}")
                report = (await http.get("/v1/experiments/next-model")).json()
                if report["status"] != "running":
                    break
            show(report)
            after = {(await ask(sdk, f"later-{i}"))[0] for i in range(20)}
            print("after the rollback every session meets:", ", ".join(sorted(after)))
        stop.set()


if __name__ == "__main__":
    trio.run(main)
