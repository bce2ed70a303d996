"""The model catalogue: /v1/models with each model's facts, and spend counted from its prices.

    pip install 'trio-orchestrator[examples]'   # the OpenAI SDK
    python examples/model_catalogue.py

The gateway serves two models of a (fake, local) OpenAI-compatible upstream: gpt-4o-mini,
which the bundled catalogue knows, and my-llama, described in the configuration's
``[catalogue.models]``. The SDK lists them with their context windows, capabilities and
prices, asks one question, and /metrics shows what it cost, with no prices configured.
"""

from __future__ import annotations

from functools import partial

import httpx
import openai
import trio

from trio_orchestrator.catalogue import CatalogueConfig, ModelFacts
from trio_orchestrator.config import Config
from trio_orchestrator.config.service import ServiceConfig
from trio_orchestrator.service import serve
from trio_orchestrator.testing.fake_provider import open_fake_provider
from trio_orchestrator.workers import ProviderConfig, ProvidersConfig


def configuration(upstream: str) -> Config:
    provider = ProviderConfig("openai", "local", upstream, models=["gpt-4o-mini", "my-llama"])
    # A model the bundled catalogue does not know, described here (TOML: [catalogue.models]).
    llama = ModelFacts(
        provider="local",
        context_window=131072,
        capabilities=["tools"],
        input_price=0.0,
        output_price=0.0,
    )
    return Config(
        providers=ProvidersConfig([provider]),
        service=ServiceConfig(port=0),
        catalogue=CatalogueConfig(models={"my-llama": llama}),
    )


async def main() -> None:
    async with open_fake_provider() as fake, trio.open_nursery() as nursery:
        stop = trio.Event()
        config = configuration(fake.openai_base_url)
        url = await nursery.start(partial(serve, config, shutdown_trigger=stop.wait))
        client = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="not-needed")
        async for model in client.models.list():
            facts = model.model_dump()
            pricing = facts.get("pricing", {})
            print(
                f"{model.id}: context {facts.get('context_window')},",
                f"capabilities {facts.get('capabilities')},",
                f"${pricing.get('input_per_million')} in / ${pricing.get('output_per_million')}"
                " out per million tokens",
            )
        await client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "Hello!"}]
        )
        async with httpx.AsyncClient() as http:
            metrics = (await http.get(f"{url}/metrics")).text
        for line in metrics.splitlines():
            if line.startswith("trio_orchestrator_cost_usd_total{"):
                print("spend:", line)
        await client.close()
        stop.set()


if __name__ == "__main__":
    trio.run(main)
