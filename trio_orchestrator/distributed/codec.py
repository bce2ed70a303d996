"""Requests as JSON text, for the Redis structures that carry them between processes.

The durable dead-letter stream and the work queue both store whole requests; they share this
one encoding so that a letter and a queue item written by one process are read back the same
way by any other. It imports only :mod:`trio_orchestrator.types`, so both can use it without
importing the pipeline.
"""

from __future__ import annotations

import json

from cattrs.preconf.json import make_converter

from ..types import PromptRequest, RequestTiming

__all__ = ["dump_request", "load_request"]

_converter = make_converter()
# A request's timing belongs to the process that served it: it is not stored.
_converter.register_unstructure_hook(RequestTiming, lambda _timing: None)


def dump_request(request: PromptRequest) -> str:
    """A request as JSON text.

    Args:
        request: the request (its deadline is on this process's clock: callers moving it
            elsewhere clear it first).

    Returns:
        The JSON text, readable by :func:`load_request`.
    """
    return json.dumps(_converter.unstructure(request))


def load_request(text: str | bytes) -> PromptRequest:
    """A request from the JSON text :func:`dump_request` wrote.

    Args:
        text: the JSON text.

    Returns:
        The request.

    Raises:
        ValueError: the text is not JSON (``json.JSONDecodeError``).
        cattrs.errors.ClassValidationError: the JSON is not a request.
    """
    return _converter.structure(json.loads(text), PromptRequest)
