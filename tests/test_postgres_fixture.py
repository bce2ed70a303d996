"""The PostgreSQL fixture the storage tests stand on: a real server, a database per test."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
from postgres_fixture import PostgresServer, postgres_cluster, postgres_server

__all__ = ["postgres_cluster", "postgres_server"]

psycopg = pytest.importorskip("psycopg", reason="psycopg is not installed (the `postgres` extra)")


def test_a_test_gets_a_working_database_of_its_own(postgres_server: str) -> None:
    """The database takes a table and gives back what was written to it."""
    with psycopg.connect(postgres_server) as connection:
        connection.execute("CREATE TABLE seen (n integer)")
        connection.execute("INSERT INTO seen VALUES (7)")
        assert connection.execute("SELECT n FROM seen").fetchall() == [(7,)]


def test_databases_are_not_shared_between_tests(
    postgres_cluster: PostgresServer, postgres_server: str
) -> None:
    """A second test's database is another, empty one, on the same loopback server."""
    assert f"127.0.0.1:{postgres_cluster.port}" in postgres_server
    with psycopg.connect(postgres_server) as connection:
        tables = connection.execute(
            "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'"
        ).fetchone()
        assert tables == (0,)


def test_a_server_given_a_port_another_holds_moves_to_its_own(
    postgres_cluster: PostgresServer,
) -> None:
    """Given the port another worker's server already holds, a server starts on a new port
    and answers from its own data directory, not the other's (the pytest-xdist race)."""
    # Not pytest's tmp_path: PostgreSQL runs as its own user under root, and pytest's base
    # directory is private to root.
    with tempfile.TemporaryDirectory(prefix="postgres-test-") as name:
        directory = Path(name)
        second = PostgresServer(postgres_cluster.binaries, directory)
        second.port = postgres_cluster.port
        second.start()
        try:
            assert second.port != postgres_cluster.port
            with psycopg.connect(second.dsn()) as connection:
                row = connection.execute("SHOW data_directory").fetchone()
            assert row is not None
            assert Path(row[0]).resolve() == (directory / "data").resolve()
        finally:
            second.stop()
