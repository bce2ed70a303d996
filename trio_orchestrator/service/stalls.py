"""Clients that stop reading: a bound on each write to them, and on what a stream buffers.

Hypercorn writes a response with its socket write shielded from cancellation and has no write
timeout of its own, so a client that stops reading would hold its request's handler (and its
connection, and the kernel's buffers for it) for as long as the connection lives. The service
bounds it itself: :class:`SendWatch` notes when each ASGI ``send`` of a request begins
(:class:`~.connections.BoundedBody` calls it), and one task for the whole service
(:meth:`SendWatch.run`) closes the connection of any send still unfinished after
``service.send_timeout`` seconds, with a reset (its unsent bytes dropped at once). The blocked
send then ends, the handler learns that the client has gone (``http.disconnect``) and the
request is cancelled, as for any client that disconnects.

It also holds ``service.stream_buffer_bytes``, the most a streamed chat may hold for a client
that is not keeping up (see :class:`~.streaming.PushedEventStream`).
"""

from __future__ import annotations

import logging
import socket
import struct
from collections.abc import Callable
from typing import Any, ClassVar, Protocol

import attrs
import trio

from ..config.service import ServiceConfig

__all__ = ["SendStatistics", "SendWatch", "Stallable", "reset_connection", "socket_stream_of"]

logger = logging.getLogger("trio_orchestrator.service")

# SO_LINGER on with a zero timeout: closing the socket resets the connection and drops what
# the kernel still holds for a client that does not read, instead of lingering to deliver it.
_RESET_ON_CLOSE = struct.pack("ii", 1, 0)
# How many `send` hops to follow from the ASGI send to hypercorn's TCP server (see
# socket_stream_of); hypercorn 0.18 needs three.
_MAX_HOPS = 6


class Stallable(Protocol):
    """What :class:`SendWatch` needs of a request whose send may stall."""

    def stalled(self) -> None:
        """The current send has taken too long: end the connection."""


@attrs.frozen
class SendStatistics:
    """What :meth:`SendWatch.statistics` reports (``/metrics``:
    ``trio_orchestrator_slow_clients_<field>``).

    Attributes:
        reset: connections reset because a write to them waited ``send_timeout`` (a counter).
        sending: writes to clients under way now.
    """

    reset: int
    sending: int


@attrs.define(eq=False)
class SendWatch:
    """The sends under way and the limits for clients that stop reading (a reload part of
    the ``[service]`` section).

    Args:
        send_timeout: ``service.send_timeout``.
        stream_buffer_bytes: ``service.stream_buffer_bytes``.
    """

    metric_kind: ClassVar[str] = "slow_clients"
    metric_counters: ClassVar[tuple[str, ...]] = ("reset",)

    send_timeout: float
    stream_buffer_bytes: int
    _since: dict[Stallable, float] = attrs.field(factory=dict, init=False)
    closed: int = attrs.field(default=0, init=False)
    """Connections closed because a send to them stalled."""

    @classmethod
    def from_config(cls, section: ServiceConfig) -> SendWatch:
        """The watch with ``section``'s limits."""
        return cls(section.send_timeout, section.stream_buffer_bytes)

    def reconfigure(self, section: ServiceConfig, /) -> list[str]:
        """Take the reloaded limits (sends already under way get the new timeout too)."""
        self.send_timeout = section.send_timeout
        self.stream_buffer_bytes = section.stream_buffer_bytes
        return []

    def statistics(self) -> SendStatistics:
        """The connections reset so far and the writes under way."""
        return SendStatistics(reset=self.closed, sending=len(self._since))

    def begin(self, sender: Stallable) -> None:
        """``sender`` starts a send (end it with :meth:`end`, in a ``finally``)."""
        self._since[sender] = trio.current_time()

    def end(self, sender: Stallable) -> None:
        """``sender``'s send has ended."""
        self._since.pop(sender, None)

    def check(self) -> int:
        """End the connections whose send has lasted ``send_timeout`` or more; return how
        many."""
        if not self._since:
            return 0
        too_old = trio.current_time() - self.send_timeout
        stalled = [sender for sender, since in self._since.items() if since <= too_old]
        for sender in stalled:
            del self._since[sender]
            sender.stalled()
        self.closed += len(stalled)
        if stalled:
            logger.warning(
                "closed %d connection(s) whose client read nothing for %ss",
                len(stalled),
                self.send_timeout,
            )
        return len(stalled)

    async def run(self) -> None:
        """Check the sends under way for ever, a few times per ``send_timeout`` (at most
        a second apart), so a stalled one ends within a quarter more than the timeout."""
        while True:
            await trio.sleep(min(self.send_timeout / 4, 1.0))
            self.check()


def socket_stream_of(send: Callable[..., Any]) -> trio.SocketStream | None:
    """The connection's socket stream behind hypercorn's ASGI ``send``, if it can be found.

    Hypercorn exposes no handle on a request's connection, and shields its writes from
    cancellation; its ``send`` is a bound method of the HTTP stream, whose own ``send`` is
    the protocol's, whose ``send`` is the TCP server's, which holds the ``stream``. Followed
    only when a send has stalled (not per request). ``None`` under another server.
    """
    current: Any = send
    for _ in range(_MAX_HOPS):
        owner = getattr(current, "__self__", None)
        if owner is None:
            return None
        stream = getattr(owner, "stream", None)
        if isinstance(stream, trio.SSLStream):
            stream = stream.transport_stream
        if isinstance(stream, trio.SocketStream):
            return stream
        current = getattr(owner, "send", None)
    return None


def reset_connection(stream: trio.SocketStream) -> None:
    """Close ``stream``'s socket with a reset: a task blocked writing to it wakes with
    :class:`trio.ClosedResourceError` (hypercorn then reports the client gone)."""
    try:
        stream.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RESET_ON_CLOSE)
    except OSError:  # already closed, or not a TCP socket: a plain close still ends it
        pass
    stream.socket.close()
