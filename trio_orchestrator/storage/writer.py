"""Spend records written to storage in batches, off the request path.

A request's end adds its record to a bounded buffer (no I/O, no await); a background task
writes the buffer every ``flush_interval`` seconds, or sooner once ``flush_batch`` records
wait. While the store fails the records stay buffered and are written once it is back;
a record that finds the buffer full is dropped and counted, so a lost database never slows
or fails a request, and what it cost is visible (``trio_orchestrator_storage_dropped_total``).
"""

from __future__ import annotations

import logging
from collections import deque
from typing import ClassVar

import attrs
import trio

from .base import SpendRecord, StorageUnavailable, Store
from .config import StorageConfig

__all__ = ["SpendWriter", "SpendWriterStatistics"]

logger = logging.getLogger("trio_orchestrator.storage")


@attrs.frozen
class SpendWriterStatistics:
    """What the spend writer has done since start."""

    written: int
    """Records written to storage."""
    dropped: int
    """Records dropped because the buffer was full (storage slow or down)."""
    failures: int
    """Writes that failed (their records stayed buffered)."""
    buffered: int
    """Records waiting to be written now."""
    up: int
    """1 while the last write (or the opening) succeeded, else 0."""


@attrs.define(eq=False)
class SpendWriter:
    """The bounded buffer of spend records and the task that writes it.

    Args:
        store: where records go.
        config: the interval, batch size and capacity.
    """

    store: Store
    config: StorageConfig
    _buffer: deque[SpendRecord] = attrs.field(factory=deque, init=False)
    _wake: trio.Event = attrs.field(factory=trio.Event, init=False)
    _written: int = attrs.field(default=0, init=False)
    _dropped: int = attrs.field(default=0, init=False)
    _failures: int = attrs.field(default=0, init=False)
    _up: bool = attrs.field(default=True, init=False)
    # The background task and a reader wanting current numbers may flush at once: one at a
    # time, or both would write the same batch.
    _flushing: trio.Lock = attrs.field(factory=trio.Lock, init=False)

    metric_kind: ClassVar[str] = "storage"
    metric_counters: ClassVar[tuple[str, ...]] = ("written", "dropped", "failures")

    def add(self, record: SpendRecord) -> None:
        """Buffer ``record`` (or drop and count it when the buffer is full); never blocks."""
        if len(self._buffer) >= self.config.buffer_capacity:
            self._dropped += 1
            return
        self._buffer.append(record)
        if len(self._buffer) >= self.config.flush_batch:
            self._wake.set()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Write the buffer every ``flush_interval`` seconds until cancelled; a last write
        happens on the way out (shielded, bounded)."""
        task_status.started()
        try:
            while True:
                with trio.move_on_after(self.config.flush_interval):
                    await self._wake.wait()
                self._wake = trio.Event()
                await self.flush()
        finally:
            with trio.move_on_after(self.config.flush_interval * 5, shield=True):
                await self.flush()

    async def flush(self) -> bool:
        """Write what is buffered now; False when the store failed (records kept)."""
        async with self._flushing:
            return await self._flush()

    async def _flush(self) -> bool:
        while self._buffer:
            size = min(len(self._buffer), self.config.flush_batch)
            batch = [self._buffer[i] for i in range(size)]
            try:
                await self.store.add_spend(batch)
            except StorageUnavailable as exc:
                self._failures += 1
                if self._up:
                    logger.warning("spend records kept in memory until storage is back: %s", exc)
                self._up = False
                return False
            for _ in batch:
                self._buffer.popleft()
            self._written += len(batch)
            if not self._up:
                logger.info("storage is back: spend records written again")
            self._up = True
        return True

    def statistics(self) -> SpendWriterStatistics:
        """The counters now."""
        return SpendWriterStatistics(
            written=self._written,
            dropped=self._dropped,
            failures=self._failures,
            buffered=len(self._buffer),
            up=int(self._up),
        )
