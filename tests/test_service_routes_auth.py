"""Every route of the service, read from its own route table, refuses and admits callers as
its access says: no key and a wrong key get 401 (public routes aside), an ordinary key gets
403 on every admin route and sub-path, an admin key gets through.

A route added later is covered without editing this file; a route that is neither public
(``guard.PUBLIC_PATHS``), nor admin (under ``guard.ADMIN_PREFIXES``), nor listed in
``app.AUTHENTICATED_ROUTES`` fails :func:`test_every_route_is_placed` until it is placed.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from typing import Any, cast

import attrs
import httpx
import pytest
import trio
from hypercorn.trio import serve as hypercorn_serve
from service_helpers import make_config
from starlette.routing import BaseRoute, Match, Route, WebSocketRoute

from trio_orchestrator.config.secret import Secret
from trio_orchestrator.config.service import ApiKeyConfig
from trio_orchestrator.service.app import AUTHENTICATED_ROUTES, create_app
from trio_orchestrator.service.guard import (
    ADMIN_PREFIXES,
    PUBLIC_PATHS,
    PUBLIC_PREFIXES,
    Access,
    route_path,
)
from trio_orchestrator.service.openapi import openapi_document
from trio_orchestrator.service.server import hypercorn_config
from trio_orchestrator.workers import EchoWorker

APP_KEY = "app-key-123"
ADMIN_KEY = "admin-key-456"
KEYS = (
    ApiKeyConfig("app", sha256=hashlib.sha256(APP_KEY.encode()).hexdigest()),
    ApiKeyConfig("ops", key=Secret(ADMIN_KEY), admin=True),
)
CREDENTIALS = {
    "no key": {},
    "wrong key": {"Authorization": "Bearer not-a-configured-key"},
    "ordinary key": {"Authorization": f"Bearer {APP_KEY}"},
    "admin key": {"Authorization": f"Bearer {ADMIN_KEY}"},
}
UNAUTHORIZED, FORBIDDEN, SERVED = "401 invalid_api_key", "403 admin_required", "served"
EXPECTED = {
    Access.PUBLIC: dict.fromkeys(CREDENTIALS, SERVED),
    Access.AUTHENTICATED: {
        "no key": UNAUTHORIZED,
        "wrong key": UNAUTHORIZED,
        "ordinary key": SERVED,
        "admin key": SERVED,
    },
    Access.ADMIN: {
        "no key": UNAUTHORIZED,
        "wrong key": UNAUTHORIZED,
        "ordinary key": FORBIDDEN,
        "admin key": SERVED,
    },
}
HANDSHAKE = {
    "Connection": "Upgrade",
    "Upgrade": "websocket",
    "Sec-WebSocket-Version": "13",
    "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
}
# A value each of Starlette's path convertors accepts, to fill path parameters with.
FILLERS = {"str": "x", "path": "echo", "int": "1", "float": "1.5"}
FILLERS["uuid"] = "00000000-0000-0000-0000-000000000000"
PARAMETER = re.compile(r"{(\w+)(?::(\w+))?}")
# Under a root_path the chat endpoint is Starlette's route; without one, the fast path.
ROOT_PATHS = ("", "/gateway")


@attrs.frozen
class Case:
    """One request: a route's method, at a concrete path (path parameters filled)."""

    template: str
    method: str  # "WEBSOCKET" for a WebSocket handshake
    path: str


def placements(template: str) -> list[Access]:
    """Every access the classification gives ``template``: a placed route has exactly one."""
    found = []
    if template in PUBLIC_PATHS or template.startswith(PUBLIC_PREFIXES):
        found.append(Access.PUBLIC)
    if template.startswith(ADMIN_PREFIXES):
        found.append(Access.ADMIN)
    if template in AUTHENTICATED_ROUTES:
        found.append(Access.AUTHENTICATED)
    return found


def placement_problem(template: str) -> str | None:
    """What is wrong with ``template``'s placement, saying what to change; ``None`` if placed."""
    found = placements(template)
    if not found:
        return (
            f"route {template!r} is not placed: add {template!r} to AUTHENTICATED_ROUTES in "
            "trio_orchestrator/service/app.py (any API key may call it), or to PUBLIC_PATHS in "
            "trio_orchestrator/service/guard.py (no key needed), or put it under one of "
            f"guard.ADMIN_PREFIXES {ADMIN_PREFIXES} (admin keys only)"
        )
    if len(found) > 1:
        names = " and ".join(access.name for access in found)
        return f"route {template!r} is placed twice ({names}): keep one"
    return None


def fill(template: str) -> str:
    """``template`` with each path parameter replaced by a value its convertor accepts."""
    return PARAMETER.sub(lambda m: FILLERS[m.group(2) or "str"], template)


def cases(routes: list[Route | WebSocketRoute]) -> list[Case]:
    """A request for every method of every route in the table (HEAD is GET's twin)."""
    found = []
    for route in routes:
        if isinstance(route, WebSocketRoute):
            found.append(Case(route.path, "WEBSOCKET", fill(route.path)))
        else:
            methods = sorted((route.methods or {"GET"}) - {"HEAD"})
            found += [Case(route.path, method, fill(route.path)) for method in methods]
    return found


def table(routes: list[BaseRoute]) -> list[Route | WebSocketRoute]:
    """``routes``, each checked to be a kind of route this test knows how to call."""
    for route in routes:
        assert isinstance(route, Route | WebSocketRoute), f"{route!r}: teach this test to call it"
    return cast(list[Route | WebSocketRoute], routes)


def service_routes() -> list[Route | WebSocketRoute]:
    """The route table of the service as built (``/openapi.json`` included)."""
    return table(create_app(make_config(api_keys=KEYS), EchoWorker()).routes)


