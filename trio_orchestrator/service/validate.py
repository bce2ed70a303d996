"""Reading JSON request bodies field by field, with errors that name the bad field.

Each reader raises :class:`~.errors.ApiError` (400, ``param`` set to the field's path, such as
``messages[2].content``) saying what was expected and what was found.

Bodies are parsed at the door by :func:`parse_json_object`, which refuses what the rest of
the gateway could not carry: invalid UTF-8 and lone surrogates, ``NaN`` and infinities,
nesting deeper than :data:`MAX_DEPTH`, and integers outside the 64-bit range. Each of those
would otherwise pass the door and fail later, inside a worker's JSON encoder, as a 500 that
counts against the provider's circuit breaker.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

import orjson

from .errors import ApiError

__all__ = ["MAX_DEPTH", "Fields", "invalid", "parse_json_object"]

#: The deepest nesting a request body may have (the body object itself is depth 1). The
#: workers' encoder (orjson) refuses documents nested 254 deep; this leaves room below it
#: for a translation that nests a member a little deeper, and is far above any real JSON
#: Schema or message.
MAX_DEPTH = 128

# The integers every upstream encoder can carry: signed and unsigned 64-bit.
_INT_MIN = -(1 << 63)
_INT_MAX = (1 << 64) - 1


def invalid(path: str, expected: str, value: object = None, *, missing: bool = False) -> ApiError:
    """A 400 error for field ``path``: what was expected, and what was found."""
    if missing:
        return ApiError(400, f"`{path}` is required: {expected}", code="missing_field", param=path)
    found = _describe(value)
    message = f"`{path}` must be {expected}, got {found}"
    return ApiError(400, message, code="invalid_value", param=path)


def _describe(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return f"the number {value!r}"
    if isinstance(value, str):
        shown = value if len(value) <= 40 else value[:40] + "…"
        return f"the string {shown!r}"
    if isinstance(value, list):
        return "an array"
    return "an object"


def parse_json_object(body: bytes | str, what: str = "the request body") -> Fields:
    """Parse a request body that must be a JSON object, refusing what no upstream can carry.

    Args:
        body: the request body (UTF-8 JSON).
        what: what the body is, for error messages (a WebSocket message, say).

    Returns:
        The body's members.

    Raises:
        ApiError: 400 when the body is not valid JSON (lone surrogates, ``NaN`` and invalid
            UTF-8 included), not an object, nested deeper than :data:`MAX_DEPTH`, or holds
            an integer outside the 64-bit range; ``param`` names the member when there is one.
    """
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        message = f"{what} is not valid JSON ({exc}); send a JSON object"
        raise ApiError(400, message, code="invalid_json") from None
    if not isinstance(data, dict):
        message = f"{what} must be a JSON object, got {_describe(data)}"
        raise ApiError(400, message, code="invalid_value")
    if _poisoned(data, what):  # rare: only a huge integral float sends us here
        _check_integers(body)
    return Fields(data)


def _poisoned(data: dict[str, Any], what: str) -> bool:
    """Check the nesting depth; whether a float may stand for an out-of-range integer.

    orjson reads an integer beyond 64 bits as a float, silently; such a float is integral
    and at least 2**63 in size, so only then is the body read again to tell the two apart.

    Raises:
        ApiError: 400 when the body is nested deeper than :data:`MAX_DEPTH`.
    """
    suspect = False
    level: list[Any] = [data]
    for depth in range(1, MAX_DEPTH + 2):
        if depth > MAX_DEPTH:
            message = f"{what} is nested deeper than {MAX_DEPTH} levels"
            raise ApiError(400, message, code="invalid_json")
        below: list[Any] = []
        for container in level:
            for value in container.values() if type(container) is dict else container:
                if type(value) is dict or type(value) is list:
                    below.append(value)
                elif type(value) is float and abs(value) >= 2**63 and value.is_integer():
                    suspect = True
        if not below:
            break
        level = below
    return suspect


def _check_integers(body: bytes | str) -> None:
    """Refuse an integer outside the 64-bit range, naming the member that holds it.

    Raises:
        ApiError: 400 naming the first such integer's path.
    """
    path = _big_integer(json.loads(body), "")
    if path is not None:
        expected = f"an integer in [{_INT_MIN}, {_INT_MAX}] (64 bits)"
        message = f"`{path}` must be {expected}, got an integer outside that range"
        raise ApiError(400, message, code="invalid_value", param=path)


def _big_integer(value: Any, path: str) -> str | None:
    """The path of the first integer outside the 64-bit range in ``value``, or ``None``.

    The body is an object, so the path always names a member. A member named ``""`` is
    spelled ``""`` in it (``a."".b``): left empty, it would vanish from the path, or at the
    top leave no path at all.
    """
    if isinstance(value, dict):
        names = ((k or '""', v) for k, v in value.items())
        items: Any = ((f"{path}.{k}" if path else k, v) for k, v in names)
    elif isinstance(value, list):
        items = ((f"{path}[{i}]", v) for i, v in enumerate(value))
    else:
        bad = isinstance(value, int) and not _INT_MIN <= value <= _INT_MAX
        return path if bad else None
    for item_path, item in items:
        if (found := _big_integer(item, item_path)) is not None:
            return found
    return None


class Fields:
    """Typed access to the members of one JSON object, reporting errors by path."""

    def __init__(self, data: Mapping[str, Any], path: str = "") -> None:
        self.data = data
        self.path = path

    def path_of(self, name: str) -> str:
        """The path of member ``name`` of this object, for an error (``messages[2].role``)."""
        return f"{self.path}.{name}" if self.path else name

    def _get(self, name: str, expected: str, required: bool) -> Any:
        value = self.data.get(name)
        if value is None and required:
            raise invalid(self.path_of(name), expected, missing=True)
        return value

    def text(self, name: str, *, required: bool = False, max_length: int = 1 << 20) -> str | None:
        """A string member (``None`` when absent or null and not required)."""
        value = self._get(name, "a string", required)
        if value is not None and (not isinstance(value, str) or len(value) > max_length):
            raise invalid(self.path_of(name), f"a string of at most {max_length} characters", value)
        return value

    def flag(self, name: str, default: bool = False) -> bool:
        """A boolean member."""
        value = self._get(name, "a boolean", False)
        if value is None:
            return default
        if not isinstance(value, bool):
            raise invalid(self.path_of(name), "true or false", value)
        return value

    def integer(self, name: str, *, minimum: int | None = None, maximum: int | None = None) -> Any:
        """A whole-number member within bounds, or ``None``."""
        value = self._get(name, "an integer", False)
        if value is None:
            return None
        low = -math.inf if minimum is None else minimum
        high = math.inf if maximum is None else maximum
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise invalid(self.path_of(name), f"an integer in [{low}, {high}]", value)
        return value

    def number(self, name: str, *, minimum: float, maximum: float) -> float | None:
        """A finite number within ``[minimum, maximum]``, or ``None``."""
        value = self._get(name, "a number", False)
        if value is None:
            return None
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not minimum <= value <= maximum
        ):
            raise invalid(self.path_of(name), f"a number in [{minimum}, {maximum}]", value)
        return float(value)

    def array(self, name: str, *, required: bool = False, max_items: int = 10_000) -> list[Any]:
        """An array member (empty when absent and not required)."""
        value = self._get(name, "an array", required)
        if value is None:
            return []
        if not isinstance(value, list) or len(value) > max_items:
            raise invalid(self.path_of(name), f"an array of at most {max_items} items", value)
        return value

    def object(self, name: str, *, required: bool = False) -> Fields | None:
        """An object member as :class:`Fields`, or ``None``."""
        value = self._get(name, "an object", required)
        if value is None:
            return None
        if not isinstance(value, dict):
            raise invalid(self.path_of(name), "an object", value)
        return Fields(value, self.path_of(name))

    def item(self, name: str, index: int, value: Any) -> Fields:
        """Element ``index`` of array member ``name``, which must be an object."""
        path = f"{self.path_of(name)}[{index}]"
        if not isinstance(value, dict):
            raise invalid(path, "an object", value)
        return Fields(value, path)
