"""The service's outer ASGI layers, driven message by message: what the mutation session
(scripts/mutation.py) found the served tests leaving unpinned in ``service/guard.py``."""

from __future__ import annotations

import hashlib
import json
import logging
from typing import Any

import attrs
import pytest

from trio_orchestrator.config.secret import Secret
from trio_orchestrator.config.service import ApiKeyConfig, ServiceConfig
from trio_orchestrator.routing.keys import VirtualKeys
from trio_orchestrator.service.errors import ApiError
from trio_orchestrator.service.guard import (
    CALLER_KEY,
    REQUEST_ID_KEY,
    Access,
    Caller,
    CatchAll,
    Guard,
    KeyRing,
    RequestIds,
    access_of,
    answer_crash,
    caller_of,
    request_id_of,
    route_path,
    send_error,
    set_request_id,
)
from trio_orchestrator.storage import KeyRecord
from trio_orchestrator.types import Priority

Message = dict[str, Any]
KEY = "k-123"
ADMIN = "admin-456"
RING = KeyRing.from_config(
    [
        ApiKeyConfig("app", key=Secret(KEY), priority="low"),
        ApiKeyConfig("ops", sha256=hashlib.sha256(ADMIN.encode()).hexdigest(), admin=True),
    ]
)


def http(path: str, *headers: tuple[bytes, bytes], root_path: str = "") -> dict[str, Any]:
    """An HTTP scope for ``path`` with ``headers``."""
    return {"type": "http", "path": path, "root_path": root_path, "headers": list(headers)}


class Recorder:
    """An ASGI app that answers 200 and remembers the scope and the body it read."""

    def __init__(self) -> None:
        self.scope: dict[str, Any] | None = None
        self.body = b""

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        self.scope = scope
        if scope["type"] == "http":
            while True:
                message = await receive()
                self.body += message.get("body", b"")
                if not message.get("more_body"):
                    break
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"ok"})


async def call(app: Any, scope: dict[str, Any], *bodies: bytes) -> list[Message]:
    """Run ``app`` on ``scope`` with ``bodies`` as the request; return what it sent."""
    sent: list[Message] = []
    chunks = list(bodies) or [b""]

    async def receive() -> Message:
        body = chunks.pop(0)
        return {"type": "http.request", "body": body, "more_body": bool(chunks)}

    async def send(message: Message) -> None:
        sent.append(message)

    await app(scope, receive, send)
    return sent


def headers_of(sent: list[Message]) -> dict[bytes, bytes]:
    """The response headers of the first message."""
    return dict(sent[0]["headers"])


def test_access_of_each_kind_of_path() -> None:
    """Probes are public, the admin prefixes and their sub-paths admin, the rest authenticated."""
    assert access_of("/healthz") is Access.PUBLIC
    assert access_of("/readyz") is Access.PUBLIC
    assert access_of("/v1/admin/keys") is Access.ADMIN
    assert access_of("/v1/dead-letters") is Access.ADMIN
    assert access_of("/v1/chat/completions") is Access.AUTHENTICATED
    assert access_of("/healthz/x") is Access.AUTHENTICATED


@pytest.mark.parametrize(
    ("path", "root", "expected"),
    [
        ("/api/v1/models", "/api", "/v1/models"),
        ("/api", "/api", ""),
        ("/apix/v1/models", "/api", "/apix/v1/models"),
        ("/v1/models", "", "/v1/models"),
        ("/v1/models", "/api", "/v1/models"),
    ],
)
def test_route_path_strips_only_a_whole_root_path(path: str, root: str, expected: str) -> None:
    """The root path comes off only when the path starts with it as a whole segment."""
    assert route_path({"path": path, "root_path": root}) == expected


def test_route_path_without_a_root_path_key() -> None:
    """A scope with no root_path is routed by its path."""
    assert route_path({"path": "/v1/models"}) == "/v1/models"


def test_keyring_identifies_each_key_with_its_fingerprint_and_rights() -> None:
    """Each key maps to its caller: sha256 fingerprint of 8 hex digits, admin flag, cap."""
    app = RING.identify(KEY)
    ops = RING.identify(ADMIN)
    assert app == Caller(
        "sha256:" + hashlib.sha256(KEY.encode()).hexdigest()[:8], False, Priority.LOW
    )
    assert ops == Caller("sha256:" + hashlib.sha256(ADMIN.encode()).hexdigest()[:8], True, None)
    assert RING.identify("nope") is None
    assert RING.enabled
    assert not KeyRing.from_config([]).enabled


