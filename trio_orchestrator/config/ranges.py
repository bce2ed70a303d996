"""Range validators that the schema and the docs can read.

A leaf module (it imports nothing from this package), so that configuration classes anywhere
in the package can use these validators without an import cycle through ``config.model``.
"""

from __future__ import annotations

import math
from typing import Any

import attrs

__all__ = ["Range", "non_negative_time", "positive_int", "positive_time"]


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
