"""Regenerate the feature table at the top of docs/providers.md from
trio_orchestrator.workers.kinds.FEATURES.

Usage::

    python docs/gen_providers.py           # rewrite the page's generated table
    python docs/gen_providers.py --check   # exit 1 if the page is out of date

Everything between the BEGIN and END markers is generated; the rest of the page is prose.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

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


def updated(page: str) -> str:
    """Return ``page`` with the generated table between the markers replaced."""
    head, found, rest = page.partition(BEGIN)
    if not found or END not in rest:
        raise SystemExit(f"{PAGE}: the BEGIN/END markers of the generated table are missing")
    tail = rest.partition(END)[2] or "\n"  # the page ends with a newline
    return f"{head}{BEGIN}\n\n{render_table()}\n{END}{tail}"


def main(argv: list[str] | None = None) -> int:
    """Rewrite the page, or with ``--check`` report whether it is up to date."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only check, exit 1 if stale")
    args = parser.parse_args(argv)
    current = PAGE.read_text(encoding="utf-8")
    fresh = updated(current)
    if args.check:
        if fresh != current:
            print(f"{PAGE} is out of date: run python docs/gen_providers.py")
            return 1
        return 0
    PAGE.write_text(fresh, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
