"""Load configuration: TOML → attrs classes through cattrs, strictly, every problem at once.

What "strictly" means:

- an unknown key is an error (with a suggestion when it looks like a typo);
- numbers are never made from strings, nor whole numbers from fractions (``"5"`` and ``5.5``
  are errors for a whole-number option); a whole number is fine where a number is expected;
  ``true`` is not a number;
- every field validator runs, range checks included, and its failure names the key;
- a secret is written literally, as ``"${ENV_VAR}"``, or as a table ``{ env = "ENV_VAR" }``
  (``{ value = "..." }`` writes a literal that would otherwise look like a reference); an
  unset variable is an error naming both the key and the variable.

Every problem is reported, not just the first, as one line naming the key path
(``pipeline.rag_capacity``), what was found and what was expected, in one
:class:`~trio_orchestrator.errors.ConfigError`.

The loader is generic over attrs classes: it supports nested classes, ``bool``, ``int``,
``float`` (``inf`` included), ``str``, :class:`Secret`, enums, ``Literal[...]``, ``list[X]``,
``tuple[X, ...]``, ``dict[str, X]`` and ``X | None``.
"""

from __future__ import annotations

import difflib
import enum
import functools
import os
import re
import tomllib
from collections.abc import Callable, Mapping
from contextvars import ContextVar
from pathlib import Path
from typing import Any, TypeVar, get_args, get_origin, overload

import attrs
import cattrs
from cattrs.errors import (
    ClassValidationError,
    ForbiddenExtraKeysError,
    IterableValidationError,
    IterableValidationNote,
)
from cattrs.gen import make_dict_structure_fn, override

from ..errors import ConfigError
from ..validators import Range, and_parts, optional_part
from .kinds import (
    choices,
    is_enum,
    is_literal,
    is_optional,
    is_sequence,
    is_str_mapping,
    key_path,
    optional_inner,
)
from .model import Config
from .secret import Secret

__all__ = ["MASK", "dump_config", "load_config", "parse_config"]

T = TypeVar("T")

MASK = "***"
"""What a secret looks like in a dumped configuration with ``mask_secrets=True``."""

_ENV_REFERENCE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
# Where "${VAR}" secrets are looked up during one parse_config call.
_ENV: ContextVar[Mapping[str, str]] = ContextVar("trio_orchestrator.config.env")
_SECRET_FORMS = 'a string (the secret, or "${ENV_VAR}") or a table { env = "ENV_VAR" }'


class _Mismatch(ValueError):
    """A value of the wrong kind or out of range: says what was found and what was expected."""

    def __init__(self, found: object, expected: str) -> None:
        super().__init__(f"expected {expected}, found {describe(found)}")


# ---------------------------------------------------------------------------- public API


def load_config(path: str | os.PathLike[str], *, env: Mapping[str, str] | None = None) -> Config:
    """Read and validate a TOML configuration file.

    Args:
        path: the file.
        env: where ``"${VAR}"`` secrets are looked up (default: ``os.environ``).

    Returns:
        The configuration, defaults filled in.

    Raises:
        ConfigError: the file cannot be read, is not TOML, or has invalid options (every
            problem is listed in ``problems``).
    """
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read {os.fspath(path)}: {exc}") from exc
    return parse_config(text, env=env)


@overload
def parse_config(
    source: str | Mapping[str, Any], *, env: Mapping[str, str] | None = None
) -> Config: ...
@overload
def parse_config(
    source: str | Mapping[str, Any], cls: type[T], *, env: Mapping[str, str] | None = None
) -> T: ...
def parse_config(
    source: str | Mapping[str, Any],
    cls: type[Any] = Config,
    *,
    env: Mapping[str, str] | None = None,
) -> Any:
    """Validate a configuration given as TOML text or as an already-parsed mapping.

    Args:
        source: TOML text, or a mapping such as :func:`dump_config` returns.
        cls: the attrs class to build (default: :class:`Config`).
        env: where ``"${VAR}"`` secrets are looked up (default: ``os.environ``).

    Returns:
        An instance of ``cls``.

    Raises:
        ConfigError: listing every problem, each naming its key path.
    """
    if isinstance(source, str):
        try:
            source = tomllib.loads(source)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"not valid TOML: {exc}") from None
    token = _ENV.set(os.environ if env is None else env)
    try:
        return _structuring_converter().structure(source, cls)
    except (cattrs.BaseValidationError, ValueError) as exc:
        raise ConfigError(_problems(exc, "")) from None
    finally:
        _ENV.reset(token)


def dump_config(config: object, *, mask_secrets: bool = True) -> dict[str, Any]:
    """Return ``config`` as plain data (tables, arrays, strings, numbers, booleans).

    ``parse_config(dump_config(c, mask_secrets=False)) == c``. Enums become their values,
    tuples become lists, ``None`` stays ``None`` (a TOML rendering leaves such keys out).

    Args:
        config: an attrs configuration instance (usually a :class:`Config`).
        mask_secrets: write every secret as ``"***"`` rather than its value.
    """
    data: dict[str, Any] = to_plain(config, mask_secrets=mask_secrets)
    return data


