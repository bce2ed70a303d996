"""A real ``redis-server`` for tests, on a free loopback port, started and stopped by a fixture.

Use it from a test module with ``from redis_fixture import RedisServer, redis_server`` (the
fixture is then found by name). Tests are skipped, saying why, when ``redis-server`` is not
installed (Debian: ``apt-get install redis-server``; ``.ci/run`` installs it in CI).
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

__all__ = ["RedisServer", "redis_server"]

_START_TIMEOUT = 10.0
_PORT_TRIES = 5


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _pid_answering(port: int) -> int | None:
    """The process id of the Redis server answering on ``port`` (None: none answers). Under
    pytest-xdist another worker's server may hold a port this one was given."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as connection:
            connection.sendall(b"INFO server\r\n")
            answer = b""
            while b"process_id:" not in answer or not answer.split(b"process_id:")[1].count(
                b"\r\n"
            ):
                chunk = connection.recv(4096)
                if not chunk:
                    return None
                answer += chunk
    except OSError:
        return None
    return int(answer.split(b"process_id:")[1].split(b"\r\n")[0])


class RedisServer:
    """One ``redis-server`` process without persistence; it can be stopped and started again
    on the same port (to test losing Redis and getting it back).

    Args:
        executable: the path of ``redis-server``.
        directory: its working directory.
    """

    def __init__(self, executable: str, directory: Path) -> None:
        self.executable = executable
        self.directory = directory
        self.port = _free_port()
        self._process: subprocess.Popen[bytes] | None = None
        self._started_once = False

    @property
    def url(self) -> str:
        """The ``redis://`` URL to reach it."""
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def running(self) -> bool:
        """True while the process runs."""
        return self._process is not None and self._process.poll() is None

    def start(self) -> None:
        """Start the server and wait until it answers (itself, not another test's server on
        the same port: then, on a first start, on a new port).

        Raises:
            RuntimeError: it did not answer within 10 s.
        """
        for _ in range(_PORT_TRIES):
            if self._start():
                return
            self.port = _free_port()  # another server holds it: only before any use
        raise RuntimeError(f"redis-server did not start on port {self.port}")

    def _start(self) -> bool:
        """Start the server; True once it answers, False if the port is taken."""
        self._process = subprocess.Popen(
            [
                self.executable,
                *("--port", str(self.port), "--bind", "127.0.0.1"),
                *("--save", "", "--appendonly", "no"),
                *("--dir", str(self.directory)),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        give_up = time.monotonic() + _START_TIMEOUT
        while _pid_answering(self.port) != self._process.pid:
            if self._process.poll() is not None and not self._started_once:
                self._process = None
                return False  # the port was taken (bind failed)
            if self._process.poll() is not None or time.monotonic() > give_up:
                self.stop()
                raise RuntimeError(f"redis-server did not start on port {self.port}")
            time.sleep(0.01)
        self._started_once = True
        return True

    def pause(self) -> None:
        """Freeze the server (SIGSTOP): connections stay open but nothing is answered."""
        assert self._process is not None
        self._process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        """Let a paused server run again (SIGCONT)."""
        assert self._process is not None
        self._process.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        """Stop the server (its data is lost: nothing is persisted)."""
        if self._process is None:
            return
        self._process.send_signal(signal.SIGCONT)  # a paused server must be able to die
        self._process.kill()
        self._process.wait(timeout=10)
        self._process = None


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    """A running ``redis-server`` for one test, stopped afterwards."""
    executable = shutil.which("redis-server")
    if executable is None:
        pytest.skip(
            "redis-server is not installed (Debian: apt-get install redis-server; "
            ".ci/run installs it)"
        )
    with tempfile.TemporaryDirectory(prefix="redis-test-") as directory:
        server = RedisServer(executable, Path(directory))
        server.start()
        try:
            yield server
        finally:
            server.stop()
