"""The ASGI application: ``create_app(config)``, and ``app`` for hypercorn.

::

    hypercorn --worker-class trio trio_orchestrator.service.app:app

serves the configuration named by ``$TRIO_ORCHESTRATOR_CONFIG`` (the defaults without it).

The application holds one gateway per process (:func:`~trio_orchestrator.open_gateway`),
opened in the ASGI lifespan. Starlette enters and exits the lifespan context in one task
(hypercorn's lifespan task, which lives until shutdown), which is what the gateway's nurseries
need. When the lifespan ends, the pipeline stops admitting, lets in-flight requests finish
within ``pipeline.grace_period``, cancels the rest (each recorded as cancelled), and the final
counts are logged.
"""

from __future__ import annotations

import logging
import math
import os
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import attrs
import trio
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route, WebSocketRoute

from ..config import Config, parse_config
from ..config.reload import ReloadReport
from ..config.service import ServiceConfig
from ..config.signals import reload_on_signal
from ..errors import ConfigError, OrchestratorError
from ..gateway import Gateway, open_gateway
from ..observability.metrics import HeapCollector, OverheadTimes
from ..types import RequestTiming
from ..workers import ModelWorker
from . import admin_keys as keys
from . import admin_requests
from . import endpoints as ep
from . import experiments as exp
from .completions import completions
from .connections import BoundedBody, Requests
from .errors import ApiError, map_exception
from .fastpath import CHAT_PATH, ChatFastPath, ChatRoute
from .guard import CatchAll, Guard, KeyRing, RequestIds
from .mcp_server import MCP_PATH, McpHttp, McpRoute, with_mcp
from .memory import trim_when_idle
from .messages import COUNT_TOKENS_PATH, MESSAGES_PATH, CountTokensRoute, MessagesRoute
from .openapi import openapi_document
from .overhead import TIMING_KEY
from .responses import responses
from .settings import CONFIG_ENV, config_from_environment, load_config, log_to_stderr
from .spend import spend
from .state import ServedModels, ServiceState, service_of
from .streaming import ClientGone
from .ui import ui_routes
from .ws import websocket_endpoint

__all__ = ["AUTHENTICATED_ROUTES", "ServiceApp", "app", "create_app"]

logger = logging.getLogger("trio_orchestrator.service")