def test_caller_meta_and_request_fields() -> None:
    """A caller labels requests with its key id and caps their priority when its key does."""
    caller = Caller("sha256:abcd0123", False, Priority.LOW)
    assert caller.meta() == {"api_key_id": "sha256:abcd0123"}
    assert caller.request_fields() == {"priority": Priority.LOW}
    assert Caller().meta() == {}
    assert Caller().request_fields() == {}
    assert Caller().admin
    assert caller_of({}) == Caller()


async def test_bearer_and_x_api_key_both_authenticate() -> None:
    """The key is read from `Authorization: Bearer` (any case) or from `x-api-key`."""
    for header in (
        (b"authorization", f"Bearer {KEY}".encode()),
        (b"authorization", f"bearer  {KEY} ".encode()),
        (b"x-api-key", f" {KEY} ".encode()),
    ):
        app = Recorder()
        sent = await call(Guard(app, RING, 100), http("/v1/models", header))
        assert sent[0]["status"] == 200
        assert app.scope is not None
        assert app.scope[CALLER_KEY] == RING.identify(KEY)


async def test_a_non_bearer_authorization_wins_over_x_api_key() -> None:
    """An Authorization header of another scheme refuses, even with a good x-api-key after it."""
    scope = http(
        "/v1/models", (b"authorization", f"Basic {KEY}".encode()), (b"x-api-key", KEY.encode())
    )
    sent = await call(Guard(Recorder(), RING, 100), scope)
    assert sent[0]["status"] == 401


async def test_a_refusal_is_a_complete_json_response() -> None:
    """A 401 has JSON content type, the body's length, WWW-Authenticate and the OpenAI body."""
    sent = await call(Guard(Recorder(), RING, 100), http("/v1/models"))
    assert sent[0]["type"] == "http.response.start"
    assert sent[0]["status"] == 401
    headers = headers_of(sent)
    assert headers[b"content-type"] == b"application/json"
    assert headers[b"www-authenticate"] == b"Bearer"
    assert int(headers[b"content-length"]) == len(sent[1]["body"])
    assert sent[1]["type"] == "http.response.body"
    assert json.loads(sent[1]["body"])["error"]["code"] == "invalid_api_key"
    assert len(sent) == 2


async def test_a_non_admin_key_gets_403_on_admin_paths_only() -> None:
    """An ordinary key is refused 403 on an admin path; an admin key passes."""
    app_key = (b"authorization", f"Bearer {KEY}".encode())
    sent = await call(Guard(Recorder(), RING, 100), http("/v1/admin/keys", app_key))
    assert sent[0]["status"] == 403
    assert b"www-authenticate" not in headers_of(sent)
    assert json.loads(sent[1]["body"])["error"]["code"] == "admin_required"
    admin = (b"x-api-key", ADMIN.encode())
    assert (await call(Guard(Recorder(), RING, 100), http("/v1/admin/keys", admin)))[0][
        "status"
    ] == 200


async def test_anthropic_paths_are_refused_in_anthropics_shape() -> None:
    """A refusal on /v1/messages has Anthropic's error body."""
    sent = await call(Guard(Recorder(), RING, 100), http("/v1/messages"))
    assert sent[0]["status"] == 401
    assert json.loads(sent[1]["body"])["type"] == "error"


async def test_a_declared_length_over_the_limit_is_413_and_closes() -> None:
    """Content-Length over the limit is refused before the app runs, with Connection: close."""
    app = Recorder()
    scope = http("/v1/models", (b"content-length", b"11"))
    sent = await call(Guard(app, KeyRing.from_config([]), 10), scope)
    assert app.scope is None
    assert sent[0]["status"] == 413
    assert headers_of(sent)[b"connection"] == b"close"
    error = json.loads(sent[1]["body"])["error"]
    assert error["message"] == "the request body is larger than the limit of 10 bytes"
    assert error["code"] == "request_too_large"


