"""The connection to Redis: bounded operations, health state, and a watch that notices loss
and recovery.

Every Redis operation goes through :meth:`RedisConnection.call`, which bounds it with
``trio.fail_after(operation_timeout)`` and turns every failure into
:class:`RedisUnavailable`, so that no request ever waits on Redis longer than that. A failed
connection (or a timeout) marks Redis *down*: later calls fail at once, without a round trip,
and the callers use their fallback (local state) until the health watch's ``PING`` succeeds
again and marks it *up*.
"""

from __future__ import annotations

import functools
import logging
import math
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

import attrs
import trio

from ..errors import OrchestratorError
from .config import DistributedConfig

if TYPE_CHECKING:
    from coredis import Redis
    from coredis.commands.script import Script

__all__ = ["RedisConnection", "RedisStatistics", "RedisUnavailable", "open_redis"]

logger = logging.getLogger("trio_orchestrator.distributed")

T = TypeVar("T")


class RedisUnavailable(OrchestratorError):
    """Redis could not be reached, or did not answer within ``operation_timeout``.

    Shared-state layers catch it and fall back to local state (or refuse, as their policy
    says); it reaches a caller only from :func:`open_redis` at start with
    ``on_start_failure = "fail"``.
    """


@attrs.frozen
class RedisStatistics:
    """A snapshot of a :class:`RedisConnection`."""

    url: str
    """The server, without credentials."""
    up: bool
    """True while Redis answers."""
    operations: int
    """Operations attempted (not counting those refused at once while down)."""
    failures: int
    """Operations that failed or timed out."""
    timeouts: int
    """Of those, operations that took longer than ``operation_timeout``."""
    refused_while_down: int
    """Operations refused at once because Redis was known to be down."""
    times_lost: int
    """Times Redis went from up to down."""
    times_recovered: int
    """Times Redis came back (from down to up)."""
    last_error: str
    """What the last failure was ("" if none)."""


def _import_coredis() -> Any:
    try:
        import coredis
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise OrchestratorError(
            "[distributed] redis_url is set but the Redis client is not installed; "
            "install it with: pip install 'trio-orchestrator[redis]'"
        ) from exc
    return coredis


@functools.cache
def _tcp_connection_class() -> Any:
    coredis = _import_coredis()

    base: Any = coredis.connection.TCPConnection

    class ClosingTCPConnection(base):  # type: ignore[misc]
        """coredis 6.9 leaves the memory streams of a connection that could not be made
        open (a ResourceWarning when collected, at any later moment); this closes them."""

        async def _connect(self) -> Any:
            try:
                return await super()._connect()
            except BaseException:
                for stream in (
                    self._write_buffer_in,
                    self._write_buffer_out,
                    self._push_message_buffer_in,
                    self._push_message_buffer_out,
                    self._streamed_message_buffer_in,
                    self._streamed_message_buffer_out,
                ):
                    stream.close()
                raise

    return ClosingTCPConnection


def display_url(url: str) -> str:
    """``url`` with any password replaced by ``***``."""
    return re.sub(r"//[^@/]*@", "//***@", url)


