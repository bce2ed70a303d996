"""The web dashboard's files through the served path (issue 19, item 5): served without a key
from the installed package while the API they call still needs one, only the files the
dashboard has, nothing loaded from elsewhere, and off (404) with ``[service] ui = false``.
What the pages do in a browser is tests/test_ui_browser.py's part."""

from __future__ import annotations

import hashlib
import importlib.resources
import re
from functools import partial
from typing import Any, cast

import httpx
import pytest
import trio
from hypercorn.trio import serve as hypercorn_serve
from service_helpers import make_config, running_service

from trio_orchestrator.config.service import ApiKeyConfig
from trio_orchestrator.service import create_app
from trio_orchestrator.service.server import hypercorn_config
from trio_orchestrator.service.ui import UI_FILES

ADMIN = "sk-admin-ui"
KEYS = (ApiKeyConfig("ops", sha256=hashlib.sha256(ADMIN.encode()).hexdigest(), admin=True),)
# Anything a page could fetch from another origin: an absolute URL in a src, href or url().
ELSEWHERE = re.compile(r"""(?:src|href)\s*=\s*["'](?:https?:)?//|url\(\s*["']?(?:https?:)?//""")


async def test_the_dashboard_is_served_without_a_key_and_its_api_is_not() -> None:
    """/ui redirects to /ui/, whose files come without a key (with a strict CSP), while
    /v1/stats still wants one; features.json says what the page may call."""
    async with (
        running_service(make_config(api_keys=KEYS)) as url,
        httpx.AsyncClient(base_url=url) as client,
    ):
        moved = await client.get("/ui")
        assert (moved.status_code, moved.headers["location"]) == (308, "/ui/")
        page = await client.get("/ui/")
        assert page.status_code == 200
        assert page.headers["content-type"].startswith("text/html")
        assert "script-src 'self'" in page.headers["content-security-policy"]
        assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
        assert '<script src="app.js"' in page.text
        for name, media_type in UI_FILES.items():
            answer = await client.get(f"/ui/{name}")
            assert answer.status_code == 200, name
            assert answer.headers["content-type"] == media_type
        assert (await client.get("/v1/stats")).status_code == 401
        features = (await client.get("/ui/features.json")).json()
        assert features == {
            "request_log": features["request_log"],  # present once the request log is merged
            "storage": False,
            "metrics": True,
            "auth": True,
        }


@pytest.mark.parametrize("path", ["/ui/nothing.js", "/ui/../pyproject.toml", "/ui/ui.py"])
async def test_only_the_dashboards_own_files_are_served(path: str) -> None:
    """A name the dashboard does not have is 404, whatever the path tries."""
    async with running_service(make_config()) as url, httpx.AsyncClient(base_url=url) as client:
        answer = await client.get(path)
    assert answer.status_code == 404


async def test_ui_off_is_404() -> None:
    """With ``[service] ui = false`` neither /ui nor its files are routed."""
    async with (
        running_service(make_config(ui=False)) as url,
        httpx.AsyncClient(base_url=url) as client,
    ):
        for path in ("/ui", "/ui/", "/ui/app.js", "/ui/features.json"):
            answer = await client.get(path)
            assert answer.status_code == 404, path
            assert "no such endpoint" in answer.json()["error"]["message"]


def test_the_files_ship_in_the_package_and_load_nothing_from_elsewhere() -> None:
    """Every file is found through importlib.resources (as from an installed wheel), and
    none refers to another origin (no CDN, no web fonts: these machines have no internet)."""
    folder = importlib.resources.files("trio_orchestrator.service").joinpath("ui")
    names = {entry.name for entry in folder.iterdir()}
    assert names == set(UI_FILES)
    for name in UI_FILES:
        text = folder.joinpath(name).read_text(encoding="utf-8")
        assert not ELSEWHERE.search(text.replace('xmlns="http://www.w3.org/2000/svg"', "")), name


async def test_under_a_root_path_the_dashboard_stays_under_it() -> None:
    """Mounted under a prefix (hypercorn --root-path), /gw/ui redirects to /gw/ui/ and the
    files are served there (the page then calls the API under /gw too)."""
    config = make_config()
    settings = hypercorn_config(config)
    settings.root_path = "/gw"
    async with trio.open_nursery() as nursery:
        stop = trio.Event()
        app = cast(Any, create_app(config))
        serve = partial(hypercorn_serve, app, settings, shutdown_trigger=stop.wait)
        binds: list[str] = await nursery.start(serve)
        async with httpx.AsyncClient(base_url=binds[0]) as client:
            moved = await client.get("/gw/ui")
            page = await client.get("/gw/ui/app.js")
        stop.set()
    assert (moved.status_code, moved.headers["location"]) == (308, "/gw/ui/")
    assert page.status_code == 200
