"""Load a configuration file, run the gateway it describes, and reload it while requests run.

Run: ``python examples/config_reload.py [examples/config.toml]``

The reload goes by section: the pipeline takes ``[pipeline]``, each circuit breaker takes
``[resilience.breaker]``, and so on. An option that cannot change while running, or that no
running part takes (a layer the file leaves off), keeps its value and is reported as refused.
"""

from __future__ import annotations

import sys
from pathlib import Path

import attrs
import trio

from trio_orchestrator import GenerationParams, PromptRequest, open_gateway
from trio_orchestrator.config import load_config


async def main(path: Path) -> None:
    """Serve a burst of requests, changing the configuration half-way through."""
    config = load_config(path)
    async with open_gateway(config) as gateway:
        pipeline = gateway.pipeline
        async with trio.open_nursery() as nursery:
            for i in range(100):
                request = PromptRequest(
                    input=f"request {i} " * 5, params=GenerationParams(model="echo")
                )
                nursery.start_soon(pipeline.submit, request)
            await trio.sleep(0.02)
            resilience = config.resilience
            new = attrs.evolve(
                config,
                # inference_concurrency is reloadable; a channel's capacity is not.
                pipeline=attrs.evolve(
                    config.pipeline,
                    inference_concurrency=8,
                    rag_capacity=2 * config.pipeline.rag_capacity,
                ),
                resilience=attrs.evolve(
                    resilience,
                    # The breaker is on in the file: each running breaker takes this.
                    breaker=attrs.evolve(resilience.breaker, failure_threshold=10),
                    # The cache is off: no running part takes its options.
                    cache=attrs.evolve(resilience.cache, ttl=60.0),
                ),
            )
            report = gateway.reload(new)
            print(report)
        print(pipeline.statistics())


if __name__ == "__main__":
    default = Path(__file__).with_name("config.toml")
    trio.run(main, Path(sys.argv[1]) if len(sys.argv) > 1 else default)
