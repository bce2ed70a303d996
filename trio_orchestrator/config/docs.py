"""Option descriptions, read from the "Attributes:" section of each config class's docstring.

The docstring is the one place an option is described; the loader, the JSON Schema and the
generated reference (``docs/configuration.md``) all read it from here::

    Attributes:
        name: what it is, possibly
            continued on more-indented lines.
"""

from __future__ import annotations

import functools
import inspect
import re

__all__ = ["attribute_docs", "class_summary"]

_ENTRY = re.compile(r"^(?P<name>[A-Za-z_][A-Za-z0-9_]*)\s*(?:\([^)]*\))?\s*:\s*(?P<text>.*)$")


@functools.cache
def attribute_docs(cls: type) -> dict[str, str]:
    """Return ``{attribute name: description}`` from ``cls``'s "Attributes:" section.

    Args:
        cls: a class whose docstring has a Google-style "Attributes:" section.

    Returns:
        One entry per documented attribute, continuation lines joined with spaces.
    """
    lines = inspect.cleandoc(cls.__doc__ or "").splitlines()
    try:
        start = lines.index("Attributes:") + 1
    except ValueError:
        return {}
    docs: dict[str, str] = {}
    name = ""
    indent = None
    for line in lines[start:]:
        if not line.strip():
            continue
        depth = len(line) - len(line.lstrip())
        if indent is None:
            indent = depth
        if depth < indent:
            break  # the section ended: a dedented line starts the next section
        entry = _ENTRY.match(line.strip())
        if depth == indent and entry:
            name = entry["name"]
            docs[name] = entry["text"].strip()
        elif name:
            docs[name] += " " + line.strip()
    return docs


def class_summary(cls: type) -> str:
    """Return the first paragraph of ``cls``'s docstring, on one line."""
    text = inspect.cleandoc(cls.__doc__ or "")
    return " ".join(text.split("\n\n", 1)[0].split())
