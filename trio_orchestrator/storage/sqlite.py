"""The embedded store: SQLite through the standard library's ``sqlite3``.

One connection, opened on first use and used only from worker threads
(``trio.to_thread.run_sync``), one call at a time (a ``CapacityLimiter(1)``): a sqlite3
connection must never be used by two threads at once, and the Trio thread must never wait
on a disk. A file database runs in WAL mode (readers do not block the writer).

The schema is versioned: :data:`MIGRATIONS` is an ordered list of scripts (the shared
:data:`~.schema.SCHEMA` in SQLite's dialect); a database
records the number it has applied in ``schema_version`` and an older one is brought up to
date when opened. A store that cannot be opened (or fails later) raises
:class:`~.base.StorageUnavailable` and tries again on its next call, so it recovers once
the disk does.
"""

from __future__ import annotations

import functools
import sqlite3
from collections.abc import Callable, Sequence
from typing import TypeVar

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

__all__ = ["MIGRATIONS", "SqliteStore", "migrate"]


T = TypeVar("T")

MIGRATIONS: tuple[str, ...] = migrations("sqlite")
"""The schema, one script per version (version ``n`` is ``MIGRATIONS[n - 1]``)."""

_ADD_SPEND = """
INSERT INTO spend VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (day, key_id, model, provider) DO UPDATE SET
    requests = requests + excluded.requests,
    prompt_tokens = prompt_tokens + excluded.prompt_tokens,
    cached_tokens = cached_tokens + excluded.cached_tokens,
    completion_tokens = completion_tokens + excluded.completion_tokens,
    reasoning_tokens = reasoning_tokens + excluded.reasoning_tokens,
    cost = cost + excluded.cost
"""


def migrate(connection: sqlite3.Connection, upto: int | None = None) -> int:
    """Apply the migrations ``connection``'s database lacks, each in its own transaction.

    Args:
        connection: an open connection.
        upto: stop at this version (tests build old databases so); default: the latest.

    Returns:
        The schema version now.
    """
    connection.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
    row = connection.execute("SELECT max(version) FROM schema_version").fetchone()

    def apply(number: int, script: str) -> None:
        with connection:  # one transaction: a script half applied is rolled back
            connection.execute("BEGIN")
            for statement in statements(script):
                connection.execute(statement)
            connection.execute("INSERT INTO schema_version VALUES (?)", (number,))

    return upgrade(int(row[0] or 0), MIGRATIONS, apply, upto)


_REQUEST_WIDTH = REQUEST_COLUMNS.count(",") + 1
_REQUEST_MARKS = "(" + ", ".join(["?"] * _REQUEST_WIDTH) + ")"
# The most rows per INSERT: a power of two within SQLite's limit on a statement's
# parameters (32766 since 3.32, 999 before).
_MOST_ROWS = 512 if sqlite3.sqlite_version_info >= (3, 32) else 32


@functools.cache
def _insert_of(rows: int) -> str:
    """The ``INSERT`` of ``rows`` request log rows."""
    return f"INSERT INTO requests ({REQUEST_COLUMNS}) VALUES " + ", ".join([_REQUEST_MARKS] * rows)


def _request_inserts(rows: Sequence[tuple[object, ...]]) -> list[tuple[str, list[object]]]:
    """The multi-row ``INSERT`` statements (and their arguments) that append ``rows``.

    Why not ``executemany``: it steps once per row, and the sqlite3 module releases and
    retakes the GIL around every step; beside a busy event loop each retake may wait for
    the loop's thread to let go of it, a thread switch per request. Here a batch is a few
    statements of a power of two rows each (500 rows: 256 + 128 + 64 + 32 + 16 + 4), so
    there are at most ten statement texts and the connection's statement cache keeps them
    all prepared.
    """
    inserts = []
    start, size = 0, _MOST_ROWS
    while start < len(rows):
        while size > len(rows) - start:
            size //= 2
        chunk = rows[start : start + size]
        inserts.append((_insert_of(size), [value for row in chunk for value in row]))
        start += size
    return inserts


