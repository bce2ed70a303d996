"""An instrumented gateway: JSON request logs on stderr, then the /metrics exposition.

python examples/observed_pipeline.py

:func:`~trio_orchestrator.open_gateway` wires metrics, traces and request logs onto the
pipeline as ``[observability]`` says, with a Prometheus registry of its own
(``gateway.observed``). A pipeline opened alone with ``open_pipeline`` gets the same with
``instrument_pipeline(pipeline, config, registry)``.
"""

from __future__ import annotations

import attrs
import trio

from trio_orchestrator import Config, EchoWorker, GenerationParams, PromptRequest, open_gateway
from trio_orchestrator.observability import (
    LoggingConfig,
    MetricsConfig,
    ModelPrice,
    ObservabilityConfig,
    configure_logging,
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
    async with open_gateway(CONFIG, worker=EchoWorker()) as gateway:
        for text in ("hello", "observable world", "bye"):
            request = PromptRequest(input=text, params=GenerationParams(model="echo"))
            await gateway.pipeline.submit(request)
        assert gateway.observed is not None
        exposition = gateway.observed.render().decode()
    print("\n".join(line for line in exposition.splitlines() if "_bucket" not in line))


if __name__ == "__main__":
    trio.run(main)
