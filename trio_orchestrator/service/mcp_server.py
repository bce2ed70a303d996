"""The gateway as a Model Context Protocol server, on the official ``mcp`` SDK.

The tools are :data:`.mcp_tools.TOOLS`; this module serves them over the SDK's low-level
:class:`mcp.server.lowlevel.Server`, by two transports:

- **streamable HTTP** at ``/mcp`` of the service (``[service] mcp = true``): the SDK's
  :class:`~mcp.server.streamable_http_manager.StreamableHTTPSessionManager` is an ASGI
  application; :class:`McpRoute` hands it the requests of the service's ``/mcp`` route,
  after the service's own guard has checked the API key (401 without one). It runs
  *stateless* with JSON answers: every POST is one JSON-RPC exchange needing no session
  kept in this process, so ``serve --workers N`` and several hosts behind a balancer work
  without sticky sessions, and nothing is held for a client that went away.
- **stdio**: ``trio-orchestrator mcp`` (:mod:`trio_orchestrator.cli.mcp`).

Under Trio: the SDK is written on anyio, whose Trio backend it runs on unchanged. Its task
groups are Trio nurseries, its memory streams and cancel scopes Trio's; the session
manager's task group is opened in the service's lifespan (hypercorn's Trio worker runs the
lifespan in one task for the whole life of the service), so the per-request server tasks
are children of that nursery, and a tool call is cancelled with them at shutdown.

The SDK is an optional dependency (``pip install 'trio-orchestrator[mcp]'``): it is imported
on first use only (:func:`mcp_sdk`), never when MCP is off.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from importlib import metadata
from types import ModuleType
from typing import TYPE_CHECKING, Any

import attrs
import trio

from ..errors import ConfigError
from .errors import ApiError
from .guard import send_error
from .mcp_tools import TOOLS, App, Endpoint, ToolCalls, call_tool, forwarded_headers

if TYPE_CHECKING:
    from mcp.server.lowlevel import Server
    from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
    from starlette.applications import Starlette

__all__ = ["MCP_PATH", "McpHttp", "McpRoute", "build_server", "mcp_sdk", "with_mcp"]

MCP_PATH = "/mcp"
SERVER_NAME = "trio-orchestrator"

_sdk: ModuleType | None = None


def mcp_sdk() -> ModuleType:
    """The ``mcp`` SDK, imported on first use only.

    Raises:
        ConfigError: it is not installed; the message says what to install.
    """
    global _sdk
    if _sdk is None:
        try:
            import mcp
            import mcp.server.lowlevel
            import mcp.server.streamable_http_manager
        except ImportError as exc:
            raise ConfigError(
                "service.mcp: the MCP server needs the mcp SDK: "
                "pip install 'trio-orchestrator[mcp]', or set service.mcp = false"
            ) from exc
        _sdk = mcp
    return _sdk


def _tool_list() -> Any:
    types = mcp_sdk().types
    tools = [
        types.Tool(
            name=tool.name,
            description=tool.description,
            input_schema=tool.input_schema,
            annotations=types.ToolAnnotations(read_only_hint=tool.read_only),
        )
        for tool in TOOLS
    ]
    return types.ListToolsResult(tools=tools)


def build_server(
    calls: ToolCalls, app: App | None = None, headers: tuple[tuple[bytes, bytes], ...] = ()
) -> Server[Any]:
    """The MCP server of the gateway's tools.

    Args:
        calls: counts the tool calls.
        app: the service's application to send the tools' requests to; None to send each
            to the application serving the MCP HTTP request it came in (``/mcp``).
        headers: the credentials to send with the tools' requests when the MCP request has
            none of its own (stdio); an HTTP request's own are sent otherwise.

    Returns:
        The SDK's low-level server.
    """
    sdk = mcp_sdk()
    types = sdk.types
    from mcp.server.lowlevel import Server

    async def list_tools(_ctx: Any, _params: Any) -> Any:
        return _tool_list()

    async def on_call_tool(ctx: Any, params: Any) -> Any:
        endpoint = _endpoint_for(ctx.request, app, headers)
        answer = await call_tool(endpoint, params.name, params.arguments, calls)
        return types.CallToolResult(
            content=[types.TextContent(text=answer.text)],
            structured_content=answer.data,
            is_error=answer.error,
        )

    return Server(
        SERVER_NAME, version=_version(), on_list_tools=list_tools, on_call_tool=on_call_tool
    )


def _version() -> str:
    """The installed package's version (the package facade is a layer above this one)."""
    try:
        return metadata.version("trio-orchestrator")
    except metadata.PackageNotFoundError:  # run from a source tree never installed
        return "0"