async def test_a_body_at_the_limit_passes() -> None:
    """A body of exactly the limit, declared and streamed, reaches the app whole."""
    app = Recorder()
    scope = http("/v1/models", (b"content-length", b"10"))
    sent = await call(Guard(app, KeyRing.from_config([]), 10), scope, b"12345", b"67890")
    assert sent[0]["status"] == 200
    assert app.body == b"1234567890"


async def test_a_bad_content_length_is_left_to_the_body_count() -> None:
    """An unparsable Content-Length is ignored; the streamed body is still counted."""
    app = Recorder()
    scope = http("/v1/models", (b"content-length", b"many"))
    with pytest.raises(ApiError) as caught:
        await call(Guard(app, KeyRing.from_config([]), 10), scope, b"123456", b"78901")
    assert caught.value.status == 413


async def test_websocket_refusals() -> None:
    """A refused WebSocket gets the JSON error when the server supports it, else close 1008."""
    scope = {"type": "websocket", "path": "/v1/ws", "headers": []}
    sent = await call(Guard(Recorder(), RING, 100), scope)
    assert sent == [{"type": "websocket.close", "code": 1008, "reason": sent[0]["reason"]}]
    assert sent[0]["reason"].startswith("missing or unknown API key")
    assert len(sent[0]["reason"]) == 100
    rich = {**scope, "extensions": {"websocket.http.response": {}}}
    sent = await call(Guard(Recorder(), RING, 100), rich)
    assert sent[0]["type"] == "websocket.http.response.start"
    assert sent[0]["status"] == 401
    assert headers_of(sent)[b"connection"] == b"close"
    assert sent[1]["type"] == "websocket.http.response.body"


async def test_an_accepted_websocket_reaches_the_app_unlimited() -> None:
    """An authenticated WebSocket goes to the app with its caller noted."""
    app = Recorder()
    scope: dict[str, Any] = {"type": "websocket", "path": "/v1/ws"}
    scope["headers"] = [(b"x-api-key", KEY.encode())]
    assert await call(Guard(app, RING, 100), scope) == []
    assert app.scope is scope
    assert scope[CALLER_KEY] == RING.identify(KEY)


async def test_lifespan_passes_through_every_layer() -> None:
    """Lifespan events go straight to the app through the guard, CatchAll and RequestIds."""
    for layer in (Guard(Recorder(), RING, 1), CatchAll(Recorder()), RequestIds(Recorder())):
        app = layer.app
        scope = {"type": "lifespan"}
        await call(layer, scope)
        assert app.scope is scope


async def test_send_error_headers() -> None:
    """An error's own headers go out lower-cased after the extra ones' predecessors."""
    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    error = ApiError(429, "slow down", retry_after=3)
    await send_error(send, error, [(b"x-extra", b"1")])
    assert sent[0]["headers"][2:] == [(b"retry-after", b"3"), (b"x-extra", b"1")]


