"""What the gateway keeps in storage, and the interface every backend offers.

The interface is by use -- virtual keys, spend -- never raw SQL, so that a server database
(PostgreSQL) and further tables (a request log) slot in beside the embedded SQLite store.
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping, Sequence
from typing import Any, Literal, Protocol

import attrs

from ..errors import OrchestratorError

__all__ = [
    "GROUPS",
    "OUTCOMES",
    "PERIODS",
    "ExperimentRecord",
    "KeyRecord",
    "RequestFilter",
    "RequestRecord",
    "SpendRecord",
    "SpendRow",
    "StorageUnavailable",
    "Store",
    "VariantSums",
    "day_of",
    "period_bounds",
    "period_start",
]

PERIODS = ("day", "week", "month", "total")
"""A budget's period: calendar UTC day, ISO week, month, or never restarting."""
GROUPS = ("key", "model", "provider", "day")
"""What spend can be summed by."""

OUTCOMES = ("completed", "failed", "rejected", "cancelled", "timed_out")
"""How a logged request ended: answered; failed upstream or in the gateway; refused by the
gateway before any upstream was asked (budget, the key's limits, the service full); the
client went away or the gateway shut down; past its deadline."""

GroupBy = Literal["key", "model", "provider", "day"]


class StorageUnavailable(OrchestratorError):
    """The store could not be opened, read or written (the message says why)."""


@attrs.frozen
class KeyRecord:
    """One virtual key, as stored (its secret never is: only its SHA-256 digest).

    Attributes:
        id: the key's public id (``key_`` and 16 hex digits); the ``api_key_id`` its
            requests carry, hence what rate limits, budgets and spend are counted by.
        digest: the SHA-256 digest of the secret.
        hint: the secret's last 4 characters, to tell keys apart in a listing.
        label: a name for people.
        owner: who it was issued to.
        models: the models it may ask for (after ``aliases``); empty: any model.
        aliases: model names it may use for others (``{"fast": "gpt-4o-mini"}``).
        rpm: requests per minute it may send (None: no limit of its own).
        tpm: tokens per minute it may use (None: no limit of its own).
        budget: US dollars it may spend per ``budget_period`` (None: no budget).
        budget_period: ``day``, ``week``, ``month`` (UTC calendar) or ``total``.
        priority: the highest priority of its requests (``critical`` … ``low``), or None.
        expires_at: Unix time after which it is refused (None: never).
        metadata: anything the operator wants to keep with it (JSON).
        created_at: Unix time it was created.
        revoked_at: Unix time it was revoked (None: live).
    """

    id: str
    digest: bytes = attrs.field(repr=False)
    hint: str = ""
    label: str = ""
    owner: str = ""
    models: tuple[str, ...] = ()
    aliases: Mapping[str, str] = attrs.field(factory=dict, hash=False)
    rpm: int | None = None
    tpm: int | None = None
    budget: float | None = None
    budget_period: str = "month"
    priority: str | None = None
    expires_at: float | None = None
    metadata: Mapping[str, Any] = attrs.field(factory=dict, hash=False)
    created_at: float = 0.0
    revoked_at: float | None = None

    def live(self, now: float) -> bool:
        """Not revoked, and not expired at Unix time ``now``."""
        expired = self.expires_at is not None and now >= self.expires_at
        return self.revoked_at is None and not expired


@attrs.frozen
class SpendRecord:
    """What requests cost, charged to a key, model, provider and UTC day.

    Attributes:
        day: the UTC day, ``YYYY-MM-DD``.
        key_id: the caller's key id (``""`` for an anonymous caller).
        model: the model the request asked for.
        provider: the provider that served it.
        requests: requests counted.
        prompt_tokens: input tokens, cached ones included.
        cached_tokens: of those, read from the provider's prompt cache.
        completion_tokens: generated tokens, reasoning included.
        reasoning_tokens: of those, spent on reasoning.
        cost: US dollars.
    """

    day: str
    key_id: str
    model: str
    provider: str
    requests: int = 1
    prompt_tokens: int = 0
    cached_tokens: int = 0
    completion_tokens: int = 0
    reasoning_tokens: int = 0
    cost: float = 0.0