ROUTES = [
    Route(CHAT_PATH, ChatRoute(), methods=["POST"]),
    Route("/v1/models", ep.list_models, methods=["GET"]),
    Route("/v1/models/{model:path}", ep.get_model, methods=["GET"]),
    Route("/v1/embeddings", ep.embeddings, methods=["POST"]),
    Route("/v1/prompt", ep.prompt, methods=["POST"]),
    Route("/v1/completions", completions, methods=["POST"]),
    Route("/v1/responses", responses, methods=["POST"]),
    Route("/v1/prompt/stream", ep.prompt_stream, methods=["POST"]),
    WebSocketRoute("/v1/ws", websocket_endpoint),
    Route("/v1/stats", ep.stats, methods=["GET"]),
    Route("/v1/dead-letters", ep.list_dead_letters, methods=["GET"]),
    Route("/v1/dead-letters/{id}/replay", ep.replay_dead_letter, methods=["POST"]),
    Route("/v1/admin/keys", keys.create_key, methods=["POST"]),
    Route("/v1/admin/keys", keys.list_keys, methods=["GET"]),
    Route("/v1/admin/keys/{id}", keys.get_key, methods=["GET"]),
    Route("/v1/admin/keys/{id}", keys.update_key, methods=["PATCH"]),
    Route("/v1/admin/keys/{id}", keys.revoke_key, methods=["DELETE"]),
    Route("/v1/admin/keys/{id}/rotate", keys.rotate_key, methods=["POST"]),
    Route("/v1/admin/spend", spend, methods=["GET"]),
    Route("/v1/admin/requests", admin_requests.list_requests, methods=["GET"]),
    Route("/v1/admin/requests/{id}", admin_requests.get_request, methods=["GET"]),
    Route("/metrics", ep.metrics, methods=["GET"]),
    Route("/healthz", ep.healthz, methods=["GET"]),
    Route("/readyz", ep.readyz, methods=["GET"]),
    Route(MESSAGES_PATH, MessagesRoute(), methods=["POST"]),
    Route(COUNT_TOKENS_PATH, CountTokensRoute(), methods=["POST"]),
    # MCP's streamable HTTP (404 unless `[service] mcp = true`; see .mcp_server).
    Route(MCP_PATH, McpRoute(), methods=["POST"]),
    Route("/v1/feedback", exp.feedback, methods=["POST"]),
    Route("/v1/experiments", exp.list_experiments, methods=["GET"]),
    Route("/v1/experiments/{id}", exp.get_experiment, methods=["GET"]),
    Route("/v1/admin/experiments/{id}/stop", exp.stop_experiment, methods=["POST"]),
    Route("/v1/admin/experiments/{id}/resume", exp.resume_experiment, methods=["POST"]),
]
OPENAPI_PATH = "/openapi.json"
# The request headers a browser may send cross-origin: the OpenAI SDK's and the Anthropic
# SDK's (its key in x-api-key, its version and beta flags), and a client's traceparent.
CORS_REQUEST_HEADERS = [
    "authorization",
    "content-type",
    "x-api-key",
    "anthropic-version",
    "anthropic-beta",
    "traceparent",
    "tracestate",
    "mcp-protocol-version",  # a browser's MCP client (the MCP Inspector) sends it on /mcp
]
# The routes any configured key may call. Public and admin routes are placed by the guard's
# own rule (guard.PUBLIC_PATHS, guard.ADMIN_PREFIXES); every other route must be listed here,
# so that tests/test_service_routes_auth.py fails for a route nobody placed.
AUTHENTICATED_ROUTES = frozenset(
    (
        CHAT_PATH,
        "/v1/models",
        "/v1/models/{model:path}",
        "/v1/embeddings",
        "/v1/completions",
        "/v1/responses",
        MESSAGES_PATH,
        COUNT_TOKENS_PATH,
        "/v1/prompt",
        "/v1/prompt/stream",
        "/v1/ws",
        "/v1/stats",
        "/metrics",
        OPENAPI_PATH,
        MCP_PATH,  # each tool's own request then meets its endpoint's access (admin tools)
        "/v1/feedback",
        "/v1/experiments",
        "/v1/experiments/{id}",
    )
)


def create_app(
    config: Config | None = None,
    worker: ModelWorker | None = None,
) -> ServiceApp:
    """Build the service's ASGI application.

    Args:
        config: the configuration (defaults throughout when ``None``).
        worker: the provider worker to serve instead of the configured providers (the
            layers ``[resilience]`` enables still go around it).

    Returns:
        The application; its ``state.service`` is the :class:`ServiceState`.
        ``POST /v1/chat/completions`` skips Starlette's stack (:mod:`.fastpath`) unless
        ``service.cors_origins`` is set.
    """
    config = config or Config()
    keyring = KeyRing.from_config(config.service.api_keys)
    state = ServiceState(config, keyring=keyring)
    requests = Requests()
    lifespan = partial_lifespan(state, worker, requests)
    mcp = McpHttp.build(config.service.cors_origins) if config.service.mcp else None
    if mcp is not None:
        lifespan = with_mcp(lifespan, mcp)
    application = ServiceApp(
        routes=[
            *ROUTES,
            Route(OPENAPI_PATH, _openapi, methods=["GET"]),
            *ui_routes(config.service.ui),
        ],
        middleware=_middleware(config, keyring),
        exception_handlers={
            ApiError: _api_error,
            OrchestratorError: _api_error,
            HTTPException: _http_error,
            ClientGone: _client_gone,
        },
        lifespan=lifespan,
    )
    application.state.service = state
    application.mcp = mcp
    application.requests = requests
    application.read_timeout = config.service.request_read_timeout
    application.timed = config.observability.gateway_overhead
    if not config.service.cors_origins:  # else CORS must see every response: no fast path
        guard = Guard(None, keyring, config.service.max_body_bytes)  # its checks, no layer
        application.fast_path = ChatFastPath(state, guard)
    return application