@attrs.define(eq=False)
class SqliteStore:
    """A :class:`~.base.Store` in one SQLite database.

    Args:
        path: the database file (created if missing); None keeps it in memory.
    """

    path: str | None = None
    _connection: sqlite3.Connection | None = attrs.field(default=None, init=False)
    _limiter: trio.CapacityLimiter = attrs.field(
        factory=lambda: trio.CapacityLimiter(1), init=False
    )

    async def _run(self, call: Callable[[sqlite3.Connection], T]) -> T:
        def in_thread() -> T:
            try:
                return call(self._connect())
            except sqlite3.Error as exc:
                if isinstance(exc, sqlite3.IntegrityError):
                    raise
                self._drop()  # open afresh next time: the file may be back by then
                where = self.path or "memory"
                raise StorageUnavailable(f"storage ({where}) failed: {exc}") from exc

        return await trio.to_thread.run_sync(in_thread, limiter=self._limiter)

    def _connect(self) -> sqlite3.Connection:
        if self._connection is None:
            connection = sqlite3.connect(
                self.path or ":memory:", check_same_thread=False, isolation_level=None
            )
            try:
                if self.path is not None:
                    connection.execute("PRAGMA journal_mode=WAL")
                    connection.execute("PRAGMA synchronous=NORMAL")
                connection.execute("PRAGMA busy_timeout=5000")
                migrate(connection)
            except BaseException:
                connection.close()
                raise
            self._connection = connection
        return self._connection

    def _drop(self) -> None:
        if self._connection is not None and self.path is not None:
            # An in-memory database is the data: never dropped.
            self._connection.close()
            self._connection = None

    async def open(self) -> None:
        """Open the database now (and bring its schema up to date).

        Raises:
            StorageUnavailable: it cannot be opened (it is tried again on every call).
        """
        await self._run(lambda _connection: None)

    async def create_key(self, record: KeyRecord) -> None:
        """Add a new key."""

        def insert(connection: sqlite3.Connection) -> None:
            connection.execute(
                f"INSERT INTO keys ({KEY_COLUMNS}) VALUES ({_marks(16)})", key_row(record)
            )

        await self._run(insert)

    async def update_key(self, record: KeyRecord) -> None:
        """Replace the stored key of the same id."""

        def replace(connection: sqlite3.Connection) -> None:
            connection.execute(
                f"REPLACE INTO keys ({KEY_COLUMNS}) VALUES ({_marks(16)})", key_row(record)
            )

        await self._run(replace)

    async def get_key(self, key_id: str) -> KeyRecord | None:
        """The key with this id, or None."""

        def read(connection: sqlite3.Connection) -> KeyRecord | None:
            query = f"SELECT {KEY_COLUMNS} FROM keys WHERE id = ?"
            row = connection.execute(query, (key_id,)).fetchone()
            return None if row is None else key_of(row)

        return await self._run(read)

    async def list_keys(
        self, *, after: str | None = None, limit: int | None = None, revoked: bool = True
    ) -> list[KeyRecord]:
        """Keys in id order, after the id ``after``, at most ``limit``."""
        query = f"SELECT {KEY_COLUMNS} FROM keys WHERE id > ?"
        if not revoked:
            query += " AND revoked_at IS NULL"
        query += " ORDER BY id LIMIT ?"
        arguments = (after or "", -1 if limit is None else limit)

        def read(connection: sqlite3.Connection) -> list[KeyRecord]:
            return [key_of(row) for row in connection.execute(query, arguments)]

        return await self._run(read)

    async def add_spend(self, records: Sequence[SpendRecord]) -> None:
        """Add these records to the daily totals, in one transaction."""
        rows = spend_rows(records)

        def write(connection: sqlite3.Connection) -> None:
            with connection:
                connection.execute("BEGIN")
                connection.executemany(_ADD_SPEND, rows)

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
        where, arguments = ["1"], []
        for clause, value in (("day >= ?", since), ("day <= ?", until), ("key_id = ?", key_id)):
            if value is not None:
                where.append(clause)
                arguments.append(value)
        query = (
            f"SELECT {column}, sum(requests), sum(prompt_tokens), sum(cached_tokens), "
            f"sum(completion_tokens), sum(reasoning_tokens), sum(cost) FROM spend "
            f"WHERE {' AND '.join(where)} GROUP BY {column} ORDER BY {column}"
        )

        def read(connection: sqlite3.Connection) -> list[SpendRow]:
            return [SpendRow(*row) for row in connection.execute(query, arguments)]

        return await self._run(read)

    async def add_requests(self, records: Sequence[RequestRecord]) -> None:
        """Append these request log records, in one transaction."""
        inserts = _request_inserts([request_row(record) for record in records])

        def write(connection: sqlite3.Connection) -> None:
            with connection:
                connection.execute("BEGIN")
                for statement, arguments in inserts:
                    connection.execute(statement, arguments)

        await self._run(write)

    async def requests(self, where: RequestFilter, limit: int) -> list[RequestRecord]:
        """Logged requests matching ``where``, newest first, at most ``limit``."""
        query, arguments = request_query(where, limit, "?")

        def read(connection: sqlite3.Connection) -> list[RequestRecord]:
            return [request_of(row) for row in connection.execute(query, arguments).fetchall()]

        return await self._run(read)

    async def prune_requests(self, *, before: float | None, keep: int | None) -> int:
        """Delete logged requests older than ``before`` and past the newest ``keep``."""
        deletes = prune_statements(before, keep, "?")

        def prune(connection: sqlite3.Connection) -> int:
            deleted = 0
            with connection:
                connection.execute("BEGIN")
                for statement, arguments in deletes:
                    deleted += connection.execute(statement, arguments).rowcount
            return deleted

        return await self._run(prune)

    async def add_experiments(self, records: Sequence[ExperimentRecord]) -> None:
        """Set the experiments' statuses and add their variants' sums, in one transaction."""
        statuses, sums = experiment_rows(records)

        def write(connection: sqlite3.Connection) -> None:
            with connection:
                connection.execute("BEGIN")
                connection.executemany(upsert_status("?"), statuses)
                connection.executemany(upsert_sums("?"), sums)

        await self._run(write)

    async def experiments(self) -> list[ExperimentRecord]:
        """Every stored experiment with its variants' totals."""

        def read(connection: sqlite3.Connection) -> list[ExperimentRecord]:
            statuses = connection.execute(SELECT_EXPERIMENTS).fetchall()
            return experiments_of(statuses, connection.execute(SELECT_VARIANTS).fetchall())

        return await self._run(read)

    async def aclose(self) -> None:
        """Close the connection (in its thread, after any call in flight)."""

        def close(_connection: sqlite3.Connection) -> None:
            if self._connection is not None:
                self._connection.close()
                self._connection = None

        if self._connection is not None:
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(close, self._connection, limiter=self._limiter)


def _marks(count: int) -> str:
    return ", ".join("?" * count)
