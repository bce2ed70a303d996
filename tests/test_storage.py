"""The storage package: the stores (migrations, keys, spend sums, recovery), each behaviour
against both SQLite and a real PostgreSQL (skipped, saying why, when it is absent), and the
batched spend writer (buffer bound, loss counted, failure kept and retried)."""

from __future__ import annotations

import datetime
import sqlite3
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import attrs
import pytest
import trio
from postgres_fixture import PostgresServer, postgres_cluster, postgres_server

from trio_orchestrator.config import Secret, dump_config, parse_config
from trio_orchestrator.errors import ConfigError
from trio_orchestrator.storage import (
    MIGRATIONS,
    KeyRecord,
    PostgresStore,
    SpendRecord,
    SpendWriter,
    SqliteStore,
    StorageConfig,
    StorageUnavailable,
    day_of,
    migrate,
    period_start,
    store_for,
)
from trio_orchestrator.storage.postgres import POSTGRES_MIGRATIONS, migrate_postgres

__all__ = ["postgres_cluster", "postgres_server"]

Store = SqliteStore | PostgresStore


def key(key_id: str, **members: object) -> KeyRecord:
    """A key record with a digest made from its id."""
    return KeyRecord(id=key_id, digest=key_id.encode().ljust(32, b"-"), **members)  # type: ignore[arg-type]


def spent(key_id: str, model: str, cost: float, day: str = "2026-01-02") -> SpendRecord:
    """One request's spend record."""
    return SpendRecord(day, key_id, model, "up", 1, 10, 2, 5, 1, cost)


@pytest.fixture(params=["sqlite", "postgres"])
async def store(request: pytest.FixtureRequest) -> AsyncIterator[Store]:
    """An empty store of each backend: SQLite in memory, a fresh PostgreSQL database."""
    if request.param == "sqlite":
        opened: Store = SqliteStore()
    else:
        opened = PostgresStore(request.getfixturevalue("postgres_server"))
    yield opened
    await opened.aclose()


def integrity_error(store: Store) -> type[Exception]:
    """The error the backend of ``store`` raises for a duplicate key id."""
    if isinstance(store, SqliteStore):
        return sqlite3.IntegrityError
    import psycopg

    return psycopg.IntegrityError


async def test_an_old_database_is_upgraded_and_keeps_its_keys(tmp_path: Path) -> None:
    """A database at schema version 1 (keys only) gains the spend table when opened, and
    its keys are still there."""
    path = tmp_path / "old.sqlite"
    connection = sqlite3.connect(path, isolation_level=None)
    assert migrate(connection, upto=1) == 1
    row = (
        "key_1", b"d" * 32, "abcd", "old", "", "[]", "{}", None, None, None, "month", None,
        None, "{}", 0.0, None,
    )  # fmt: skip
    connection.execute(f"INSERT INTO keys VALUES ({', '.join('?' * 16)})", row)
    connection.close()
    store = SqliteStore(str(path))
    await store.open()
    found = await store.get_key("key_1")
    assert found is not None
    assert (found.label, found.hint, found.digest) == ("old", "abcd", b"d" * 32)
    await store.add_spend([spent("key_1", "m", 0.5)])
    assert [r.cost for r in await store.spend("key")] == [0.5]
    await store.aclose()
    connection = sqlite3.connect(path)
    versions = [v for (v,) in connection.execute("SELECT version FROM schema_version")]
    connection.close()
    assert versions == list(range(1, len(MIGRATIONS) + 1))


async def test_keys_round_trip_and_page_in_id_order(store: Store) -> None:
    """A key is stored whole (policy, metadata), replaced by update, and listed a page at a
    time in id order, revoked ones left out on request."""
    record = key(
        "key_b",
        models=("m1", "m2"),
        aliases={"fast": "m1"},
        rpm=5,
        tpm=100,
        budget=1.5,
        budget_period="day",
        priority="low",
        expires_at=9e9,
        metadata={"team": ["a", 1]},
    )
    await store.create_key(record)
    assert await store.get_key("key_b") == record
    for name in ("key_a", "key_c"):
        await store.create_key(key(name))
    await store.update_key(attrs.evolve(record, revoked_at=1.0))
    assert [k.id for k in await store.list_keys(limit=2)] == ["key_a", "key_b"]
    assert [k.id for k in await store.list_keys(after="key_b")] == ["key_c"]
    assert [k.id for k in await store.list_keys(revoked=False)] == ["key_a", "key_c"]
    with pytest.raises(integrity_error(store)):
        await store.create_key(key("key_a"))
    assert [k.id for k in await store.list_keys()] == ["key_a", "key_b", "key_c"]