async def test_catch_all_answers_500_unless_started(caplog: pytest.LogCaptureFixture) -> None:
    """An escaping exception is logged and answered 500, or only logged once the answer began."""

    async def crash(scope: Any, receive: Any, send: Any) -> None:
        raise RuntimeError("boom")

    async def crash_late(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        raise RuntimeError("boom")

    with caplog.at_level(logging.ERROR, "trio_orchestrator.service"):
        sent = await call(CatchAll(crash), {**http("/x"), "method": "GET"})
    assert sent[0]["status"] == 500
    assert json.loads(sent[1]["body"])["error"]["code"] == "internal_error"
    assert [r.getMessage() for r in caplog.records] == ["unhandled error serving GET /x"]
    sent = await call(CatchAll(crash_late), http("/x"))
    assert [m["type"] for m in sent] == ["http.response.start"]


async def test_catch_all_lets_a_good_answer_through() -> None:
    """Without an exception the app's messages pass unchanged."""
    assert [m["type"] for m in await call(CatchAll(Recorder()), http("/x"))] == [
        "http.response.start",
        "http.response.body",
    ]


async def test_request_ids_tag_every_http_answer() -> None:
    """Each HTTP answer gets x-request-id: a new one, or the one a handler set."""

    async def relabel(scope: Any, receive: Any, send: Any) -> None:
        set_request_id(scope, "req-chosen")
        await send({"type": "http.response.start", "status": 200})
        await send({"type": "http.response.body", "body": b""})

    app = Recorder()
    sent = await call(RequestIds(app), http("/x"))
    assert app.scope is not None
    assert headers_of(sent)[b"x-request-id"] == app.scope[REQUEST_ID_KEY].encode()
    assert sent[1] == {"type": "http.response.body", "body": b"ok"}
    sent = await call(RequestIds(relabel), http("/x"))
    assert sent[0]["headers"] == [(b"x-request-id", b"req-chosen")]
    ws = Recorder()
    scope = {"type": "websocket", "path": "/v1/ws", "headers": []}
    await call(RequestIds(ws), scope)
    assert REQUEST_ID_KEY not in scope


def test_request_id_of_makes_one_once() -> None:
    """request_id_of makes an id when none was chosen and then keeps answering it."""
    scope: dict[str, Any] = {}
    first = request_id_of(scope)
    assert first
    assert request_id_of(scope) == first
    assert scope[REQUEST_ID_KEY] == first


async def test_answer_crash_sends_the_extra_headers() -> None:
    """The generic 500 carries the headers its caller adds (a stream's request id)."""
    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    try:
        raise RuntimeError("boom")
    except RuntimeError:
        await answer_crash(http("/x"), send, started=False, extra=[(b"x-request-id", b"r1")])
    assert sent[0]["status"] == 500
    assert (b"x-request-id", b"r1") in sent[0]["headers"]


def test_keyring_reconfigure_rotates_the_keys() -> None:
    """A reloaded key list replaces the old one: the old key is refused, the new one accepted."""
    ring = KeyRing.from_config([ApiKeyConfig("old", key=Secret("old-key"))])
    assert (
        ring.reconfigure(ServiceConfig(api_keys=(ApiKeyConfig("new", key=Secret("new-key")),)))
        == []
    )
    assert ring.identify("old-key") is None
    assert ring.identify("new-key") is not None
    ring.reconfigure(ServiceConfig())
    assert not ring.enabled


async def test_catch_all_lets_a_failed_startup_stop_the_server() -> None:
    """An exception in the lifespan (a failed startup) escapes CatchAll instead of being eaten."""

    async def failing_startup(scope: Any, receive: Any, send: Any) -> None:
        raise RuntimeError("no database")

    with pytest.raises(RuntimeError, match="no database"):
        await call(CatchAll(failing_startup), {"type": "lifespan"})


async def test_an_accepted_websocket_talks_through_the_guard() -> None:
    """An accepted WebSocket app receives and sends through the server's own channels."""
    seen: list[Message] = []

    async def echo(scope: Any, receive: Any, send: Any) -> None:
        seen.append(await receive())
        await send({"type": "websocket.accept"})

    scope = {"type": "websocket", "path": "/v1/ws", "headers": [(b"x-api-key", KEY.encode())]}
    sent = await call(Guard(echo, RING, 100), scope)
    assert seen == [{"type": "http.request", "body": b"", "more_body": False}]
    assert sent == [{"type": "websocket.accept"}]


def test_an_attached_virtual_key_identifies_its_own_capped_caller() -> None:
    """Once attached, a live virtual key is its own id's caller, never an admin, with its
    priority cap; configured keys still identify as before."""
    ring = KeyRing.from_config([ApiKeyConfig("app", key=Secret(KEY), priority="low")])
    keys = VirtualKeys(clock=lambda: 1000.0)
    record = KeyRecord("key_0123456789abcdef", hashlib.sha256(b"vk-secret").digest())
    keys.put(attrs.evolve(record, priority="high"))
    assert ring.identify("vk-secret") is None
    ring.attach(keys)
    assert ring.identify("vk-secret") == Caller("key_0123456789abcdef", False, Priority.HIGH)
    assert ring.identify(KEY) == RING.identify(KEY)
    assert ring.identify("nope") is None


async def test_no_key_at_all_is_not_an_empty_key() -> None:
    """A request sending no key is refused even when the empty string is an accepted key
    (configuration refuses an empty key; the guard does not lean on that alone)."""
    blank = hashlib.sha256(b"").digest()
    ring = KeyRing(((blank, Caller("sha256:blank", False, None)),))
    assert ring.identify("") is not None
    sent = await call(Guard(Recorder(), ring, 10), http("/v1/models"))
    assert sent[0]["status"] == 401
