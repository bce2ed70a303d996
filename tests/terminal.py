"""Run ``trio-orchestrator`` in a pseudo-terminal, as a person at a keyboard would, and a
``serve`` process beside it: the test kit of ``test_cli_init.py`` and ``test_cli_chat.py``.

The child gets the terminal as its controlling terminal, so a Ctrl-C typed into it (``\\x03``)
is a real SIGINT from the terminal driver, and Ctrl-D (``\\x04``) at the start of a line is a
real end of input.
"""

from __future__ import annotations

import fcntl
import os
import re
import subprocess
import sys
import termios
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import attrs
import trio

import trio_orchestrator

PROMPTLY = 20  # seconds: a hang guard for what a process shows, never asserted on
REPO = Path(trio_orchestrator.__file__).resolve().parents[1]
COMMAND = [sys.executable, "-m", "trio_orchestrator"]
LISTENING = re.compile(rb"serving on (http://[0-9.]+:[0-9]+)")


def child_env(**extra: str) -> dict[str, str]:
    """The environment of a child: this one, the package importable, ``extra`` added."""
    return {**os.environ, "PYTHONPATH": str(REPO), "COLUMNS": "120", **extra}


def _take_terminal() -> None:
    # In the child, before exec: a new session whose controlling terminal is the pty on fd 0.
    os.setsid()
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


@attrs.define
class Terminal:
    """A process on the slave side of a pty; the test types and reads on the master side."""

    process: trio.Process
    master: trio.lowlevel.FdStream
    output: bytearray = attrs.field(factory=bytearray)
    seen: int = 0  # output before this offset has been matched already

    async def expect(self, pattern: str) -> str:
        """Wait until ``pattern`` (a regex) appears after what was matched before; return
        what matched."""
        regex = re.compile(pattern.encode())
        with trio.move_on_after(PROMPTLY):
            while (match := regex.search(self.output, self.seen)) is None:
                chunk = await self._receive()
                assert chunk, f"ended before {pattern!r}:\n{self.text()}"
                self.output.extend(chunk)
            self.seen = match.end()
            return match.group(0).decode(errors="replace")
        raise AssertionError(f"no {pattern!r} in {PROMPTLY} s:\n{self.text()}")

    async def send(self, text: str) -> None:
        """Type ``text`` (``\\r`` is Enter, ``\\x03`` Ctrl-C, ``\\x04`` Ctrl-D)."""
        await self.master.send_all(text.encode())

    async def line(self, text: str) -> None:
        """Type ``text`` and Enter."""
        await self.send(text + "\r")

    async def finish(self) -> int:
        """Read everything up to the end; return the exit status."""
        with trio.fail_after(PROMPTLY):
            while chunk := await self._receive():
                self.output.extend(chunk)
            return await self.process.wait()

    def text(self) -> str:
        """Everything the process wrote so far."""
        return self.output.decode(errors="replace").replace("\r\n", "\n")

    async def _receive(self) -> bytes:
        try:
            return await self.master.receive_some(4096)
        except (OSError, trio.BrokenResourceError):  # EIO: the child exited, the pty closed
            return b""


@asynccontextmanager
async def open_terminal(
    *args: str, cwd: Path | None = None, env: dict[str, str] | None = None
) -> AsyncIterator[Terminal]:
    """Run ``python -m trio_orchestrator ARGS`` in a pty for the block (killed if still up)."""
    master, slave = os.openpty()
    try:
        process = await trio.lowlevel.open_process(
            [*COMMAND, *args],
            stdin=slave,
            stdout=slave,
            stderr=slave,
            cwd=cwd,
            env=env or child_env(),
            preexec_fn=_take_terminal,
        )
    finally:
        os.close(slave)
    terminal = Terminal(process, trio.lowlevel.FdStream(master))
    try:
        yield terminal
    finally:
        if process.returncode is None:
            process.kill()
        await process.wait()
        await terminal.master.aclose()


@attrs.define
class Served:
    """A ``serve`` process and the URL it printed."""

    url: str
    process: trio.Process


async def _drain(stream: trio.abc.ReceiveStream, output: bytearray) -> None:
    while chunk := await stream.receive_some():
        output.extend(chunk)


@asynccontextmanager
async def serve_process(config: Path, env: dict[str, str] | None = None) -> AsyncIterator[Served]:
    """Run ``trio-orchestrator serve --config FILE --port 0`` for the block."""
    command = [*COMMAND, "serve", "--config", str(config), "--port", "0"]
    process = await trio.lowlevel.open_process(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env or child_env()
    )
    assert process.stdout is not None
    output = bytearray()
    try:
        with trio.fail_after(PROMPTLY):
            while (match := LISTENING.search(output)) is None:
                chunk = await process.stdout.receive_some()
                assert chunk, f"serve exited before listening: {output.decode()}"
                output.extend(chunk)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_drain, process.stdout, output)
            yield Served(match.group(1).decode(), process)
            process.terminate()
    finally:
        if process.returncode is None:
            process.kill()
        await process.wait()
