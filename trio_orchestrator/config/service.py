"""The service's configuration: where it listens, who may call it, and what it accepts."""

from __future__ import annotations

import hashlib
import re
from typing import Any, Literal

import attrs

from ..validators import non_negative_time, one_of, positive_int, positive_seconds, positive_time
from .secret import Secret

__all__ = ["ApiKeyConfig", "EchoConfig", "ServiceConfig"]

_SHA256 = re.compile(r"[0-9a-f]{64}")
# The digest of the empty key: configured, it would let in ``Authorization: Bearer `` alone.
_EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
_PRIORITIES = ("critical", "high", "normal", "low")


def _check_port(_instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 65535:
        raise ValueError(f"{attribute.name} must be a port number 0-65535, got {value!r}")


def _check_sha256(_instance: object, _attribute: object, value: str | None) -> None:
    if value is not None and not _SHA256.fullmatch(value):
        raise ValueError(f"sha256 must be 64 lowercase hex digits, got {len(value)} characters")


@attrs.frozen
class ApiKeyConfig:
    """One API key the service accepts, given either as the key or as its SHA-256 digest.

    Attributes:
        name: a label for logs (the key itself never appears anywhere).
        key: the key (write ``"${ENV_VAR}"`` to read it from the environment).
        sha256: the hex SHA-256 digest of the key, so the file need not hold the key.
        admin: the key may also use the admin endpoints (dead letters, replay).
        priority: the highest priority this key's requests may have (``critical``, ``high``,
            ``normal``, ``low``); ``None`` for no cap. It is also their default.
    """

    name: str = ""
    key: Secret | None = None
    sha256: str | None = attrs.field(default=None, validator=_check_sha256)
    admin: bool = False
    priority: str | None = attrs.field(
        default=None, validator=attrs.validators.optional(one_of(*_PRIORITIES))
    )

    def __attrs_post_init__(self) -> None:
        if (self.key is None) == (self.sha256 is None):
            raise ValueError("an API key needs exactly one of `key` or `sha256`")
        # An empty key (often ``"${VAR}"`` with VAR set to "") would accept a request whose
        # bearer token is empty: a service that looks guarded and is open.
        if (self.key is not None and not self.key) or self.sha256 == _EMPTY_SHA256:
            raise ValueError(
                f"API key {self.name or '(unnamed)'} is empty (an empty key would let in any "
                "request with an empty bearer token)"
            )

    def digest(self) -> bytes:
        """The SHA-256 digest of the key, which is all the service keeps."""
        if self.sha256 is not None:
            return bytes.fromhex(self.sha256)
        assert self.key is not None
        return hashlib.sha256(self.key.reveal().encode()).digest()


@attrs.frozen
class EchoConfig:
    """The built-in echo worker, used when no provider is configured.

    Attributes:
        token_delay: seconds between tokens.
        first_token_delay: seconds before the first token.
        model: the model name it serves.
    """

    token_delay: float = attrs.field(default=0.0, validator=non_negative_time)
    first_token_delay: float = attrs.field(default=0.0, validator=non_negative_time)
    model: str = "echo"


ServerKind = Literal["httptools", "hypercorn"]
SERVERS: tuple[ServerKind, ...] = ("httptools", "hypercorn")


@attrs.frozen
class ServiceConfig:
    """The HTTP service (``trio-orchestrator serve``).

    Attributes:
        host: the address to listen on.
        port: the port to listen on (0 for any free port).
        workers: processes to run (hypercorn's multi-process mode when more than 1).
        api_keys: keys accepted as ``Authorization: Bearer <key>``; none means no auth
            (reloadable: keys can be added, revoked or rotated while serving).
        max_body_bytes: the largest request body accepted (413 beyond it).
        cors_origins: origins allowed by CORS; empty means CORS is off.
        models: model names listed by ``/v1/models`` and accepted by the OpenAI endpoints;
            empty means the worker's own model(s).
        echo: the echo worker's settings.
        keep_alive_timeout: seconds an idle keep-alive connection stays open (also the time a
            connection has to send a request's headers). Longer than clients' own idle
            timeouts (5 s for httpx and the OpenAI SDK), so that a client never reuses a
            connection the server is closing at that moment.
        backlog: connections the kernel queues for the service before it accepts them (the
            kernel caps it at ``net.core.somaxconn``).
        request_read_timeout: seconds a request's body has, from its headers on, to arrive
            whole; past it the answer is 408 and the connection is closed.
        idle_trim_interval: seconds of quiet after which the process hands the memory freed
            by finished requests back to the operating system (a full garbage collection,
            then glibc's ``malloc_trim``): it does once an interval passes in which no request
            began, with none in flight, after one in which some did -- once per burst, never
            under steady traffic, never while idle. ``inf`` never does.
        mcp: serve the gateway's Model Context Protocol tools over streamable HTTP at
            ``/mcp`` (docs/mcp.md). Off by default: the tools spend tokens and reach the
            admin operations, a surface an operator should open on purpose, and they need
            the optional SDK (``pip install 'trio-orchestrator[mcp]'``), which a service
            that does not serve MCP never imports. Not reloadable (the route's server
            starts with the service).
        model_list_timeout: seconds ``/v1/models`` waits for each upstream that lists its
            own models (a local server naming no ``models``); the upstreams are asked at
            once, and one that has not answered in time adds no names to that answer.
        model_list_ttl: seconds an answer in which every such upstream answered is reused
            before they are asked again (0: asked on every call).
        ui: serve the web dashboard at ``/ui/`` (docs/operations.md). On by default: its
            files hold no secret and are served without a key, while every call the page
            makes needs an admin key the user types, as any other client's does; off, ``/ui``
            is 404. Not reloadable (the routes are built with the service).
        send_timeout: seconds one write of an answer may wait for a client that stops
            reading (its socket buffers full); past it the connection is reset and the
            request, if still running, is cancelled. Hypercorn has no write timeout of its own.
            Reloadable.
        server: what serves HTTP: ``"httptools"`` (default: the package's own HTTP/1.1
            server on Trio sockets with httptools' parser, which hands a WebSocket or HTTP/2
            connection to hypercorn; see :mod:`trio_orchestrator.service.h1server`) or
            ``"hypercorn"`` (hypercorn's Trio worker for every connection). Changes only on a
            restart.
        stream_buffer_bytes: bytes of a streamed chat's events the service holds for a client
            that reads slower than the answer comes (beyond what the kernel's socket buffers
            hold); when they would exceed it, the request is cancelled at once, freeing its
            provider slot, and the client gets what was held, then an error event and the
            stream's end. Reloadable.
        freeze_heap: once ``trio-orchestrator serve`` listens (in each worker process), move
            every object alive then -- the modules, the configuration, the gateway's parts --
            out of the garbage collector's sight (``gc.freeze``), so that its full collections,
            which come every few seconds under load, scan only what was made since (measured
            by ``benchmarks/bench_pauses.py``; docs/operations.md). Once a burst of traffic
            has ended (``idle_trim_interval``) the heap is collected whole and frozen again,
            so a frozen object that became garbage since (an old configuration's, after a
            reload) is freed then. :func:`~trio_orchestrator.service.serve` called by a
            program of its own leaves that process's collector alone. Changes only on a
            restart.
    """

    host: str = "127.0.0.1"
    port: int = attrs.field(default=8000, validator=_check_port)
    workers: int = attrs.field(default=1, validator=positive_int)
    api_keys: tuple[ApiKeyConfig, ...] = attrs.field(default=(), metadata={"reloadable": True})
    max_body_bytes: int = attrs.field(default=1_048_576, validator=positive_int)
    cors_origins: tuple[str, ...] = ()
    models: tuple[str, ...] = ()
    echo: EchoConfig = attrs.field(factory=EchoConfig)
    keep_alive_timeout: float = attrs.field(default=75.0, validator=positive_seconds)
    backlog: int = attrs.field(default=4096, validator=positive_int)
    request_read_timeout: float = attrs.field(default=30.0, validator=positive_seconds)
    idle_trim_interval: float = attrs.field(default=5.0, validator=positive_time)
    mcp: bool = False
    model_list_timeout: float = attrs.field(default=2.0, validator=positive_seconds)
    model_list_ttl: float = attrs.field(default=30.0, validator=non_negative_time)
    ui: bool = True
    send_timeout: float = attrs.field(
        default=30.0, validator=positive_seconds, metadata={"reloadable": True}
    )
    server: ServerKind = attrs.field(default="httptools", validator=one_of(*SERVERS))
    stream_buffer_bytes: int = attrs.field(
        default=65_536, validator=positive_int, metadata={"reloadable": True}
    )
    freeze_heap: bool = True