async def test_spend_is_summed_per_group_over_days(store: Store) -> None:
    """Records add up per (day, key, model, provider); sums by key, model and day honour
    the from/to days and a key filter."""
    await store.add_spend([spent("k1", "m1", 1.0), spent("k1", "m1", 2.0), spent("k2", "m2", 4.0)])
    await store.add_spend([spent("k1", "m2", 8.0, day="2026-01-05")])
    by_key = {r.group: (r.requests, r.cost) for r in await store.spend("key")}
    assert by_key == {"k1": (3, 11.0), "k2": (1, 4.0)}
    by_model = {r.group: r.cost for r in await store.spend("model", until="2026-01-04")}
    assert by_model == {"m1": 3.0, "m2": 4.0}
    by_day = {r.group: r.cost for r in await store.spend("day", key_id="k1")}
    assert by_day == {"2026-01-02": 3.0, "2026-01-05": 8.0}
    (row,) = await store.spend("provider", since="2026-01-03")
    assert (row.group, row.prompt_tokens, row.cached_tokens, row.reasoning_tokens) == (
        "up",
        10,
        2,
        1,
    )
    assert all(type(n) is int for n in attrs.astuple(row)[1:6])


async def test_an_unreachable_database_fails_typed_and_recovers(tmp_path: Path) -> None:
    """A database whose directory cannot exist raises StorageUnavailable; once the
    directory is there, the same store opens and works."""
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    store = SqliteStore(str(blocker / "db.sqlite"))
    with pytest.raises(StorageUnavailable, match="unable to open"):
        await store.add_spend([spent("k", "m", 1.0)])
    blocker.unlink()
    blocker.mkdir()
    await store.add_spend([spent("k", "m", 1.0)])
    assert [r.cost for r in await store.spend("key")] == [1.0]
    await store.aclose()


async def test_an_old_postgres_database_is_upgraded_and_keeps_its_keys(
    postgres_server: str,
) -> None:
    """A PostgreSQL database at schema version 1 goes through the same versions as SQLite's
    when opened, and keeps its keys."""
    import psycopg

    assert len(POSTGRES_MIGRATIONS) == len(MIGRATIONS)
    with psycopg.connect(postgres_server, autocommit=True) as connection:
        assert migrate_postgres(connection, upto=1) == 1
        connection.execute(
            "INSERT INTO keys VALUES (%s, %s, 'abcd', 'old', '', '[]', '{}', NULL, NULL, NULL,"
            " 'month', NULL, NULL, '{}', 0, NULL)",
            ("key_1", b"d" * 32),
        )
    store = PostgresStore(postgres_server)
    await store.open()
    found = await store.get_key("key_1")
    assert found is not None
    assert (found.label, found.hint, found.digest) == ("old", "abcd", b"d" * 32)
    await store.add_spend([spent("key_1", "m", 0.5)])
    assert [r.cost for r in await store.spend("key")] == [0.5]
    await store.aclose()
    with psycopg.connect(postgres_server) as connection:
        rows = connection.execute("SELECT version FROM schema_version ORDER BY 1").fetchall()
    assert [v for (v,) in rows] == list(range(1, len(MIGRATIONS) + 1))


async def test_a_lost_postgres_server_fails_typed_and_recovers(
    postgres_cluster: PostgresServer, postgres_server: str
) -> None:
    """With the server stopped under an open connection, calls raise StorageUnavailable
    (never the connection string); once it is back the same store reconnects and works."""
    store = PostgresStore(postgres_server)
    await store.add_spend([spent("k", "m", 1.0)])
    postgres_cluster.stop()
    try:
        for _ in range(2):  # the lost connection, then a refused one
            with pytest.raises(StorageUnavailable, match="postgres") as failed:
                await store.add_spend([spent("k", "m", 2.0)])
            assert postgres_server not in str(failed.value)
    finally:
        postgres_cluster.start()
    await store.add_spend([spent("k", "m", 4.0)])
    assert [r.cost for r in await store.spend("key")] == [5.0]
    await store.aclose()


def test_the_postgres_backend_needs_a_dsn_kept_secret() -> None:
    """``backend = "postgres"`` without a dsn is refused; with one, the store gets it and
    neither the configuration's nor the store's repr shows it."""
    with pytest.raises(ValueError, match="dsn"):
        StorageConfig(backend="postgres")
    dsn = "postgresql://u:hunter2@db:5432/gw"
    config = StorageConfig(backend="postgres", dsn=Secret(dsn))
    made = store_for(config)
    assert isinstance(made, PostgresStore)
    assert made.dsn == dsn
    assert "hunter2" not in repr(config) + repr(made)


async def test_a_malformed_dsn_fails_typed_without_showing_it() -> None:
    """A connection string libpq cannot parse raises StorageUnavailable naming ``dsn``,
    and neither the message nor a chained exception shows the password in it."""
    store = PostgresStore("postgresql://u:hun ter2@127.0.0.1:1/gw")
    with pytest.raises(StorageUnavailable, match="dsn") as failed:
        await store.open()
    assert "ter2" not in str(failed.value)
    assert failed.value.__cause__ is None
    assert failed.value.__suppress_context__


def test_the_postgres_dsn_comes_from_the_environment_and_is_masked() -> None:
    """``dsn = "${PG_DSN}"`` in TOML reads the environment; the configuration's dump masks
    it; ``backend = "postgres"`` with no dsn is a configuration error naming ``dsn``."""
    dsn = "postgresql://u:hunter2@db/gw"
    toml = '[storage]\nbackend = "postgres"\ndsn = "${PG_DSN}"\n'
    config = parse_config(toml, env={"PG_DSN": dsn})
    assert config.storage.dsn is not None
    assert config.storage.dsn.reveal() == dsn
    assert "hunter2" not in str(dump_config(config))
    with pytest.raises(ConfigError, match="dsn"):
        parse_config('[storage]\nbackend = "postgres"\n')


