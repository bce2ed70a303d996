"""Call the gateway's MCP tools with the official MCP SDK's client, over streamable HTTP.

    pip install 'trio-orchestrator[examples]'   # the MCP SDK (trio-orchestrator[mcp])
    python examples/mcp_client.py                       # starts a gateway of its own
    TRIO_ORCHESTRATOR_API_KEY=sk-... python examples/mcp_client.py --url http://host:8000/mcp

Without ``--url`` the service starts inside this Trio program on a free port of 127.0.0.1,
with ``[service] mcp = true``, the echo worker and two API keys (an ordinary one and an admin
one). The client lists the tools, completes a prompt through the gateway, reads the models
and the statistics, and shows that the ordinary key is refused the dead letters. The SDK runs
on anyio, so the same code runs under Trio (as here) or asyncio.
"""

from __future__ import annotations

import argparse
import os
from functools import partial

import httpx2
import trio
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client
from mcp.types import CallToolResult, TextContent

from trio_orchestrator.config import Config
from trio_orchestrator.config.secret import Secret
from trio_orchestrator.config.service import ApiKeyConfig, ServiceConfig
from trio_orchestrator.service import serve

KEY = "sk-example-app"
ADMIN_KEY = "sk-example-admin"


async def use_tools(url: str, key: str | None) -> None:
    """Connect to the MCP endpoint ``url`` with ``key`` and call each kind of tool."""
    headers = {} if key is None else {"Authorization": f"Bearer {key}"}
    async with (
        httpx2.AsyncClient(headers=headers, timeout=60) as http,
        streamable_http_client(url, http_client=http) as (read, write),
        ClientSession(read, write) as session,
    ):
        await session.initialize()
        tools = await session.list_tools()
        print("tools:", ", ".join(tool.name for tool in tools.tools))

        answer = await session.call_tool("complete", {"prompt": "Hello over MCP!"})
        print("complete:", text_of(answer))
        print("usage:", answer.structured_content["usage"])

        models = await session.call_tool("list_models", {})
        print("models:", [m["id"] for m in models.structured_content["data"]])
        stats = await session.call_tool("statistics", {})
        print("completed so far:", stats.structured_content["pipeline"]["completed"])

        refused = await session.call_tool("list_dead_letters", {})
        print("dead letters:", "refused:" if refused.is_error else "ok:", text_of(refused))


def text_of(result: CallToolResult) -> str:
    """The text a tool answered (its text blocks, joined)."""
    return "".join(block.text for block in result.content if isinstance(block, TextContent))


async def main(url: str | None) -> None:
    if url is not None:
        await use_tools(url, os.environ.get("TRIO_ORCHESTRATOR_API_KEY"))
        return
    keys = (
        ApiKeyConfig("app", key=Secret(KEY)),
        ApiKeyConfig("ops", key=Secret(ADMIN_KEY), admin=True),
    )
    config = Config(service=ServiceConfig(port=0, mcp=True, api_keys=keys))
    async with trio.open_nursery() as nursery:
        stop = trio.Event()
        base = await nursery.start(partial(serve, config, shutdown_trigger=stop.wait))
        print(f"service listening on {base}, MCP at {base}/mcp")
        await use_tools(f"{base}/mcp", KEY)
        stop.set()  # drain and stop


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", help="a running gateway's MCP endpoint (…/mcp)")
    trio.run(main, parser.parse_args().url)