class ServiceApp(Starlette):
    """Starlette, with ``POST /v1/chat/completions`` answered in front of its middleware
    stack by :class:`~.fastpath.ChatFastPath` when one is set (which makes the layers'
    checks itself).

    Every HTTP request is counted in :attr:`requests` (a shutdown waits for them), its
    body must arrive within :attr:`read_timeout` seconds (408 past it), and each write of
    its answer must end within ``service.send_timeout`` (else its connection is reset:
    :mod:`.stalls`). With :attr:`timed`,
    its arrival is noted in a :class:`~trio_orchestrator.types.RequestTiming` in its scope
    (:mod:`.overhead`: the ``x-gateway-overhead-ms`` header).
    """

    fast_path: ChatFastPath | None = None
    mcp: McpHttp | None = None
    read_timeout: float = math.inf
    timed: bool = False
    requests: Requests

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        """Serve one ASGI connection or the lifespan."""
        if scope["type"] != "http":  # the lifespan, a WebSocket: never the fast path's
            await super().__call__(scope, receive, send)
            return
        state: ServiceState = self.state.service
        now = trio.current_time()
        deadline = now + self.read_timeout
        timing = None
        if self.timed:
            timing = scope[TIMING_KEY] = RequestTiming(now)
        # Given the server's own send: a stalled one is traced back to its socket (.stalls).
        # x-cache (what a cache made of the request) goes on the response's start there too.
        bounded = BoundedBody(receive, send, deadline, state, state.sends, timing)
        send = bounded.send
        receive = bounded.receive
        requests = self.requests
        requests.begin()
        try:
            # In this frame, not a helper's: a frame fewer held by every open stream.
            fast_path = self.fast_path
            if fast_path is not None and fast_path.handles(scope):
                # A stream runs here, in no frame of the fast path's: a frame fewer again.
                stream = await fast_path(scope, receive, send)
                if stream is not None:
                    await stream(scope, receive, send)
            else:
                await super().__call__(scope, receive, send)
        finally:
            requests.end()


def _middleware(config: Config, keyring: KeyRing) -> list[Middleware]:
    service = config.service
    layers = [Middleware(RequestIds), Middleware(CatchAll)]
    if service.cors_origins:
        layers.append(
            Middleware(
                CORSMiddleware,
                allow_origins=list(service.cors_origins),
                allow_methods=["GET", "POST"],
                # The Anthropic SDK sends its key and version in headers of its own.
                allow_headers=CORS_REQUEST_HEADERS,
                expose_headers=[
                    "x-request-id",
                    "x-gateway-overhead-ms",
                    "x-cache",
                    "x-experiment",
                ],
            )
        )
    layers.append(Middleware(Guard, keys=keyring, max_body_bytes=service.max_body_bytes))
    return layers


def partial_lifespan(
    state: ServiceState, worker: ModelWorker | None = None, requests: Requests | None = None
) -> Callable[[Starlette], AbstractAsyncContextManager[None]]:
    """The lifespan: open the gateway (and, given the app's ``requests``, trim the memory
    of finished bursts of them); drain and close it at shutdown."""

    @asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        async with open_gateway(
            state.config, worker=worker, error_status=admin_requests.error_status
        ) as gateway:
            state.gateway, state.pipeline = gateway, gateway.pipeline
            state.refresh_models()
            state.observed = gateway.observed
            _count_overhead(state)
            if state.observed is not None and state.observed.registry is not None:
                state.observed.register_collector(HeapCollector())
            if state.keyring is not None:
                gateway.add(state.keyring, "service")  # API keys rotate on reload
                state.keyring.attach(gateway.keys)  # and virtual keys from storage
            gateway.add(state.sends, "service")  # send_timeout, stream_buffer_bytes
            if state.observed is not None:  # added after the gateway exported its parts
                sends = state.sends
                state.observed.register_statistics(
                    sends.metric_kind, sends, counters=sends.metric_counters
                )
            served = ServedModels(state)
            gateway.add(served, "providers")
            if state.config.routing.enabled:
                gateway.add(served, "routing")
            logger.info("pipeline opened: serving %s", ", ".join(state.models) or "any model")
            async with trio.open_nursery() as nursery:
                path = os.environ.get(CONFIG_ENV)
                if path and threading.current_thread() is threading.main_thread():
                    # SIGHUP re-reads the file: limits, breaker, retry, concurrency…
                    reloads = FileReload(gateway, state.config, _file_service(path))
                    await nursery.start(reload_on_signal, reloads, path)
                if requests is not None:
                    interval = state.config.service.idle_trim_interval
                    nursery.start_soon(trim_when_idle, requests, interval)
                nursery.start_soon(state.sends.run)  # resets connections whose send stalls
                try:
                    yield
                finally:
                    state.draining = True
                    nursery.cancel_scope.cancel()
        stats = gateway.pipeline.statistics()
        logger.info(
            "pipeline closed: submitted=%d completed=%d failed=%d shed=%d expired=%d "
            "cancelled=%d in_flight=%d",
            stats.submitted,
            stats.completed,
            stats.failed,
            stats.shed,
            stats.expired,
            stats.cancelled,
            stats.in_flight,
        )

    return lifespan


