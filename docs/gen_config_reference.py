"""Regenerate the option reference in docs/configuration.md from the configuration classes.

Usage::

    python docs/gen_config_reference.py           # rewrite the page's generated part
    python docs/gen_config_reference.py --check   # exit 1 if the page is out of date

Everything between the BEGIN and END markers is generated; the rest of the page is prose.
"""

from __future__ import annotations

import sys
from pathlib import Path

from trio_orchestrator._docpage import GeneratedPart
from trio_orchestrator.config.reference import render_reference

PAGE = Path(__file__).with_name("configuration.md")
BEGIN = (
    "<!-- BEGIN GENERATED REFERENCE: edit the classes, then run docs/gen_config_reference.py -->"
)
END = "<!-- END GENERATED REFERENCE -->"


PART = GeneratedPart(PAGE, BEGIN, END, render_reference, "docs/gen_config_reference.py")
updated = PART.updated


if __name__ == "__main__":
    sys.exit(PART.main(description=__doc__.splitlines()[0]))
