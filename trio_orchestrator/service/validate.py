"""Reading JSON request bodies field by field, with errors that name the bad field.

Each reader raises :class:`~.errors.ApiError` (400, ``param`` set to the field's path, such as
``messages[2].content``) saying what was expected and what was found.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

from .errors import ApiError

__all__ = ["Fields", "invalid", "parse_json_object"]


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


def parse_json_object(body: bytes) -> Fields:
    """Parse a request body that must be a JSON object.

    Raises:
        ApiError: 400 when the body is not valid JSON or not an object.
    """
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, ValueError) as exc:
        message = f"the request body is not valid JSON ({exc}); send a JSON object"
        raise ApiError(400, message, code="invalid_json") from None
    if not isinstance(data, dict):
        raise ApiError(400, f"the request body must be a JSON object, got {_describe(data)}")
    return Fields(data)


class Fields:
    """Typed access to the members of one JSON object, reporting errors by path."""

    def __init__(self, data: Mapping[str, Any], path: str = "") -> None:
        self.data = data
        self.path = path

    def _path(self, name: str) -> str:
        return f"{self.path}.{name}" if self.path else name

    def _get(self, name: str, expected: str, required: bool) -> Any:
        value = self.data.get(name)
        if value is None and required:
            raise invalid(self._path(name), expected, missing=True)
        return value

    def text(self, name: str, *, required: bool = False, max_length: int = 1 << 20) -> str | None:
        """A string member (``None`` when absent or null and not required)."""
        value = self._get(name, "a string", required)
        if value is not None and (not isinstance(value, str) or len(value) > max_length):
            raise invalid(self._path(name), f"a string of at most {max_length} characters", value)
        return value

    def flag(self, name: str, default: bool = False) -> bool:
        """A boolean member."""
        value = self._get(name, "a boolean", False)
        if value is None:
            return default
        if not isinstance(value, bool):
            raise invalid(self._path(name), "true or false", value)
        return value

    def integer(self, name: str, *, minimum: int | None = None, maximum: int | None = None) -> Any:
        """A whole-number member within bounds, or ``None``."""
        value = self._get(name, "an integer", False)
        if value is None:
            return None
        low = -math.inf if minimum is None else minimum
        high = math.inf if maximum is None else maximum
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise invalid(self._path(name), f"an integer in [{low}, {high}]", value)
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
            raise invalid(self._path(name), f"a number in [{minimum}, {maximum}]", value)
        return float(value)

    def array(self, name: str, *, required: bool = False, max_items: int = 10_000) -> list[Any]:
        """An array member (empty when absent and not required)."""
        value = self._get(name, "an array", required)
        if value is None:
            return []
        if not isinstance(value, list) or len(value) > max_items:
            raise invalid(self._path(name), f"an array of at most {max_items} items", value)
        return value

    def object(self, name: str, *, required: bool = False) -> Fields | None:
        """An object member as :class:`Fields`, or ``None``."""
        value = self._get(name, "an object", required)
        if value is None:
            return None
        if not isinstance(value, dict):
            raise invalid(self._path(name), "an object", value)
        return Fields(value, self._path(name))

    def item(self, name: str, index: int, value: Any) -> Fields:
        """Element ``index`` of array member ``name``, which must be an object."""
        path = f"{self._path(name)}[{index}]"
        if not isinstance(value, dict):
            raise invalid(path, "an object", value)
        return Fields(value, path)
