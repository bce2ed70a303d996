"""``trio-orchestrator serve``: the OpenAI-compatible gateway under hypercorn's Trio worker."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Any

import attrs
import trio

from ..config import Config
from ..errors import ConfigError, OrchestratorError
from ..service.server import run_workers, serve
from ..service.settings import CONFIG_ENV, log_to_stderr
from .config import load_checked

logger = logging.getLogger("trio_orchestrator.service")


def register(subparsers: Any) -> None:
    """Add the ``serve`` subcommand."""
    parser = subparsers.add_parser("serve", help="run the OpenAI-compatible HTTP service")
    parser.add_argument("--config", metavar="FILE", help="a TOML configuration file")
    parser.add_argument("--host", help="address to listen on (default: service.host)")
    parser.add_argument("--port", type=int, help="port to listen on, 0 for any free port")
    parser.add_argument("--workers", type=int, metavar="N", help="processes (default: 1)")
    parser.set_defaults(func=run)


def _config(args: argparse.Namespace) -> Config:
    # Checked whole before anything listens: a missing key's variable is refused here, in
    # one line, not by a traceback after "serving on".
    config = Config() if args.config is None else load_checked(args.config)
    overrides = {k: getattr(args, k) for k in ("host", "port", "workers")}
    changes = {k: v for k, v in overrides.items() if v is not None}
    try:
        return attrs.evolve(config, service=attrs.evolve(config.service, **changes))
    except ValueError as exc:
        raise ConfigError(f"command line: {exc}") from exc


def run(args: argparse.Namespace) -> int:
    """Serve until SIGTERM or SIGINT, then drain within the grace period; return the status."""
    try:
        config = _config(args)
    except ConfigError as exc:
        print(f"trio-orchestrator serve: invalid configuration: {_one_line(exc)}", file=sys.stderr)
        return 2
    log_to_stderr(config.observability.logging)  # [observability.logging]: level, JSON
    if args.config is not None:
        # The service reloads this file on SIGHUP (worker processes also read it from here).
        os.environ[CONFIG_ENV] = str(Path(args.config).resolve())
    if config.service.workers > 1:
        return run_workers(config, args.config)
    try:
        trio.run(_serve_until_signal, config)
    except BaseException as exc:
        error = _startup_error(exc)
        if error is None:
            raise
        print(f"trio-orchestrator serve: cannot start: {_one_line(error)}", file=sys.stderr)
        return 2
    return 0


def _one_line(error: OrchestratorError) -> str:
    if isinstance(error, ConfigError):
        return "; ".join(error.problems)
    return " ".join(str(error).split())


def _startup_error(exc: BaseException) -> OrchestratorError | None:
    """The package's own error that stopped the service (a configuration the file check
    cannot see, Redis unreachable at start…), out of the exception groups around it."""
    if isinstance(exc, OrchestratorError):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            found = _startup_error(inner)
            if found is not None:
                return found
    return None


async def _serve_until_signal(config: Config) -> None:
    """Serve; the first signal drains, a second one stops at once."""
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        draining = trio.Event()
        async with trio.open_nursery() as nursery:

            async def serve_then_stop(*, task_status: trio.TaskStatus[str]) -> None:
                await serve(
                    config,
                    shutdown_trigger=draining.wait,
                    own_process=True,
                    task_status=task_status,
                )
                nursery.cancel_scope.cancel()  # drained: stop watching for signals

            url = await nursery.start(serve_then_stop)
            print(f"trio-orchestrator: serving on {url} (Ctrl+C to stop)", flush=True)
            async for signum in signals:
                name = signal.Signals(signum).name
                if draining.is_set():
                    # Requests still in flight end as cancelled, and are counted so.
                    logger.warning("second %s: stopping at once", name)
                    nursery.cancel_scope.cancel()
                    return
                logger.info("%s: draining (a second signal stops at once)", name)
                draining.set()
