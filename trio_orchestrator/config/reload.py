"""Reloading configuration while running: what may change, what may not, and the report.

An option may change at run time when its attrs field says so with
``metadata={"reloadable": True}``; the mark covers everything nested below that field unless a
nested field says ``{"reloadable": False}``. :func:`plan_reload` compares the configuration in
force with a new one and returns the configuration to apply: the new values of reloadable
options, the old values of the others, each of which is reported as refused. Nothing is
silently ignored.

:class:`~trio_orchestrator.Gateway` hands each running component its own section (the
pipeline ``[pipeline]``, a breaker ``[resilience.breaker]``, a provider its entry, …): the
components implement :class:`~trio_orchestrator.seams.Reloadable`.
"""

from __future__ import annotations

from typing import Any, TypeVar

import attrs

from ..seams import Reloadable
from .kinds import key_path
from .secret import Secret

__all__ = [
    "ConfigChange",
    "ReloadReport",
    "Reloadable",
    "plan_reload",
]

T = TypeVar("T")


@attrs.frozen
class ConfigChange:
    """One option that changed.

    Attributes:
        path: the key path (``pipeline.inference_concurrency``).
        old: the value before.
        new: the value after (or the value asked for, when refused).
    """

    path: str
    old: Any
    new: Any

    def __str__(self) -> str:
        return f"{self.path}: {self.old!r} → {self.new!r}"


@attrs.frozen
class ReloadReport:
    """What a reload did.

    Attributes:
        applied: the changes now in force.
        refused: one line per change that was not applied, saying why (its key path first).
        invalid: when the new configuration was invalid, its problems; nothing changed then.
    """

    applied: tuple[ConfigChange, ...] = ()
    refused: tuple[str, ...] = ()
    invalid: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        """True when everything asked for was applied."""
        return not self.refused and not self.invalid

    def __str__(self) -> str:
        if self.invalid:
            return "configuration not reloaded (invalid):\n  " + "\n  ".join(self.invalid)
        lines = [f"applied  {change}" for change in self.applied]
        lines += [f"refused  {reason}" for reason in self.refused]
        return "\n".join(lines) or "configuration unchanged"


def plan_reload(old: T, new: T) -> tuple[T, list[ConfigChange], list[str]]:
    """Compare two configurations and decide what a reload may apply.

    Args:
        old: the configuration in force (a :class:`Config`, or any attrs class).
        new: the configuration asked for, of the same class.

    Returns:
        The configuration to put in force (new values where reloadable, old ones elsewhere),
        the changes applied, and one line per refused change.
    """
    applied: list[ConfigChange] = []
    refused: list[str] = []
    merged: T = _merge(old, new, "", False, applied, refused)
    return merged, applied, refused


def _merge(
    old: Any,
    new: Any,
    path: str,
    reloadable: bool,
    applied: list[ConfigChange],
    refused: list[str],
) -> Any:
    """The value to put in force at ``path``; records each change as applied or refused."""
    if attrs.has(type(old)) and type(old) is type(new) and not _is_leaf(old):
        changes = {}
        for field in attrs.fields(type(old)):
            before, after = getattr(old, field.name), getattr(new, field.name)
            if field.init and before != after:
                allowed = field.metadata.get("reloadable", reloadable)
                key = key_path(path, field.name)
                changes[field.alias] = _merge(before, after, key, allowed, applied, refused)
        return attrs.evolve(old, **changes) if changes else old
    if isinstance(old, dict) and isinstance(new, dict):
        merged = {}
        for key in [*new, *(k for k in old if k not in new)]:
            before, after = old.get(key, _ABSENT), new.get(key, _ABSENT)
            value = (
                before
                if before == after
                else _merge(before, after, key_path(path, key), reloadable, applied, refused)
            )
            if value is not _ABSENT:
                merged[key] = value
        return merged
    if reloadable:
        applied.append(ConfigChange(path, old, new))
        return new
    refused.append(f"{path}: cannot change while running; restart to apply {old!r} → {new!r}")
    return old


class _Absent:
    """An entry missing from a table (before it was added, or after it was removed)."""

    def __repr__(self) -> str:
        return "(absent)"


_ABSENT: Any = _Absent()


def _is_leaf(value: object) -> bool:
    # A secret is an attrs class, but one value: compare it whole, never field by field.
    return isinstance(value, Secret)