@attrs.frozen
class SpendRow:
    """Spend summed over one group (a key, a model, a provider or a day)."""

    group: str
    requests: int
    prompt_tokens: int
    cached_tokens: int
    completion_tokens: int
    reasoning_tokens: int
    cost: float


@attrs.frozen
class RequestRecord:
    """One request, as the request log keeps it (``GET /v1/admin/requests``).

    Attributes:
        id: the request id the client saw (``x-request-id``).
        created: Unix time the request ended.
        key_id: the caller's key id (``""`` for an anonymous caller).
        model: the model the request asked for.
        served_model: the model the upstream said answered (None when none did).
        provider: the label of the provider that served (or was to serve) it.
        outcome: one of :data:`OUTCOMES`.
        status: the HTTP status the client got (200 when completed).
        error_type: the OpenAI error code it got (``insufficient_quota``…), None when completed.
        prompt_tokens: input tokens, cached ones included.
        cached_tokens: of those, read from the provider's prompt cache.
        completion_tokens: generated tokens, reasoning included.
        reasoning_tokens: of those, spent on reasoning.
        cost: US dollars, priced as spend is.
        latency_ms: milliseconds from the pipeline's admission to the end.
        ttft_ms: milliseconds to the first event from the worker (None when none came).
        attempts: upstream calls made (retries and fallbacks included; 0: none was made).
        fallbacks: further deployments the router tried.
        cache_hit: answered from a cache.
        coalesced: answered by joining an identical request's upstream call.
        stream: the client asked for a stream.
        request: the prompt (JSON text, redacted and truncated), only with content logging.
        response: the answer's text (redacted and truncated), only with content logging.
    """

    id: str
    created: float
    key_id: str = ""
    model: str = ""
    served_model: str | None = None
    provider: str = ""
    outcome: str = "completed"
    status: int = 200
    error_type: str | None = None
    prompt_tokens: int = 0
    cached_tokens: int = 0
    completion_tokens: int = 0
    reasoning_tokens: int = 0
    cost: float = 0.0
    latency_ms: float = 0.0
    ttft_ms: float | None = None
    attempts: int = 0
    fallbacks: int = 0
    cache_hit: bool = False
    coalesced: bool = False
    stream: bool = False
    request: str | None = None
    response: str | None = None


@attrs.frozen
class RequestFilter:
    """Which logged requests to read; None matches anything.

    Attributes:
        key_id: of this key.
        model: that asked for this model.
        provider: served by this provider.
        outcome: that ended so (one of :data:`OUTCOMES`).
        status: that got this HTTP status.
        since: that ended at or after this Unix time.
        until: that ended before this Unix time.
        id: with this request id.
        before: the page cursor: strictly older than this ``(created, id)``.
    """

    key_id: str | None = None
    model: str | None = None
    provider: str | None = None
    outcome: str | None = None
    status: int | None = None
    since: float | None = None
    until: float | None = None
    id: str | None = None
    before: tuple[float, str] | None = None


@attrs.frozen
class VariantSums:
    """The running sums of one experiment variant's outcomes (what the statistics are
    computed from, so that they survive a restart).

    Attributes:
        variant: the variant's name.
        requests: requests finished.
        errors: of those, failed.
        latency_sum: the sum of their latencies, seconds.
        log_latency_sum: the sum of their log latencies.
        log_latency_squares: the sum of their squared log latencies.
        cost: US dollars.
        tokens: input and output tokens.
        feedback_n: feedback scores received.
        feedback_sum: their sum.
        feedback_squares: the sum of their squares.
    """

    variant: str
    requests: int = 0
    errors: int = 0
    latency_sum: float = 0.0
    log_latency_sum: float = 0.0
    log_latency_squares: float = 0.0
    cost: float = 0.0
    tokens: int = 0
    feedback_n: int = 0
    feedback_sum: float = 0.0
    feedback_squares: float = 0.0


@attrs.frozen
class ExperimentRecord:
    """An experiment's state as stored: its status and its variants' sums.

    Attributes:
        id: the experiment's id.
        status: ``running``, ``rolled_back`` or ``stopped``.
        reason: why it is not running (``""`` while it is).
        changed_at: Unix time of the last status change (None: never changed).
        variants: each variant's sums (as totals when read; as increments when written).
    """

    id: str
    status: str = "running"
    reason: str = ""
    changed_at: float | None = None
    variants: tuple[VariantSums, ...] = ()


