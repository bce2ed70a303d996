"""A JSON Schema (draft 2020-12) of the configuration, generated from the attrs classes.

Editors that understand JSON Schema for TOML (for example Even Better TOML / taplo) can then
complete and check a configuration file. Types, defaults and descriptions come from the
classes and their "Attributes:" docstrings; ranges come from :class:`Range` validators.
JSON has no infinity, so a default of ``inf`` is described in words rather than given.
"""

from __future__ import annotations

import math
from typing import Any, get_args

import attrs

from ..validators import Range, composed_of
from .docs import attribute_docs, class_summary
from .kinds import (
    choices,
    is_enum,
    is_literal,
    is_optional,
    is_sequence,
    is_str_mapping,
    optional_inner,
)
from .load import to_plain
from .model import Config
from .secret import Secret

__all__ = ["config_schema", "field_range"]

DIALECT = "https://json-schema.org/draft/2020-12/schema"

_SCALARS: dict[Any, dict[str, Any]] = {
    bool: {"type": "boolean"},
    int: {"type": "integer"},
    float: {"type": "number"},
    str: {"type": "string"},
}

_SECRET = {
    "description": 'A secret: written literally, as "${ENV_VAR}", or as { env = "ENV_VAR" }.',
    "anyOf": [
        {"type": "string"},
        {
            "type": "object",
            "properties": {"env": {"type": "string", "description": "an environment variable"}},
            "required": ["env"],
            "additionalProperties": False,
        },
        {
            "type": "object",
            "properties": {"value": {"type": "string", "description": "the secret, literally"}},
            "required": ["value"],
            "additionalProperties": False,
        },
    ],
}


def config_schema(cls: type = Config) -> dict[str, Any]:
    """Return the JSON Schema of configuration class ``cls`` (and of the classes it nests).

    Args:
        cls: the root attrs class (default: :class:`Config`).

    Returns:
        A draft 2020-12 schema, as plain data ready for ``json.dumps``.
    """
    definitions: dict[str, Any] = {}
    root = _object(cls, definitions)
    schema: dict[str, Any] = {"$schema": DIALECT, "title": f"trio_orchestrator {cls.__name__}"}
    schema.update(root)
    if definitions:
        schema["$defs"] = dict(sorted(definitions.items()))
    return schema


def field_range(field: attrs.Attribute[Any]) -> Range | None:
    """The :class:`Range` among ``field``'s validators, if it has one."""
    return next((v for v in composed_of(field.validator) if isinstance(v, Range)), None)


def _object(cls: type, definitions: dict[str, Any]) -> dict[str, Any]:
    attrs.resolve_types(cls)
    docs = attribute_docs(cls)
    properties = {field.name: _property(field, docs, definitions) for field in attrs.fields(cls)}
    required = [f.name for f in attrs.fields(cls) if f.default is attrs.NOTHING]
    schema: dict[str, Any] = {
        "type": "object",
        "description": class_summary(cls),
        "properties": properties,
        "additionalProperties": False,
    }
    if required:
        schema["required"] = required
    return schema


def _property(
    field: attrs.Attribute[Any], docs: dict[str, str], definitions: dict[str, Any]
) -> dict[str, Any]:
    schema = dict(_type(field.type, definitions))
    description = docs.get(field.name, "")
    bounds = field_range(field)
    if bounds is not None:
        if bounds.minimum is not None:
            schema["minimum"] = bounds.minimum
        if bounds.exclusive_minimum is not None:
            schema["exclusiveMinimum"] = bounds.exclusive_minimum
    default = _default(field)
    if default is not None and not _is_table(field.type):
        if isinstance(default, float) and not math.isfinite(default):
            description += f" Default: {default}."
        else:
            schema["default"] = default
    if field.metadata.get("reloadable"):
        description += " Reloadable while running."
    if description:
        schema["description"] = description.strip()
    return schema


def _default(field: attrs.Attribute[Any]) -> Any:
    if field.default is attrs.NOTHING:
        return None
    value: Any = field.default
    if isinstance(value, attrs.Factory):  # type: ignore[arg-type]
        value = value.factory()
    return None if isinstance(value, Secret) else to_plain(value)


def _is_table(tp: Any) -> bool:
    return attrs.has(tp) and tp is not Secret


def _type(tp: Any, definitions: dict[str, Any]) -> dict[str, Any]:
    if tp in _SCALARS:
        return _SCALARS[tp]
    if tp is Secret:
        return _SECRET
    if is_optional(tp):
        return _type(optional_inner(tp), definitions)  # TOML has no null: omit the key
    if is_literal(tp) or is_enum(tp):
        return {"enum": choices(tp)}
    if is_sequence(tp):
        return {"type": "array", "items": _type(get_args(tp)[0], definitions)}
    if is_str_mapping(tp):
        return {"type": "object", "additionalProperties": _type(get_args(tp)[1], definitions)}
    if attrs.has(tp):
        if tp.__name__ not in definitions:
            definitions[tp.__name__] = {}  # placeholder: a class may nest itself
            definitions[tp.__name__] = _object(tp, definitions)
        return {"$ref": f"#/$defs/{tp.__name__}"}
    raise TypeError(f"configuration type {tp!r} has no JSON Schema equivalent")
