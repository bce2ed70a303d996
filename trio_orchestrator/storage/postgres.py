"""The server store: PostgreSQL through psycopg 3, for several processes and hosts.

psycopg's asynchronous API runs on asyncio only, so this store uses its synchronous API
from worker threads (``trio.to_thread.run_sync``), as :class:`~.sqlite.SqliteStore` does:
one connection, one call at a time (a ``CapacityLimiter(1)``), so the Trio thread never
waits on the network. The connection is in autocommit mode; a write of several statements
is one explicit transaction.

The schema is the shared :data:`~.schema.SCHEMA` in PostgreSQL's dialect, through the same
versions as SQLite, recorded in ``schema_version``. Migrations run under an advisory lock,
so that processes starting together on one database upgrade it once. A connection that is
lost (the server restarted, the network dropped) or cannot be made raises
:class:`~.base.StorageUnavailable`; the next call connects afresh, so the store recovers
once the server is back. The connection string is a secret (it may hold a password): it
is never logged nor put in an error.

psycopg is imported on first use only, once: the gateway without ``backend = "postgres"``
does not need it installed (``pip install trio-orchestrator[postgres]``).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from types import ModuleType
from typing import Any, TypeVar

import attrs
import trio

from .base import (
    GROUPS,
    ExperimentRecord,
    GroupBy,
    KeyRecord,
    RequestFilter,
    RequestRecord,
    SpendRecord,
    SpendRow,
    StorageUnavailable,
)
from .schema import (
    GROUP_COLUMN,
    KEY_COLUMNS,
    REQUEST_COLUMNS,
    SELECT_EXPERIMENTS,
    SELECT_VARIANTS,
    experiment_rows,
    experiments_of,
    key_of,
    key_row,
    migrations,
    prune_statements,
    request_of,
    request_query,
    request_row,
    spend_rows,
    statements,
    upgrade,
    upsert_status,
    upsert_sums,
)

__all__ = ["POSTGRES_MIGRATIONS", "PostgresStore", "migrate_postgres"]

T = TypeVar("T")

POSTGRES_MIGRATIONS: tuple[str, ...] = migrations("postgres")
"""The schema in PostgreSQL's dialect, one script per version (as SQLite's)."""

_MIGRATION_LOCK = 0x7472696F  # "trio": the advisory lock migrations hold
_CONNECT_TIMEOUT = 5  # seconds: a server that is down is told apart quickly
_MARKS = ", ".join(["%s"] * 16)
_ADD_SPEND = """
INSERT INTO spend VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
ON CONFLICT (day, key_id, model, provider) DO UPDATE SET
    requests = spend.requests + excluded.requests,
    prompt_tokens = spend.prompt_tokens + excluded.prompt_tokens,
    cached_tokens = spend.cached_tokens + excluded.cached_tokens,
    completion_tokens = spend.completion_tokens + excluded.completion_tokens,
    reasoning_tokens = spend.reasoning_tokens + excluded.reasoning_tokens,
    cost = spend.cost + excluded.cost
