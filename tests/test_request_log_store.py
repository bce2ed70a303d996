"""The request log's storage and writer, below the service: the table on both backends
(pages, filters, retention, the migration from version 2) and the writer's pruning task,
redaction and outcomes. The served path is proven in ``test_request_log.py``."""

from __future__ import annotations

import re
import sqlite3
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import attrs
import pytest
import trio
import trio.testing
from postgres_fixture import postgres_cluster, postgres_server

from trio_orchestrator import Config, open_gateway
from trio_orchestrator.errors import DeadlineExceeded, RequestShed
from trio_orchestrator.observability.requestlog import Redactor, outcome_of
from trio_orchestrator.pipeline import FinishedRequest, Outcome
from trio_orchestrator.routing.budget import BudgetExceeded
from trio_orchestrator.storage import (
    PostgresStore,
    RequestFilter,
    RequestLogWriter,
    RequestRecord,
    SpendRecord,
    SqliteStore,
    StorageConfig,
    Store,
    migrate,
)
from trio_orchestrator.storage.schema import request_query, request_row, spend_row
from trio_orchestrator.types import PromptRequest, new_request_id

__all__ = ["postgres_cluster", "postgres_server"]


@pytest.fixture(params=["sqlite", "postgres"])
async def store(request: pytest.FixtureRequest) -> AsyncIterator[Store]:
    """An empty store of each backend: SQLite in memory, a fresh PostgreSQL database."""
    if request.param == "sqlite":
        opened: Store = SqliteStore()
    else:
        opened = PostgresStore(request.getfixturevalue("postgres_server"))
    yield opened
    await opened.aclose()


def logged(i: int, **members: object) -> RequestRecord:
    """The ``i``-th record: ended at Unix time ``1000 + i``."""
    return RequestRecord(id=f"req_{i:03d}", created=1000.0 + i, model="m", **members)  # type: ignore[arg-type]


async def test_records_round_trip_filter_and_page_newest_first(store: Store) -> None:
    """A record comes back whole (flags as booleans, content, nulls); filters narrow;
    the cursor pages newest first, records sharing a time ordered by id."""
    full = logged(
        1,
        key_id="key_a",
        outcome="failed",
        status=502,
        error_type="upstream_error",
        cache_hit=True,
        stream=True,
        ttft_ms=None,
        request='[{"role": "user"}]',
        response="ok",
        cost=0.25,
        prompt_tokens=2**40,  # bigger than a 32-bit column
    )
    twins = [RequestRecord(id=f"req_t{i}", created=1005.0) for i in range(3)]
    await store.add_requests([full, *(logged(i) for i in range(2, 5)), *twins])
    assert await store.requests(RequestFilter(id="req_001"), 10) == [full]
    failed = await store.requests(RequestFilter(outcome="failed", status=502), 10)
    assert [r.id for r in failed] == ["req_001"]
    assert await store.requests(RequestFilter(key_id="key_b"), 10) == []
    window = await store.requests(RequestFilter(since=1002.0, until=1004.0), 10)
    assert [r.id for r in window] == ["req_003", "req_002"]
    seen: list[str] = []
    before = None
    while True:
        page = await store.requests(RequestFilter(before=before), 2)
        if not page:
            break
        seen += [r.id for r in page]
        before = (page[-1].created, page[-1].id)
    assert seen == ["req_t2", "req_t1", "req_t0", "req_004", "req_003", "req_002", "req_001"]


async def test_prune_by_age_and_by_rows(store: Store) -> None:
    """Pruning deletes what ended before the cut-off, then all but the newest rows."""
    await store.add_requests([logged(i) for i in range(10)])
    assert await store.prune_requests(before=1003.0, keep=None) == 3
    assert await store.prune_requests(before=None, keep=4) == 3
    remaining = await store.requests(RequestFilter(), 100)
    assert [r.id for r in remaining] == ["req_009", "req_008", "req_007", "req_006"]
    assert await store.prune_requests(before=None, keep=100) == 0


async def test_a_version_2_database_gains_the_request_log(tmp_path: Path) -> None:
    """A database at schema version 2 (keys and spend) gains the requests table when opened."""
    path = tmp_path / "v2.sqlite"
    connection = sqlite3.connect(path, isolation_level=None)
    assert migrate(connection, upto=2) == 2
    connection.close()
    store = SqliteStore(str(path))
    await store.add_requests([logged(1)])
    assert [r.id for r in await store.requests(RequestFilter(), 10)] == ["req_001"]
    await store.aclose()


