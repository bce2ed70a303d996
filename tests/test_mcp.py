"""The MCP server over streamable HTTP, through the served path: the service under hypercorn's
Trio worker on a loopback port with ``[service] mcp = true``, driven by the official ``mcp``
SDK's own client (``mcp.client.streamable_http``), which runs on anyio: here on its Trio
backend, in the test's own Trio run, next to the server.

Each tool call goes through the service's guard and endpoints with the MCP request's key, so
the key ring, the admin rule and the per-key rate limit apply as they do over plain HTTP.
"""

from __future__ import annotations

import queue
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import attrs
import httpx
import httpx2
import pytest
import sniffio
import trio
from mcp import Client, ClientSession, MCPError
from mcp.client.streamable_http import streamable_http_client
from service_helpers import running_app, wait_for_statistic

from trio_orchestrator.config import Config, parse_config
from trio_orchestrator.config.secret import Secret
from trio_orchestrator.config.service import ApiKeyConfig, EchoConfig
from trio_orchestrator.errors import ConfigError
from trio_orchestrator.service import mcp_server, serve
from trio_orchestrator.service.app import create_app
from trio_orchestrator.service.mcp_tools import TOOLS

APP_KEY = "sk-mcp-app"
ADMIN_KEY = "sk-mcp-admin"
LIMITED_KEY = "sk-mcp-limited"

CONFIG = f"""
[service]
port = 0
mcp = true
api_keys = [
    {{ name = "app", key = "{APP_KEY}" }},
    {{ name = "ops", key = "{ADMIN_KEY}", admin = true }},
    {{ name = "limited", key = "{LIMITED_KEY}" }},
]

[resilience.rate_limits]
enabled = true
limits = [{{ scope = "api_key", requests_per_minute = 1.0, mode = "reject", match = "KEY_ID" }}]
"""


def limited_key_id() -> str:
    """The fingerprint the rate limit of :data:`LIMITED_KEY` matches (``api_key_id``)."""
    return "sha256:" + ApiKeyConfig("limited", key=Secret(LIMITED_KEY)).digest().hex()[:8]


def config(**service: Any) -> Config:
    """The test service's configuration: three keys, one of them limited to a request a
    minute; MCP on unless ``service`` says otherwise."""
    loaded = parse_config(CONFIG.replace("KEY_ID", limited_key_id()))
    return attrs.evolve(loaded, service=attrs.evolve(loaded.service, **service))


@asynccontextmanager
async def mcp_session(url: str, key: str | None) -> AsyncIterator[ClientSession]:
    """An initialized SDK client session to ``url``/mcp, sending ``key`` as a bearer token."""
    headers = {} if key is None else {"Authorization": f"Bearer {key}"}
    async with (
        httpx2.AsyncClient(headers=headers) as http,
        streamable_http_client(url + "/mcp", http_client=http) as (read, write),
        ClientSession(read, write) as session,
    ):
        await session.initialize()
        yield session


def text_of(result: Any) -> str:
    """The text of a tool result's one text block."""
    [block] = result.content
    return str(block.text)


async def test_lists_the_tools_and_completes_through_the_gateway() -> None:
    """The SDK client lists the five tools, and `complete` answers the echo model's text."""
    async with running_app(config()) as (url, _app), mcp_session(url, APP_KEY) as session:
        listed = await session.list_tools()
        assert [tool.name for tool in listed.tools] == [tool.name for tool in TOOLS]
        result = await session.call_tool("complete", {"prompt": "hello through mcp"})
        assert not result.is_error
        assert text_of(result) == "hello through mcp"
        assert result.structured_content["model"] == "echo"
        assert result.structured_content["usage"]["completion_tokens"] > 0
        messages = [{"role": "user", "content": "a conversation"}]
        result = await session.call_tool("complete", {"model": "echo", "messages": messages})
        assert text_of(result) == "a conversation"


async def test_models_and_statistics_answer_as_their_endpoints() -> None:
    """`list_models` is /v1/models' answer; `statistics` counts the completion just made."""
    async with running_app(config()) as (url, _app), mcp_session(url, APP_KEY) as session:
        models = await session.call_tool("list_models", {})
        assert [m["id"] for m in models.structured_content["data"]] == ["echo"]
        await session.call_tool("complete", {"prompt": "count me"})
        stats = await session.call_tool("statistics", {})
        assert stats.structured_content["pipeline"]["completed"] == 1


