"""Secrets: values that never appear in reprs, logs, errors or metrics."""

from __future__ import annotations

import hashlib

import attrs

__all__ = ["Secret"]


@attrs.frozen(repr=False)
class Secret:
    """A secret string (an API key). ``repr`` and ``str`` mask it; :meth:`reveal` returns it.

    In configuration files a secret can be written literally or as ``"${ENV_VAR}"``.
    """

    _value: str = attrs.field(alias="value")

    def reveal(self) -> str:
        """Return the secret itself, for the one place that must send it."""
        return self._value

    def fingerprint(self) -> str:
        """A short, stable, non-reversible id for logs and statistics (``sha256:ab12cd34``)."""
        return "sha256:" + hashlib.sha256(self._value.encode()).hexdigest()[:8]

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__

    def __bool__(self) -> bool:
        return bool(self._value)