@attrs.define
class CountingStore:
    """Records prune calls (a store double for the writer's task)."""

    prunes: list[tuple[float | None, int | None]] = attrs.field(factory=list)
    written: list[RequestRecord] = attrs.field(factory=list)

    async def add_requests(self, records: Sequence[RequestRecord]) -> None:
        self.written += records

    async def prune_requests(self, *, before: float | None, keep: int | None) -> int:
        self.prunes.append((before, keep))
        return 1


async def test_the_writer_prunes_on_its_interval(autojump_clock: trio.testing.MockClock) -> None:
    """The writer task prunes in its first round, then every prune_interval, to the configured
    age and rows, and counts what it deleted."""
    store = CountingStore()
    config = StorageConfig(
        flush_interval=1.0, prune_interval=60.0, log_retention_days=2.0, log_max_rows=5
    )
    writer = RequestLogWriter(store, config, clock=lambda: 1_000_000.0)  # type: ignore[arg-type]
    async with trio.open_nursery() as nursery:
        await nursery.start(writer.run)
        await trio.sleep(1.5)
        assert store.prunes == [(1_000_000.0 - 2 * 86_400, 5)]
        await trio.sleep(30)
        assert len(store.prunes) == 1
        await trio.sleep(31)
        assert len(store.prunes) == 2
        nursery.cancel_scope.cancel()
    assert writer.statistics().pruned == 2


async def test_no_retention_prunes_nothing() -> None:
    """With no age limit (``inf``) and no row limit, the store is never asked to prune."""
    store = CountingStore()
    config = StorageConfig(log_retention_days=float("inf"))
    writer = RequestLogWriter(store, config)  # type: ignore[arg-type]
    assert await writer.prune() == 0
    assert store.prunes == []


def test_redaction_covers_key_shapes_and_configured_patterns_then_truncates() -> None:
    """Built-in API-key shapes and configured patterns become [REDACTED]; the text is cut."""
    redact = Redactor(["(?i)card \\d{4}"], max_chars=60)
    text = "sk-abcdefghijklmnopqrstuv Bearer abc.def.ghi AKIAABCDEFGHIJKLMNOP card 1234"
    assert redact(text) == "[REDACTED] [REDACTED] [REDACTED] [REDACTED]"
    assert redact("x" * 100) == "x" * 60 + "…[truncated]"


@pytest.mark.parametrize(
    ("outcome", "error", "expected"),
    [
        (Outcome.COMPLETED, None, "completed"),
        (Outcome.SHED, RequestShed("admission", "full"), "rejected"),
        (Outcome.EXPIRED, DeadlineExceeded("late"), "timed_out"),
        (Outcome.CANCELLED, None, "cancelled"),
        (Outcome.FAILED, BudgetExceeded("api_key", "k", limit=1, spent=1, needed=0), "rejected"),
        (Outcome.FAILED, RuntimeError("boom"), "failed"),
    ],
)
def test_outcomes(outcome: Outcome, error: BaseException | None, expected: str) -> None:
    """The pipeline's outcomes map to the log's: a refusal by the gateway is ``rejected``."""
    record = FinishedRequest(PromptRequest(input="x"), outcome, None, error, 0.1, None)
    assert outcome_of(record) == expected


async def test_content_logging_follows_a_reload() -> None:
    """A reload turning ``log_content`` on (with a new redaction) applies to the requests
    that end after it, with no restart; the gateway reports it applied."""
    storage = StorageConfig(backend="sqlite")
    config = Config(storage=storage)
    async with open_gateway(config) as gateway:
        before = await gateway.pipeline.submit(PromptRequest(input="secret 1234"))
        report = gateway.reload(
            attrs.evolve(config, storage=attrs.evolve(storage, log_content=True, redact=["\\d+"]))
        )
        after = await gateway.pipeline.submit(PromptRequest(input="secret 1234"))
        assert gateway.request_log is not None
        assert gateway.store is not None
        await gateway.request_log.flush()
        records = {r.id: r for r in await gateway.store.requests(RequestFilter(), 10)}
    assert "storage.log_content" in str(report.applied)
    assert records[before.request_id].request is None
    assert records[after.request_id].request == '[{"role": "user", "content": "secret [REDACTED]"}]'
    assert records[after.request_id].response is not None


