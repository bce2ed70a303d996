"""A transport that spreads one provider's connections over several small pools.

httpcore's connection pool (under both ``httpx`` and ``httpx2``) walks all of its connections
each time a request starts or ends, and probes every idle one with a ``poll`` system call to
see whether the server closed it. Its cost per request therefore grows with the pool's size:
with 1,024 connections most of the client's CPU goes there (``benchmarks/bench_gateway.py``).

:class:`ShardedTransport` keeps the same limit on connections in all but splits it over
pools of ``pool_size`` connections and sends each request to the pool with the fewest
requests in flight, so each walk covers one small pool.
"""

from __future__ import annotations

import functools
import math
import weakref
from collections.abc import AsyncIterator
from types import ModuleType
from typing import Any

import httpx

__all__ = ["ShardedTransport", "h11_client", "pool_limits", "sharded_client"]


@functools.cache
def _counted(module: ModuleType) -> type[Any]:
    """The body wrapper for ``module``, whose client accepts only its own stream class."""

    class Counted(module.AsyncByteStream):  # type: ignore[misc,name-defined]
        """A response body that gives its pool's slot back once, when it is closed."""

        def __init__(self, inner: Any, load: list[int], shard: int) -> None:
            self._inner, self._load, self._shard = inner, load, shard
            self._open = True

        def __aiter__(self) -> AsyncIterator[bytes]:
            return self._inner.__aiter__()  # type: ignore[no-any-return]

        async def aclose(self) -> None:
            if self._open:
                self._open = False
                self._load[self._shard] -= 1
            await self._inner.aclose()

    return Counted


@functools.cache
def _tls(module: ModuleType) -> Any:
    """One TLS context for every pool of every client of ``module`` in this process.

    Building one reads the whole CA bundle (≈ 0.2 s here); each pool building its own made
    opening a provider with 64 pools take 13 s. A context is safe to share between
    connections, and holds no per-server state. It honours ``SSL_CERT_FILE`` and
    ``SSL_CERT_DIR`` as they are when the first client is built.
    """
    return module.create_ssl_context()


class ShardedTransport(httpx.AsyncBaseTransport):
    """At most ``max_connections`` connections, in pools of at most ``pool_size`` each.

    Args:
        module: ``httpx`` or ``httpx2`` (their transports share an API).
        max_connections: the most connections in all (kept alive as long as idle).
        pool_size: the most connections in one pool.
    """

    def __init__(self, module: ModuleType, max_connections: int, pool_size: int) -> None:
        pools = max(1, math.ceil(max_connections / pool_size))
        # Sizes differing by one at most, summing to max_connections.
        sizes = [max_connections // pools + (i < max_connections % pools) for i in range(pools)]
        self.max_connections, self.pool_size = max_connections, pool_size
        self._pools: list[Any] = [
            module.AsyncHTTPTransport(
                verify=_tls(module),
                limits=module.Limits(max_connections=size, max_keepalive_connections=size),
            )
            for size in sizes
        ]
        self._load = [0] * pools  # requests in flight per pool
        self._stream = _counted(module)

    @property
    def in_flight(self) -> list[int]:
        """Requests in flight (sent, body not yet closed) per pool."""
        return list(self._load)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        """Send ``request`` through the least loaded pool."""
        load = self._load
        shard = load.index(min(load)) if len(load) > 1 else 0
        load[shard] += 1
        try:
            response: httpx.Response = await self._pools[shard].handle_async_request(request)
        except BaseException:
            load[shard] -= 1
            raise
        response.stream = self._stream(response.stream, load, shard)
        return response

    async def aclose(self) -> None:
        """Close every pool's connections."""
        for pool in self._pools:
            await pool.aclose()  # each closes its idle connections at once


# The limits of clients built by ``make_client``, so a reload can tell whether they changed.
_LIMITS: weakref.WeakKeyDictionary[Any, tuple[int, int]] = weakref.WeakKeyDictionary()


def sharded_client(module: ModuleType, max_connections: int, pool_size: int) -> httpx.AsyncClient:
    """A ``module.AsyncClient`` on a :class:`ShardedTransport`, without the library's own
    timeouts (the workers apply theirs)."""
    transport = ShardedTransport(module, max_connections, pool_size)
    client: httpx.AsyncClient = module.AsyncClient(transport=transport, timeout=None)
    _LIMITS[client] = (max_connections, pool_size)
    return client


def h11_client(module: ModuleType, max_connections: int, pool_size: int) -> httpx.AsyncClient:
    """A ``module.AsyncClient`` on one :class:`~.h11transport.H11Transport` of at most
    ``max_connections`` (all kept alive while idle), without the library's own timeouts.
    Its pool costs the same per request whatever its size, so it is not split;
    ``pool_size`` is recorded only so that a reload changing it is refused alike."""
    from .h11transport import H11Transport

    limits = module.Limits(
        max_connections=max_connections, max_keepalive_connections=max_connections
    )
    transport = H11Transport(verify=_tls(module), limits=limits, module=module)
    client: httpx.AsyncClient = module.AsyncClient(transport=transport, timeout=None)
    _LIMITS[client] = (max_connections, pool_size)
    return client


def pool_limits(client: Any) -> tuple[int, int] | None:
    """``(max_connections, pool_size)`` of a client ``make_client`` built, else ``None``."""
    return _LIMITS.get(client)
