"""The PostgreSQL fixture the storage tests stand on: a real server, a database per test."""

from __future__ import annotations

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
