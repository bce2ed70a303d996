"""Records written to storage in batches, off the request path: spend and the request log.

A request's end adds its record to a bounded buffer (no I/O, no await); a background task
writes the buffer every ``flush_interval`` seconds, or sooner once ``flush_batch`` records
wait. While the store fails the records stay buffered and are written once it is back;
a record that finds the buffer full is dropped and counted, so a lost database never slows
or fails a request, and what it cost is visible (``trio_orchestrator_storage_dropped_total``
for spend, ``trio_orchestrator_request_log_dropped_total`` for the request log).

:class:`RecordWriter` is that machinery, once; :class:`SpendWriter` and
:class:`RequestLogWriter` say only how a batch is written (and the request log, how it is
pruned to its retention, which the same task does every ``prune_interval`` seconds).
"""

from __future__ import annotations

import logging
import math
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import ClassVar, Generic, TypeVar

import attrs
import trio

from .base import RequestRecord, SpendRecord, StorageUnavailable, Store
from .config import StorageConfig

__all__ = [
    "RecordWriter",
    "RequestLogWriter",
    "RequestLogWriterStatistics",
    "SpendWriter",
    "SpendWriterStatistics",
]

logger = logging.getLogger("trio_orchestrator.storage")

R = TypeVar("R")


@attrs.frozen
class SpendWriterStatistics:
    """What a record writer has done since start."""

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


@attrs.frozen
class RequestLogWriterStatistics(SpendWriterStatistics):
    """What the request log's writer has done since start."""

    pruned: int
    """Records deleted by the retention (``log_retention_days``, ``log_max_rows``)."""


@attrs.define(eq=False)
class RecordWriter(Generic[R]):
    """The bounded buffer of records and the task that writes it; a subclass says how a
    batch is written (:meth:`_write`) and what its records are called in the log.

    Args:
        store: where records go.
        config: the interval, batch size and capacity.
    """

    store: Store
    config: StorageConfig
    _buffer: deque[R] = attrs.field(factory=deque, init=False)
    _wake: trio.Event = attrs.field(factory=trio.Event, init=False)
    _written: int = attrs.field(default=0, init=False)
    _dropped: int = attrs.field(default=0, init=False)
    _failures: int = attrs.field(default=0, init=False)
    _up: bool = attrs.field(default=True, init=False)
    # The background task and a reader wanting current numbers may flush at once: one at a
    # time, or both would write the same batch.
    _flushing: trio.Lock = attrs.field(factory=trio.Lock, init=False)

    what: ClassVar[str] = "records"

    def add(self, record: R) -> None:
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
                await self._housekeep()
        finally:
            with trio.move_on_after(self.config.flush_interval * 5, shield=True):
                await self.flush()

    async def _housekeep(self) -> None:
        """Periodic work after a flush (none here)."""

    async def _write(self, batch: Sequence[R]) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    async def flush(self) -> bool:
        """Write what is buffered now; False when the store failed (records kept)."""
        async with self._flushing:
            return await self._flush()

    async def _flush(self) -> bool:
        while self._buffer:
            size = min(len(self._buffer), self.config.flush_batch)
            batch = [self._buffer[i] for i in range(size)]
            try:
                await self._write(batch)
            except StorageUnavailable as exc:
                self._failures += 1
                if self._up:
                    logger.warning("%s kept in memory until storage is back: %s", self.what, exc)
                self._up = False
                return False
            for _ in batch:
                self._buffer.popleft()
            self._written += len(batch)
            if not self._up:
                logger.info("storage is back: %s written again", self.what)
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


@attrs.define(eq=False)
class SpendWriter(RecordWriter[SpendRecord]):
    """The spend records' writer (sums per day, key, model and provider)."""

    metric_kind: ClassVar[str] = "storage"
    metric_counters: ClassVar[tuple[str, ...]] = ("written", "dropped", "failures")
    what: ClassVar[str] = "spend records"

    async def _write(self, batch: Sequence[SpendRecord]) -> None:
        await self.store.add_spend(batch)


@attrs.define(eq=False)
class RequestLogWriter(RecordWriter[RequestRecord]):
    """The request log's writer; it also deletes what is past the retention
    (``log_retention_days``, ``log_max_rows``) every ``prune_interval`` seconds.

    Args:
        clock: Unix time (what ``log_retention_days`` counts back from).
    """

    clock: Callable[[], float] = time.time
    _pruned: int = attrs.field(default=0, init=False)
    _next_prune: float = attrs.field(default=-math.inf, init=False)

    metric_kind: ClassVar[str] = "request_log"
    metric_counters: ClassVar[tuple[str, ...]] = ("written", "dropped", "failures", "pruned")
    what: ClassVar[str] = "request log records"

    async def _write(self, batch: Sequence[RequestRecord]) -> None:
        await self.store.add_requests(batch)

    async def _housekeep(self) -> None:
        now = trio.current_time()
        if now < self._next_prune:
            return
        self._next_prune = now + self.config.prune_interval
        await self.prune()

    async def prune(self) -> int:
        """Delete the records past the retention now; the number deleted (0 when storage
        is down: it is tried again at the next interval)."""
        days, rows = self.config.log_retention_days, self.config.log_max_rows
        if math.isinf(days) and rows is None:
            return 0
        before = None if math.isinf(days) else self.clock() - days * 86_400
        try:
            deleted = await self.store.prune_requests(before=before, keep=rows)
        except StorageUnavailable as exc:
            logger.debug("request log not pruned: %s", exc)
            return 0
        self._pruned += deleted
        return deleted

    def statistics(self) -> RequestLogWriterStatistics:
        """The counters now."""
        base = super().statistics()
        return RequestLogWriterStatistics(**attrs.asdict(base), pruned=self._pruned)
