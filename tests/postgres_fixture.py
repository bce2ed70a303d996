"""A real PostgreSQL server for tests, on a free loopback port, started and stopped by a fixture.

Use it from a test module with ``from postgres_fixture import PostgresServer, postgres_server``
(the fixture is then found by name). The server is Debian's ``postgresql`` package
(``initdb`` and ``postgres`` from ``/usr/lib/postgresql/<version>/bin`` or the ``PATH``); it
is started once per test session in a temporary directory, and each test gets a database of
its own. Tests are skipped, saying why, when PostgreSQL or ``psycopg`` is absent (``.ci/run``
installs both).

PostgreSQL refuses to run as root; under root (as in CI) the cluster is made and run as the
package's ``postgres`` user.
"""

from __future__ import annotations

import glob
import itertools
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

__all__ = ["PostgresServer", "postgres_cluster", "postgres_server"]

_START_TIMEOUT = 30.0
_PORT_ATTEMPTS = 5
_SKIP = "PostgreSQL is not installed (Debian: apt-get install postgresql; .ci/run installs it)"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _binaries() -> Path | None:
    """The directory holding ``initdb`` and ``postgres``, newest version first."""
    found = shutil.which("initdb")
    if found is not None and Path(found).resolve().with_name("postgres").exists():
        return Path(found).resolve().parent
    for directory in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True):
        if Path(directory, "initdb").exists() and Path(directory, "postgres").exists():
            return Path(directory)
    return None


class PostgresServer:
    """One PostgreSQL cluster in ``directory``, listening on 127.0.0.1 only, no fsync.

    Args:
        binaries: the directory of ``initdb`` and ``postgres``.
        directory: where the cluster's files go (removed by the caller).
    """

    def __init__(self, binaries: Path, directory: Path) -> None:
        self.binaries = binaries
        self.directory = directory
        self.port = _free_port()
        self._process: subprocess.Popen[bytes] | None = None
        self._databases = itertools.count()
        # Root may not run PostgreSQL: the package's own user does.
        self._user: dict[str, Any] = {"user": "postgres"} if os.geteuid() == 0 else {}
        self.role = "postgres" if self._user else os.environ.get("USER", "postgres")

    def dsn(self, database: str = "postgres") -> str:
        """A libpq connection string for ``database``."""
        return f"postgresql://{self.role}@127.0.0.1:{self.port}/{database}"

    def start(self) -> None:
        """Make the cluster (unless it is made) and start the server; wait until it takes
        connections. After :meth:`stop` it starts the same cluster, its databases kept.

        Raises:
            RuntimeError: it did not start within 30 s.
        """
        data = self.directory / "data"
        if self._user:
            shutil.chown(self.directory, "postgres")
        if not (data / "PG_VERSION").exists():  # started again after stop(): same cluster
            subprocess.run(
                [self.binaries / "initdb", "-D", data, "-U", self.role, "-A", "trust", "--no-sync"],
                check=True,
                capture_output=True,
                **self._user,
            )
        for _attempt in range(_PORT_ATTEMPTS):
            if self._launch(data):
                return
            # Under pytest-xdist another worker's server may have taken the port this one was
            # given between the probe and the bind: this server exits, so take another port.
            self.port = _free_port()
        raise RuntimeError(f"postgres did not start on a free port ({_PORT_ATTEMPTS} tried)")

    def _launch(self, data: Path) -> bool:
        """Start ``postgres`` on :attr:`port` and wait until this server (not another
        worker's on the same port) takes connections.

        Returns:
            Whether it did; ``False`` when it exited (its port was taken).

        Raises:
            RuntimeError: it neither answered nor exited within 30 s.
        """
        self._process = subprocess.Popen(
            [
                self.binaries / "postgres",
                *("-D", data, "-p", str(self.port), "-h", "127.0.0.1"),
                *("-k", self.directory),  # its Unix socket, not /var/run/postgresql
                *("-c", "fsync=off", "-c", "full_page_writes=off"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            **self._user,
        )
        give_up = time.monotonic() + _START_TIMEOUT
        while not self._ready(data):
            if self._process.poll() is not None:
                self._process = None
                return False
            if time.monotonic() > give_up:
                self.stop()
                raise RuntimeError(f"postgres did not start on port {self.port}")
            time.sleep(0.05)
        return True

    def _ready(self, data: Path) -> bool:
        """Whether the server on :attr:`port` takes connections and is this one: its data
        directory is ``data`` (another worker's may answer on a port both were given)."""
        import psycopg

        try:
            with psycopg.connect(self.dsn(), connect_timeout=1) as connection:
                row = connection.execute("SHOW data_directory").fetchone()
        except psycopg.OperationalError:
            return False
        return row is not None and Path(row[0]).resolve() == data.resolve()

    def new_database(self) -> str:
        """Create an empty database and return its connection string."""
        import psycopg

        name = f"test_{next(self._databases)}"
        with psycopg.connect(self.dsn(), autocommit=True) as connection:
            connection.execute(f"CREATE DATABASE {name}")
        return self.dsn(name)

    def stop(self) -> None:
        """Stop the server (fast shutdown)."""
        if self._process is None:
            return
        # SIGINT is PostgreSQL's fast shutdown; SIGTERM ("smart") waits for clients to leave.
        self._process.send_signal(signal.SIGINT)
        try:
            self._process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait(timeout=10)
        self._process = None


@pytest.fixture(scope="session")
def postgres_cluster() -> Iterator[PostgresServer]:
    """One running PostgreSQL server for the whole session, stopped at its end."""
    pytest.importorskip("psycopg", reason="psycopg is not installed (the `postgres` extra)")
    binaries = _binaries()
    if binaries is None:
        pytest.skip(_SKIP)
    with tempfile.TemporaryDirectory(prefix="postgres-test-") as directory:
        server = PostgresServer(binaries, Path(directory))
        server.start()
        try:
            yield server
        finally:
            server.stop()


@pytest.fixture
def postgres_server(postgres_cluster: PostgresServer) -> str:
    """The connection string of a fresh, empty database for one test."""
    return postgres_cluster.new_database()
