"""The embedded store: SQLite through the standard library's ``sqlite3``.

One connection, opened on first use and used only from worker threads
(``trio.to_thread.run_sync``), one call at a time (a ``CapacityLimiter(1)``): a sqlite3
connection must never be used by two threads at once, and the Trio thread must never wait
on a disk. A file database runs in WAL mode (readers do not block the writer).

The schema is versioned: :data:`MIGRATIONS` is an ordered list of scripts; a database
records the number it has applied in ``schema_version`` and an older one is brought up to
date when opened. A store that cannot be opened (or fails later) raises
:class:`~.base.StorageUnavailable` and tries again on its next call, so it recovers once
the disk does.
"""

from __future__ import annotations

import json
import logging
import sqlite3
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import attrs
import trio

from .base import GROUPS, GroupBy, KeyRecord, SpendRecord, SpendRow, StorageUnavailable

__all__ = ["MIGRATIONS", "SqliteStore", "migrate"]

logger = logging.getLogger("trio_orchestrator.storage")

T = TypeVar("T")

MIGRATIONS: tuple[str, ...] = (
    # 1: virtual keys.
    """
    CREATE TABLE keys (
        id TEXT PRIMARY KEY,
        digest BLOB NOT NULL UNIQUE,
        hint TEXT NOT NULL,
        label TEXT NOT NULL,
        owner TEXT NOT NULL,
        models TEXT NOT NULL,
        aliases TEXT NOT NULL,
        rpm INTEGER,
        tpm INTEGER,
        budget REAL,
        budget_period TEXT NOT NULL,
        priority TEXT,
        expires_at REAL,
        metadata TEXT NOT NULL,
        created_at REAL NOT NULL,
        revoked_at REAL
    );
    """,
    # 2: spend, summed per UTC day, key, model and provider.
    """
    CREATE TABLE spend (
        day TEXT NOT NULL,
        key_id TEXT NOT NULL,
        model TEXT NOT NULL,
        provider TEXT NOT NULL,
        requests INTEGER NOT NULL,
        prompt_tokens INTEGER NOT NULL,
        cached_tokens INTEGER NOT NULL,
        completion_tokens INTEGER NOT NULL,
        reasoning_tokens INTEGER NOT NULL,
        cost REAL NOT NULL,
        PRIMARY KEY (day, key_id, model, provider)
    );
    CREATE INDEX spend_by_key ON spend (key_id, day);
    """,
)
"""The schema, one script per version (version ``n`` is ``MIGRATIONS[n - 1]``)."""

_KEY_COLUMNS = (
    "id, digest, hint, label, owner, models, aliases, rpm, tpm, budget, budget_period, "
    "priority, expires_at, metadata, created_at, revoked_at"
)
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
_GROUP_COLUMN = {"key": "key_id", "model": "model", "provider": "provider", "day": "day"}


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
    version = row[0] or 0
    target = len(MIGRATIONS) if upto is None else upto
    for number in range(version + 1, target + 1):
        with connection:  # one transaction: a script half applied is rolled back
            connection.execute("BEGIN")
            for statement in MIGRATIONS[number - 1].split(";"):
                if statement.strip():
                    connection.execute(statement)
            connection.execute("INSERT INTO schema_version VALUES (?)", (number,))
        logger.info("storage: schema upgraded to version %d", number)
        version = number
    return int(version)


def _key_row(record: KeyRecord) -> tuple[Any, ...]:
    return (
        record.id,
        record.digest,
        record.hint,
        record.label,
        record.owner,
        json.dumps(list(record.models)),
        json.dumps(dict(record.aliases)),
        record.rpm,
        record.tpm,
        record.budget,
        record.budget_period,
        record.priority,
        record.expires_at,
        json.dumps(dict(record.metadata)),
        record.created_at,
        record.revoked_at,
    )


def _key_of(row: Sequence[Any]) -> KeyRecord:
    (key_id, digest, hint, label, owner, models, aliases, rpm, tpm, budget, period) = row[:11]
    priority, expires_at, metadata, created_at, revoked_at = row[11:]
    return KeyRecord(
        id=key_id,
        digest=bytes(digest),
        hint=hint,
        label=label,
        owner=owner,
        models=tuple(json.loads(models)),
        aliases=json.loads(aliases),
        rpm=rpm,
        tpm=tpm,
        budget=budget,
        budget_period=period,
        priority=priority,
        expires_at=expires_at,
        metadata=json.loads(metadata),
        created_at=created_at,
        revoked_at=revoked_at,
    )


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
                f"INSERT INTO keys ({_KEY_COLUMNS}) VALUES ({_marks(16)})", _key_row(record)
            )

        await self._run(insert)

    async def update_key(self, record: KeyRecord) -> None:
        """Replace the stored key of the same id."""

        def replace(connection: sqlite3.Connection) -> None:
            connection.execute(
                f"REPLACE INTO keys ({_KEY_COLUMNS}) VALUES ({_marks(16)})", _key_row(record)
            )

        await self._run(replace)

    async def get_key(self, key_id: str) -> KeyRecord | None:
        """The key with this id, or None."""

        def read(connection: sqlite3.Connection) -> KeyRecord | None:
            query = f"SELECT {_KEY_COLUMNS} FROM keys WHERE id = ?"
            row = connection.execute(query, (key_id,)).fetchone()
            return None if row is None else _key_of(row)

        return await self._run(read)

    async def list_keys(
        self, *, after: str | None = None, limit: int | None = None, revoked: bool = True
    ) -> list[KeyRecord]:
        """Keys in id order, after the id ``after``, at most ``limit``."""
        query = f"SELECT {_KEY_COLUMNS} FROM keys WHERE id > ?"
        if not revoked:
            query += " AND revoked_at IS NULL"
        query += " ORDER BY id LIMIT ?"
        arguments = (after or "", -1 if limit is None else limit)

        def read(connection: sqlite3.Connection) -> list[KeyRecord]:
            return [_key_of(row) for row in connection.execute(query, arguments)]

        return await self._run(read)

    async def add_spend(self, records: Sequence[SpendRecord]) -> None:
        """Add these records to the daily totals, in one transaction."""
        rows = [attrs.astuple(record) for record in records]

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
        column = _GROUP_COLUMN[group_by]
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
