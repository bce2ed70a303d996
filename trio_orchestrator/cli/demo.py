"""``trio-orchestrator demo``: run a few prompts through a pipeline with the echo worker."""

from __future__ import annotations

import argparse
from typing import Any

import trio

from ..pipeline import open_pipeline
from ..types import PromptRequest
from ..workers import EchoWorker


def register(subparsers: Any) -> None:
    """Add the ``demo`` subcommand."""
    parser = subparsers.add_parser("demo", help="stream a prompt through the echo pipeline")
    parser.add_argument("prompt", nargs="*", default=["Hello", "from", "trio_orchestrator!"])
    parser.add_argument("--token-delay", type=float, default=0.02)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Stream the prompt's echo, then print the pipeline's counters."""

    async def demo() -> None:
        worker = EchoWorker(token_delay=args.token_delay)
        async with open_pipeline(worker) as pipeline:
            async with pipeline.stream(PromptRequest(input=" ".join(args.prompt))) as events:
                async for event in events:
                    print(event)
            print(pipeline.statistics())

    trio.run(demo)
    return 0