"""
_REPLACE_KEY = (
    f"INSERT INTO keys ({KEY_COLUMNS}) VALUES ({_MARKS}) ON CONFLICT (id) DO UPDATE SET "
    + ", ".join(f"{c} = excluded.{c}" for c in KEY_COLUMNS.split(", ")[1:])
)


@functools.cache
def _psycopg() -> ModuleType:
    """psycopg, imported once, on first use."""
    try:
        import psycopg
    except ImportError as exc:  # pragma: no cover - the extra is installed in tests
        raise StorageUnavailable(
            'storage backend "postgres" needs psycopg: pip install "trio-orchestrator[postgres]"'
        ) from exc
    return psycopg


def migrate_postgres(connection: Any, upto: int | None = None) -> int:
    """Apply the migrations the database lacks, each in its own transaction, holding an
    advisory lock so that concurrent starters apply each once.

    Args:
        connection: an open psycopg connection in autocommit mode.
        upto: stop at this version (tests build old databases so); default: the latest.

    Returns:
        The schema version now.
    """
    connection.execute("SELECT pg_advisory_lock(%s)", (_MIGRATION_LOCK,))
    try:
        connection.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
        row = connection.execute("SELECT max(version) FROM schema_version").fetchone()

        def apply(number: int, script: str) -> None:
            with connection.transaction():  # a script half applied is rolled back
                for statement in statements(script):
                    connection.execute(statement)
                connection.execute("INSERT INTO schema_version VALUES (%s)", (number,))

        return upgrade(int(row[0] or 0), POSTGRES_MIGRATIONS, apply, upto)
    finally:
        connection.execute("SELECT pg_advisory_unlock(%s)", (_MIGRATION_LOCK,))


_REQUEST_MARKS = ", ".join(["%s"] * (REQUEST_COLUMNS.count(",") + 1))


@attrs.define(eq=False)
class PostgresStore:
    """A :class:`~.base.Store` in one PostgreSQL database.

    Args:
        dsn: a libpq connection string (``postgresql://user:password@host:5432/db``);
            kept out of reprs, logs and errors.
    """

    dsn: str = attrs.field(repr=False)
    _connection: Any = attrs.field(default=None, init=False)
    _limiter: trio.CapacityLimiter = attrs.field(
        factory=lambda: trio.CapacityLimiter(1), init=False
    )

    async def _run(self, call: Callable[[Any], T]) -> T:
        psycopg = _psycopg()

        def in_thread() -> T:
            try:
                return call(self._connect())
            except psycopg.Error as exc:
                if isinstance(exc, psycopg.IntegrityError):
                    raise
                self._drop()  # connect afresh next time: the server may be back by then
                raise StorageUnavailable(f"storage (postgres) failed: {exc}") from exc

        return await trio.to_thread.run_sync(in_thread, limiter=self._limiter)

    def _connect(self) -> Any:
        if self._connection is None:
            psycopg = _psycopg()
            try:
                connection = psycopg.connect(
                    self.dsn, autocommit=True, connect_timeout=_CONNECT_TIMEOUT
                )
            except psycopg.ProgrammingError:
                # libpq quotes the part of a malformed string it stumbled on, which may be
                # the password: neither its message nor the exception chain is kept.
                raise StorageUnavailable(
                    "storage (postgres): `dsn` is not a valid connection string "
                    "(not shown: it may hold a password)"
                ) from None
            try:
                migrate_postgres(connection)
            except BaseException:
                connection.close()
                raise
            self._connection = connection
        return self._connection

    def _drop(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    async def open(self) -> None:
        """Connect now (and bring the schema up to date).

        Raises:
            StorageUnavailable: the server cannot be reached (tried again on every call).
        """
        await self._run(lambda _connection: None)

    async def create_key(self, record: KeyRecord) -> None:
        """Add a new key."""
        row = key_row(record)
        await self._run(
            lambda c: c.execute(f"INSERT INTO keys ({KEY_COLUMNS}) VALUES ({_MARKS})", row)
        )

    async def update_key(self, record: KeyRecord) -> None:
        """Replace the stored key of the same id."""
        row = key_row(record)
        await self._run(lambda c: c.execute(_REPLACE_KEY, row))

    async def get_key(self, key_id: str) -> KeyRecord | None:
        """The key with this id, or None."""
        query = f"SELECT {KEY_COLUMNS} FROM keys WHERE id = %s"

        def read(connection: Any) -> KeyRecord | None:
            row = connection.execute(query, (key_id,)).fetchone()
            return None if row is None else key_of(row)

        return await self._run(read)

    async def list_keys(
        self, *, after: str | None = None, limit: int | None = None, revoked: bool = True
    ) -> list[KeyRecord]:
        """Keys in id order, after the id ``after``, at most ``limit``."""
        query = f'SELECT {KEY_COLUMNS} FROM keys WHERE id COLLATE "C" > %s'
        if not revoked:
            query += " AND revoked_at IS NULL"
        query += ' ORDER BY id COLLATE "C" LIMIT %s'  # byte order, as SQLite's; NULL: all
        arguments = (after or "", limit)
        return await self._run(
            lambda c: [key_of(row) for row in c.execute(query, arguments).fetchall()]
        )

    async def add_spend(self, records: Sequence[SpendRecord]) -> None:
        """Add these records to the daily totals, in one transaction."""
        rows = spend_rows(records)

        def write(connection: Any) -> None:
            with connection.transaction(), connection.cursor() as cursor:
                cursor.executemany(_ADD_SPEND, rows)

        await self._run(write)

    async def spend(
        self,
        group_by: GroupBy,
        *,
        since: str | None = None,
        until: str | None = None,
        key_id: str | None = None,
    ) -> list[SpendRow]:
        """Spend summed per group over the days ``since``..``until`` (inclusive)."""
        if group_by not in GROUPS:
            raise ValueError(f"group_by must be one of {GROUPS}, got {group_by!r}")
        column = GROUP_COLUMN[group_by]
        where, arguments = ["true"], []
        for clause, value in (("day >= %s", since), ("day <= %s", until), ("key_id = %s", key_id)):
            if value is not None:
                where.append(clause)
                arguments.append(value)
        # sum() of a bigint is a numeric in PostgreSQL: cast back, as SQLite's sums are ints.
        sums = ", ".join(
            f"sum({c})::bigint"
            for c in ("requests", "prompt_tokens", "cached_tokens", "completion_tokens")
        )
        query = (
            f"SELECT {column}, {sums}, sum(reasoning_tokens)::bigint, sum(cost) FROM spend "
            f'WHERE {" AND ".join(where)} GROUP BY {column} ORDER BY {column} COLLATE "C"'
        )
        return await self._run(
            lambda c: [SpendRow(*row) for row in c.execute(query, arguments).fetchall()]
        )

    async def add_requests(self, records: Sequence[RequestRecord]) -> None:
        """Append these request log records, in one transaction."""
        rows = [request_row(record) for record in records]
        insert = f"INSERT INTO requests ({REQUEST_COLUMNS}) VALUES ({_REQUEST_MARKS})"

        def write(connection: Any) -> None:
            with connection.transaction(), connection.cursor() as cursor:
                cursor.executemany(insert, rows)

        await self._run(write)

    async def requests(self, where: RequestFilter, limit: int) -> list[RequestRecord]:
        """Logged requests matching ``where``, newest first, at most ``limit``."""
        query, arguments = request_query(where, limit, "%s")

        def read(connection: Any) -> list[RequestRecord]:
            return [request_of(row) for row in connection.execute(query, arguments).fetchall()]

        return await self._run(read)

    async def prune_requests(self, *, before: float | None, keep: int | None) -> int:
        """Delete logged requests older than ``before`` and past the newest ``keep``."""
        deletes = prune_statements(before, keep, "%s")

        def prune(connection: Any) -> int:
            deleted = 0
            with connection.transaction():
                for statement, arguments in deletes:
                    deleted += connection.execute(statement, arguments).rowcount
            return deleted

        return await self._run(prune)

    async def add_experiments(self, records: Sequence[ExperimentRecord]) -> None:
        """Set the experiments' statuses and add their variants' sums, in one transaction."""
        statuses, sums = experiment_rows(records)

        def write(connection: Any) -> None:
            with connection.transaction(), connection.cursor() as cursor:
                if statuses:
                    cursor.executemany(upsert_status("%s"), statuses)
                if sums:
                    cursor.executemany(upsert_sums("%s"), sums)

        await self._run(write)

    async def experiments(self) -> list[ExperimentRecord]:
        """Every stored experiment with its variants' totals."""

        def read(connection: Any) -> list[ExperimentRecord]:
            statuses = connection.execute(SELECT_EXPERIMENTS).fetchall()
            return experiments_of(statuses, connection.execute(SELECT_VARIANTS).fetchall())

        return await self._run(read)

    async def aclose(self) -> None:
        """Close the connection (in its thread, after any call in flight)."""
        if self._connection is not None:
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(self._drop, limiter=self._limiter)
