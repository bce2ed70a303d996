"""``x-cache``: whether a cache answered the request.

Every answer of the endpoints that go through the pipeline carries ``x-cache`` when a cache
looked at the request (with ``observability.gateway_overhead`` on, the default: the mark
travels on the request's :class:`~trio_orchestrator.types.RequestTiming`):

- ``hit``: the exact cache answered (this process's, or the one shared through Redis);
- ``semantic-hit``: the semantic cache answered with the stored answer to a close
  paraphrase;
- ``miss``: a cache looked and the upstream answered.

No header: no cache looked at the request (none enabled, or the request was not eligible:
sampled, a tool result, an image…). A stream's header goes out with its first event, as
every header of a stream does.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from ..types import RequestTiming

__all__ = ["CACHE_HEADER", "cache_marked"]

CACHE_HEADER = b"x-cache"
"""The response header naming what a cache made of the request."""

Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


def cache_marked(send: Send, timing: RequestTiming) -> Send:
    """``send``, adding :data:`CACHE_HEADER` to the response's start when ``timing`` carries
    a cache's mark by then.

    Args:
        send: the ASGI send callable.
        timing: the request's timing (where the caches mark what they made of it).

    Returns:
        The send callable to give the application.
    """

    async def marked(message: MutableMapping[str, Any]) -> None:
        if message["type"] == "http.response.start" and timing.cache:
            headers = [*message.get("headers", ()), (CACHE_HEADER, timing.cache.encode())]
            message = {**message, "headers": headers}
        await send(message)

    return marked