def to_plain(value: object, *, mask_secrets: bool = True) -> Any:
    """Return any configuration value (a class, list, enum, secret…) as plain data."""
    converter = cattrs.Converter(unstruct_collection_overrides={tuple: list})
    converter.register_unstructure_hook(Secret, _mask if mask_secrets else _reveal)
    return converter.unstructure(value)


def _mask(_secret: Secret) -> str:
    return MASK


def _reveal(secret: Secret) -> str | dict[str, str]:
    value = secret.reveal()
    # A secret that looks like a reference is written so that it loads back as itself.
    return {"value": value} if _ENV_REFERENCE.fullmatch(value) else value


# ---------------------------------------------------------------------------- describing


def describe(value: object) -> str:
    """Say what a configuration value is, for an error message (``the string '5'``)."""
    if isinstance(value, bool):
        return f"the boolean {str(value).lower()}"
    if isinstance(value, int):
        return f"the whole number {value}"
    if isinstance(value, float):
        return f"the number {value}"
    if isinstance(value, str):
        return f"the string {value!r}"
    if isinstance(value, Mapping):
        return "a table"
    if isinstance(value, list | tuple):
        return "an array"
    if value is None:
        return "nothing (null)"
    return f"a {type(value).__name__} ({value})"


def expected(tp: Any) -> str:
    """Say what a value of type ``tp`` must look like, for an error message."""
    simple = {bool: "true or false", int: "a whole number", float: "a number", str: "a string"}
    if tp in simple:
        return simple[tp]
    if tp is Secret:
        return _SECRET_FORMS
    if is_optional(tp):
        return expected(optional_inner(tp))
    if is_literal(tp) or is_enum(tp):
        return "one of " + ", ".join(repr(v) for v in choices(tp))
    if is_sequence(tp):
        return "an array"
    return "a table"


# ---------------------------------------------------------------------------- structuring


@functools.cache
def _structuring_converter() -> cattrs.Converter:
    """The converter, built once: its generated code per class is what makes loading fast."""
    converter = cattrs.Converter(forbid_extra_keys=True, detailed_validation=True)
    for tp in (bool, int, float, str):
        converter.register_structure_hook(tp, _scalar_hook(tp))
    converter.register_structure_hook(Secret, _structure_secret)
    converter.register_structure_hook_factory(is_enum, _choice_hook)
    converter.register_structure_hook_factory(is_literal, _choice_hook)
    converter.register_structure_hook_factory(
        is_sequence, functools.partial(_sequence_hook, converter)
    )
    converter.register_structure_hook_factory(
        is_str_mapping, functools.partial(_mapping_hook, converter)
    )
    converter.register_structure_hook_factory(attrs.has, functools.partial(_class_hook, converter))
    return converter


Hook = Callable[[Any, Any], Any]


def _scalar_hook(tp: type) -> Hook:
    def structure(value: Any, _: Any) -> Any:
        if isinstance(value, bool) and tp is not bool:
            raise _Mismatch(value, expected(tp))
        if tp is float and isinstance(value, int):
            return float(value)
        if not isinstance(value, tp):
            raise _Mismatch(value, expected(tp))
        return value

    return structure


def _choice_hook(tp: Any) -> Hook:
    members = list(tp) if is_enum(tp) else list(get_args(tp))
    by_value = {(m.value if isinstance(m, enum.Enum) else m): m for m in members}

    def structure(value: Any, _: Any) -> Any:
        # ``True == 1``: a choice must match in type as well as in value.
        for raw, member in by_value.items():
            if type(raw) is type(value) and raw == value:
                return member
        raise _Mismatch(value, expected(tp))

    return structure


def _structure_secret(value: Any, _: Any) -> Secret:
    env = _ENV.get()
    if isinstance(value, str):
        reference = _ENV_REFERENCE.fullmatch(value)
        return Secret(_from_env(reference[1], env) if reference else value)
    if isinstance(value, Mapping) and len(value) == 1:
        if isinstance(value.get("env"), str):
            return Secret(_from_env(value["env"], env))
        if isinstance(value.get("value"), str):
            return Secret(value["value"])
    raise _Mismatch(value, _SECRET_FORMS)


def _from_env(name: str, env: Mapping[str, str]) -> str:
    value = env.get(name)
    if value is None:
        raise ValueError(
            f"the environment variable {name} is not set; set it, or write the secret here"
        )
    if not value:
        raise ValueError(f"the environment variable {name} is set but empty")
    return value


