"""``trio-orchestrator mcp`` as a subprocess, driven by the official SDK's own stdio client
(``mcp.client.stdio``, on anyio's Trio backend here): the whole gateway runs in the child
under Trio, each tool call goes through its guard with the key from
``$TRIO_ORCHESTRATOR_API_KEY``, and stdout carries the protocol alone.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio
from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client
from test_mcp import ADMIN_KEY, APP_KEY, CONFIG, LIMITED_KEY, limited_key_id, text_of

from trio_orchestrator.service.mcp_tools import TOOLS

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    """test_mcp's configuration (three keys, one rate-limited) as a file."""
    path = tmp_path / "gateway.toml"
    path.write_text(CONFIG.replace("KEY_ID", limited_key_id()), encoding="utf-8")
    return path


def environment(key: str | None) -> dict[str, str]:
    """The child's environment: this one, the package importable, ``key`` as its key."""
    env = {k: v for k, v in os.environ.items() if k != "TRIO_ORCHESTRATOR_API_KEY"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    if key is not None:
        env["TRIO_ORCHESTRATOR_API_KEY"] = key
    return env


@asynccontextmanager
async def stdio_session(config: Path, key: str | None) -> AsyncIterator[ClientSession]:
    """An initialized SDK session with ``trio-orchestrator mcp --config config``."""
    arguments = ["-m", "trio_orchestrator", "mcp", "--config", str(config)]
    params = StdioServerParameters(command=sys.executable, args=arguments, env=environment(key))
    with open(os.devnull, "w") as errlog:  # noqa: ASYNC230 - opened once, before any I/O
        async with (
            stdio_client(params, errlog=errlog) as (read, write),
            ClientSession(read, write) as session,
        ):
            await session.initialize()
            yield session


async def test_stdio_lists_the_tools_completes_and_keeps_the_admin_rule(config_file: Path) -> None:
    """Over stdio the SDK client lists the tools, `complete` answers the echo text, an
    ordinary key is refused the dead letters and an admin key is not."""
    async with stdio_session(config_file, APP_KEY) as session:
        listed = await session.list_tools()
        assert [tool.name for tool in listed.tools] == [tool.name for tool in TOOLS]
        result = await session.call_tool("complete", {"prompt": "hello over stdio"})
        assert not result.is_error
        assert text_of(result) == "hello over stdio"
        refused = await session.call_tool("list_dead_letters", {})
        assert refused.is_error
        assert "an admin API key is needed" in text_of(refused)
    async with stdio_session(config_file, ADMIN_KEY) as session:
        listed_letters = await session.call_tool("list_dead_letters", {})
        assert not listed_letters.is_error


async def test_stdio_without_a_key_is_refused_when_keys_are_configured(config_file: Path) -> None:
    """With api_keys configured and no $TRIO_ORCHESTRATOR_API_KEY, each tool answers the
    guard's 401 as a tool error."""
    async with stdio_session(config_file, None) as session:
        result = await session.call_tool("complete", {"model": "echo", "prompt": "hi"})
        assert result.is_error
        assert "401 invalid_api_key" in text_of(result)


async def test_stdio_rate_limit_of_the_key_is_a_tool_error(config_file: Path) -> None:
    """The key's limit (one request a minute) refuses its second completion with 429."""
    async with stdio_session(config_file, LIMITED_KEY) as session:
        first = await session.call_tool("complete", {"model": "echo", "prompt": "one"})
        assert not first.is_error
        second = await session.call_tool("complete", {"model": "echo", "prompt": "two"})
        assert "429 rate_limit_exceeded" in text_of(second)


def _line(message: dict[str, Any]) -> bytes:
    return json.dumps(message).encode() + b"\n"


async def test_stdout_carries_only_protocol_and_the_command_ends_with_stdin(
    config_file: Path,
) -> None:
    """Every stdout line is a JSON-RPC message, the logs are on stderr, and the command
    exits 0 once its stdin closes."""
    initialize = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "initialize",
        "params": {
            "protocolVersion": "2025-06-18",
            "capabilities": {},
            "clientInfo": {"name": "raw", "version": "0"},
        },
    }
    sent = _line(initialize)
    sent += _line({"jsonrpc": "2.0", "method": "notifications/initialized"})
    arguments = [sys.executable, "-m", "trio_orchestrator", "mcp", "--config", str(config_file)]
    with trio.fail_after(60):
        done = await trio.run_process(
            arguments, stdin=sent, capture_stdout=True, capture_stderr=True, env=environment(None)
        )
    answers = [json.loads(line) for line in done.stdout.decode().splitlines()]
    [answer] = answers  # a request still running when stdin closes is cancelled
    assert answer["id"] == 1
    assert answer["result"]["serverInfo"]["name"] == "trio-orchestrator"
    assert b"pipeline opened" in done.stderr
    assert done.returncode == 0


async def test_without_the_sdk_the_command_says_what_to_install() -> None:
    """`trio-orchestrator mcp` without the mcp SDK exits 2 naming the extra, not a traceback."""
    code = (
        "import sys\n"
        "sys.modules['mcp'] = None  # what `import mcp` meets when it is not installed\n"
        "from trio_orchestrator.cli import main\n"
        "sys.exit(main(['mcp']))\n"
    )
    with trio.fail_after(60):
        done = await trio.run_process(
            [sys.executable, "-c", code],
            stdin=b"",
            capture_stdout=True,
            capture_stderr=True,
            env=environment(None),
            check=False,
        )
    assert done.returncode == 2
    assert b"pip install 'trio-orchestrator[mcp]'" in done.stderr
    assert done.stdout == b""


async def test_an_invalid_configuration_exits_2_naming_the_problem(tmp_path: Path) -> None:
    """A configuration the loader refuses is one line on stderr and exit status 2."""
    bad = tmp_path / "bad.toml"
    bad.write_text("[service]\nmcp = 'yes please'\n", encoding="utf-8")
    arguments = [sys.executable, "-m", "trio_orchestrator", "mcp", "--config", str(bad)]
    with trio.fail_after(60):
        done = await trio.run_process(
            arguments, capture_stdout=True, capture_stderr=True, env=environment(None), check=False
        )
    assert done.returncode == 2
    assert b"invalid configuration" in done.stderr
    assert b"service.mcp" in done.stderr