async def test_dead_letters_need_an_admin_key() -> None:
    """An ordinary key's dead-letter tools are tool errors saying an admin key is needed; an
    admin key lists them, and replaying an unknown id is the endpoint's 404."""
    async with running_app(config()) as (url, _app):
        async with mcp_session(url, APP_KEY) as session:
            for name, arguments in (("list_dead_letters", {}), ("replay_dead_letter", {"id": "x"})):
                result = await session.call_tool(name, arguments)
                assert result.is_error, name
                assert "an admin API key is needed" in text_of(result)
                assert "403 admin_required" in text_of(result)
        async with mcp_session(url, ADMIN_KEY) as session:
            listed = await session.call_tool("list_dead_letters", {"limit": 5})
            assert not listed.is_error
            assert listed.structured_content == {"object": "list", "data": []}
            replay = await session.call_tool("replay_dead_letter", {"id": "nope"})
            assert replay.is_error
            assert "404 dead_letter_not_found" in text_of(replay)


async def test_a_missing_or_unknown_key_is_refused_with_401() -> None:
    """/mcp without a key, or with an unknown one, is 401 at the HTTP level, before MCP."""
    async with running_app(config()) as (url, _app), httpx.AsyncClient() as client:
        body = {"jsonrpc": "2.0", "id": 1, "method": "tools/list"}
        for headers in ({}, {"Authorization": "Bearer not-a-key"}):
            response = await client.post(url + "/mcp", json=body, headers=headers)
            assert response.status_code == 401
            assert response.json()["error"]["code"] == "invalid_api_key"
            assert response.headers["www-authenticate"] == "Bearer"
        with pytest.raises(BaseExceptionGroup) as refused:  # the SDK's task groups wrap it
            async with mcp_session(url, None):
                pass
        assert refused.value.subgroup(MCPError) is not None  # the SDK's client gave up


async def test_the_keys_rate_limit_is_a_tool_error_naming_it() -> None:
    """A key limited to one request a minute: its second `complete` is a tool error carrying
    the rate limit's 429 and code, and another key is not limited by it."""
    async with running_app(config()) as (url, _app):
        async with mcp_session(url, LIMITED_KEY) as session:
            first = await session.call_tool("complete", {"model": "echo", "prompt": "one"})
            assert not first.is_error
            second = await session.call_tool("complete", {"model": "echo", "prompt": "two"})
            assert second.is_error
            assert "429 rate_limit_exceeded" in text_of(second)
        async with mcp_session(url, APP_KEY) as session:
            other = await session.call_tool("complete", {"model": "echo", "prompt": "three"})
            assert not other.is_error


async def test_tool_calls_are_counted_in_metrics_by_tool_and_outcome() -> None:
    """/metrics counts the tool calls by tool and outcome (ok, or the refusal's code)."""
    async with running_app(config()) as (url, _app):
        async with mcp_session(url, APP_KEY) as session:
            await session.call_tool("complete", {"prompt": "metered"})
            await session.call_tool("list_dead_letters", {})
            await session.call_tool("complete", {})  # neither prompt nor messages
        async with httpx.AsyncClient(headers={"Authorization": f"Bearer {ADMIN_KEY}"}) as http:
            exposition = (await http.get(url + "/metrics")).text
    name = "trio_orchestrator_mcp_tool_calls_total"
    assert f'{name}{{outcome="ok",tool="complete"}} 1.0' in exposition
    assert f'{name}{{outcome="admin_required",tool="list_dead_letters"}} 1.0' in exposition
    assert f'{name}{{outcome="bad_arguments",tool="complete"}} 1.0' in exposition


async def test_an_unknown_tool_and_bad_arguments_are_tool_errors() -> None:
    """An unknown tool and a `complete` with bad arguments (the endpoint's own 400 among
    them) are tool errors that say what is wrong."""
    async with running_app(config()) as (url, _app), mcp_session(url, APP_KEY) as session:
        unknown = await session.call_tool("no_such_tool", {})
        assert unknown.is_error
        assert "no tool 'no_such_tool'" in text_of(unknown)
        both = await session.call_tool("complete", {"prompt": "a", "messages": []})
        assert "give either `prompt` or `messages`" in text_of(both)
        bad = await session.call_tool("complete", {"prompt": "a", "temperature": 9})
        assert bad.is_error
        assert "400" in text_of(bad)
        assert "temperature" in text_of(bad)