def _count_overhead(state: ServiceState) -> None:
    """Export the gateway's overhead per request, when it is measured and metrics are on."""
    observed, observability = state.observed, state.config.observability
    if observed is None or observed.registry is None or not observability.gateway_overhead:
        return
    state.overhead = OverheadTimes(observability.metrics.overhead_buckets)
    observed.register_collector(state.overhead)


# What the command line (`serve --host/--port/--workers`) may set over the file's values.
_COMMAND_LINE_KEYS = ("host", "port", "workers")


def _file_service(path: str) -> ServiceConfig | None:
    """The ``[service]`` section of the file the service started from, as the file says it."""
    try:
        return load_config(path).service
    except OrchestratorError:
        return None


@attrs.define(eq=False)
class FileReload:
    """Reloads the configuration file into the gateway, keeping what the command line set.

    ``serve --port 9000`` runs on 9000 whatever the file says; a reload of an unchanged file
    must not report "refused service.port" for it. So a reload compares the file's
    ``service.host``, ``port`` and ``workers`` with the file's own values at start: unchanged,
    the running values stand; changed in the file, the change is refused as any other is.

    Args:
        gateway: what to reload.
        running: the configuration the service started with (overrides applied).
        file_service: the file's ``[service]`` section at start (None if unreadable).
    """

    gateway: Gateway
    running: Config
    file_service: ServiceConfig | None

    async def reload_from_file(self, path: str | os.PathLike[str]) -> ReloadReport:
        """Read ``path`` and reload it (a bad file changes nothing; the report says why)."""
        try:
            text = await trio.Path(path).read_text(encoding="utf-8")
            config = parse_config(text)
        except (OSError, UnicodeDecodeError) as exc:
            return ReloadReport(invalid=(f"cannot read {os.fspath(path)}: {exc}",))
        except ConfigError as exc:
            return ReloadReport(invalid=tuple(exc.problems))
        return self.gateway.reload(self._keep_command_line(config))

    def _keep_command_line(self, config: Config) -> Config:
        started, running = self.file_service, self.running.service
        if started is None:
            return config
        kept = {
            key: getattr(running, key)
            for key in _COMMAND_LINE_KEYS
            if getattr(config.service, key) == getattr(started, key)
        }
        return attrs.evolve(config, service=attrs.evolve(config.service, **kept))


async def _api_error(_request: Request, exc: Exception) -> Response:
    return ep.json_error(map_exception(exc))


async def _http_error(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    code = "not_found" if exc.status_code == 404 else "invalid_request"
    message = exc.detail
    if exc.status_code == 404:
        message = "no such endpoint; /openapi.json lists them"
    elif exc.status_code == 405:
        message = "method not allowed on this endpoint; /openapi.json lists the methods"
    error = ApiError(exc.status_code, message, code=code)
    return ep.JSONResponse(error.body(), exc.status_code, exc.headers)


async def _client_gone(_request: Request, _exc: Exception) -> Response:
    # Nobody is listening; the server drops whatever is sent. 499 is nginx's "client closed".
    return Response(status_code=499)


async def _openapi(request: Request) -> Response:
    return ep.JSONResponse(openapi_document(service_of(request).models or ("echo",)))


class _ConfiguredByEnvironment:
    """The application ``hypercorn …:app`` loads: built on first use (the lifespan), from
    ``$TRIO_ORCHESTRATOR_CONFIG``, so importing this module reads no file."""

    def __init__(self) -> None:
        self._app: Starlette | None = None

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if self._app is None:
            config = config_from_environment()
            log_to_stderr(config.observability.logging)
            self._app = create_app(config)
        await self._app(scope, receive, send)


app = _ConfiguredByEnvironment()