def _sequence_hook(converter: cattrs.Converter, tp: Any) -> Hook:
    args = get_args(tp)
    if get_origin(tp) is tuple and (len(args) != 2 or args[1] is not Ellipsis):
        raise TypeError(f"{tp}: only tuple[X, ...] is supported in configuration classes")
    item, build = args[0], get_origin(tp)

    def structure(value: Any, _: Any) -> Any:
        if not isinstance(value, list | tuple):
            raise _Mismatch(value, "an array")
        items, errors = [], []
        for index, element in enumerate(value):
            try:
                items.append(converter.structure(element, item))
            except Exception as exc:
                _note(exc, IterableValidationNote(f"@ index {index}", index, item))
                errors.append(exc)
        if errors:
            raise IterableValidationError(f"While structuring {tp}", errors, tp)
        return build(items)

    return structure


def _mapping_hook(converter: cattrs.Converter, tp: Any) -> Hook:
    item = get_args(tp)[1]

    def structure(value: Any, _: Any) -> Any:
        if not isinstance(value, Mapping):
            raise _Mismatch(value, "a table")
        items, errors = {}, []
        for key, element in value.items():
            try:
                items[key] = converter.structure(element, item)
            except Exception as exc:
                _note(exc, IterableValidationNote(f"@ key {key!r}", key, item))
                errors.append(exc)
        if errors:
            raise IterableValidationError(f"While structuring {tp}", errors, tp)
        return items

    return structure


def _note(exc: Exception, note: str) -> None:
    exc.__notes__ = [*getattr(exc, "__notes__", []), note]


def _class_hook(converter: cattrs.Converter, cls: type) -> Hook:
    attrs.resolve_types(cls)
    # Each validated field is checked as it is structured, so that every out-of-range value
    # is reported, not only the first one the class's __init__ would stop at.
    overrides: dict[str, Any] = {
        field.name: override(struct_hook=_validated(converter, field))
        for field in attrs.fields(cls)
        if field.validator is not None and field.converter is None and field.init
    }
    generated: Hook = make_dict_structure_fn(cls, converter, **overrides)

    def structure(value: Any, _: Any) -> Any:
        if not isinstance(value, Mapping):
            raise _Mismatch(value, "a table")
        return generated(value, cls)

    return structure


def _validated(converter: cattrs.Converter, field: attrs.Attribute[Any]) -> Hook:
    validator = field.validator
    assert validator is not None

    def structure(value: Any, tp: Any) -> Any:
        result = converter.structure(value, tp)
        _validate(validator, field, result)
        return result

    return structure


def _validate(validator: Any, field: attrs.Attribute[Any], value: Any) -> None:
    """Run an attrs validator on a field's value, without an instance (there is none yet).

    A validator that needs the instance (one comparing fields) fails here with something
    other than ValueError or TypeError; it is left to run when the instance is built, and its
    error is then reported at the section's path.
    """
    if isinstance(validator, Range):
        if not validator.accepts(value):
            raise _Mismatch(value, validator.expected)
    elif parts := and_parts(validator):
        for each in parts:
            _validate(each, field, value)
    elif (inner := optional_part(validator)) is not None:
        if value is not None:
            _validate(inner, field, value)
    else:
        try:
            validator(None, field, value)
        except (ValueError, TypeError):
            raise
        except Exception:  # it needs the instance: it runs when the instance is built
            return


# ---------------------------------------------------------------------------- reporting


def _problems(exc: BaseException, path: str) -> list[str]:
    """Flatten cattrs' tree of errors into one line per problem, each naming its key path."""
    if isinstance(exc, ClassValidationError):
        with_notes, others = exc.group_exceptions()
        problems = [
            p for sub, note in with_notes for p in _problems(sub, key_path(path, note.name))
        ]
        for sub in others:
            if isinstance(sub, ForbiddenExtraKeysError):
                problems += [
                    _unknownkey_path(path, key, sub.cl) for key in sorted(sub.extra_fields)
                ]
            else:
                problems += _problems(sub, path)
        return problems
    if isinstance(exc, IterableValidationError):
        with_index, others = exc.group_exceptions()
        problems = [p for sub, note in with_index for p in _problems(sub, _index(path, note.index))]
        return problems + [p for sub in others for p in _problems(sub, path)]
    if isinstance(exc, KeyError):
        return [f"{path}: missing; this option has no default, so it must be set"]
    return [f"{path or '(top level)'}: {exc}"]


def _unknownkey_path(path: str, key: str, cls: type) -> str:
    known = [field.name for field in attrs.fields(cls)]
    close = difflib.get_close_matches(key, known, n=1)
    hint = f"did you mean {close[0]!r}?" if close else "expected one of: " + ", ".join(known)
    return f"{key_path(path, key)}: unknown key; {hint}"


def _index(path: str, index: int | str) -> str:
    return f"{path}[{index}]" if isinstance(index, int) else key_path(path, index)
