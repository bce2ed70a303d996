"""The ``[storage]`` section: where the gateway keeps operator state (virtual keys, spend)."""

from __future__ import annotations

import attrs

from ..config.secret import Secret
from ..validators import one_of, positive_int, positive_seconds, positive_time

__all__ = ["StorageConfig"]

BACKENDS = ("auto", "sqlite", "postgres", "none")


def _to_secret(value: str | Secret | None) -> Secret | None:
    return value if value is None or isinstance(value, Secret) else Secret(value)


@attrs.frozen
class StorageConfig:
    """Operator state: virtual keys and spend (``docs/keys-and-spend.md``).

    Attributes:
        backend: ``auto`` (the default: ``sqlite`` when ``path`` is set, else ``none``),
            ``sqlite`` (embedded), ``postgres`` (a PostgreSQL server at ``dsn``, shared by
            every process and host that names it) or ``none`` (no virtual keys, no spend
            records: the admin key and spend endpoints answer 404, and requests meet no
            key-policy layer).
        path: the SQLite database file, created with its tables on first use. With
            ``backend = "sqlite"`` and no path, the database lives in memory: the admin API
            works, nothing is written to disk, and keys and spend last as long as the
            process.
        dsn: the PostgreSQL connection string, for ``backend = "postgres"`` (which needs
            it): ``postgresql://user:password@host:5432/database`` or libpq's
            ``key=value`` form. A secret: write ``"${PG_DSN}"`` to take it from the
            environment; it is never logged. The tables are created on first use.
        flush_interval: seconds between two writes of the buffered spend records.
        flush_batch: buffered records that trigger a write before the interval is up.
        buffer_capacity: spend records held while storage is slow or down; one more is
            dropped and counted (``trio_orchestrator_storage_dropped_total``).
        sync_interval: seconds between two reads of the keys and their spend from storage,
            so that what another process (``service.workers`` > 1, another host on the same
            database) changed or spent is seen here too: a key created, changed or revoked
            there, and budgets summed over every process. ``inf`` never does.
    """

    backend: str = attrs.field(default="auto", validator=one_of(*BACKENDS))
    path: str | None = None
    dsn: Secret | None = attrs.field(default=None, converter=_to_secret)
    flush_interval: float = attrs.field(default=1.0, validator=positive_seconds)
    flush_batch: int = attrs.field(default=500, validator=positive_int)
    buffer_capacity: int = attrs.field(default=10_000, validator=positive_int)
    sync_interval: float = attrs.field(default=5.0, validator=positive_time)

    def __attrs_post_init__(self) -> None:
        if self.backend == "postgres" and not self.dsn:
            raise ValueError('storage backend "postgres" needs `dsn` (its connection string)')

    @property
    def kind(self) -> str:
        """The backend in force: ``auto`` resolved (``sqlite`` with a path, else ``none``)."""
        if self.backend == "auto":
            return "none" if self.path is None else "sqlite"
        return self.backend

    @property
    def enabled(self) -> bool:
        """Whether a store is opened."""
        return self.kind != "none"
