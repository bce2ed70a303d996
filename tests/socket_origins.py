"""Every socket the test process makes remembers where it was made, and says so in its repr.

A socket left unclosed warns (``ResourceWarning: unclosed <socket.socket …>``) only when the
garbage collector finalizes it; one caught in a reference cycle lives until a full
collection, which may come minutes later in another test (a served test's idle trim runs one,
service/memory.py), and the warning then names neither the test nor the code that made it. With
this, the socket's repr ends with ``made at`` and the frames that made it, and, when a Trio
task made it (``open_tcp_stream`` connects in tasks of its own), the await chains of the tasks
that started that task (so the test). It costs a short stack walk per socket.
"""

from __future__ import annotations

import socket
import sys
from types import FrameType
from typing import Any

import trio

_FRAMES = 8
_TASKS = 3


def _where(frame: FrameType) -> str:
    path = frame.f_code.co_filename.rsplit("site-packages/", 1)[-1]
    return f"{path}:{frame.f_lineno} {frame.f_code.co_name}"


def _stack(frame: FrameType | None) -> list[str]:
    """The innermost frames from ``frame`` outwards, the socket module's own left out."""
    frames: list[str] = []
    while frame is not None and len(frames) < _FRAMES:
        if not frame.f_code.co_filename.endswith("/socket.py"):
            frames.append(_where(frame))
        frame = frame.f_back
    return frames


def _awaiting(task: trio.lowlevel.Task) -> list[str]:
    """Where ``task`` waits: its await chain, innermost first (the last few frames)."""
    frames: list[FrameType] = []
    awaited: Any = task.coro
    while awaited is not None:
        frame = getattr(awaited, "cr_frame", None) or getattr(awaited, "ag_frame", None)
        if frame is None:
            frame = getattr(awaited, "gi_frame", None)
        if frame is not None:
            frames.append(frame)
        awaited = (
            getattr(awaited, "cr_await", None)
            or getattr(awaited, "ag_await", None)
            or getattr(awaited, "gi_yieldfrom", None)
        )
    return [_where(frame) for frame in reversed(frames[-_FRAMES:])]


def _tasks() -> list[str]:
    """The await chains of the tasks that started the current Trio task, nearest first."""
    try:
        task: trio.lowlevel.Task | None = trio.lowlevel.current_task()
    except RuntimeError:  # not in Trio
        return []
    chains: list[str] = []
    while task is not None and len(chains) < _TASKS:
        nursery = task.parent_nursery
        task = None if nursery is None else nursery.parent_task
        if task is not None:
            chains.append(f"[task {task.name}: {' < '.join(_awaiting(task))}]")
    return chains


class _TracedSocket(socket.socket):
    """``socket.socket``, and where it was made."""

    __slots__ = ("_made_at",)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._made_at = " < ".join(_stack(sys._getframe(1)) + _tasks())

    def __repr__(self) -> str:
        made_at = getattr(self, "_made_at", "?")
        return f"{super().__repr__()} made at {made_at}"


def trace_socket_origins() -> None:
    """Make ``socket.socket`` (what Trio, httpx, urllib3 and ``accept`` call) the traced kind."""
    socket.socket = _TracedSocket  # type: ignore[misc]
