"""The shared attrs field validators (trio_orchestrator/validators.py)."""

from __future__ import annotations

import ast
import math
import re
from pathlib import Path

import attrs
import pytest

from trio_orchestrator import validators as v
from trio_orchestrator.config.schema import field_range

MODULE = Path(v.__file__)


def test_the_module_is_a_leaf() -> None:
    """validators.py imports nothing from the package, so every layer may use it."""
    tree = ast.parse(MODULE.read_text(encoding="utf-8"))
    relative = [n for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.level > 0]
    absolute = [
        n
        for n in ast.walk(tree)
        if isinstance(n, ast.ImportFrom) and (n.module or "").startswith("trio_orchestrator")
    ]
    assert relative == absolute == []


@attrs.define
class _Sample:
    share: float = attrs.field(default=0.5, validator=v.fraction)
    jitter: float = attrs.field(default=0.0, validator=v.fraction_below_one)
    ratio: float = attrs.field(default=1.0, validator=v.unit_interval)
    factor: float = attrs.field(default=2.0, validator=v.at_least_one)
    wait: float = attrs.field(default=1.0, validator=v.positive_seconds)
    price: float = attrs.field(default=0.0, validator=v.non_negative_finite)
    budget: float = attrs.field(default=math.inf, validator=v.non_negative)
    mode: str = attrs.field(default="a", validator=v.one_of("a", "b"))
    limit: float | None = attrs.field(
        default=None, validator=attrs.validators.and_(attrs.validators.optional(v.positive_int))
    )


@pytest.mark.parametrize(
    ("field", "bad", "expected"),
    [
        ("share", 0, "share must be a number in (0, 1], got 0"),
        ("jitter", 1, "jitter must be a number in [0, 1), got 1"),
        ("ratio", math.nan, "ratio must be a number in [0, 1], got nan"),
        ("factor", math.inf, "factor must be a finite number ≥ 1, got inf"),
        ("wait", True, "wait must be a finite number of seconds > 0, got True"),
        ("price", math.inf, "price must be a finite number ≥ 0, got inf"),
        ("budget", -1, "budget must be a number ≥ 0, got -1"),
        ("mode", "c", "mode must be one of ['a', 'b'], got 'c'"),
    ],
)
def test_each_validator_names_the_field_and_what_it_expects(
    field: str, bad: object, expected: str
) -> None:
    """A bad value is refused with '<field> must be <what>, got <value>'."""
    with pytest.raises(ValueError, match=f"^{re.escape(expected)}$"):
        _Sample(**{field: bad})  # type: ignore[arg-type]


def test_a_range_is_found_through_and_and_optional() -> None:
    """composed_of looks inside attrs' and_/optional, so the schema still finds the Range."""
    assert field_range(attrs.fields(_Sample).limit) is v.positive_int
    assert list(v.composed_of(None)) == []
