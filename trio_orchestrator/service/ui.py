"""The web dashboard: static files at ``/ui/`` (``[service] ui``), read from the package.

The files are the whole dashboard (HTML, one script, one style sheet, no build step, nothing
fetched from elsewhere), hold no secret, and are served without a key: every API call the
page makes carries the admin key its user typed, and the API enforces admin access as for
any other client. ``/ui/features.json`` tells the page which optional endpoints this
service has, so that it never calls one that would answer 404 (a browser logs every failed
request as a console error).
"""

from __future__ import annotations

import functools
import importlib.resources

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from .errors import ApiError
from .jsonenc import JSONResponse
from .state import service_of

__all__ = ["UI_FILES", "UI_PATH", "asset", "features", "ui_routes"]

UI_PATH = "/ui"
# Every file the dashboard has, with its media type; any other name is 404.
UI_FILES = {
    "index.html": "text/html; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "charts.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
    "favicon.svg": "image/svg+xml",
}
# Optional endpoints the page asks about (a newer or older service may lack them).
_OPTIONAL = {"request_log": "/v1/admin/requests"}
# The page runs its own files only: no inline script or style, no other origin, no framing.
_HEADERS = {
    "content-security-policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "cache-control": "no-cache",
}


@functools.cache
def _read(name: str) -> bytes:
    """One of :data:`UI_FILES`, from the installed package (read once)."""
    return importlib.resources.files(__package__).joinpath("ui", name).read_bytes()


async def redirect(request: Request) -> Response:
    """``GET /ui``: to ``/ui/``, so that the page's relative links resolve under it."""
    return RedirectResponse(request.scope.get("root_path", "") + UI_PATH + "/", 308)


async def asset(request: Request) -> Response:
    """``GET /ui/{name}``: one of the dashboard's files (``index.html`` for ``/ui/``)."""
    name = request.path_params["name"] or "index.html"
    media_type = UI_FILES.get(name)
    if media_type is None:
        raise ApiError(404, f"the dashboard has no file {name!r}", code="not_found")
    return Response(_read(name), media_type=media_type, headers=_HEADERS)


async def features(request: Request) -> Response:
    """``GET /ui/features.json``: which optional parts this service has (booleans only)."""
    paths = {getattr(route, "path", None) for route in request.app.routes}
    state = service_of(request)
    found = {name: path in paths for name, path in _OPTIONAL.items()}
    found["storage"] = state.gateway is not None and state.gateway.store is not None
    found["metrics"] = state.observed is not None and state.observed.registry is not None
    found["auth"] = state.keyring is not None and state.keyring.enabled
    return JSONResponse(found, headers={"cache-control": "no-store"})


def ui_routes(enabled: bool) -> list[BaseRoute]:
    """The dashboard's routes when ``enabled`` (``[service] ui``), else none (404)."""
    if not enabled:
        return []
    return [
        Route(UI_PATH, redirect, methods=["GET"]),
        Route(UI_PATH + "/features.json", features, methods=["GET"]),
        Route(UI_PATH + "/{name:path}", asset, methods=["GET"]),
    ]
