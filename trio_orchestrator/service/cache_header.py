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
every header of a stream does. The header is added by
:class:`~.connections.BoundedBody`, which wraps every request's ``send``.
"""

from __future__ import annotations

__all__ = ["CACHE_HEADER"]

CACHE_HEADER = b"x-cache"
"""The response header naming what a cache made of the request."""
