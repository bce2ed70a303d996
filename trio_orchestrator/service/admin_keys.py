"""``/v1/admin/keys``: virtual keys created, listed, read, updated, rotated and revoked at run
time (admin keys only: the guard's ``ADMIN_PREFIXES``).

A key's secret (``sk-to-`` and 32 random bytes, URL-safe) is answered once, at creation
and at rotation; the gateway keeps only its SHA-256 digest, and never logs it. Each change
is written to storage first, then to the in-memory table the guard and the key layer read
(:class:`~trio_orchestrator.routing.keys.VirtualKeys`), so it takes effect at once, and a
restart on the same database keeps it.
"""

from __future__ import annotations

import datetime
import hashlib
import logging
import math
import secrets
import time
from collections.abc import Mapping
from typing import Any

import attrs
from starlette.requests import Request
from starlette.responses import Response

from ..gateway import Gateway
from ..storage import PERIODS, KeyRecord, StorageUnavailable, Store
from .errors import ApiError
from .jsonenc import JSONResponse
from .state import service_of
from .validate import Fields, invalid, parse_json_object

__all__ = [
    "SECRET_PREFIX",
    "create_key",
    "get_key",
    "key_json",
    "list_keys",
    "revoke_key",
    "rotate_key",
    "update_key",
]

logger = logging.getLogger("trio_orchestrator.service")

SECRET_PREFIX = "sk-to-"
_PRIORITIES = ("critical", "high", "normal", "low")
_MAX_PAGE = 100
_MAX_PER_MINUTE = 1_000_000_000
# Expiry times the calendar functions can show: 1970 to the end of year 9999.
_LAST_TIME = 253_402_300_799.0
# The members a key is created or patched with.
_FIELDS = (
    "label",
    "owner",
    "models",
    "aliases",
    "rpm",
    "tpm",
    "budget",
    "budget_period",
    "priority",
    "expires_at",
    "metadata",
)


def new_secret() -> str:
    """A new key secret: the prefix and 32 random bytes, URL-safe base64."""
    return SECRET_PREFIX + secrets.token_urlsafe(32)


def _digest(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


def _iso(when: float | None) -> str | None:
    if when is None:
        return None
    return datetime.datetime.fromtimestamp(when, datetime.UTC).isoformat()


def key_json(record: KeyRecord, gateway: Gateway) -> dict[str, Any]:
    """A key as the admin API shows it: everything but its secret (and digest), with what
    it spent in its current budget period."""
    spent = gateway.keys.budgets.spent(record.id, record.budget_period)
    return {
        "id": record.id,
        "object": "api_key",
        "label": record.label,
        "owner": record.owner,
        "hint": record.hint,
        "models": list(record.models),
        "aliases": dict(record.aliases),
        "rpm": record.rpm,
        "tpm": record.tpm,
        "budget": record.budget,
        "budget_period": record.budget_period,
        "spend": spent if record.revoked_at is None else None,
        "priority": record.priority,
        "expires_at": _iso(record.expires_at),
        "metadata": dict(record.metadata),
        "created_at": _iso(record.created_at),
        "revoked_at": _iso(record.revoked_at),
    }


# ----------------------------------------------------------------- validation


def _string(value: object, path: str) -> str:
    if not isinstance(value, str) or len(value) > 200:
        raise invalid(path, "a string of at most 200 characters", value)
    return value


def _models(value: object) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(m, str) and m for m in value):
        raise invalid("models", "a list of model names (empty: any model)", value)
    return tuple(dict.fromkeys(value))


def _aliases(value: object) -> dict[str, str]:
    ok = isinstance(value, dict) and all(
        isinstance(k, str) and k and isinstance(v, str) and v for k, v in value.items()
    )
    if not ok:
        raise invalid("aliases", "an object mapping model names to model names", value)
    assert isinstance(value, dict)
    return dict(value)


