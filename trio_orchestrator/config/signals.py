"""Reload the configuration file on a signal (SIGHUP by default), as daemons do."""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import Callable
from typing import NoReturn, Protocol

import trio

from .reload import ReloadReport

__all__ = ["reload_on_signal"]

logger = logging.getLogger("trio_orchestrator.config")


class _ReloadsFromFile(Protocol):
    async def reload_from_file(self, path: str | os.PathLike[str]) -> ReloadReport: ...


async def reload_on_signal(
    pipeline: _ReloadsFromFile,
    path: str | os.PathLike[str],
    *,
    signum: int = signal.SIGHUP,
    on_report: Callable[[ReloadReport], None] | None = None,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> NoReturn:
    """Reload ``path`` into ``pipeline`` each time the process receives ``signum``.

    Run it with ``await nursery.start(reload_on_signal, pipeline, path)`` (from the main
    thread: Trio receives signals there). Each reload is logged: applied changes at info,
    refusals and invalid files at warning, the old configuration staying in force.

    Args:
        pipeline: what to reload (a :class:`~trio_orchestrator.Gateway`).
        path: the configuration file, read again at each signal.
        signum: the signal to listen for.
        on_report: also called with each :class:`ReloadReport`.
        task_status: started once the signal handler is installed.
    """
    with trio.open_signal_receiver(signum) as signals:
        task_status.started()
        async for _ in signals:
            report = await pipeline.reload_from_file(path)
            level = logging.INFO if report.ok else logging.WARNING
            logger.log(level, "reload of %s on signal %d:\n%s", os.fspath(path), signum, report)
            if on_report is not None:
                on_report(report)
    raise AssertionError("a signal receiver never ends")  # pragma: no cover
