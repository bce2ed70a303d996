"""``trio-orchestrator mcp``: the gateway's MCP tools on stdin and stdout.

An MCP client (a desktop assistant, an agent framework, the SDK's ``stdio_client``) starts
this command and speaks MCP over its standard streams. The command runs the whole gateway
in process under Trio, as ``serve`` does but without listening: the service's application
is opened (its lifespan: gateway, providers, layers, pipeline), and each tool call is one
request to it, in process, through the same guard and endpoints as over HTTP
(:mod:`trio_orchestrator.service.mcp_tools`).

The caller's API key comes from ``$TRIO_ORCHESTRATOR_API_KEY`` (a key on the command line
would show in the process list): with ``[service] api_keys`` configured, a tool call without
a configured key is refused as ``401 invalid_api_key``, an ordinary key's dead-letter calls
as ``403 admin_required``, and the key's limits and budget apply.

stdout carries the protocol alone: logs go to stderr.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

import attrs
import trio

from ..config import Config
from ..errors import ConfigError, OrchestratorError
from ..service.settings import log_to_stderr
from .config import load_checked

__all__ = ["API_KEY_ENV", "register", "run"]

API_KEY_ENV = "TRIO_ORCHESTRATOR_API_KEY"


def register(subparsers: Any) -> None:
    """Add the ``mcp`` subcommand."""
    parser = subparsers.add_parser(
        "mcp", help="serve the gateway's MCP tools on stdin/stdout (for MCP clients)"
    )
    parser.add_argument("--config", metavar="FILE", help="a TOML configuration file")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Serve MCP on the standard streams until stdin closes; return the exit status."""
    try:
        config = Config() if args.config is None else load_checked(args.config)
    except ConfigError as exc:
        print(f"trio-orchestrator mcp: invalid configuration: {exc}", file=sys.stderr)
        return 2
    log_to_stderr(config.observability.logging)
    key = os.environ.get(API_KEY_ENV)
    try:
        trio.run(serve_stdio, config, key)
    except BaseException as exc:
        error = _own_error(exc)
        if error is None:
            raise
        print(f"trio-orchestrator mcp: cannot start: {error}", file=sys.stderr)
        return 2
    return 0


def _own_error(exc: BaseException) -> OrchestratorError | None:
    """The package's own error that stopped the command (the SDK missing, Redis unreachable
    at start...), out of the exception groups around it."""
    if isinstance(exc, OrchestratorError):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            if (found := _own_error(inner)) is not None:
                return found
    return None


async def serve_stdio(config: Config, api_key: str | None = None) -> None:
    """Open the gateway and serve its MCP tools on stdin/stdout until stdin closes.

    Args:
        config: the configuration (its ``[service] mcp`` is ignored: no HTTP is served).
        api_key: the caller's key, sent with every tool call's request.

    Raises:
        ConfigError: the ``mcp`` SDK is not installed.
    """
    from ..service.app import create_app
    from ..service.mcp_server import build_server, mcp_sdk
    from ..service.mcp_tools import ToolCalls

    mcp_sdk()
    from mcp.server.stdio import stdio_server

    service = attrs.evolve(config.service, mcp=False)  # this process serves no HTTP
    app = create_app(attrs.evolve(config, service=service))
    headers = () if api_key is None else ((b"authorization", f"Bearer {api_key}".encode()),)
    server = build_server(ToolCalls(), app, headers)
    async with app.router.lifespan_context(app), stdio_server() as (read, write):
        await server.run(read, write, server.create_initialization_options())