class Store(Protocol):
    """Operator state. Every method may raise :class:`StorageUnavailable`."""

    async def create_key(self, record: KeyRecord) -> None:
        """Add a new key (its id must be new)."""
        ...

    async def update_key(self, record: KeyRecord) -> None:
        """Replace the stored key of the same id."""
        ...

    async def get_key(self, key_id: str) -> KeyRecord | None:
        """The key with this id, revoked or not, or None."""
        ...

    async def list_keys(
        self, *, after: str | None = None, limit: int | None = None, revoked: bool = True
    ) -> list[KeyRecord]:
        """Keys in id order, those after the id ``after``, at most ``limit`` of them."""
        ...

    async def add_spend(self, records: Sequence[SpendRecord]) -> None:
        """Add these records' numbers to the totals (one transaction)."""
        ...

    async def spend(
        self,
        group_by: GroupBy,
        *,
        since: str | None = None,
        until: str | None = None,
        key_id: str | None = None,
    ) -> list[SpendRow]:
        """Spend summed per group, over the days ``since``..``until`` (inclusive, UTC
        ``YYYY-MM-DD``; None: unbounded), of one key or of all."""
        ...

    async def add_requests(self, records: Sequence[RequestRecord]) -> None:
        """Append these request log records (one transaction)."""
        ...

    async def requests(self, where: RequestFilter, limit: int) -> list[RequestRecord]:
        """Logged requests matching ``where``, newest first (by ``created``, then id), at
        most ``limit``."""
        ...

    async def prune_requests(self, *, before: float | None, keep: int | None) -> int:
        """Delete logged requests that ended before Unix time ``before`` and all but the
        newest ``keep`` (None: no such bound); the number deleted."""

    async def add_experiments(self, records: Sequence[ExperimentRecord]) -> None:
        """Set each experiment's status and add its variants' sums (increments) to the
        stored totals (one transaction)."""
        ...

    async def experiments(self) -> list[ExperimentRecord]:
        """Every stored experiment, its variants' sums as totals, in id order."""
        ...

    async def aclose(self) -> None:
        """Close the store."""
        ...


# The last day :func:`day_of` named, as (its first second, the next day's, its name): spend
# asks for the day of every completed request, nearly always the same day as the last.
_last_day: tuple[float, float, str] = (0.0, 0.0, "")


def day_of(when: float) -> str:
    """The UTC day of Unix time ``when``, as ``YYYY-MM-DD``."""
    global _last_day
    start, end, name = _last_day
    if start <= when < end:
        return name
    day = datetime.datetime.fromtimestamp(when, datetime.UTC).date()
    # Unix time has no leap seconds: a UTC day is 86400 of its seconds, from a multiple.
    start = (when // 86_400) * 86_400
    _last_day = (start, start + 86_400, day.isoformat())
    return _last_day[2]


def period_bounds(period: str, when: float) -> tuple[str | None, float | None]:
    """The budget ``period`` holding Unix time ``when``: its first UTC day (``YYYY-MM-DD``)
    and the Unix time the next one begins; both None for ``total``, which never restarts.
    Weeks begin on Monday, months on the 1st."""
    day = datetime.datetime.fromtimestamp(when, datetime.UTC).date()
    if period == "day":
        start, end = day, day + datetime.timedelta(days=1)
    elif period == "week":
        start = day - datetime.timedelta(days=day.weekday())
        end = start + datetime.timedelta(days=7)
    elif period == "month":
        start = day.replace(day=1)
        end = (start + datetime.timedelta(days=32)).replace(day=1)
    else:
        return None, None
    midnight = datetime.datetime.combine(end, datetime.time(), datetime.UTC)
    return start.isoformat(), midnight.timestamp()


def period_start(period: str, when: float) -> str | None:
    """The first UTC day of the budget ``period`` holding Unix time ``when`` (None for
    ``total``); see :func:`period_bounds`."""
    return period_bounds(period, when)[0]
