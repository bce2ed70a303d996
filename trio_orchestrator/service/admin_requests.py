"""``GET /v1/admin/requests``: the request log, filtered, newest first, a page at a time;
``GET /v1/admin/requests/{id}``: one record.

Pages are cut by an opaque cursor (``next_cursor`` in an answer, ``cursor`` in the next
query): the position of the last record given, so records logged meanwhile never shift a
page. Buffered records are written before a read, so an answer includes every request that
ended before it.
"""

from __future__ import annotations

import base64
import binascii
import datetime
import json
import math
from typing import Any

import attrs
from starlette.requests import Request
from starlette.responses import Response

from .. import errors as e
from ..events import EventGrammarError
from ..storage import OUTCOMES, RequestFilter, RequestRecord, StorageUnavailable
from .admin_keys import admin_store
from .errors import ApiError, map_exception
from .jsonenc import JSONResponse
from .validate import invalid

__all__ = ["error_status", "get_request", "list_requests", "record_json"]

MAX_PAGE = 1000
DEFAULT_PAGE = 100
_FILTERS = ("key", "key_id", "model", "provider", "outcome", "status", "since", "until")
_PARAMETERS = frozenset((*_FILTERS, "request_id", "limit", "cursor"))
# Optional members: present only when content logging kept them.
_CONTENT = ("request", "response")


def error_status(error: BaseException) -> tuple[int, str]:
    """The HTTP status and OpenAI error code a client got for ``error`` (the request log's
    ``status`` and ``error_type``), by the service's own mapping."""
    typed = isinstance(error, e.OrchestratorError | EventGrammarError | ApiError)
    if not typed or (isinstance(error, e.WorkerCrashed) and _untyped_cause(error)):
        # map_exception would log the traceback again: it was logged when answered.
        return 500, "internal_error"
    api = map_exception(error)
    return api.status, api.code or api.type


def _untyped_cause(error: BaseException) -> bool:
    cause = error.__cause__
    return not isinstance(cause, e.OrchestratorError | EventGrammarError) or isinstance(
        cause, e.WorkerCrashed
    )


def record_json(record: RequestRecord) -> dict[str, Any]:
    """One record as the API shows it (``request``/``response`` only when kept)."""
    data = attrs.asdict(record)
    for name in _CONTENT:
        if data[name] is None:
            del data[name]
    return data


def _storage_error(exc: StorageUnavailable) -> ApiError:
    message = "storage is unavailable; the request log cannot be read (the server log says why)"
    return ApiError(503, message, "service_unavailable", "storage_unavailable", retry_after=1)


def _time(value: str | None, path: str) -> float | None:
    """A Unix time, or an ISO 8601 date or time (UTC unless it says otherwise)."""
    if value is None:
        return None
    expected = "a Unix time or an ISO 8601 date/time"
    try:
        number = float(value)
    except ValueError:
        try:
            when = datetime.datetime.fromisoformat(value)
        except ValueError:
            raise invalid(path, expected, value) from None
        if when.tzinfo is None:
            when = when.replace(tzinfo=datetime.UTC)
        return when.timestamp()
    if not math.isfinite(number):
        raise invalid(path, expected, value)
    return number


def _integer(value: str | None, path: str, low: int, high: int) -> int | None:
    if value is None:
        return None
    try:
        number = int(value)
    except ValueError:
        number = low - 1
    if not low <= number <= high:
        raise invalid(path, f"a whole number from {low} to {high}", value)
    return number


def encode_cursor(record: RequestRecord) -> str:
    """The cursor of the page after ``record``."""
    raw = json.dumps([record.created, record.id], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_cursor(value: str | None) -> tuple[float, str] | None:
    if value is None:
        return None
    try:
        raw = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
        created, request_id = json.loads(raw)
        if isinstance(created, int | float) and isinstance(request_id, str):
            return float(created), request_id
    except (binascii.Error, ValueError, TypeError, UnicodeDecodeError):
        pass
    raise invalid("cursor", "a `next_cursor` of an earlier answer", value)


def _filter(request: Request) -> tuple[RequestFilter, int]:
    query = request.query_params
    unknown = sorted(set(query) - _PARAMETERS)
    if unknown:
        raise invalid(unknown[0], "absent: filters are " + ", ".join(sorted(_PARAMETERS)), "")
    outcome = query.get("outcome")
    if outcome is not None and outcome not in OUTCOMES:
        raise invalid("outcome", "one of " + ", ".join(OUTCOMES), outcome)
    since, until = _time(query.get("since"), "since"), _time(query.get("until"), "until")
    where = RequestFilter(
        key_id=query.get("key", query.get("key_id")),
        model=query.get("model"),
        provider=query.get("provider"),
        outcome=outcome,
        status=_integer(query.get("status"), "status", 0, 599),
        since=since,
        until=until,
        id=query.get("request_id"),
        before=_decode_cursor(query.get("cursor")),
    )
    limit = _integer(query.get("limit"), "limit", 1, MAX_PAGE) or DEFAULT_PAGE
    return where, limit


async def _read(request: Request, where: RequestFilter, limit: int) -> list[RequestRecord]:
    gateway, store = admin_store(request)
    if gateway.request_log is None:
        message = "the request log is off: set [storage] log_requests = true"
        raise ApiError(404, message, code="request_log_disabled")
    await gateway.request_log.flush()
    try:
        return await store.requests(where, limit)
    except StorageUnavailable as exc:
        raise _storage_error(exc) from exc


async def list_requests(request: Request) -> Response:
    """``GET /v1/admin/requests?key=&model=&provider=&outcome=&status=&since=&until=
    &request_id=&limit=&cursor=``: logged requests, newest first, at most ``limit``
    (default 100, at most 1000), with ``next_cursor`` for the next page (null after the
    last). ``since``/``until`` are Unix times or ISO 8601 dates/times (UTC by default)."""
    where, limit = _filter(request)
    records = await _read(request, where, limit + 1)
    more = len(records) > limit
    records = records[:limit]
    return JSONResponse(
        {
            "object": "list",
            "data": [record_json(r) for r in records],
            "next_cursor": encode_cursor(records[-1]) if more else None,
        }
    )


async def get_request(request: Request) -> Response:
    """``GET /v1/admin/requests/{id}``: the record of one request (404 when none is kept)."""
    request_id = request.path_params["id"]
    records = await _read(request, RequestFilter(id=request_id), 1)
    if not records:
        message = f"no request with the id {request_id!r} is in the request log"
        raise ApiError(404, message, code="request_not_found", param="id")
    return JSONResponse(record_json(records[0]))