@asynccontextmanager
async def serving(root_path: str) -> AsyncIterator[tuple[str, list[Route | WebSocketRoute]]]:
    """The service with :data:`KEYS` under hypercorn at ``root_path``: its base URL (the
    root_path included) and its route table."""
    config = make_config(api_keys=KEYS)
    app = create_app(config, EchoWorker())
    hconfig = hypercorn_config(config)
    hconfig.root_path = root_path
    async with trio.open_nursery() as nursery:
        stop = trio.Event()
        server = partial(hypercorn_serve, cast(Any, app), hconfig, shutdown_trigger=stop.wait)
        binds: list[str] = await nursery.start(server)
        try:
            yield binds[0] + root_path, table(app.routes)
        finally:
            stop.set()


# Anthropic's error types for the guard's refusals, in the OpenAI codes the cases expect.
ANTHROPIC_TYPES = {"authentication_error": "invalid_api_key", "permission_error": "admin_required"}


async def outcome(client: httpx.AsyncClient, case: Case, headers: dict[str, str]) -> str:
    """How the service answered ``case``: refused (status and code), not routed, or served.

    Only the status and headers are awaited, so a streaming answer does not hold the test.
    """
    sent: dict[str, Any] | None = {}  # a POST's body: an empty object
    method = case.method
    if method == "WEBSOCKET":
        method, sent, headers = "GET", None, headers | HANDSHAKE
    async with client.stream(method, case.path, headers=headers, json=sent) as response:
        status = response.status_code
        if status not in (401, 403, 404, 405):
            return SERVED
        body = await response.aread()
    try:
        error = json.loads(body)["error"]
    except (ValueError, KeyError, TypeError):
        return f"{status} without an error body"
    if status == 405 or (status == 404 and "no such endpoint" in error["message"]):
        return f"not routed ({status})"  # the filled path missed its route
    # The Anthropic-compatible routes refuse in Anthropic's shape: a type, no code.
    code = error.get("code") or ANTHROPIC_TYPES.get(error.get("type"), error.get("type"))
    return SERVED if status == 404 else f"{status} {code}"


def test_every_route_is_placed() -> None:
    """Each route in the table is exactly one of public, admin or listed as authenticated."""
    found = [placement_problem(route.path) for route in service_routes()]
    problems = [problem for problem in found if problem]
    assert not problems, "\n".join(problems)


def test_a_route_nobody_placed_is_reported_with_what_to_add() -> None:
    """An unplaced route is a problem whose message names the line to add and where."""
    problem = placement_problem("/v1/brand-new")
    assert problem is not None
    assert "add '/v1/brand-new' to AUTHENTICATED_ROUTES in trio_orchestrator/service/app.py" in (
        problem
    )


def test_authenticated_routes_lists_only_routes() -> None:
    """Every entry of AUTHENTICATED_ROUTES is a route of the table (no stale entries)."""
    templates = {route.path for route in service_routes()}
    assert AUTHENTICATED_ROUTES - templates == set()


def test_every_filled_path_reaches_its_own_route() -> None:
    """Each case's concrete path is matched fully by the route it was made from."""
    routes = {route.path: route for route in service_routes()}
    for case in cases(list(routes.values())):
        kind = "websocket" if case.method == "WEBSOCKET" else "http"
        scope = {"type": kind, "path": case.path, "root_path": "", "method": case.method}
        assert routes[case.template].matches(scope)[0] is Match.FULL, case


def test_openapi_documents_only_routes_and_their_real_access() -> None:
    """Each path /openapi.json documents is a route, public there exactly when the guard
    lets it through without a key."""
    templates = {PARAMETER.sub(r"{\1}", route.path) for route in service_routes()}
    paths = openapi_document()["paths"]
    assert set(paths) - templates == set()
    for path, operations in paths.items():
        for operation in operations.values():
            documented_public = operation.get("security") == []
            assert documented_public == (placements(path) == [Access.PUBLIC]), path


@pytest.mark.parametrize("root_path", ROOT_PATHS, ids=["root", "under-root-path"])
async def test_every_route_answers_each_caller_as_its_access_says(root_path: str) -> None:
    """Through hypercorn, every route and method of the table (the chat fast path and the
    WebSocket included) refuses or serves each kind of caller as its placement says."""
    wrong = []
    async with serving(root_path) as (url, routes), httpx.AsyncClient(base_url=url) as client:
        for case in cases(routes):
            found = placements(case.template)
            for credential, headers in CREDENTIALS.items():
                expected = EXPECTED[found[0]][credential] if len(found) == 1 else "placed"
                got = await outcome(client, case, headers)
                if got != expected:
                    wrong.append(
                        f"{case.method} {case.path} with {credential}: {got}, not {expected}"
                    )
    assert not wrong, "\n".join(wrong)


@pytest.mark.parametrize(
    ("path", "root_path", "expected"),
    [
        ("/v1/dead-letters", "", "/v1/dead-letters"),
        ("/gateway/v1/dead-letters", "/gateway", "/v1/dead-letters"),
        ("/gateway", "/gateway", ""),
        ("/gatewayx/v1/dead-letters", "/gateway", "/gatewayx/v1/dead-letters"),
        ("/v1/dead-letters", "/gateway", "/v1/dead-letters"),  # a proxy stripped the prefix
    ],
)
def test_the_guard_judges_the_path_the_router_serves(
    path: str, root_path: str, expected: str
) -> None:
    """route_path drops a root_path only where Starlette's router does: at a segment edge."""
    assert route_path({"path": path, "root_path": root_path}) == expected
