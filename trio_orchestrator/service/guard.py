"""The service's outer ASGI layers: request ids, API keys, body size limit, and the
last-resort 500.

All are plain ASGI middleware (no per-request task or buffering), so they cost a few
dictionary lookups per request.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import logging
from collections.abc import Iterable, Mapping, MutableMapping
from typing import Any

import attrs

from ..config.service import ApiKeyConfig, ServiceConfig
from ..observability.spans import trace_meta
from ..routing.keys import VirtualKeys
from ..storage import KeyRecord
from ..types import Priority, new_request_id
from .errors import ApiError
from .jsonenc import json_bytes
from .messages_answer import ANTHROPIC_PATH, AnthropicApiError

__all__ = [
    "ADMIN_PREFIXES",
    "PUBLIC_PATHS",
    "Access",
    "Caller",
    "CatchAll",
    "Guard",
    "KeyRing",
    "RequestIds",
    "access_of",
    "answer_crash",
    "caller_of",
    "request_id_of",
    "route_path",
    "set_request_id",
    "virtual_caller",
]

logger = logging.getLogger("trio_orchestrator.service")

Scope = dict[str, Any]
Message = dict[str, Any]

# The scope key under which the guard leaves the authenticated caller.
CALLER_KEY = "trio_orchestrator.caller"
# Who may call what: the guard's one rule (:func:`access_of`). Every route of the service is
# held to it by tests/test_service_routes_auth.py, which also wants each route that is neither
# public nor admin listed in ``app.AUTHENTICATED_ROUTES``.
# The scope key holding the id the response's ``x-request-id`` header carries.
REQUEST_ID_KEY = "trio_orchestrator.request_id"
REQUEST_ID_HEADER = b"x-request-id"
PUBLIC_PATHS = frozenset(("/healthz", "/readyz"))
ADMIN_PREFIXES = ("/v1/dead-letters", "/v1/admin")


class Access(enum.Enum):
    """Who may call a route when API keys are configured."""

    PUBLIC = "public"
    """Anyone, with or without a key (health and readiness probes)."""
    AUTHENTICATED = "authenticated"
    """Any configured key."""
    ADMIN = "admin"
    """A key with ``admin = true``."""


def access_of(path: str) -> Access:
    """Who may call ``path`` (a route path: the request's path without the ``root_path``).

    The paths in :data:`PUBLIC_PATHS` are public, the paths under :data:`ADMIN_PREFIXES`
    (sub-paths too) are admin, and every other path needs a key: a route nobody thought
    about is closed, not open.
    """
    if path in PUBLIC_PATHS:
        return Access.PUBLIC
    if path.startswith(ADMIN_PREFIXES):
        return Access.ADMIN
    return Access.AUTHENTICATED


def route_path(scope: Mapping[str, Any]) -> str:
    """The path Starlette routes ``scope`` by: ``path`` without a leading ``root_path``.

    ASGI servers put the ``root_path`` in ``path`` too (hypercorn ``--root-path``); the
    guard must judge the path the router will serve, or ``/prefix/v1/dead-letters`` would
    reach the admin route as an ordinary one.
    """
    path: str = scope["path"]
    root: str = scope.get("root_path", "")
    if root and path.startswith(root) and path[len(root) : len(root) + 1] in ("", "/"):
        return path[len(root) :]
    return path


@attrs.frozen
class Caller:
    """Who sent a request.

    Attributes:
        key_id: the API key's fingerprint (``sha256:`` and 8 hex digits), when keys are on.
        admin: the caller may use the admin endpoints.
        priority_cap: the highest priority the caller's requests may have.
    """

    key_id: str | None = None
    admin: bool = True
    priority_cap: Priority | None = None

    def meta(self, headers: Mapping[str, str] | None = None) -> dict[str, str]:
        """Labels for the caller's requests: ``api_key_id`` (per-key rate limits and budgets)
        and, from ``headers``, an incoming ``traceparent`` (the request's trace continues
        the caller's)."""
        meta = {} if self.key_id is None else {"api_key_id": self.key_id}
        if headers is not None:
            meta.update(trace_meta(headers))
        return meta

    def request_fields(self) -> dict[str, Any]:
        """Further :class:`~trio_orchestrator.types.PromptRequest` fields the caller's key
        imposes: ``priority`` when the key caps it."""
        return {} if self.priority_cap is None else {"priority": self.priority_cap}


_ANONYMOUS = Caller()


def caller_of(scope: Mapping[str, Any]) -> Caller:
    """The caller the guard identified for this request."""
    caller: Caller = scope.get(CALLER_KEY, _ANONYMOUS)
    return caller


def _cap(priority: str | None) -> Priority | None:
    return None if priority is None else Priority[priority.upper()]


def virtual_caller(record: KeyRecord) -> Caller:
    """The caller a virtual key identifies: never an admin; its id is the key's id."""
    return Caller(record.id, False, _cap(record.priority))


@attrs.define(eq=False)
class KeyRing:
    """The accepted API keys, held only as SHA-256 digests: the configured ones
    (``[service] api_keys``) and, once :meth:`attach` ed, the live virtual keys (an
    in-memory table the admin API keeps current; no storage read per request)."""

    _entries: tuple[tuple[bytes, Caller], ...]
    _virtual: VirtualKeys | None = attrs.field(default=None, kw_only=True)

    @classmethod
    def from_config(cls, keys: Iterable[ApiKeyConfig]) -> KeyRing:
        """Digest each configured key; drop the keys themselves."""
        entries = []
        for key in keys:
            digest = key.digest()
            caller = Caller("sha256:" + digest.hex()[:8], key.admin, _cap(key.priority))
            entries.append((digest, caller))
        return cls(tuple(entries))

    def reconfigure(self, section: ServiceConfig, /) -> list[str]:
        """Take the reloaded ``service.api_keys`` (a reload component: keys rotate live)."""
        self._entries = KeyRing.from_config(section.api_keys)._entries
        return []

    def attach(self, keys: VirtualKeys) -> None:
        """Accept the live virtual keys of ``keys`` too."""
        self._virtual = keys

    @property
    def enabled(self) -> bool:
        """True when at least one key is configured or a virtual key exists (then every
        request needs one)."""
        return bool(self._entries) or bool(self._virtual)

    @property
    def has_admin(self) -> bool:
        """True when a configured key is an admin key (virtual keys never are)."""
        return any(caller.admin for _, caller in self._entries)

    def identify(self, token: str) -> Caller | None:
        """The caller holding ``token``, or ``None``; compares every configured digest in
        constant time, then looks the digest up among the live virtual keys."""
        digest = hashlib.sha256(token.encode()).digest()
        found = None
        for known, caller in self._entries:
            if hmac.compare_digest(known, digest):
                found = caller
        if found is None and self._virtual is not None:
            record = self._virtual.identify(digest)
            if record is not None:
                found = virtual_caller(record)
        return found


def _api_key(scope: Scope) -> str | None:
    """The key from ``Authorization: Bearer <key>``, else from ``x-api-key: <key>`` (how
    the ``anthropic`` SDK sends it)."""
    key = None
    for name, value in scope["headers"]:
        if name == b"authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            return token.strip() if scheme.lower() == "bearer" else None
        if name == b"x-api-key":
            key = value.decode("latin-1").strip()
    return key


def _content_length(scope: Scope) -> int | None:
    for name, value in scope["headers"]:
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


async def send_error(
    send: Any,
    error: ApiError,
    extra: Iterable[tuple[bytes, bytes]] = (),
    *,
    websocket: bool = False,
) -> None:
    """Send ``error`` as a complete JSON response.

    Args:
        send: the ASGI send.
        error: the error.
        extra: more response headers.
        websocket: answer a WebSocket handshake (ASGI's ``websocket.http.response``).
    """
    prefix = "websocket." if websocket else ""
    body = json_bytes(error.body())
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
    headers += [(k.lower().encode(), v.encode()) for k, v in error.headers().items()]
    headers += extra
    if error.status == 401:
        headers.append((b"www-authenticate", b"Bearer"))
    if websocket:
        headers.append((b"connection", b"close"))  # the server closes it after a refusal
    await send({"type": prefix + "http.response.start", "status": error.status, "headers": headers})
    await send({"type": prefix + "http.response.body", "body": body})


_UNAUTHORIZED = ApiError(
    401,
    "missing or unknown API key: send `Authorization: Bearer <key>` (or `x-api-key: <key>`) "
    "with a configured key",
    code="invalid_api_key",
)
_FORBIDDEN = ApiError(
    403, "this endpoint needs an admin API key", "permission_error", "admin_required"
)


@attrs.define(eq=False)
class Guard:
    """Checks the API key and the body size before the application sees a request.

    Args:
        app: the application.
        keys: the accepted keys; with none, every request is let through as an admin.
        max_body_bytes: the largest request body; larger ones get 413.
    """

    app: Any
    keys: KeyRing
    max_body_bytes: int

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        kind = scope["type"]
        if kind == "lifespan":
            await self.app(scope, receive, send)
            return
        error = self.refusal(scope)
        if error is not None:
            if route_path(scope).startswith(ANTHROPIC_PATH):
                error = AnthropicApiError.of(error)  # Anthropic's clients read its shape
            await self._refuse(scope, send, error)
            return
        if kind != "http":
            await self.app(scope, receive, send)
            return
        await self.app(scope, self._limited(receive), send)

    def refusal(self, scope: Scope) -> ApiError | None:
        """The error to refuse an HTTP or WebSocket request with, or ``None`` to let it in
        (noting its caller in the scope for :func:`caller_of`).

        Checks the API key, and an HTTP request's ``Content-Length`` against the limit; a
        body sent without one must still be counted as it arrives (:meth:`too_large`).
        """
        access = access_of(route_path(scope)) if self.keys.enabled else Access.PUBLIC
        if access is not Access.PUBLIC:
            token = _api_key(scope)
            caller = None if token is None else self.keys.identify(token)
            if caller is None:
                return _UNAUTHORIZED
            if not caller.admin and access is Access.ADMIN:
                return _FORBIDDEN
            scope[CALLER_KEY] = caller
        if scope["type"] == "http":
            length = _content_length(scope)
            if length is not None and length > self.max_body_bytes:
                return self.too_large()
        return None

    def too_large(self) -> ApiError:
        """The 413 for a body over the limit.

        It closes the connection: the rest of the body is never read, so the connection
        cannot carry another request (kept open, the client's next request on it could meet
        the server dropping it).
        """
        message = f"the request body is larger than the limit of {self.max_body_bytes} bytes"
        return ApiError(413, message, code="request_too_large", close=True)

    def _limited(self, receive: Any) -> Any:
        seen = 0

        async def limited_receive() -> Message:
            nonlocal seen
            message: Message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.max_body_bytes:
                raise self.too_large()
            return message

        return limited_receive

    @staticmethod
    async def _refuse(scope: Scope, send: Any, error: ApiError) -> None:
        if scope["type"] != "websocket":
            await send_error(send, error)
        elif "websocket.http.response" in scope.get("extensions", {}):
            # The handshake gets the real status (401 or 403) and the JSON error.
            await send_error(send, error, websocket=True)
        else:
            # Closing before accepting makes the server answer the handshake with 403.
            await send({"type": "websocket.close", "code": 1008, "reason": error.message[:100]})


@attrs.define(eq=False)
class CatchAll:
    """The outermost layer: an exception that escapes everything else is logged here and the
    client gets a generic 500 in OpenAI's error shape, never a traceback."""

    app: Any

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            # A failed startup must stop the server, not be answered.
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception:
            await answer_crash(scope, send, started=started)


_INTERNAL_ERROR = ApiError(
    500, "internal error; the server log has the details", "server_error", "internal_error"
)


async def answer_crash(
    scope: Scope, send: Any, *, started: bool, extra: Iterable[tuple[bytes, bytes]] = ()
) -> None:
    """Log the exception being handled; answer a generic 500 (with the ``extra`` headers)
    unless the response began."""
    logger.exception("unhandled error serving %s %s", scope.get("method"), scope["path"])
    if scope["type"] == "http" and not started:
        await send_error(send, _INTERNAL_ERROR, extra)


def request_id_of(scope: MutableMapping[str, Any]) -> str:
    """The id of this request, as :class:`RequestIds` answers it in ``x-request-id`` (a new
    one when no such layer chose one)."""
    request_id: str | None = scope.get(REQUEST_ID_KEY)
    if request_id is None:
        request_id = scope[REQUEST_ID_KEY] = new_request_id()
    return request_id


def set_request_id(scope: MutableMapping[str, Any], request_id: str) -> None:
    """Answer ``request_id`` in ``x-request-id`` (a handler whose pipeline request has an id
    of its own, such as one the client chose)."""
    scope[REQUEST_ID_KEY] = request_id


def request_id_header(request_id: str) -> tuple[bytes, bytes]:
    """The ``x-request-id`` header for ``request_id``."""
    return (REQUEST_ID_HEADER, request_id.encode("latin-1"))


@attrs.define(eq=False)
class RequestIds:
    """The outermost layer: every HTTP response carries ``x-request-id`` (the SDKs expose it
    as ``_request_id`` / ``request_id``), the id of the pipeline request where there is one.

    A new id is put in the scope (:func:`request_id_of`); a handler that runs a pipeline
    request under another id says so with :func:`set_request_id` before it answers.
    """

    app: Any

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        scope[REQUEST_ID_KEY] = new_request_id()

        async def tagging_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                header = request_id_header(scope[REQUEST_ID_KEY])
                message = {**message, "headers": [*message.get("headers", ()), header]}
            await send(message)

        await self.app(scope, receive, tagging_send)