async def test_mcp_off_answers_404_saying_how_to_turn_it_on() -> None:
    """With `[service] mcp = false` (the default), /mcp answers 404 naming the setting."""
    async with running_app(config(mcp=False)) as (url, app), httpx.AsyncClient() as client:
        assert app.mcp is None
        headers = {"Authorization": f"Bearer {APP_KEY}"}
        response = await client.post(url + "/mcp", json={}, headers=headers)
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "mcp_disabled"
    assert "[service] mcp = true" in response.json()["error"]["message"]


async def test_a_foreign_browser_origin_is_refused() -> None:
    """A request whose Origin is not among service.cors_origins gets 403 (DNS rebinding)."""
    async with running_app(config()) as (url, _app), httpx.AsyncClient() as client:
        headers = {"Authorization": f"Bearer {APP_KEY}", "Origin": "http://evil.example"}
        body = {"jsonrpc": "2.0", "id": 1, "method": "tools/list"}
        response = await client.post(url + "/mcp", json=body, headers=headers)
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "origin_not_allowed"


def test_a_service_without_mcp_never_imports_the_sdk() -> None:
    """Building and importing the service with MCP off leaves the optional SDK unimported."""
    code = (
        "import sys\n"
        "from trio_orchestrator.service.app import create_app\n"
        "import trio_orchestrator.cli\n"
        "create_app()\n"
        "assert 'mcp' not in sys.modules, 'mcp was imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_mcp_on_without_the_sdk_is_a_configuration_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """`[service] mcp = true` without the SDK installed refuses to start, naming the extra."""
    monkeypatch.setattr(mcp_server, "_sdk", None)
    monkeypatch.setitem(sys.modules, "mcp", None)  # what `import mcp` meets when not installed
    with pytest.raises(ConfigError, match=r"pip install 'trio-orchestrator\[mcp\]'"):
        create_app(config())


def test_the_example_client_runs() -> None:
    """examples/mcp_client.py starts a gateway, completes over MCP, and shows the refusal."""
    example = Path(__file__).parent.parent / "examples" / "mcp_client.py"
    done = subprocess.run(
        [sys.executable, str(example)], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    assert "complete: Hello over MCP!" in done.stdout
    assert "dead letters: refused: " in done.stdout


@pytest.mark.parametrize("mode", ["legacy", "2026-07-28"])
async def test_a_client_that_goes_away_cancels_its_completion(mode: str) -> None:
    """An MCP client (of either protocol era) that disconnects during `complete` cancels the
    pipeline request: it ends as cancelled, not completed for nobody."""
    slow = config(echo=EchoConfig(first_token_delay=3600.0))
    headers = {"Authorization": f"Bearer {ADMIN_KEY}"}
    async with (
        running_app(slow) as (url, _app),
        httpx.AsyncClient(base_url=url, headers=headers) as stats_client,
    ):
        async with trio.open_nursery() as nursery:

            async def call_then_hang_up() -> None:
                async with (
                    httpx2.AsyncClient(headers={"Authorization": f"Bearer {APP_KEY}"}) as http,
                    Client(streamable_http_client(url + "/mcp", http_client=http), mode=mode) as c,
                ):
                    await c.call_tool("complete", {"prompt": "never answered"})

            nursery.start_soon(call_then_hang_up)
            with trio.fail_after(30):
                await wait_for_statistic(stats_client, "in_flight", 1)
            nursery.cancel_scope.cancel()  # the client goes away mid-call
        with trio.fail_after(30):
            stats = await wait_for_statistic(stats_client, "cancelled", 1)
    assert stats["completed"] == 0


async def test_get_is_405_rather_than_a_stream_that_never_speaks() -> None:
    """Stateless, the server never speaks first: GET /mcp is 405, not an idle open stream."""
    async with running_app(config()) as (url, _app), httpx.AsyncClient() as client:
        headers = {"Authorization": f"Bearer {APP_KEY}", "Accept": "text/event-stream"}
        with trio.fail_after(30):
            response = await client.get(url + "/mcp", headers=headers)
    assert response.status_code == 405


BUDGET_CONFIG = """
[service]
port = 0
mcp = true
api_keys = [{{ name = "app", key = "{key}" }}]

[[providers.providers]]
kind = "echo"
name = "local-echo"
models = ["echo"]

[[routing.deployments]]
name = "echo-dear"
model = "echo"
provider = "local-echo"
input_price = 1000000.0     # a dollar a token
output_price = 1000000.0

[routing.budgets]
per_api_key = {{ "{key_id}" = 1.0 }}
"""


async def test_the_keys_budget_is_a_tool_error_naming_it() -> None:
    """A key whose budget a completion would overrun: `complete` is a tool error carrying the
    budget's 429 insufficient_quota and saying which budget."""
    key_id = "sha256:" + ApiKeyConfig("app", key=Secret(APP_KEY)).digest().hex()[:8]
    budgeted = parse_config(BUDGET_CONFIG.format(key=APP_KEY, key_id=key_id))
    async with running_app(budgeted) as (url, _app), mcp_session(url, APP_KEY) as session:
        result = await session.call_tool("complete", {"model": "echo", "prompt": "too dear"})
    assert result.is_error
    assert "429 insufficient_quota" in text_of(result)
    assert f"budget exceeded for api_key '{key_id}'" in text_of(result)


@pytest.mark.parametrize("mode", ["legacy", "2026-07-28", "auto"])
async def test_each_protocol_era_of_the_sdk_client_is_served(mode: str) -> None:
    """The SDK's high-level Client in each of its modes (the initialize handshake, the
    2026-07-28 per-request envelope, and discovery) completes with the caller's key and is
    refused the dead letters with an ordinary one."""
    headers = {"Authorization": f"Bearer {APP_KEY}"}
    async with (
        running_app(config()) as (url, _app),
        httpx2.AsyncClient(headers=headers) as http,
        Client(streamable_http_client(url + "/mcp", http_client=http), mode=mode) as client,
    ):
        result = await client.call_tool("complete", {"prompt": f"era {mode}"})
        assert text_of(result) == f"era {mode}"
        refused = await client.call_tool("list_dead_letters", {})
        assert refused.is_error
        assert "403 admin_required" in text_of(refused)


@pytest.fixture
def service_in_a_thread() -> Iterator[str]:
    """``serve`` with :func:`config` under Trio in a thread of its own: its base URL."""
    started: queue.Queue[str | BaseException] = queue.Queue()
    stop: list[tuple[trio.Event, trio.lowlevel.TrioToken]] = []

    async def main() -> None:
        stopped = trio.Event()
        stop.append((stopped, trio.lowlevel.current_trio_token()))
        async with trio.open_nursery() as nursery:
            url = await nursery.start(partial(serve, config(), shutdown_trigger=stopped.wait))
            started.put(url)

    def run() -> None:
        try:
            trio.run(main)
        except BaseException as exc:  # reported to the waiting fixture
            started.put(exc)

    thread = threading.Thread(target=run, name="mcp-gateway", daemon=True)
    thread.start()
    url = started.get(timeout=60)
    if isinstance(url, BaseException):
        raise url
    try:
        yield url
    finally:
        stopped, token = stop[0]
        trio.from_thread.run_sync(stopped.set, trio_token=token)
        thread.join(timeout=30)


def test_an_asyncio_client_is_served_by_the_trio_server(service_in_a_thread: str) -> None:
    """The SDK client on asyncio (as most MCP clients run) against the server on Trio."""

    async def use() -> tuple[str, bool, str]:
        async with mcp_session(service_in_a_thread, APP_KEY) as session:
            backend = sniffio.current_async_library()
            result = await session.call_tool("complete", {"prompt": "from asyncio"})
            return backend, result.is_error, text_of(result)

    assert anyio.run(use, backend="asyncio") == ("asyncio", False, "from asyncio")


async def test_a_browser_client_of_an_allowed_origin_passes_cors_and_the_origin_check() -> None:
    """With its origin in service.cors_origins, a browser's MCP client gets through the CORS
    preflight (MCP's own header allowed) and its tool call is served."""
    origin = "http://inspector.example"
    async with (
        running_app(config(cors_origins=(origin,))) as (url, _app),
        httpx.AsyncClient() as client,
    ):
        asked = "authorization, content-type, mcp-protocol-version"
        preflight = await client.options(
            url + "/mcp",
            headers={
                "Origin": origin,
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": asked,
            },
        )
        assert preflight.status_code == 200
        allowed = preflight.headers["access-control-allow-headers"].lower()
        assert "mcp-protocol-version" in allowed
        headers = {
            "Authorization": f"Bearer {APP_KEY}",
            "Origin": origin,
            "Accept": "application/json, text/event-stream",
            "MCP-Protocol-Version": "2025-11-25",
        }
        body = {"jsonrpc": "2.0", "id": 1, "method": "tools/list"}
        response = await client.post(url + "/mcp", json=body, headers=headers)
    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] == origin
    assert len(response.json()["result"]["tools"]) == len(TOOLS)
