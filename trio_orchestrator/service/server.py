"""Running the service: inside a Trio program, or as processes of hypercorn's Trio worker."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any, cast

import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve as hypercorn_serve

from ..config import Config
from ..workers import ModelWorker
from .app import create_app
from .settings import CONFIG_ENV
from .state import ServiceState

__all__ = ["hypercorn_config", "run_workers", "serve"]

logger = logging.getLogger("trio_orchestrator.service")

APP_PATH = "trio_orchestrator.service.app:app"


def hypercorn_config(config: Config) -> HypercornConfig:
    """Hypercorn's settings for ``config``: the bind, the Trio worker, the grace period."""
    service = config.service
    host = f"[{service.host}]" if ":" in service.host else service.host
    hconfig = HypercornConfig()
    hconfig.bind = [f"{host}:{service.port}"]
    hconfig.worker_class = "trio"
    hconfig.workers = service.workers
    hconfig.application_path = APP_PATH
    # Hypercorn waits this long for open requests once shutdown begins, then cancels them
    # (the pipeline records each as cancelled): the same grace the pipeline gives.
    hconfig.graceful_timeout = config.pipeline.grace_period
    hconfig.websocket_max_message_size = service.max_body_bytes
    hconfig.accesslog = None
    return hconfig


async def serve(
    config: Config | None = None,
    *,
    worker: ModelWorker | None = None,
    shutdown_trigger: Callable[[], Awaitable[None]] | None = None,
    task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the API until ``shutdown_trigger`` returns, then drain and return.

    Start it with ``url = await nursery.start(serve, config)``: it reports the URL it listens
    on once the pipeline is open. When ``shutdown_trigger`` returns, the service refuses new
    requests (503), waits up to ``pipeline.grace_period`` seconds for those in flight, and
    cancels the rest (recorded as cancelled). Cancelling the task instead stops at once.

    Args:
        config: the configuration; ``service.host`` and ``service.port`` say where to
            listen (port 0 for any free port).
        worker: the worker; by default the one the configuration names.
        shutdown_trigger: returns to begin a graceful shutdown; by default, never.
        task_status: receives the URL, such as ``http://127.0.0.1:8000``.
    """
    config = config or Config()
    app = create_app(config, worker)
    state: ServiceState = app.state.service

    async def trigger() -> None:
        if shutdown_trigger is None:
            await trio.sleep_forever()
        else:
            await shutdown_trigger()
        state.draining = True
        logger.info("draining: finishing requests in flight, refusing new ones")

    async with trio.open_nursery() as nursery:
        server = partial(
            hypercorn_serve, cast(Any, app), hypercorn_config(config), shutdown_trigger=trigger
        )
        binds: list[str] = await nursery.start(server)
        task_status.started(binds[0])


def run_workers(config: Config, config_path: str | None) -> int:
    """Run ``config.service.workers`` processes with hypercorn's multi-process mode.

    Each process imports :data:`trio_orchestrator.service.app.app`, which reads the file
    named by ``$TRIO_ORCHESTRATOR_CONFIG``; the parent handles SIGTERM/SIGINT and tells the
    workers to drain. Prints where it listens; returns the exit status.
    """
    from hypercorn.run import run

    if config_path is not None:
        os.environ[CONFIG_ENV] = os.path.abspath(config_path)
    hconfig = hypercorn_config(config)
    # Bind here so that port 0 becomes a port we can print; the workers inherit the socket.
    (sock,) = hconfig.create_sockets().insecure_sockets
    host, port = sock.getsockname()[:2]
    sock.listen(hconfig.backlog)  # connections queue until a worker accepts them
    hconfig.bind = [f"fd://{sock.detach()}"]  # hypercorn owns (and closes) it from here
    shown = f"[{host}]" if ":" in host else host
    workers = config.service.workers
    print(f"trio-orchestrator: serving on http://{shown}:{port} with {workers} worker processes")
    sys.stdout.flush()
    return int(run(hconfig))