def test_store_for_the_backend_and_the_default_is_off() -> None:
    """By default there is no store (no file, no layer); a path turns SQLite on; ``sqlite``
    with no path is in memory; ``none`` is off even with a path."""
    assert store_for(StorageConfig()) is None
    on_disk = store_for(StorageConfig(path="/somewhere/db.sqlite"))
    assert isinstance(on_disk, SqliteStore)
    assert on_disk.path == "/somewhere/db.sqlite"
    in_memory = store_for(StorageConfig(backend="sqlite"))
    assert isinstance(in_memory, SqliteStore)
    assert in_memory.path is None
    assert store_for(StorageConfig(backend="none", path="/x")) is None


@pytest.mark.parametrize(
    ("period", "start"),
    [("day", "2026-03-18"), ("week", "2026-03-16"), ("month", "2026-03-01"), ("total", None)],
)
def test_period_start_is_the_calendar_periods_first_day(period: str, start: str | None) -> None:
    """A budget period starts on the UTC day, the Monday, the 1st, or never."""
    wednesday = 1_773_835_200.0  # 2026-03-18 12:00 UTC
    assert period_start(period, wednesday) == start


@attrs.define
class FlakyStore:
    """A store whose spend writes fail while ``down``; it keeps what it was given."""

    down: bool = False
    written: list[SpendRecord] = attrs.field(factory=list)

    async def add_spend(self, records: Sequence[SpendRecord]) -> None:
        await trio.lowlevel.checkpoint()
        if self.down:
            raise StorageUnavailable("down")
        self.written += records


async def test_writer_drops_and_counts_past_capacity_and_recovers() -> None:
    """While the store is down records stay buffered up to the capacity (more are dropped
    and counted); once it is back they are all written."""
    store = FlakyStore(down=True)
    writer = SpendWriter(store, StorageConfig(buffer_capacity=3, flush_batch=2))  # type: ignore[arg-type]
    for cost in range(5):
        writer.add(spent("k", "m", float(cost)))
    assert not await writer.flush()
    stats = writer.statistics()
    assert (stats.buffered, stats.dropped, stats.failures, stats.up) == (3, 2, 1, 0)
    store.down = False
    assert await writer.flush()
    assert [r.cost for r in store.written] == [0.0, 1.0, 2.0]
    assert writer.statistics().written == 3
    assert writer.statistics().up == 1


async def test_writer_flushes_on_its_interval_and_when_a_batch_fills(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The background task writes every flush_interval, sooner once flush_batch records
    wait, and writes what is left when it is cancelled."""
    store = FlakyStore()
    writer = SpendWriter(store, StorageConfig(flush_interval=10.0, flush_batch=2))  # type: ignore[arg-type]
    async with trio.open_nursery() as nursery:
        await nursery.start(writer.run)
        writer.add(spent("k", "m", 1.0))
        await trio.sleep(5)
        assert store.written == []  # one record, interval not up
        writer.add(spent("k", "m", 2.0))  # a full batch: written at once
        await trio.sleep(0.1)
        assert len(store.written) == 2
        writer.add(spent("k", "m", 3.0))
        await trio.sleep(11)
        assert len(store.written) == 3
        writer.add(spent("k", "m", 4.0))
        nursery.cancel_scope.cancel()
    assert len(store.written) == 4


async def test_a_spend_batch_is_one_upsert_per_group() -> None:
    """A batch of 300 records in two groups is written as two upserts (summed first: a
    statement step per record cost the writer's thread), and the sums are those of all."""
    store = SqliteStore()
    await store.open()
    executed: list[str] = []
    assert store._connection is not None  # the store's own connection, to watch its statements
    store._connection.set_trace_callback(executed.append)
    records = [spent("k1", "m1", 0.25) for _ in range(200)] + [spent("k2", "m1", 0.5)] * 100
    await store.add_spend(records)
    store._connection.set_trace_callback(None)
    assert len([s for s in executed if s.lstrip().startswith("INSERT INTO spend")]) == 2
    by_key = {r.group: (r.requests, r.prompt_tokens, r.cost) for r in await store.spend("key")}
    assert by_key == {"k1": (200, 200 * 10, 50.0), "k2": (100, 100 * 10, 50.0)}
    await store.aclose()


def test_day_of_names_the_utc_day_of_any_time() -> None:
    """day_of (which keeps the last day it named) agrees with datetime's UTC day for times
    around midnights, far apart and in any order."""
    midnight = 1_767_225_600.0  # 2026-01-01T00:00:00Z
    times = [midnight + d for d in (-86_400.5, -1e-6, 0.0, 1e-6, 86_399.999, 86_400.0, 5e6)]
    times += [0.0, -1.5, 4e9, midnight + 3.0]
    for when in times:
        expected = datetime.datetime.fromtimestamp(when, datetime.UTC).date().isoformat()
        assert day_of(when) == expected, when
