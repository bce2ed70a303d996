"""The configuration reference (Markdown), generated from the classes and their docstrings.

``docs/gen_config_reference.py`` writes it into ``docs/configuration.md``; a test checks the
page is up to date, so a new section or option only needs its class and docstring.
"""

from __future__ import annotations

from typing import Any, get_args, get_origin

import attrs

from .docs import attribute_docs, class_summary
from .kinds import choices, is_enum, is_literal, is_optional, key_path, optional_inner
from .load import to_plain
from .model import Config
from .schema import field_range
from .secret import Secret
from .toml_writer import toml_value

__all__ = ["render_reference"]


def render_reference(cls: type = Config) -> str:
    """Return the Markdown reference of every option of ``cls``, one table per section.

    Args:
        cls: the root configuration class.
    """
    sections: list[str] = []
    _section(sections, cls, "", "", reloadable=False)
    return "\n".join(sections).strip() + "\n"


def _section(out: list[str], cls: type, path: str, header: str, *, reloadable: bool) -> None:
    attrs.resolve_types(cls)
    docs = attribute_docs(cls)
    rows: list[str] = []
    nested: list[tuple[type, str, str, bool]] = []
    for field in attrs.fields(cls):
        allowed = field.metadata.get("reloadable", reloadable)
        table = _table(field.type, key_path(path, field.name))
        if table is not None:
            nested.append((*table, allowed))
            continue
        default = _default(field)
        rows.append(
            f"| `{field.name}` | {_type(field)} | {default} | {'yes' if allowed else 'no'} "
            f"| {_cell(docs.get(field.name, ''))} |"
        )
    if rows:
        out += [f"### `{header}`" if header else "### Top level", "", class_summary(cls), ""]
        out += ["| Key | Type | Default | Reloadable | Description |", "|---|---|---|---|---|"]
        out += [*rows, ""]
    for inner, inner_path, inner_header, allowed in nested:
        _section(out, inner, inner_path, inner_header, reloadable=allowed)


def _table(tp: Any, path: str) -> tuple[type, str, str] | None:
    """For a field written as TOML tables: the class, its key path and its table header."""
    if is_optional(tp):
        tp = optional_inner(tp)
    args = get_args(tp)
    if _is_class(tp):
        return tp, path, f"[{path}]"
    if get_origin(tp) is dict and _is_class(args[1]):
        return args[1], f"{path}.<name>", f"[{path}.<name>]"
    if get_origin(tp) in (list, tuple) and _is_class(args[0]):
        return args[0], path, f"[[{path}]]"
    return None


def _is_class(tp: Any) -> bool:
    return attrs.has(tp) and tp is not Secret


def _type(field: attrs.Attribute[Any]) -> str:
    bounds = field_range(field)
    return bounds.expected if bounds is not None else _type_name(field.type)


def _type_name(tp: Any) -> str:
    names = {bool: "boolean", int: "whole number", float: "number", str: "string"}
    if tp in names:
        return names[tp]
    if tp is Secret:
        return 'secret (literal, `"${VAR}"` or `{ env = "VAR" }`)'
    if is_optional(tp):
        return _type_name(optional_inner(tp)) + " (optional)"
    if is_literal(tp) or (is_enum(tp)):
        return " \\| ".join(f"`{toml_value(choice)}`" for choice in choices(tp))
    args = get_args(tp)
    if get_origin(tp) in (list, tuple):
        return f"array of {_type_name(args[0])}"
    if get_origin(tp) is dict:
        return f"table of {_type_name(args[1])}"
    return getattr(tp, "__name__", str(tp))


def _default(field: attrs.Attribute[Any]) -> str:
    if field.default is attrs.NOTHING:
        return "required"
    value: Any = field.default
    if isinstance(value, attrs.Factory):  # type: ignore[arg-type]
        value = value.factory()
    plain = to_plain(value)
    return "unset" if plain is None else f"`{toml_value(plain)}`"


def _cell(text: str) -> str:
    return text.replace("|", "\\|")
