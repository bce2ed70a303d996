"""What kind of option a type annotation describes, and how key paths are written.

Shared by the loader, the schema, the reference and reload, so that they agree on every type
a configuration class may use: ``bool``, ``int``, ``float``, ``str``, ``Secret``, enums,
``Literal[...]``, nested attrs classes, ``list[X]``, ``tuple[X, ...]``, ``dict[str, X]`` and
``X | None``.
"""

from __future__ import annotations

import collections.abc
import enum
from typing import Any, Literal, get_args, get_origin

from .toml_writer import toml_key

__all__ = [
    "choices",
    "is_enum",
    "is_literal",
    "is_optional",
    "is_sequence",
    "is_str_mapping",
    "key_path",
    "optional_inner",
]


def is_enum(tp: Any) -> bool:
    """An enum class."""
    return isinstance(tp, type) and issubclass(tp, enum.Enum)


def is_literal(tp: Any) -> bool:
    """``Literal[...]``."""
    return get_origin(tp) is Literal


def is_optional(tp: Any) -> bool:
    """``X | None`` (or ``Optional[X]``)."""
    args = get_args(tp)
    return len(args) == 2 and type(None) in args and not is_literal(tp)


def optional_inner(tp: Any) -> Any:
    """``X`` of ``X | None``."""
    return next(arg for arg in get_args(tp) if arg is not type(None))


def is_sequence(tp: Any) -> bool:
    """``list[X]`` or ``tuple[X, ...]`` (a TOML array)."""
    return get_origin(tp) in (list, tuple)


def is_str_mapping(tp: Any) -> bool:
    """``dict[str, X]`` or ``Mapping[str, X]`` (a TOML table of values)."""
    return get_origin(tp) in (dict, collections.abc.Mapping) and get_args(tp)[:1] == (str,)


def choices(tp: Any) -> list[Any]:
    """The values a ``Literal`` or enum type accepts, as written in a file."""
    if is_enum(tp):
        return [member.value for member in tp]
    return [v.value if isinstance(v, enum.Enum) else v for v in get_args(tp)]


def key_path(path: str, key: str) -> str:
    """``path`` extended by ``key``, as TOML writes a dotted key (``providers."my llm".url``)."""
    return f"{path}.{toml_key(key)}" if path else toml_key(key)
