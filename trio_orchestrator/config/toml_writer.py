"""Write plain configuration data (what :func:`dump_config` returns) as TOML.

The standard library reads TOML but does not write it; the data a configuration dumps is
simple (tables, arrays, strings, numbers, booleans), so a small writer does.
``None`` values are left out: TOML has no null, and an omitted optional key loads as ``None``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

__all__ = ["to_toml", "toml_key", "toml_value"]

_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
_ESCAPES = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f"}
_ESCAPES["\r"] = "\\r"


def to_toml(data: Mapping[str, Any]) -> str:
    """Render ``data`` as a TOML document.

    Args:
        data: nested mappings of strings, numbers, booleans, lists and ``None``.

    Returns:
        TOML text that :func:`tomllib.loads` reads back as ``data`` (``None`` values left out).
    """
    lines: list[str] = []
    _table(lines, (), data, header=None)
    return "\n".join(lines).strip() + "\n"


def _table(
    lines: list[str], path: tuple[str, ...], data: Mapping[str, Any], header: str | None
) -> None:
    if header is not None:
        if lines:
            lines.append("")
        lines.append(header)
    nested = []
    for key, value in data.items():
        if value is None:
            continue
        if isinstance(value, Mapping) or _is_table_array(value):
            nested.append((key, value))
        else:
            lines.append(f"{toml_key(key)} = {toml_value(value)}")
    for key, value in nested:
        sub = (*path, key)
        dotted = ".".join(toml_key(part) for part in sub)
        if isinstance(value, Mapping):
            _table(lines, sub, value, f"[{dotted}]")
        else:
            for element in value:
                _table(lines, sub, element, f"[[{dotted}]]")


def _is_table_array(value: object) -> bool:
    return (
        isinstance(value, list | tuple)
        and bool(value)
        and all(isinstance(element, Mapping) for element in value)
    )


def toml_key(key: str) -> str:
    """``key`` as a TOML key: bare when it can be, quoted otherwise."""
    return key if _BARE_KEY.fullmatch(key) else _string(key)


def toml_value(value: object) -> str:
    """``value`` (a string, number, boolean, list or mapping) as a TOML value."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return _string(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(element) for element in value) + "]"
    if isinstance(value, Mapping):
        items = ", ".join(
            f"{toml_key(k)} = {toml_value(v)}" for k, v in value.items() if v is not None
        )
        return "{ " + items + " }" if items else "{}"
    raise TypeError(f"cannot write {type(value).__name__} {value!r} as TOML")


def _string(text: str) -> str:
    return '"' + "".join(_escape(char) for char in text) + '"'


def _escape(char: str) -> str:
    if char in _ESCAPES:
        return _ESCAPES[char]
    if char < " " or char == "\x7f":
        return f"\\u{ord(char):04x}"
    return char