def _endpoint_for(
    request: Any, app: App | None, headers: tuple[tuple[bytes, bytes], ...]
) -> Endpoint:
    """Where a tool call's requests go, with whose credentials: over HTTP, the application
    that served the MCP request and that request's own headers."""
    if request is None:
        assert app is not None, "a tool call without an HTTP request needs the application"
        return Endpoint(app, headers)
    scope = request.scope
    return Endpoint(app or scope["app"], forwarded_headers(scope["headers"]))


@attrs.define(eq=False)
class McpHttp:
    """The MCP server over streamable HTTP, for the service's ``/mcp`` route.

    Attributes:
        calls: the tool calls counted (exported in ``/metrics`` while the service runs).
        origins: the browser origins allowed to call (``service.cors_origins``).
    """

    calls: ToolCalls
    origins: frozenset[str]
    manager: StreamableHTTPSessionManager

    @classmethod
    def build(cls, origins: tuple[str, ...] = ()) -> McpHttp:
        """The server and its session manager (imports the SDK).

        Raises:
            ConfigError: the SDK is not installed.
        """
        mcp_sdk()
        from mcp.server.streamable_http_manager import StreamableHTTPSessionManager

        calls = ToolCalls()
        server = build_server(calls)
        manager = StreamableHTTPSessionManager(server, json_response=True, stateless=True)
        return cls(calls, frozenset(origins), manager)

    def running(self) -> AbstractAsyncContextManager[None]:
        """Run the session manager (its task group) for the block."""
        return self.manager.run()


_MCP_OFF = ApiError(
    404,
    "MCP is off on this service: set `[service] mcp = true` "
    "(with `pip install 'trio-orchestrator[mcp]'`)",
    code="mcp_disabled",
)
_FOREIGN_ORIGIN = ApiError(
    403,
    "requests from this browser origin are not allowed: add it to service.cors_origins",
    "permission_error",
    "origin_not_allowed",
)


class McpRoute:
    """The ``/mcp`` route's ASGI application: hands the request to the MCP session manager
    (the guard in front has checked the API key), or answers 404 when MCP is off.

    The route takes POST only: stateless, the server never speaks first, so the standalone
    event stream a GET would open could only hang (holding a connection), and there is no
    session for a DELETE to end. A GET is answered 405, which the specification lets a
    client expect from a server without that stream.

    A request with an ``Origin`` not in ``service.cors_origins`` is refused with 403 before
    the SDK sees it: a web page must not drive a gateway on localhost (DNS rebinding, as the
    MCP specification warns); clients that are not browsers send no ``Origin``.
    """

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        mcp: McpHttp | None = scope["app"].mcp
        if mcp is None:
            await send_error(send, _MCP_OFF)
            return
        origin = next((v for k, v in scope["headers"] if k == b"origin"), None)
        if origin is not None and origin.decode("latin-1") not in mcp.origins:
            await send_error(send, _FOREIGN_ORIGIN)
            return
        await _handle_until_gone(mcp.manager, scope, receive, send)


async def _handle_until_gone(
    manager: StreamableHTTPSessionManager, scope: dict[str, Any], receive: Any, send: Any
) -> None:
    """Let ``manager`` answer one POST, cancelling it if the client disconnects first.

    The SDK's transport, answering JSON, waits for the tool's result without listening for
    a disconnect, so a completion would run on for nobody. Here the body is read first (the
    guard bounded its size), the transport is given it, and the original ``receive`` is
    watched meanwhile: a disconnect cancels the call, which ends the MCP request's server
    task, which cancels the tool's in-process request, which cancels the pipeline request
    (counted cancelled).
    """
    body: list[dict[str, Any]] = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return
        body.append(message)
        if not message.get("more_body", False):
            break
    body.reverse()

    async def replayed() -> dict[str, Any]:
        if body:
            return body.pop()
        await trio.sleep_forever()  # the disconnect is the watcher's to see
        raise AssertionError("unreachable")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(_cancel_when_gone, receive, nursery.cancel_scope)
        await manager.handle_request(scope, replayed, send)
        nursery.cancel_scope.cancel()


async def _cancel_when_gone(receive: Any, scope: trio.CancelScope) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
    scope.cancel()


Lifespan = Callable[["Starlette"], AbstractAsyncContextManager[None]]


def with_mcp(lifespan: Lifespan, mcp: McpHttp) -> Lifespan:
    """``lifespan``, with the MCP session manager running inside it (after the gateway
    opened, stopped before it closes) and its tool calls exported in ``/metrics``."""

    @asynccontextmanager
    async def both(app: Starlette) -> AsyncIterator[None]:
        async with lifespan(app):
            observed = app.state.service.observed
            if observed is not None and observed.registry is not None:
                observed.register_collector(mcp.calls)  # taken out when the gateway closes
            async with mcp.running():
                yield

    return both
