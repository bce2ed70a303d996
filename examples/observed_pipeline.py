"""An instrumented pipeline: JSON request logs on stderr, then the /metrics exposition.

python examples/observed_pipeline.py
"""

from __future__ import annotations

import attrs
import trio
from prometheus_client import CollectorRegistry

from trio_orchestrator import Config, EchoWorker, GenerationParams, PromptRequest, open_pipeline
from trio_orchestrator.observability import (
    LoggingConfig,
    MetricsConfig,
    ModelPrice,
    ObservabilityConfig,
    configure_logging,
    instrument_pipeline,
    render_metrics,
)

CONFIG = attrs.evolve(
    Config(),
    observability=ObservabilityConfig(
        metrics=MetricsConfig(prices={"echo": ModelPrice(0.15, 0.60)}),
        logging=LoggingConfig(json=True),
    ),
)


async def main() -> None:
    """Answer a few requests, then print what Prometheus would scrape."""
    configure_logging(CONFIG.observability.logging)
    registry = CollectorRegistry()
    async with open_pipeline(EchoWorker(), CONFIG) as pipeline:
        with instrument_pipeline(pipeline, registry=registry):
            for text in ("hello", "observable world", "bye"):
                request = PromptRequest(input=text, params=GenerationParams(model="echo"))
                await pipeline.submit(request)
            exposition = render_metrics(registry).decode()
    print("\n".join(line for line in exposition.splitlines() if "_bucket" not in line))


if __name__ == "__main__":
    trio.run(main)
