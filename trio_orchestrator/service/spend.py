"""``GET /v1/admin/spend``: what requests cost, summed by key, model, provider or day."""

from __future__ import annotations

import datetime

from starlette.requests import Request
from starlette.responses import Response

from ..storage import GROUPS, StorageUnavailable
from .admin_keys import admin_store, storage_error
from .jsonenc import JSONResponse
from .validate import invalid

__all__ = ["spend"]


def _day(value: str | None, path: str) -> str | None:
    if value is None:
        return None
    try:
        return datetime.date.fromisoformat(value).isoformat()
    except ValueError:
        raise invalid(path, "a UTC day, YYYY-MM-DD", value) from None


async def spend(request: Request) -> Response:
    """``GET /v1/admin/spend?group_by=key|model|provider|day&from=&to=&key_id=``: sums of
    requests, tokens and US dollars per group over the UTC days ``from``..``to``
    (inclusive; either may be left out), of one key or of all. Buffered records are
    written first, so the answer includes every request completed before it."""
    gateway, store = admin_store(request)
    query = request.query_params
    group_by = query.get("group_by", "key")
    if group_by not in GROUPS:
        raise invalid("group_by", "one of " + ", ".join(GROUPS), group_by)
    since, until = _day(query.get("from"), "from"), _day(query.get("to"), "to")
    if gateway.spend is not None:
        await gateway.spend.flush()
    try:
        rows = await store.spend(
            group_by,  # type: ignore[arg-type]
            since=since,
            until=until,
            key_id=query.get("key_id"),
        )
    except StorageUnavailable as exc:
        raise storage_error(exc) from exc
    data = [
        {
            group_by: row.group,
            "requests": row.requests,
            "prompt_tokens": row.prompt_tokens,
            "cached_tokens": row.cached_tokens,
            "completion_tokens": row.completion_tokens,
            "reasoning_tokens": row.reasoning_tokens,
            "cost_usd": row.cost,
        }
        for row in rows
    ]
    return JSONResponse(
        {
            "object": "list",
            "group_by": group_by,
            "from": since,
            "to": until,
            "data": data,
            "total_cost_usd": sum(row.cost for row in rows),
        }
    )
