"""Small JSON schemas that check a value, describe it, and render it as OpenAPI.

One declaration of a wire format serves three readers: the door (:meth:`Schema.check` raises
a 400 naming the path of the first bad value), people (:meth:`Schema.describe`, a short type
description for tables and error messages) and ``/openapi.json`` (:meth:`Schema.openapi`).

Objects are open: members a schema does not name are accepted and left alone, because the
gateway forwards them to upstreams that may know them (vLLM's, Ollama's, OpenRouter's
options). Discriminators (a ``type`` or ``role``) are closed; a value no variant names is an
error.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NoReturn, Protocol

import attrs

from .validate import invalid

__all__ = [
    "Array",
    "Boolean",
    "Integer",
    "Map",
    "Number",
    "Object",
    "OneOf",
    "Schema",
    "String",
    "Tagged",
    "Unchecked",
]


class Schema(Protocol):
    """What every schema offers."""

    def check(self, value: Any, path: str) -> None:
        """Accept ``value`` or raise :class:`~.errors.ApiError` (400) naming ``path``."""

    def describe(self) -> str:
        """A short description of the accepted values, for people."""

    def openapi(self) -> dict[str, Any]:
        """The schema as an OpenAPI 3.0 schema object."""


def _fail(path: str, schema: Schema, value: Any) -> NoReturn:
    raise invalid(path, schema.describe(), value)


@attrs.frozen
class String:
    """A string, optionally of bounded length or from a closed set of values."""

    max_length: int | None = None
    choices: tuple[str, ...] = ()

    def check(self, value: Any, path: str) -> None:
        """See :class:`Schema`."""
        if type(value) is not str:
            _fail(path, self, value)
        if (self.choices and value not in self.choices) or (
            self.max_length is not None and len(value) > self.max_length
        ):
            _fail(path, self, value)

    def describe(self) -> str:
        """See :class:`Schema`."""
        if self.choices:
            return "one of " + ", ".join(f'"{c}"' for c in self.choices)
        if self.max_length is not None:
            return f"a string of at most {self.max_length} characters"
        return "a string"

    def openapi(self) -> dict[str, Any]:
        """See :class:`Schema`."""
        schema: dict[str, Any] = {"type": "string"}
        if self.choices:
            schema["enum"] = list(self.choices)
        if self.max_length is not None:
            schema["maxLength"] = self.max_length
        return schema


@attrs.frozen
class Boolean:
    """``true`` or ``false``."""

    def check(self, value: Any, path: str) -> None:
        """See :class:`Schema`."""
        if type(value) is not bool:
            _fail(path, self, value)

    def describe(self) -> str:
        """See :class:`Schema`."""
        return "true or false"

    def openapi(self) -> dict[str, Any]:
        """See :class:`Schema`."""
        return {"type": "boolean"}


@attrs.frozen
class Integer:
    """A whole number (not a boolean, not ``5.0``) in ``[minimum, maximum]``."""

    minimum: int | None = None
    maximum: int | None = None

    def check(self, value: Any, path: str) -> None:
        """See :class:`Schema`."""
        if type(value) is not int:
            _fail(path, self, value)
        if (self.minimum is not None and value < self.minimum) or (
            self.maximum is not None and value > self.maximum
        ):
            _fail(path, self, value)

    def describe(self) -> str:
        """See :class:`Schema`."""
        if self.minimum is None and self.maximum is None:
            return "an integer"
        if self.maximum is None:
            return f"an integer of at least {self.minimum}"
        if self.minimum is None:
            return f"an integer of at most {self.maximum}"
        return f"an integer in [{self.minimum}, {self.maximum}]"

    def openapi(self) -> dict[str, Any]:
        """See :class:`Schema`."""
        schema: dict[str, Any] = {"type": "integer"}
        if self.minimum is not None:
            schema["minimum"] = self.minimum
        if self.maximum is not None:
            schema["maximum"] = self.maximum
        return schema


@attrs.frozen
class Number:
    """A number (integer or not; never a boolean) in ``[minimum, maximum]``."""

    minimum: float
    maximum: float

    def check(self, value: Any, path: str) -> None:
        """See :class:`Schema`."""
        if type(value) not in (int, float) or not self.minimum <= value <= self.maximum:
            _fail(path, self, value)

    def describe(self) -> str:
        """See :class:`Schema`."""
        return f"a number in [{self.minimum:g}, {self.maximum:g}]"

    def openapi(self) -> dict[str, Any]:
        """See :class:`Schema`."""
        return {"type": "number", "minimum": self.minimum, "maximum": self.maximum}


@attrs.frozen
class Array:
    """An array whose items all match ``items``."""

    items: Schema
    min_items: int = 0
    max_items: int | None = None

    def check(self, value: Any, path: str) -> None:
        """See :class:`Schema`."""
        self.check_shape(value, path)
        for i, item in enumerate(value):
            self.items.check(item, f"{path}[{i}]")

    def check_shape(self, value: Any, path: str) -> list[Any]:
        """Check that ``value`` is an array of the right size, leaving its items unchecked.

        Returns:
            The array.
        """
        if type(value) is not list or len(value) < self.min_items:
            _fail(path, self, value)
        if self.max_items is not None and len(value) > self.max_items:
            _fail(path, self, value)
        return value

    def describe(self) -> str:
        """See :class:`Schema`."""
        items = self.items.describe()
        if self.max_items is None:
            return f"a non-empty array ({items})" if self.min_items else f"an array ({items})"
        low = f"{self.min_items} to " if self.min_items else "up to "
        return f"an array of {low}{self.max_items} items ({items})"

    def openapi(self) -> dict[str, Any]:
        """See :class:`Schema`."""
        schema: dict[str, Any] = {"type": "array", "items": self.items.openapi()}
        if self.min_items:
            schema["minItems"] = self.min_items
        if self.max_items is not None:
            schema["maxItems"] = self.max_items
        return schema


@attrs.frozen
class Map:
    """An object used as a dictionary: at most ``max_items`` members, each key and value
    checked."""

    values: Schema
    max_items: int | None = None
    max_key_length: int | None = None

    def check(self, value: Any, path: str) -> None:
        """See :class:`Schema`."""
        if type(value) is not dict:
            _fail(path, self, value)
        if self.max_items is not None and len(value) > self.max_items:
            raise invalid(path, f"an object of at most {self.max_items} members", value)
        for key, item in value.items():
            if self.max_key_length is not None and len(key) > self.max_key_length:
                expected = f"keys of at most {self.max_key_length} characters"
                raise invalid(path, expected, key)
            self.values.check(item, f"{path}.{key}")

    def describe(self) -> str:
        """See :class:`Schema`."""
        bound = f"at most {self.max_items} " if self.max_items is not None else ""
        return f"an object of {bound}members, each {self.values.describe()}"

    def openapi(self) -> dict[str, Any]:
        """See :class:`Schema`."""
        schema: dict[str, Any] = {"type": "object", "additionalProperties": self.values.openapi()}
        if self.max_items is not None:
            schema["maxProperties"] = self.max_items
        return schema


@attrs.frozen
class Object:
    """An object with named members (others are accepted: see the module docstring).

    Attributes:
        members: the named members' schemas.
        required: the members that must be present and not null.
        nullable: the members that may be null (the others, when present, may not).
        summary: how :meth:`describe` names it (``"an object"`` by default).
    """

    members: Mapping[str, Schema] = attrs.field(factory=dict)
    required: frozenset[str] = frozenset()
    nullable: frozenset[str] = frozenset()
    summary: str = ""

    def check(self, value: Any, path: str) -> None:
        """See :class:`Schema`."""
        if type(value) is not dict:
            _fail(path, self, value)
        self.check_members(value, path)

    def check_members(self, value: Mapping[str, Any], path: str) -> None:
        """Check the members of ``value``, already known to be an object."""
        prefix = f"{path}." if path else ""
        for name in self.required:
            if value.get(name) is None:
                raise invalid(prefix + name, self.members[name].describe(), missing=True)
        for name, item in value.items():
            schema = self.members.get(name)
            if schema is None or (item is None and name in self.nullable):
                continue
            schema.check(item, prefix + name)

    def describe(self) -> str:
        """See :class:`Schema`."""
        if self.summary:
            return self.summary
        if self.required:
            return "an object with " + ", ".join(f"`{n}`" for n in sorted(self.required))
        return "an object"

    def openapi(self) -> dict[str, Any]:
        """See :class:`Schema`."""
        properties = {}
        for name, schema in self.members.items():
            properties[name] = schema.openapi()
            if name in self.nullable:
                properties[name]["nullable"] = True
        rendered: dict[str, Any] = {"type": "object", "properties": properties}
        if self.required:
            rendered["required"] = sorted(self.required)
        if self.summary:
            rendered["description"] = self.summary
        return rendered


@attrs.frozen
class Tagged:
    """An object whose ``tag`` member (``type`` by default) chooses its shape.

    Attributes:
        variants: the object schema for each tag value; another value is an error.
        tag: the discriminating member.
    """

    variants: Mapping[str, Object]
    tag: str = "type"

    def check(self, value: Any, path: str) -> None:
        """See :class:`Schema`."""
        if type(value) is not dict:
            _fail(path, self, value)
        tag_path = f"{path}.{self.tag}" if path else self.tag
        kind = value.get(self.tag)
        if kind is None:
            raise invalid(tag_path, self._choices(), missing=True)
        if type(kind) is not str or kind not in self.variants:
            raise invalid(tag_path, self._choices(), kind)
        self.variants[kind].check_members(value, path)

    def _choices(self) -> str:
        return "one of " + ", ".join(f'"{name}"' for name in self.variants)

    def describe(self) -> str:
        """See :class:`Schema`."""
        return f"an object whose `{self.tag}` is {self._choices()}"

    def openapi(self) -> dict[str, Any]:
        """See :class:`Schema`."""
        variants = []
        for name, variant in self.variants.items():
            rendered = variant.openapi()
            tag = {"type": "string", "enum": [name]}
            rendered["properties"] = {self.tag: tag, **rendered["properties"]}
            rendered["required"] = sorted({self.tag, *rendered.get("required", ())})
            variants.append(rendered)
        return {"oneOf": variants}


@attrs.frozen
class OneOf:
    """A value of one of several JSON kinds, each kind with its own schema.

    The kind is read from the value's JSON type (string, array, object…), so the error names
    the problem inside the chosen kind rather than listing every alternative.

    Attributes:
        kinds: the schema for each accepted Python type (``str``, ``list``, ``dict``…).
    """

    kinds: Mapping[type, Schema]

    def check(self, value: Any, path: str) -> None:
        """See :class:`Schema`."""
        schema = self.kinds.get(type(value))
        if schema is None:
            _fail(path, self, value)
        else:
            schema.check(value, path)

    def describe(self) -> str:
        """See :class:`Schema`."""
        return " or ".join(schema.describe() for schema in self.kinds.values())

    def openapi(self) -> dict[str, Any]:
        """See :class:`Schema`."""
        return {"oneOf": [schema.openapi() for schema in self.kinds.values()]}


@attrs.frozen
class Unchecked:
    """Any JSON value of the given kinds, taken as it is (a JSON Schema, say)."""

    kinds: tuple[type, ...] = (dict,)
    summary: str = "an object"

    def check(self, value: Any, path: str) -> None:
        """See :class:`Schema`."""
        if type(value) not in self.kinds:
            _fail(path, self, value)

    def describe(self) -> str:
        """See :class:`Schema`."""
        return self.summary

    def openapi(self) -> dict[str, Any]:
        """See :class:`Schema`."""
        names = {dict: "object", list: "array", str: "string", bool: "boolean"}
        if len(self.kinds) == 1:
            return {"type": names.get(self.kinds[0], "object"), "description": self.summary}
        return {"description": self.summary}
