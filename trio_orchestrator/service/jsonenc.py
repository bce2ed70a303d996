"""The one JSON encoder of the service: every response body, SSE ``data:`` line and WebSocket
message goes out through :func:`json_bytes`.

orjson, with the option the workers already send upstream with (``OPT_NON_STR_KEYS``):
compact, UTF-8, several times faster than ``json.dumps`` on the hot path. What orjson refuses
and the standard library can still write — a lone surrogate (which UTF-8 cannot hold) or an
integer beyond 64 bits — falls back to ``json`` with non-ASCII escaped, so echoing such a
value back never turns into a 500; that costs nothing on the ordinary path.
"""

from __future__ import annotations

import json
from typing import Any

import orjson
from starlette.responses import JSONResponse as _StarletteJSONResponse

__all__ = ["JSONResponse", "json_bytes"]

_OPTIONS = orjson.OPT_NON_STR_KEYS

# Built once: json.dumps builds a new encoder per call when given separators.
_FALLBACK = json.JSONEncoder(separators=(",", ":"))


def json_bytes(data: Any) -> bytes:
    """``data`` as compact JSON.

    Args:
        data: dicts, lists, tuples, strings, numbers, booleans and ``None``.

    Returns:
        The JSON, UTF-8 (ASCII with escapes when orjson could not write it).

    Raises:
        TypeError: ``data`` holds something JSON cannot express.
    """
    try:
        # A copy of exactly its size: orjson's bytes keep the whole buffer it wrote into
        # (4 KB for the smallest, some 13x the text for a large one), so each one held —
        # a stream's last chunk while it waits for the next token, a cached answer — would
        # cost that much. The copy costs some 50 ns for a chunk.
        return memoryview(orjson.dumps(data, option=_OPTIONS)).tobytes()
    except orjson.JSONEncodeError:
        return _FALLBACK.encode(data).encode()


class JSONResponse(_StarletteJSONResponse):
    """Starlette's JSON response, rendered by :func:`json_bytes`."""

    def render(self, content: Any) -> bytes:
        """Serialize ``content`` with :func:`json_bytes`."""
        return json_bytes(content)
