"""``trio-orchestrator fake-provider``: the test kit's fake LLM provider, as a tool.

It serves both wire formats (OpenAI's and Anthropic's) on a loopback port, with a scripted
answer and a seeded fault mix, so that a gateway (this one or another) can be tried against
failures without a real provider or a key.
"""

from __future__ import annotations

import argparse
from typing import Any

from ..testing import fake_provider

__all__ = ["register", "run"]


def register(subparsers: Any) -> None:
    """Add the ``fake-provider`` subcommand."""
    parser = subparsers.add_parser(
        "fake-provider",
        help="serve a fake LLM provider (OpenAI and Anthropic formats, seeded faults)",
        description=fake_provider.tool.__doc__,
    )
    fake_provider.add_arguments(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Serve until Ctrl+C; return the exit status."""
    return fake_provider.run_arguments(args)
