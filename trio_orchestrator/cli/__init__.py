"""The ``trio-orchestrator`` command.

Each subcommand lives in a module of this package exposing ``register(subparsers)``, which
adds its parser and sets ``func`` (taking the parsed arguments, returning an exit status).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from importlib import import_module

__all__ = ["main"]

# Modules of this package, one per subcommand (or group of subcommands).
_COMMANDS: tuple[str, ...] = (
    "init",
    "serve",
    "mcp",
    "chat",
    "top",
    "batch",
    "config",
    "demo",
    "fake_provider",
)


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser with every subcommand registered."""
    parser = argparse.ArgumentParser(
        prog="trio-orchestrator",
        description="Safe, fast plumbing between applications and LLM providers, on Trio.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in _COMMANDS:
        import_module(f"{__name__}.{name}").register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    func: Callable[[argparse.Namespace], int] | None = getattr(args, "func", None)
    if func is None:
        parser.print_help()
        return 2
    try:
        return func(args)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