def test_rows_are_the_records_fields_in_order_with_flags_as_integers() -> None:
    """``request_row`` and ``spend_row`` give what ``attrs.astuple`` gave, flags as 0/1."""
    record = logged(1, cache_hit=True, stream=True, ttft_ms=1.5, error_type=None)
    expected = tuple(int(v) if isinstance(v, bool) else v for v in attrs.astuple(record))
    row = request_row(record)
    assert row == expected
    assert [type(v) for v in row] == [type(v) for v in expected]
    spend = SpendRecord("2026-12-05", "key_1", "m", "up", 1, 10, 2, 5, 1, 0.25)
    assert spend_row(spend) == attrs.astuple(spend)


async def test_a_batch_is_appended_in_a_few_statements_whole() -> None:
    """A batch of 777 records is appended by a handful of multi-row INSERTs (not a statement
    step per record: each step retakes the GIL in the writer's thread), all of them kept."""
    store = SqliteStore()
    await store.open()
    executed: list[str] = []
    assert store._connection is not None  # the store's own connection, to watch its statements
    store._connection.set_trace_callback(executed.append)
    await store.add_requests([logged(i) for i in range(777)])
    inserts = [s for s in executed if s.startswith("INSERT INTO requests")]
    assert len(inserts) == 4  # 512 + 256 + 8 + 1 rows
    store._connection.set_trace_callback(None)
    kept = await store.requests(RequestFilter(), 1000)
    assert [r.id for r in kept] == [f"req_{i:03d}" for i in reversed(range(777))]
    assert kept[0] == logged(776)
    await store.aclose()


@pytest.mark.parametrize(
    ("where", "index"),
    [
        (RequestFilter(), "requests_by_time"),
        (RequestFilter(since=1.0, until=2.0), "requests_by_time"),
        (RequestFilter(key_id="key_a"), "requests_by_key"),
        (RequestFilter(model="m"), "requests_by_model"),
        (RequestFilter(provider="up"), "requests_by_provider"),
        (RequestFilter(outcome="failed"), "requests_by_outcome"),
        (RequestFilter(outcome="completed"), "requests_by_time"),
        (RequestFilter(status=502), "requests_by_status"),
        (RequestFilter(status=200), "requests_by_time"),
        (RequestFilter(id="req_001"), "requests_by_id"),
    ],
)
def test_each_filter_reads_through_an_index(where: RequestFilter, index: str) -> None:
    """Every filter of the admin API is answered through an index, the partial outcome and
    status ones (rows not completed, not 200) included; the common outcome and status walk
    the time index, in the pages' order."""
    connection = sqlite3.connect(":memory:", isolation_level=None)
    migrate(connection)
    query, arguments = request_query(where, 50, "?")
    plan = " ".join(row[3] for row in connection.execute("EXPLAIN QUERY PLAN " + query, arguments))
    assert f"USING INDEX {index} " in plan + " ", plan


async def test_outcome_and_status_filters_find_common_and_rare_rows(store: Store) -> None:
    """The outcome and status filters find completed/200 rows and the rest alike (the rest
    through their partial indexes)."""
    failed = logged(1, outcome="failed", status=502)
    await store.add_requests([logged(0), failed, logged(2)])
    assert await store.requests(RequestFilter(outcome="failed"), 10) == [failed]
    assert await store.requests(RequestFilter(status=502), 10) == [failed]
    completed = await store.requests(RequestFilter(outcome="completed", status=200), 10)
    assert [r.id for r in completed] == ["req_002", "req_000"]
    assert await store.requests(RequestFilter(outcome="cancelled", status=499), 10) == []


def test_request_ids_sort_by_the_time_they_were_made(monkeypatch: pytest.MonkeyPatch) -> None:
    """Ids made later sort later (the log's id index grows at its end), and ids made in the
    same millisecond are still distinct."""
    clock = iter(range(1_700_000_000_000_000_000, 1_700_000_100_000_000_000, 1_000_000_000))
    monkeypatch.setattr(time, "time_ns", lambda: next(clock))
    made = [new_request_id() for _ in range(50)]
    assert made == sorted(made)
    assert all(re.fullmatch(r"req_[0-9a-f]{24}", rid) for rid in made)
    monkeypatch.setattr(time, "time_ns", lambda: 1_700_000_000_000_000_000)
    assert len({new_request_id() for _ in range(10_000)}) == 10_000