def _per_minute(value: object, path: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= _MAX_PER_MINUTE:
        expected = f"a whole number from 1 to {_MAX_PER_MINUTE} per minute, or null for no limit"
        raise invalid(path, expected, value)
    return value


def _budget(value: object) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise invalid("budget", "US dollars ≥ 0, or null for no budget", value)
    if not math.isfinite(value) or value < 0:
        raise invalid("budget", "US dollars ≥ 0, or null for no budget", value)
    return float(value)


def _choice(value: object, path: str, choices: tuple[str, ...], nullable: bool) -> str | None:
    if value is None and nullable:
        return None
    if value not in choices:
        expected = "one of " + ", ".join(choices) + (", or null" if nullable else "")
        raise invalid(path, expected, value)
    assert isinstance(value, str)
    return value


def _expires_at(value: object) -> float | None:
    if value is None:
        return None
    when: float | None = None
    if isinstance(value, int | float) and not isinstance(value, bool):
        when = float(value)
    elif isinstance(value, str):
        try:
            moment = datetime.datetime.fromisoformat(value)
            if moment.tzinfo is None:
                moment = moment.replace(tzinfo=datetime.UTC)
            when = moment.timestamp()
        except (ValueError, OverflowError):
            when = None
    if when is None or not 0 <= when <= _LAST_TIME:
        expected = "a Unix time or an ISO 8601 date-time (1970 to 9999), or null"
        raise invalid("expires_at", expected, value)
    return when


def _metadata(value: object) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise invalid("metadata", "an object", value)
    return dict(value)


def _changes(fields: Fields) -> dict[str, Any]:
    """The record fields ``body`` sets, checked; 400 for an unknown or invalid member."""
    body = fields.data
    unknown = sorted(set(body) - set(_FIELDS))
    if unknown:
        raise ApiError(
            400,
            f"unknown member `{unknown[0]}`; a key takes: {', '.join(_FIELDS)}",
            code="unknown_parameter",
            param=unknown[0],
        )
    checks: Mapping[str, Any] = {
        "label": lambda v: _string(v, "label"),
        "owner": lambda v: _string(v, "owner"),
        "models": _models,
        "aliases": _aliases,
        "rpm": lambda v: _per_minute(v, "rpm"),
        "tpm": lambda v: _per_minute(v, "tpm"),
        "budget": _budget,
        "budget_period": lambda v: _choice(v, "budget_period", PERIODS, False),
        "priority": lambda v: _choice(v, "priority", _PRIORITIES, True),
        "expires_at": _expires_at,
        "metadata": _metadata,
    }
    return {name: checks[name](value) for name, value in body.items()}


# ----------------------------------------------------------------- handlers


def admin_store(request: Request) -> tuple[Gateway, Store]:
    gateway = service_of(request).gateway
    if gateway is None:
        raise ApiError(503, "the service is not started", "service_unavailable", "draining")
    if gateway.store is None:
        message = (
            'virtual keys and spend need storage: set [storage] path = "<file>" (or '
            'backend = "sqlite" for a database in memory)'
        )
        # Not a 5xx: nothing is failing, and a retry will not help; the feature is off.
        raise ApiError(404, message, code="storage_disabled")
    return gateway, gateway.store


def storage_error(exc: StorageUnavailable) -> ApiError:
    logger.warning("admin API: %s", exc)
    message = "storage is unavailable; the key was not changed (the server log says why)"
    return ApiError(503, message, "service_unavailable", "storage_unavailable", retry_after=1)


async def _record(store: Store, key_id: str) -> KeyRecord:
    try:
        record = await store.get_key(key_id)
    except StorageUnavailable as exc:
        raise storage_error(exc) from exc
    if record is None:
        raise ApiError(404, f"no key has the id {key_id!r}", code="key_not_found", param="id")
    return record


async def _save(store: Store, gateway: Gateway, record: KeyRecord, *, new: bool) -> None:
    try:
        if new:
            await store.create_key(record)
        else:
            await store.update_key(record)
    except StorageUnavailable as exc:
        raise storage_error(exc) from exc
    gateway.keys.put(record)


async def create_key(request: Request) -> Response:
    """``POST /v1/admin/keys``: a new key; 201 with its secret in ``key``, shown only now."""
    gateway, store = admin_store(request)
    state = service_of(request)
    if state.keyring is None or not state.keyring.has_admin:
        message = (
            "virtual keys need an admin key in [service] api_keys first: once a key exists "
            "every request needs one, and only a configured admin key can use this API"
        )
        raise ApiError(409, message, code="admin_key_required")
    body = parse_json_object(await request.body())
    changes = _changes(body)
    secret = new_secret()
    record = KeyRecord(
        id="key_" + secrets.token_hex(8),
        digest=_digest(secret),
        hint=secret[-4:],
        created_at=time.time(),
        **changes,
    )
    await _save(store, gateway, record, new=True)
    logger.info("virtual key %s created (label %r)", record.id, record.label)
    return JSONResponse({**key_json(record, gateway), "key": secret}, 201)


async def list_keys(request: Request) -> Response:
    """``GET /v1/admin/keys?limit=&after=&include_revoked=``: keys in id order, a page at a
    time (``has_more`` and ``last_id`` give the next page's ``after``); never a secret."""
    gateway, store = admin_store(request)
    query = request.query_params
    raw_limit = query.get("limit", "20")
    if not raw_limit.isdigit() or not 1 <= int(raw_limit) <= _MAX_PAGE:
        raise invalid("limit", f"a whole number from 1 to {_MAX_PAGE}", raw_limit)
    limit = int(raw_limit)
    revoked_flag = query.get("include_revoked", "false")
    if revoked_flag not in ("true", "false"):
        raise invalid("include_revoked", "true or false", revoked_flag)
    revoked = revoked_flag == "true"
    try:
        records = await store.list_keys(after=query.get("after"), limit=limit + 1, revoked=revoked)
    except StorageUnavailable as exc:
        raise storage_error(exc) from exc
    page = records[:limit]
    return JSONResponse(
        {
            "object": "list",
            "data": [key_json(record, gateway) for record in page],
            "first_id": page[0].id if page else None,
            "last_id": page[-1].id if page else None,
            "has_more": len(records) > limit,
        }
    )


async def get_key(request: Request) -> Response:
    """``GET /v1/admin/keys/{id}``: one key (revoked ones too), never its secret."""
    gateway, store = admin_store(request)
    record = await _record(store, request.path_params["id"])
    return JSONResponse(key_json(record, gateway))


async def update_key(request: Request) -> Response:
    """``PATCH /v1/admin/keys/{id}``: change the members given (null clears an optional
    one); in force for the key's next request."""
    gateway, store = admin_store(request)
    record = await _record(store, request.path_params["id"])
    if record.revoked_at is not None:
        raise ApiError(409, f"key {record.id!r} is revoked", code="key_revoked", param="id")
    changes = _changes(parse_json_object(await request.body()))
    record = attrs.evolve(record, **changes)
    await _save(store, gateway, record, new=False)
    logger.info("virtual key %s updated: %s", record.id, ", ".join(sorted(changes)))
    return JSONResponse(key_json(record, gateway))


async def revoke_key(request: Request) -> Response:
    """``DELETE /v1/admin/keys/{id}``: revoke the key (401 for its next request); the
    record and its spend stay."""
    gateway, store = admin_store(request)
    record = await _record(store, request.path_params["id"])
    if record.revoked_at is None:
        record = attrs.evolve(record, revoked_at=time.time())
        await _save(store, gateway, record, new=False)
        logger.info("virtual key %s revoked", record.id)
    return JSONResponse({**key_json(record, gateway), "deleted": True})


async def rotate_key(request: Request) -> Response:
    """``POST /v1/admin/keys/{id}/rotate``: a new secret, answered once; the old one is
    refused from now on. Policy, budget and spend stay with the key."""
    gateway, store = admin_store(request)
    record = await _record(store, request.path_params["id"])
    if record.revoked_at is not None:
        raise ApiError(409, f"key {record.id!r} is revoked", code="key_revoked", param="id")
    secret = new_secret()
    record = attrs.evolve(record, digest=_digest(secret), hint=secret[-4:])
    await _save(store, gateway, record, new=False)
    logger.info("virtual key %s rotated", record.id)
    return JSONResponse({**key_json(record, gateway), "key": secret})
