"""Regenerate the feature table at the top of docs/providers.md from
trio_orchestrator.workers.kinds.FEATURES.

Usage::

    python docs/gen_providers.py           # rewrite the page's generated table
    python docs/gen_providers.py --check   # exit 1 if the page is out of date

Everything between the BEGIN and END markers is generated; the rest of the page is prose.
"""

from __future__ import annotations

import sys
from pathlib import Path

from trio_orchestrator._docpage import GeneratedPart
from trio_orchestrator.workers.kinds import FEATURES, TABLE_COLUMNS

PAGE = Path(__file__).with_name("providers.md")
BEGIN = (
    "<!-- BEGIN GENERATED TABLE: edit FEATURES in trio_orchestrator/workers/kinds.py, "
    "then run docs/gen_providers.py -->"
)
END = "<!-- END GENERATED TABLE -->"


def render_table() -> str:
    """The kind x feature table, one row per kind, in FEATURES' order."""
    lines = [
        "| kind | " + " | ".join(TABLE_COLUMNS.values()) + " |",
        "| --- |" + " :---: |" * len(TABLE_COLUMNS),
    ]
    for kind, features in FEATURES.items():
        marks = ("yes" if getattr(features, name) else "no" for name in TABLE_COLUMNS)
        lines.append(f"| `{kind}` | " + " | ".join(marks) + " |")
    return "\n".join(lines) + "\n"


PART = GeneratedPart(PAGE, BEGIN, END, render_table, "docs/gen_providers.py")
updated = PART.updated


if __name__ == "__main__":
    sys.exit(PART.main(description=__doc__.splitlines()[0]))
