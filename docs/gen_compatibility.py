"""Regenerate the tables in docs/compatibility.md from trio_orchestrator.compatibility.

Usage::

    python docs/gen_compatibility.py           # rewrite the page's generated part
    python docs/gen_compatibility.py --check   # exit 1 if the page is out of date

Everything between the BEGIN and END markers is generated; the rest of the page is prose.
"""

from __future__ import annotations

import sys
from pathlib import Path

from trio_orchestrator._docpage import GeneratedPart
from trio_orchestrator.compatibility import render_markdown

PAGE = Path(__file__).with_name("compatibility.md")
BEGIN = (
    "<!-- BEGIN GENERATED TABLES: edit trio_orchestrator/compatibility.py, "
    "then run docs/gen_compatibility.py -->"
)
END = "<!-- END GENERATED TABLES -->"


PART = GeneratedPart(PAGE, BEGIN, END, render_markdown, "docs/gen_compatibility.py")
updated = PART.updated


if __name__ == "__main__":
    sys.exit(PART.main(description=__doc__.splitlines()[0]))
