"""Load a configuration file, run a pipeline with it, and reload it while requests run.

Run: ``python examples/config_reload.py [examples/config.toml]``
"""

from __future__ import annotations

import sys
from pathlib import Path

import attrs
import trio

from trio_orchestrator import EchoWorker, PromptRequest, open_pipeline
from trio_orchestrator.config import load_config


async def main(path: Path) -> None:
    """Serve a burst of requests, halving inference concurrency half-way through."""
    config = load_config(path)
    async with open_pipeline(EchoWorker(token_delay=0.01), config) as pipeline:
        async with trio.open_nursery() as nursery:
            for i in range(100):
                nursery.start_soon(pipeline.submit, PromptRequest(input=f"request {i} " * 5))
            await trio.sleep(0.02)
            smaller = attrs.evolve(
                config.pipeline,
                inference_concurrency=8,
                rag_capacity=2 * config.pipeline.rag_capacity,
            )
            report = pipeline.reload(attrs.evolve(config, pipeline=smaller))
            print(report)
        print(pipeline.statistics())


if __name__ == "__main__":
    default = Path(__file__).with_name("config.toml")
    trio.run(main, Path(sys.argv[1]) if len(sys.argv) > 1 else default)
