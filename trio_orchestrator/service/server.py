"""Running the service: inside a Trio program, or as worker processes.

HTTP/1.1 is served by the service's own server (:mod:`.h1server`) or by hypercorn's Trio
worker, as ``service.server`` says.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import sys
from collections.abc import Awaitable, Callable
from functools import partial
from multiprocessing.synchronize import Event as EventType
from typing import Any, cast

import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.config import Sockets
from hypercorn.trio.run import worker_serve
from hypercorn.utils import check_multiprocess_shutdown_event, wrap_app

from ..config import Config
from ..workers import ModelWorker
from .app import create_app
from .connections import drain, drain_margin
from .h1server import serve_http1
from .memory import freeze_heap
from .settings import CONFIG_ENV, log_to_stderr
from .state import ServiceState

__all__ = ["hypercorn_config", "run_workers", "serve"]

logger = logging.getLogger("trio_orchestrator.service")

APP_PATH = "trio_orchestrator.service.app:app"


def hypercorn_config(config: Config) -> HypercornConfig:
    """Hypercorn's settings for ``config``: the bind, the Trio worker, the grace period, the
    keep-alive timeout and the listen backlog."""
    service = config.service
    host = f"[{service.host}]" if ":" in service.host else service.host
    hconfig = HypercornConfig()
    hconfig.bind = [f"{host}:{service.port}"]
    hconfig.worker_class = "trio"
    hconfig.workers = service.workers
    hconfig.application_path = APP_PATH
    # Hypercorn waits this long for open requests once shutdown begins, then cancels them
    # (the pipeline records each as cancelled): the same grace the pipeline gives. `serve`
    # drains by itself first and shortens this to the margin it leaves (see `serve`).
    hconfig.graceful_timeout = config.pipeline.grace_period
    # Longer than clients' own idle timeouts (5 s for httpx): a client must never reuse a
    # connection in the instant the server closes it. It also bounds the wait for headers.
    hconfig.keep_alive_timeout = service.keep_alive_timeout
    hconfig.backlog = service.backlog
    hconfig.websocket_max_message_size = service.max_body_bytes
    hconfig.accesslog = None
    return hconfig


async def serve(
    config: Config | None = None,
    *,
    worker: ModelWorker | None = None,
    shutdown_trigger: Callable[[], Awaitable[None]] | None = None,
    sockets: Sockets | None = None,
    own_process: bool = False,
    task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the API until ``shutdown_trigger`` returns, then drain and return.

    Start it with ``url = await nursery.start(serve, config)``: it reports the URL it listens
    on once the pipeline is open. When ``shutdown_trigger`` returns, the service answers new
    requests 503 (with ``Connection: close``) and waits for those in flight up to
    ``pipeline.grace_period`` seconds less a small margin; then it ends the rest cleanly (a
    503, or an error event and the stream's proper end; each counted cancelled), stops
    listening and returns. Cancelling the task instead stops at once.

    Args:
        config: the configuration; ``service.host`` and ``service.port`` say where to
            listen (port 0 for any free port).
        worker: the worker; by default the one the configuration names.
        shutdown_trigger: returns to begin a graceful shutdown; by default, never.
        sockets: listening sockets to serve (a worker process's share); by default it binds
            ``service.host`` and ``service.port`` itself.
        own_process: the process is the service's own (``trio-orchestrator serve``'s): once
            listening, it freezes the heap as ``service.freeze_heap`` says, a setting of the
            whole process that a program serving among other work decides for itself.
        task_status: receives the URL, such as ``http://127.0.0.1:8000``.
    """
    config = config or Config()
    app = create_app(config, worker)
    state: ServiceState = app.state.service
    grace = config.pipeline.grace_period
    hconfig = hypercorn_config(config)
    # The drain below ends every request itself; hypercorn then only waits for those last
    # answers to go out (and for WebSockets) before it cuts what is left.
    hconfig.graceful_timeout = drain_margin(grace)
    logger.debug(
        "listening with keep_alive_timeout=%ss backlog=%d request_read_timeout=%ss grace=%ss",
        config.service.keep_alive_timeout,
        config.service.backlog,
        config.service.request_read_timeout,
        grace,
    )

    async def trigger() -> None:
        if shutdown_trigger is None:
            await trio.sleep_forever()
        else:
            await shutdown_trigger()
        state.draining = True
        logger.info("draining: finishing requests in flight, refusing new ones")
        # Still accepting meanwhile: a connection that arrives now gets a 503 rather than
        # waiting in the listen queue for a reset.
        # The grace period in force: a reload may have changed it.
        in_force = grace if state.gateway is None else state.gateway.config.pipeline.grace_period
        await drain(app.requests, state.pipeline, in_force)

    own = sockets is None
    if sockets is None:
        sockets = hconfig.create_sockets()
        for sock in sockets.insecure_sockets:
            sock.listen(hconfig.backlog)
    try:
        async with trio.open_nursery() as nursery:
            wrapped = wrap_app(cast(Any, app), hconfig.wsgi_max_body_size, "asgi")
            if config.service.server == "httptools":
                server = partial(
                    serve_http1, app, wrapped, hconfig, sockets=sockets, shutdown_trigger=trigger
                )
            else:
                server = partial(
                    worker_serve, wrapped, hconfig, sockets=sockets, shutdown_trigger=trigger
                )
            binds: list[str] = await nursery.start(server)
            if own_process and config.service.freeze_heap:
                freeze_heap()  # what the process holds once listening lives as long as it
            task_status.started(binds[0])
    finally:
        if own:
            for sock in sockets.insecure_sockets:
                sock.close()


