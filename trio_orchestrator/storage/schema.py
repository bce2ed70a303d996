"""The schema every backend shares: the versioned migrations, and how a key becomes a row.

:data:`SCHEMA` is written once, with the few types the dialects spell differently left as
``{blob}``, ``{real}`` and ``{bigint}``; :func:`migrations` fills them in for one backend,
so SQLite and PostgreSQL databases go through the same versions with the same tables and
columns. :func:`upgrade` is the loop both backends run: it reads the version a database
is at and applies the scripts after it, one transaction each, through the callbacks the
backend gives it.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from typing import Any, Literal

from .base import KeyRecord

__all__ = [
    "GROUP_COLUMN",
    "KEY_COLUMNS",
    "SCHEMA",
    "key_of",
    "key_row",
    "migrations",
    "statements",
    "upgrade",
]

logger = logging.getLogger("trio_orchestrator.storage")

Dialect = Literal["sqlite", "postgres"]

SCHEMA: tuple[str, ...] = (
    # 1: virtual keys.
    """
    CREATE TABLE keys (
        id TEXT PRIMARY KEY,
        digest {blob} NOT NULL UNIQUE,
        hint TEXT NOT NULL,
        label TEXT NOT NULL,
        owner TEXT NOT NULL,
        models TEXT NOT NULL,
        aliases TEXT NOT NULL,
        rpm {bigint},
        tpm {bigint},
        budget {real},
        budget_period TEXT NOT NULL,
        priority TEXT,
        expires_at {real},
        metadata TEXT NOT NULL,
        created_at {real} NOT NULL,
        revoked_at {real}
    );
    """,
    # 2: spend, summed per UTC day, key, model and provider.
    """
    CREATE TABLE spend (
        day TEXT NOT NULL,
        key_id TEXT NOT NULL,
        model TEXT NOT NULL,
        provider TEXT NOT NULL,
        requests {bigint} NOT NULL,
        prompt_tokens {bigint} NOT NULL,
        cached_tokens {bigint} NOT NULL,
        completion_tokens {bigint} NOT NULL,
        reasoning_tokens {bigint} NOT NULL,
        cost {real} NOT NULL,
        PRIMARY KEY (day, key_id, model, provider)
    );
    CREATE INDEX spend_by_key ON spend (key_id, day);
    """,
)
"""The schema, one script per version (version ``n`` is ``SCHEMA[n - 1]``), in no dialect."""

_TYPES: dict[str, dict[str, str]] = {
    # SQLite's INTEGER is 64-bit already; PostgreSQL's is 32-bit, too small for token sums.
    "sqlite": {"blob": "BLOB", "real": "REAL", "bigint": "INTEGER"},
    "postgres": {"blob": "BYTEA", "real": "DOUBLE PRECISION", "bigint": "BIGINT"},
}

KEY_COLUMNS = (
    "id, digest, hint, label, owner, models, aliases, rpm, tpm, budget, budget_period, "
    "priority, expires_at, metadata, created_at, revoked_at"
)
"""The ``keys`` table's columns, in the order of :func:`key_row`."""
GROUP_COLUMN = {"key": "key_id", "model": "model", "provider": "provider", "day": "day"}
"""The ``spend`` column each ``group_by`` sums over."""


def migrations(dialect: Dialect) -> tuple[str, ...]:
    """:data:`SCHEMA` in ``dialect`` (``sqlite`` or ``postgres``)."""
    return tuple(script.format(**_TYPES[dialect]) for script in SCHEMA)


def statements(script: str) -> list[str]:
    """The statements of one migration script (they hold no ``;`` but their ends)."""
    return [statement for statement in script.split(";") if statement.strip()]


def upgrade(
    version: int,
    scripts: Sequence[str],
    apply: Callable[[int, str], None],
    upto: int | None = None,
) -> int:
    """Bring a database at schema ``version`` up to ``upto`` (default: the latest).

    Args:
        version: the version the database is at (0: empty).
        scripts: the backend's :func:`migrations`.
        apply: runs script ``n`` and records version ``n``, in one transaction.
        upto: stop at this version (tests build old databases so).

    Returns:
        The schema version now.
    """
    target = len(scripts) if upto is None else upto
    for number in range(version + 1, target + 1):
        apply(number, scripts[number - 1])
        logger.info("storage: schema upgraded to version %d", number)
        version = number
    return version


def key_row(record: KeyRecord) -> tuple[Any, ...]:
    """``record`` as the ``keys`` table's row (lists and mappings as JSON)."""
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


def key_of(row: Sequence[Any]) -> KeyRecord:
    """The key a ``keys`` row (its :data:`KEY_COLUMNS`) holds."""
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
