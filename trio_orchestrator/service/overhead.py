"""``x-gateway-overhead-ms``: the time a request spent in the gateway, not waiting upstream.

Every answer of ``/v1/chat/completions``, ``/v1/completions``, ``/v1/responses``,
``/v1/messages`` and ``/v1/embeddings`` carries the header (with ``observability.
gateway_overhead`` on, the default), as LiteLLM's proxy sends
``x-litellm-overhead-duration-ms``; the same figure is observed in the histogram
``trio_orchestrator_gateway_overhead_seconds`` (labels ``endpoint`` and ``stream``), as
TensorZero exports ``tensorzero_inference_latency_overhead_seconds``.

The definition, in milliseconds on Trio's clock::

    overhead = (answered - arrived) - upstream

- ``arrived``: the application was called with the request (:class:`~.app.ServiceApp`;
  the server's own parsing of the request before that is not counted, nor its writing of
  the response after).
- ``answered``: the response's status and headers are handed to the server. A whole
  answer is complete by then (its body encoded); a stream's headers go with its first
  event, so for a stream this is the time to its first byte.
- ``upstream``: the time during which the request was waiting on an upstream, until
  ``answered`` (:class:`~trio_orchestrator.types.RequestTiming`, kept by the HTTP workers):
  each attempt's wait from sending its request to its answer's headers, and each read of
  its body (for a whole answer, every read; for a stream, the reads until its first
  event). Every attempt counts (retries, fallbacks, key rotation, ``n`` choices);
  overlapping waits count once. A worker without an upstream (echo, a cached answer)
  waits 0.

So the figure holds everything the gateway did: reading and validating the body, admission
and the pipeline's hand-offs, layers (and their waits: a rate limit's, a backoff's, a
coalesced request's wait for its leader), translation, encoding the request and decoding
the answer, rendering the response. It is never negative.
"""

from __future__ import annotations

from collections.abc import Callable, MutableMapping
from typing import Any

import trio

from ..types import RequestTiming
from .state import ServiceState

__all__ = [
    "OVERHEAD_HEADER",
    "TIMING_KEY",
    "late_overhead_header",
    "overhead_header",
    "overhead_headers",
    "timed_fields",
    "timing_of",
]

OVERHEAD_HEADER = b"x-gateway-overhead-ms"
"""The response header: the gateway's own time for the request, in milliseconds with three
decimals (see the module's docstring for what is counted)."""

TIMING_KEY = "trio_orchestrator.timing"
"""The ASGI scope key of the request's :class:`~trio_orchestrator.types.RequestTiming`
(absent when the overhead is not measured)."""

Header = tuple[bytes, bytes]


def timing_of(scope: MutableMapping[str, Any]) -> RequestTiming | None:
    """The request's timing, or ``None`` when the overhead is not measured."""
    timing: RequestTiming | None = scope.get(TIMING_KEY)
    return timing


def timed_fields(scope: MutableMapping[str, Any], fields: dict[str, Any]) -> dict[str, Any]:
    """``fields`` (further :class:`~trio_orchestrator.types.PromptRequest` fields) with the
    request's ``timing``, for the workers to add their upstream waits to."""
    timing = scope.get(TIMING_KEY)
    if timing is not None:
        fields["timing"] = timing
    return fields


def overhead_header(
    state: ServiceState, timing: RequestTiming, endpoint: str, stream: bool
) -> Header:
    """The ``x-gateway-overhead-ms`` header as of now, observed in the histogram too.

    Call it once per request, when the response's headers are built.

    Args:
        state: the service's state (its overhead histogram, when metrics are on).
        timing: the request's timing.
        endpoint: the endpoint's path (the histogram's ``endpoint`` label).
        stream: whether the answer is streamed (its ``stream`` label).

    Returns:
        The header's name and value.
    """
    seconds = timing.answer(trio.current_time())
    if state.overhead is not None:
        state.overhead.observe(endpoint, stream, seconds)
    return OVERHEAD_HEADER, b"%.3f" % (seconds * 1000.0)


def overhead_headers(
    state: ServiceState, scope: MutableMapping[str, Any], endpoint: str
) -> dict[str, str] | None:
    """The header of a whole answer as a Starlette ``Response``'s ``headers``, or ``None``
    when the overhead is not measured."""
    timing = scope.get(TIMING_KEY)
    if timing is None:
        return None
    name, value = overhead_header(state, timing, endpoint, False)
    return {name.decode(): value.decode()}


def late_overhead_header(
    state: ServiceState, timing: RequestTiming | None, endpoint: str
) -> Callable[[], Header] | None:
    """What makes a stream's header when its first event goes out, or ``None`` when the
    overhead is not measured."""
    if timing is None:
        return None
    return _LateHeader(state, timing, endpoint)


class _LateHeader:
    """A stream's :func:`overhead_header`, made when called. (One small object, held for
    the stream's whole life: a closure over the three costs three times its size.)"""

    __slots__ = ("endpoint", "state", "timing")

    def __init__(self, state: ServiceState, timing: RequestTiming, endpoint: str) -> None:
        self.state = state
        self.timing = timing
        self.endpoint = endpoint

    def __call__(self) -> Header:
        return overhead_header(self.state, self.timing, self.endpoint, True)