def run_workers(config: Config, config_path: str | None) -> int:
    """Run ``config.service.workers`` processes sharing one listening socket.

    Each process runs :func:`serve` on the socket the parent bound (so each drains as
    :func:`serve` does); SIGTERM or SIGINT to the parent tells them all to drain. Prints
    where it listens; returns the exit status (the first non-zero one of a worker).

    Args:
        config: the configuration (command-line overrides applied).
        config_path: the file it came from, which SIGHUP reloads in each worker.
    """
    if config_path is not None:
        os.environ[CONFIG_ENV] = os.path.abspath(config_path)
    hconfig = hypercorn_config(config)
    # Bind here so that port 0 becomes a port we can print; the workers inherit the socket.
    sockets = hconfig.create_sockets()
    (sock,) = sockets.insecure_sockets
    host, port = sock.getsockname()[:2]
    sock.listen(hconfig.backlog)  # connections queue until a worker accepts them
    shown = f"[{host}]" if ":" in host else host
    workers = config.service.workers
    print(f"trio-orchestrator: serving on http://{shown}:{port} with {workers} worker processes")
    sys.stdout.flush()
    try:
        return _supervise(config, sockets, workers)
    finally:
        sock.close()


def _supervise(config: Config, sockets: Sockets, workers: int) -> int:
    context = multiprocessing.get_context("spawn")
    stop = context.Event()
    # The workers inherit "ignore SIGINT": a terminal's Ctrl+C reaches the parent, which
    # tells them to drain; a second one stops the parent waiting (and them with it).
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    processes = [
        context.Process(target=_worker_process, args=(config, sockets, stop), daemon=True)
        for _ in range(workers)
    ]
    for process in processes:
        process.start()
    signal.signal(signal.SIGINT, previous)

    def shut_down(_signum: int, _frame: object) -> None:
        stop.set()

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, shut_down)
    status = 0
    for process in processes:
        process.join()
        if process.exitcode and not status:
            status = process.exitcode
            stop.set()  # one worker failed: stop the others too
    return status


def _worker_process(config: Config, sockets: Sockets, stop: EventType) -> None:
    """One worker process: serve on the shared socket until the parent says to drain."""
    log_to_stderr(config.observability.logging)
    # A SIGTERM sent to every process (systemd's default) drains them all, as the parent's
    # would, instead of killing this one mid-answer.
    signal.signal(signal.SIGTERM, lambda _signum, _frame: stop.set())
    stopped = partial(check_multiprocess_shutdown_event, stop, trio.sleep)
    trio.run(partial(serve, config, sockets=sockets, shutdown_trigger=stopped, own_process=True))
