"""``trio-orchestrator batch INPUT.jsonl --out OUTPUT.jsonl``: a resumable batch job."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import attrs
import trio

from ..batch import BatchSummary, run_batch
from ..config import Config
from ..config import load_config as _load_config
from ..errors import ConfigError


def register(subparsers: Any) -> None:
    """Add the ``batch`` subcommand."""
    parser = subparsers.add_parser(
        "batch",
        help="run a JSONL file of requests through the pipeline (resumable)",
        description=(
            "Run one request per line (OpenAI batch format or {'id', 'prompt'}), write each "
            "result as it finishes, failures to a dead-letter file. Rerun to resume; Ctrl-C "
            "stops admitting, lets in-flight requests finish within the grace period, and "
            "records the rest (a second Ctrl-C stops at once)."
        ),
    )
    parser.add_argument("input", type=Path, help="the input JSONL file")
    parser.add_argument("--out", type=Path, required=True, help="the output JSONL file")
    parser.add_argument("--config", type=Path, help="a TOML configuration file")
    parser.add_argument(
        "--concurrency", type=_positive, default=32, help="requests at once (default 32)"
    )
    parser.add_argument(
        "--dead-letters", type=Path, help="the dead-letter file (default: OUTPUT.jsonl.dead)"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument(
        "--queue",
        metavar="REDIS_URL",
        help=(
            "work through the batch together with every other process given the same input "
            "and Redis (a shared work queue; see docs/scaling.md)"
        ),
    )
    parser.add_argument(
        "--queue-name", help="the shared queue's name (default: from the input's name and contents)"
    )
    parser.set_defaults(func=run)


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def load_config(path: Path | None) -> Config:
    """Read a TOML configuration file with the strict loader (defaults when ``path`` is None).

    Raises:
        ConfigError: every problem in the file, each with its key path.
    """
    return Config() if path is None else _load_config(path)


def run(args: argparse.Namespace) -> int:
    """Run the batch job; return 0 when the input was worked through, 130 if interrupted."""
    if not args.input.is_file():
        print(f"trio-orchestrator batch: no such input file: {args.input}", file=sys.stderr)
        return 2
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"trio-orchestrator batch: {exc}", file=sys.stderr)
        return 2
    if args.queue is not None:
        return _run_shared(args, config)
    progress = None if args.no_progress else _progress()

    async def batch() -> BatchSummary:
        # The gateway the configuration describes (echo when no provider is configured).
        return await run_batch(
            args.input,
            args.out,
            dead_path=args.dead_letters,
            config=config,
            concurrency=args.concurrency,
            progress=progress,
            handle_sigint=True,
            warn=lambda line: print(f"{args.input}: {line}", file=sys.stderr),
        )

    try:
        summary = trio.run(batch)
    except ConfigError as exc:
        print(f"trio-orchestrator batch: {exc}", file=sys.stderr)
        return 2
    dead = args.dead_letters or args.out.with_name(args.out.name + ".dead")
    print(_describe(summary, args.out, dead), file=sys.stderr)
    return 130 if summary.was_interrupted else 0


def _run_shared(args: argparse.Namespace, config: Config) -> int:
    """``--queue``: a batch shared through Redis with other processes."""
    from ..distributed.batch import SharedBatchSummary, run_shared_batch
    from ..distributed.connection import RedisUnavailable

    shared = attrs.evolve(
        config, distributed=attrs.evolve(config.distributed, redis_url=args.queue)
    )

    async def batch() -> SharedBatchSummary:
        return await run_shared_batch(
            args.input,
            args.out,
            config=shared,
            dead_path=args.dead_letters,
            name=args.queue_name,
            concurrency=args.concurrency,
        )

    try:
        summary = trio.run(batch)
    except (RedisUnavailable, ConfigError, ValueError) as exc:
        print(f"trio-orchestrator batch: {exc}", file=sys.stderr)
        return 2
    print(
        f"shared batch {summary.queue}: {summary.done} of {summary.total} lines done; this "
        f"process recorded {summary.recorded} ({summary.completed} completed, "
        f"{summary.dead} dead letters) in {args.out}",
        file=sys.stderr,
    )
    return 0


def _progress() -> Any:
    try:
        from ._progress import RichProgress
    except ImportError:  # rich is optional (the `batch` extra)
        return None
    return RichProgress()


def _describe(summary: BatchSummary, out: Path, dead: Path) -> str:
    head = "interrupted" if summary.was_interrupted else "done"
    return (
        f"batch {head}: {summary.completed} completed, {summary.failed} failed, "
        f"{summary.shed} shed, {summary.expired} expired, {summary.interrupted} interrupted, "
        f"{summary.bad_lines} bad lines, {summary.skipped} skipped (already done) "
        f"of {summary.total} lines; results in {out}, dead letters in {dead}"
        + ("; rerun the same command to resume" if summary.was_interrupted else "")
    )
