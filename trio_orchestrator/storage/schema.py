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
import operator
from collections.abc import Callable, Sequence
from typing import Any, Literal

import attrs

from .base import (
    ExperimentRecord,
    KeyRecord,
    RequestFilter,
    RequestRecord,
    SpendRecord,
    VariantSums,
)

__all__ = [
    "GROUP_COLUMN",
    "KEY_COLUMNS",
    "REQUEST_COLUMNS",
    "SCHEMA",
    "SELECT_EXPERIMENTS",
    "SELECT_VARIANTS",
    "VARIANT_SUMS",
    "experiment_rows",
    "experiments_of",
    "key_of",
    "key_row",
    "migrations",
    "prune_statements",
    "request_of",
    "request_query",
    "request_row",
    "spend_row",
    "spend_rows",
    "statements",
    "upgrade",
    "upsert_status",
    "upsert_sums",
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
    # 3: the request log, one row per request; an index per filter, each ending in the
    # time the pages are ordered by.
    """
    CREATE TABLE requests (
        id TEXT NOT NULL,
        created {real} NOT NULL,
        key_id TEXT NOT NULL,
        model TEXT NOT NULL,
        served_model TEXT,
        provider TEXT NOT NULL,
        outcome TEXT NOT NULL,
        status INTEGER NOT NULL,
        error_type TEXT,
        prompt_tokens {bigint} NOT NULL,
        cached_tokens {bigint} NOT NULL,
        completion_tokens {bigint} NOT NULL,
        reasoning_tokens {bigint} NOT NULL,
        cost {real} NOT NULL,
        latency_ms {real} NOT NULL,
        ttft_ms {real},
        attempts INTEGER NOT NULL,
        fallbacks INTEGER NOT NULL,
        cache_hit INTEGER NOT NULL,
        coalesced INTEGER NOT NULL,
        stream INTEGER NOT NULL,
        request TEXT,
        response TEXT
    );
    CREATE INDEX requests_by_time ON requests (created, id);
    CREATE INDEX requests_by_id ON requests (id);
    CREATE INDEX requests_by_key ON requests (key_id, created);
    CREATE INDEX requests_by_model ON requests (model, created);
    CREATE INDEX requests_by_provider ON requests (provider, created);
    CREATE INDEX requests_by_outcome ON requests (outcome, created);
    CREATE INDEX requests_by_status ON requests (status, created);
    """,
    # 4: experiments: each one's status, and its variants' running sums.
    """
    CREATE TABLE experiments (
        id TEXT PRIMARY KEY,
        status TEXT NOT NULL,
        reason TEXT NOT NULL,
        changed_at {real}
    );
    CREATE TABLE experiment_variants (
        experiment TEXT NOT NULL,
        variant TEXT NOT NULL,
        requests {bigint} NOT NULL,
        errors {bigint} NOT NULL,
        latency_sum {real} NOT NULL,
        log_latency_sum {real} NOT NULL,
        log_latency_squares {real} NOT NULL,
        cost {real} NOT NULL,
        tokens {bigint} NOT NULL,
        feedback_n {bigint} NOT NULL,
        feedback_sum {real} NOT NULL,
        feedback_squares {real} NOT NULL,
        PRIMARY KEY (experiment, variant)
    );
    """,
    # 5: the request log's outcome and status indexes hold only what a healthy log has
    # few of -- the requests not completed, not answered 200 -- and are filtered for:
    # every index is one more B-tree insert per request in the writer's thread, and
    # these two were the most of them for the least use (a filter for the common
    # "completed" or 200 walks the time index, nearly every row of which matches).
    # :func:`request_query` spells out the index's condition so the planner takes it.
    """
    DROP INDEX requests_by_outcome;
    DROP INDEX requests_by_status;
    CREATE INDEX requests_by_outcome ON requests (outcome, created)
        WHERE outcome <> 'completed';
    CREATE INDEX requests_by_status ON requests (status, created) WHERE status <> 200;
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
VARIANT_SUMS = (
    "requests",
    "errors",
    "latency_sum",
    "log_latency_sum",
    "log_latency_squares",
    "cost",
    "tokens",
    "feedback_n",
    "feedback_sum",
    "feedback_squares",
)
"""The ``experiment_variants`` columns that are sums, in :class:`~.base.VariantSums` order."""
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


_REQUEST_NAMES = tuple(field.name for field in attrs.fields(RequestRecord))
REQUEST_COLUMNS = ", ".join(_REQUEST_NAMES)
"""The ``requests`` table's columns, in the order of :func:`request_row`."""
_FLAGS = frozenset(("cache_hit", "coalesced", "stream"))  # stored as 0/1 in both dialects
# One C-level call per record rather than ``attrs.astuple``'s loop over fields, which
# cost more than the record's SQLite insert (the writer builds a row per request).
_REQUEST_VALUES = operator.attrgetter(*_REQUEST_NAMES)
_FLAG_INDEXES = tuple(i for i, name in enumerate(_REQUEST_NAMES) if name in _FLAGS)
_SPEND_VALUES = operator.attrgetter(*(field.name for field in attrs.fields(SpendRecord)))


def request_row(record: RequestRecord) -> tuple[Any, ...]:
    """``record`` as the ``requests`` table's row (flags as 0/1)."""
    row = list(_REQUEST_VALUES(record))
    for index in _FLAG_INDEXES:
        row[index] = int(row[index])
    return tuple(row)


def spend_row(record: SpendRecord) -> tuple[Any, ...]:
    """``record`` as the spend upsert's arguments (its fields in order)."""
    row: tuple[Any, ...] = _SPEND_VALUES(record)
    return row


def spend_rows(records: Sequence[SpendRecord]) -> list[tuple[Any, ...]]:
    """The spend upsert's arguments for ``records``, one row per (day, key, model,
    provider): the records of a group summed first.

    Why: a batch is mostly one key's requests to one model, and each upsert row costs a
    statement step in the writer's thread (a conflict resolved, an index seek and, in
    SQLite, a release and retake of the GIL); summed, a batch of hundreds is a few rows.
    """
    sums: dict[tuple[Any, ...], list[Any]] = {}
    for record in records:
        row = _SPEND_VALUES(record)
        group = row[:4]
        found = sums.get(group)
        if found is None:
            sums[group] = list(row)
        else:
            for index in range(4, len(row)):
                found[index] += row[index]
    return [tuple(row) for row in sums.values()]


def request_of(row: Sequence[Any]) -> RequestRecord:
    """The record a ``requests`` row (its :data:`REQUEST_COLUMNS`) holds."""
    names = REQUEST_COLUMNS.split(", ")
    values: dict[str, Any] = {
        n: bool(v) if n in _FLAGS else v for n, v in zip(names, row, strict=True)
    }
    return RequestRecord(**values)


def request_query(where: RequestFilter, limit: int, mark: str) -> tuple[str, list[Any]]:
    """The ``SELECT`` of the logged requests ``where`` matches, newest first, and its
    arguments; ``mark`` is the dialect's placeholder (``?`` or ``%s``)."""
    clauses, arguments = ["1 = 1"], []
    for column in ("key_id", "model", "provider", "outcome", "status", "id"):
        value = getattr(where, column)
        if value is not None:
            clauses.append(f"{column} = {mark}")
            arguments.append(value)
    # The outcome and status indexes are partial (migration 5): a planner takes one only
    # for a query whose WHERE states the index's own condition, which a bound value does
    # not show it.
    if where.outcome is not None and where.outcome != "completed":
        clauses.append("outcome <> 'completed'")
    if where.status is not None and where.status != 200:
        clauses.append("status <> 200")
    if where.since is not None:
        clauses.append(f"created >= {mark}")
        arguments.append(where.since)
    if where.until is not None:
        clauses.append(f"created < {mark}")
        arguments.append(where.until)
    if where.before is not None:
        created, request_id = where.before
        clauses.append(f"(created < {mark} OR (created = {mark} AND id < {mark}))")
        arguments.extend((created, created, request_id))
    query = (
        f"SELECT {REQUEST_COLUMNS} FROM requests WHERE {' AND '.join(clauses)} "
        f"ORDER BY created DESC, id DESC LIMIT {int(limit)}"
    )
    return query, arguments


def prune_statements(
    before: float | None, keep: int | None, mark: str
) -> list[tuple[str, tuple[Any, ...]]]:
    """The ``DELETE`` statements (and arguments) of :meth:`~.base.Store.prune_requests`."""
    deletes: list[tuple[str, tuple[Any, ...]]] = []
    if before is not None:
        deletes.append((f"DELETE FROM requests WHERE created < {mark}", (before,)))
    if keep is not None:
        # Everything older than the keep-th newest row (rows sharing its time stay).
        newest = (
            f"SELECT created FROM requests ORDER BY created DESC LIMIT 1 OFFSET {int(keep) - 1}"
        )
        deletes.append((f"DELETE FROM requests WHERE created < ({newest})", ()))
    return deletes


def upsert_sums(mark: str) -> str:
    """The statement adding one variant's sums to its row (``mark``: the dialect's
    placeholder), the same in both dialects."""
    columns = ", ".join(("experiment", "variant", *VARIANT_SUMS))
    marks = ", ".join([mark] * (2 + len(VARIANT_SUMS)))
    added = ", ".join(f"{c} = experiment_variants.{c} + excluded.{c}" for c in VARIANT_SUMS)
    return (
        f"INSERT INTO experiment_variants ({columns}) VALUES ({marks}) "
        f"ON CONFLICT (experiment, variant) DO UPDATE SET {added}"
    )


def upsert_status(mark: str) -> str:
    """The statement setting one experiment's status (``mark``: the placeholder)."""
    return (
        f"INSERT INTO experiments (id, status, reason, changed_at) VALUES ({mark}, {mark}, "
        f"{mark}, {mark}) ON CONFLICT (id) DO UPDATE SET status = excluded.status, "
        "reason = excluded.reason, changed_at = excluded.changed_at"
    )


SELECT_EXPERIMENTS = "SELECT id, status, reason, changed_at FROM experiments"
"""Every experiment's status row."""
SELECT_VARIANTS = f"SELECT experiment, variant, {', '.join(VARIANT_SUMS)} FROM experiment_variants"
"""Every variant's sums row."""


def experiment_rows(records: Sequence[ExperimentRecord]) -> tuple[list[Any], list[Any]]:
    """The status rows and the sums rows that write ``records``."""
    statuses = [(r.id, r.status, r.reason, r.changed_at) for r in records]
    sums = [
        (r.id, v.variant, *(getattr(v, c) for c in VARIANT_SUMS))
        for r in records
        for v in r.variants
    ]
    return statuses, sums


def experiments_of(
    statuses: Sequence[Sequence[Any]], sums: Sequence[Sequence[Any]]
) -> list[ExperimentRecord]:
    """The experiments these rows of :data:`SELECT_EXPERIMENTS` and
    :data:`SELECT_VARIANTS` hold, in id order (an experiment with sums but no status row
    is running)."""
    variants: dict[str, list[VariantSums]] = {}
    for row in sums:
        variants.setdefault(row[0], []).append(VariantSums(row[1], *row[2:]))
    status = {row[0]: row for row in statuses}
    records = []
    for name in sorted(set(status) | set(variants)):
        _, state, reason, changed_at = status.get(name, (name, "running", "", None))
        found = tuple(sorted(variants.get(name, ()), key=lambda v: v.variant))
        records.append(ExperimentRecord(name, state, reason, changed_at, found))
    return records
