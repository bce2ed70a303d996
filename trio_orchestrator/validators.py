"""The attrs field validators the configuration classes share.

A leaf module (it imports nothing from this package), so that a class at any layer —
types, config sections, workers, resilience, routing, observability — can use them without
an import cycle. :class:`Range` validators are also read by the JSON Schema, the
configuration reference and the loader's error messages (:func:`composed_of` walks a
field's validator to find them); the others are plain checks. Each raises ``ValueError``
saying ``<field> must be <what>, got <value>``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import Any

import attrs

__all__ = [
    "Range",
    "Validator",
    "and_parts",
    "at_least_one",
    "composed_of",
    "fraction",
    "fraction_below_one",
    "non_negative",
    "non_negative_finite",
    "non_negative_time",
    "one_of",
    "optional_part",
    "positive_int",
    "positive_number",
    "positive_seconds",
    "positive_time",
    "unit_interval",
]

Validator = Callable[[Any, "attrs.Attribute[Any]", Any], None]
"""An attrs validator: ``(instance, attribute, value)``, raising on a bad value."""


@attrs.frozen
class Range:
    """An attrs validator for a number within bounds, readable by the schema and the docs.

    Attributes:
        expected: what a valid value is, in words (``"a whole number ≥ 1"``).
        integer: only whole numbers (``int``, never ``bool``) are accepted.
        minimum: the smallest value accepted, when there is one.
        exclusive_minimum: values must be greater than this, when set.
    """

    expected: str
    integer: bool = False
    minimum: float | None = None
    exclusive_minimum: float | None = None

    def accepts(self, value: object) -> bool:
        """Whether ``value`` is within the range (``bool`` is never a number here)."""
        if isinstance(value, bool):
            return False
        if self.integer:
            if not isinstance(value, int):
                return False
        elif not isinstance(value, int | float) or math.isnan(value):
            return False
        if self.minimum is not None and value < self.minimum:
            return False
        return self.exclusive_minimum is None or value > self.exclusive_minimum

    def __call__(self, _instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
        if not self.accepts(value):
            raise ValueError(f"{attribute.name} must be {self.expected}, got {value!r}")


positive_int = Range("a whole number ≥ 1", integer=True, minimum=1)
"""attrs validator: a whole number of at least 1 (``bool`` is not a number here)."""

positive_time = Range("a number of seconds > 0 (inf for no limit)", exclusive_minimum=0)
"""attrs validator: seconds > 0 (``math.inf`` for no limit); NaN rejected."""

non_negative_time = Range("a number of seconds ≥ 0", minimum=0)
"""attrs validator: seconds ≥ 0; NaN rejected."""


def _is_number(value: object) -> bool:
    """A real number: int or float, not bool, not NaN."""
    return not isinstance(value, bool) and isinstance(value, int | float) and not math.isnan(value)


def _refuse(attribute: attrs.Attribute[Any], expected: str, value: object) -> None:
    raise ValueError(f"{attribute.name} must be {expected}, got {value!r}")


def fraction(_instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    """attrs validator: a number in (0, 1]."""
    if not _is_number(value) or not 0 < value <= 1:  # type: ignore[operator]
        _refuse(attribute, "a number in (0, 1]", value)


def fraction_below_one(_instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    """attrs validator: a number in [0, 1)."""
    if not _is_number(value) or not 0 <= value < 1:  # type: ignore[operator]
        _refuse(attribute, "a number in [0, 1)", value)


def unit_interval(_instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    """attrs validator: a number in [0, 1]."""
    if not _is_number(value) or not 0 <= value <= 1:  # type: ignore[operator]
        _refuse(attribute, "a number in [0, 1]", value)


def at_least_one(_instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    """attrs validator: a finite number ≥ 1 (a growth factor)."""
    if not _is_number(value) or not 1 <= value < math.inf:  # type: ignore[operator]
        _refuse(attribute, "a finite number ≥ 1", value)


def positive_number(_instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    """attrs validator: a finite number > 0."""
    if not _is_number(value) or not 0 < value < math.inf:  # type: ignore[operator]
        _refuse(attribute, "a finite number > 0", value)


def positive_seconds(_instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    """attrs validator: a finite number of seconds > 0 (a timeout that must end)."""
    if not _is_number(value) or not 0 < value < math.inf:  # type: ignore[operator]
        _refuse(attribute, "a finite number of seconds > 0", value)


def non_negative(_instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    """attrs validator: a number ≥ 0 (``math.inf`` allowed: "no limit")."""
    if not _is_number(value) or value < 0:  # type: ignore[operator]
        _refuse(attribute, "a number ≥ 0", value)


def non_negative_finite(_instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    """attrs validator: a finite number ≥ 0 (a price, a weight)."""
    if not _is_number(value) or not 0 <= value < math.inf:  # type: ignore[operator]
        _refuse(attribute, "a finite number ≥ 0", value)


def one_of(*choices: str) -> Validator:
    """An attrs validator accepting only ``choices``.

    Args:
        choices: the accepted values.

    Returns:
        The validator; its error lists the choices.
    """

    def check(_instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
        if value not in choices:
            _refuse(attribute, f"one of {list(choices)}", value)

    return check


# attrs offers no public way to look inside its combinators: these two are the one place
# that knows their insides.


def and_parts(validator: Any) -> tuple[Any, ...]:
    """The validators an ``attrs.validators.and_`` (or a list given as ``validator=``)
    combines; ``()`` for any other validator."""
    return tuple(getattr(validator, "_validators", ()))


def optional_part(validator: Any) -> Any | None:
    """The validator an ``attrs.validators.optional`` wraps; ``None`` for any other."""
    if type(validator).__name__ == "_OptionalValidator":
        return validator.validator
    return None


def composed_of(validator: Any) -> Iterator[Any]:
    """The validators ``validator`` is made of, itself first, depth first.

    Args:
        validator: a field's ``validator`` (may be ``None``).

    Returns:
        Every validator in it, through ``and_`` and ``optional``.
    """
    if validator is None:
        return
    yield validator
    for inner in and_parts(validator):
        yield from composed_of(inner)
    yield from composed_of(optional_part(validator))
