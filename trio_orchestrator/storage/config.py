"""The ``[storage]`` section: where the gateway keeps operator state (virtual keys, spend)."""

from __future__ import annotations

import attrs

from ..validators import one_of, positive_int, positive_seconds, positive_time

__all__ = ["StorageConfig"]

BACKENDS = ("auto", "sqlite", "none")


@attrs.frozen
class StorageConfig:
    """Operator state: virtual keys and spend (``docs/keys-and-spend.md``).

    Attributes:
        backend: ``auto`` (the default: ``sqlite`` when ``path`` is set, else ``none``),
            ``sqlite`` (embedded) or ``none`` (no virtual keys, no spend records: the admin
            key and spend endpoints answer 404, and requests meet no key-policy layer).
        path: the SQLite database file, created with its tables on first use. With
            ``backend = "sqlite"`` and no path, the database lives in memory: the admin API
            works, nothing is written to disk, and keys and spend last as long as the
            process.
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
    flush_interval: float = attrs.field(default=1.0, validator=positive_seconds)
    flush_batch: int = attrs.field(default=500, validator=positive_int)
    buffer_capacity: int = attrs.field(default=10_000, validator=positive_int)
    sync_interval: float = attrs.field(default=5.0, validator=positive_time)

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