@attrs.define(eq=False)
class RedisConnection:
    """One Redis client with its health state; see the module docstring.

    Made by :func:`open_redis`, which also runs its health watch.

    Args:
        config: the ``[distributed]`` settings.
        client: an entered ``coredis.Redis`` client with ``decode_responses=True``.
    """

    config: DistributedConfig
    client: Redis[str]
    _up: bool = attrs.field(default=True, init=False)
    _connection_errors: tuple[type[BaseException], ...] = attrs.field(init=False)
    _operations: int = attrs.field(default=0, init=False)
    _failures: int = attrs.field(default=0, init=False)
    _timeouts: int = attrs.field(default=0, init=False)
    _refused: int = attrs.field(default=0, init=False)
    _lost: int = attrs.field(default=0, init=False)
    _recovered: int = attrs.field(default=0, init=False)
    _last_error: str = attrs.field(default="", init=False)
    _down_since: float = attrs.field(default=-math.inf, init=False)

    def __attrs_post_init__(self) -> None:
        errors = _import_coredis().exceptions
        self._connection_errors = (errors.ConnectionError, OSError)

    @property
    def up(self) -> bool:
        """True while Redis answers (as far as the last operation or health check knows)."""
        return self._up

    @property
    def url(self) -> str:
        """The server's URL, without credentials."""
        return display_url(self.config.redis_url or "")

    def key(self, *parts: str) -> str:
        """A Redis key: the configured prefix, then ``parts`` joined by ``:``."""
        return self.config.key_prefix + ":".join(parts)

    def script(self, source: str) -> Script[str]:
        """Register a Lua script; call it inside :meth:`call` (it is loaded on first use and
        again after a Redis restart)."""
        return self.client.register_script(source)

    async def call(self, operation: Callable[[Redis[str]], Awaitable[T]]) -> T:
        """Run ``operation(client)`` within ``operation_timeout``.

        Raises:
            RedisUnavailable: Redis is down (raised at once), the operation failed, or it
                timed out.
        """
        if not self._up:
            self._refused += 1
            raise RedisUnavailable(
                f"Redis at {self.url} is unreachable ({self._last_error}); "
                "shared state falls back to local state until it answers again"
            )
        self._operations += 1
        try:
            with trio.fail_after(self.config.operation_timeout):
                return await operation(self.client)
        except trio.TooSlowError as exc:
            self._timeouts += 1
            raise self._failed(f"no answer within {self.config.operation_timeout} s") from exc
        except self._connection_errors as exc:
            raise self._failed(f"{type(exc).__name__}: {exc}") from exc
        except Exception as exc:
            # An answer that is an error (a script bug, a full server): Redis is up.
            self._failures += 1
            self._last_error = f"{type(exc).__name__}: {exc}"
            raise RedisUnavailable(f"Redis at {self.url} refused an operation: {exc}") from exc

    async def check(self, within: float | None = None) -> bool:
        """PING Redis (within ``within`` seconds, default ``operation_timeout``), update the
        health state, and return it."""
        timeout = within or self.config.operation_timeout
        try:
            with trio.fail_after(timeout):
                await self.client.ping()
        except trio.TooSlowError:
            self._failed(f"PING not answered within {timeout} s")
        except (*self._connection_errors, _import_coredis().exceptions.RedisError) as exc:
            self._failed(f"{type(exc).__name__}: {exc}")
        else:
            if not self._up:
                self._up = True
                self._recovered += 1
                logger.warning("Redis at %s answers again; shared state is back in use", self.url)
        return self._up

    async def watch(self) -> None:
        """Check health every ``health_interval`` seconds, forever."""
        while True:
            await trio.sleep(self.config.health_interval)
            await self.check()

    def _failed(self, why: str) -> RedisUnavailable:
        self._failures += 1
        self._last_error = why
        if self._up:
            self._up = False
            self._lost += 1
            self._down_since = trio.current_time()
            logger.warning(
                "Redis at %s is unreachable (%s); falling back to local state until it "
                "answers again",
                self.url,
                why,
            )
        return RedisUnavailable(f"Redis at {self.url} is unreachable: {why}")

    metric_kind: ClassVar[str] = "redis"
    metric_counters: ClassVar[tuple[str, ...]] = (
        "operations",
        "failures",
        "timeouts",
        "refused_while_down",
        "times_lost",
        "times_recovered",
    )

    def statistics(self) -> RedisStatistics:
        """A snapshot of the health state and counters."""
        return RedisStatistics(
            url=self.url,
            up=self._up,
            operations=self._operations,
            failures=self._failures,
            timeouts=self._timeouts,
            refused_while_down=self._refused,
            times_lost=self._lost,
            times_recovered=self._recovered,
            last_error=self._last_error,
        )


_START_RETRY = 0.05
"""Seconds between PINGs while waiting for Redis at start."""


async def _first_answer(connection: RedisConnection, within: float) -> bool:
    """PING until Redis answers or ``within`` seconds have passed; True if it answered.

    One PING is not enough: a refused or slow connect fails it in far less than ``within``
    (the connect is bounded by ``operation_timeout``), and Redis started beside the gateway
    may not listen yet.
    """
    deadline = trio.current_time() + within
    while not await connection.check(max(deadline - trio.current_time(), _START_RETRY)):
        if trio.current_time() + _START_RETRY >= deadline:
            return False
        await trio.sleep(_START_RETRY)
    return True


@asynccontextmanager
async def open_redis(config: DistributedConfig) -> AsyncIterator[RedisConnection]:
    """Connect to ``config.redis_url`` and watch its health for the ``async with``.

    Args:
        config: the ``[distributed]`` settings; ``redis_url`` must be set.

    Yields:
        The connection (down if Redis did not answer and ``on_start_failure`` is ``local``).

    Raises:
        RedisUnavailable: Redis did not answer within ``start_timeout`` and
            ``on_start_failure`` is ``fail``.
        ValueError: ``redis_url`` is not set.
    """
    if config.redis_url is None:
        raise ValueError("open_redis needs [distributed] redis_url")
    coredis = _import_coredis()
    client = coredis.Redis.from_url(
        config.redis_url,
        decode_responses=True,
        retry_policy=coredis.retry.NoRetryPolicy(),
        connect_timeout=config.operation_timeout,
    )
    pool = client.connection_pool
    if pool.connection_class is coredis.connection.TCPConnection:
        pool.connection_class = _tcp_connection_class()
    start_error: RedisUnavailable | None = None
    body_error: BaseException | None = None
    # Errors are carried out of the client's block: its task group would wrap them in an
    # ExceptionGroup.
    async with client, trio.open_nursery() as nursery:
        connection = RedisConnection(config, client)
        answered = await _first_answer(connection, config.start_timeout)
        if not answered and config.on_start_failure == "fail":
            start_error = RedisUnavailable(
                f"could not reach Redis at {connection.url} within {config.start_timeout} s "
                f"({connection.statistics().last_error}); start redis-server, fix "
                "[distributed] redis_url, or set on_start_failure = 'local' to start with "
                "local state"
            )
        else:
            if not connection.up:
                logger.warning(
                    "STARTING WITHOUT REDIS: %s did not answer; limits, breakers and dead "
                    "letters are per process until it does",
                    connection.url,
                )
            nursery.start_soon(connection.watch)
            try:
                yield connection
            except BaseException as exc:
                body_error = exc
        nursery.cancel_scope.cancel()
    if start_error is not None:
        raise start_error
    if body_error is not None:
        raise body_error
