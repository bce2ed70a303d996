"""Operator state in real storage: virtual keys and spend.

:func:`store_for` makes the store ``[storage]`` names (the embedded :class:`SqliteStore`,
PostgreSQL's :class:`PostgresStore`, or none); the rest of the gateway sees only the
:class:`Store` interface.
"""

from __future__ import annotations

from .base import (
    GROUPS,
    PERIODS,
    KeyRecord,
    SpendRecord,
    SpendRow,
    StorageUnavailable,
    Store,
    day_of,
    period_bounds,
    period_start,
)
from .config import StorageConfig
from .postgres import PostgresStore
from .sqlite import MIGRATIONS, SqliteStore, migrate
from .writer import SpendWriter, SpendWriterStatistics

__all__ = [
    "GROUPS",
    "MIGRATIONS",
    "PERIODS",
    "KeyRecord",
    "PostgresStore",
    "SpendRecord",
    "SpendRow",
    "SpendWriter",
    "SpendWriterStatistics",
    "SqliteStore",
    "StorageConfig",
    "StorageUnavailable",
    "Store",
    "day_of",
    "migrate",
    "period_bounds",
    "period_start",
    "store_for",
]


def store_for(config: StorageConfig) -> Store | None:
    """The store ``config`` names (not yet opened), or None when storage is off."""
    if config.kind == "sqlite":
        return SqliteStore(config.path)
    if config.kind == "postgres":
        assert config.dsn is not None  # the configuration checks it
        return PostgresStore(config.dsn.reveal())
    return None
