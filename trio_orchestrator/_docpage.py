"""The shared part of the docs' generators (``docs/gen_*.py``): a page whose part between two
markers is generated from the code, rewritten in place or checked (``--check``) by a test and
by hand."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

import attrs

__all__ = ["GeneratedPart"]


@attrs.frozen
class GeneratedPart:
    """The generated part of one docs page.

    Attributes:
        page: the page's path.
        begin: the marker line before the generated part.
        end: the marker line after it.
        render: the generated part, as the code makes it today.
        script: how to regenerate it (said when the page is out of date).
    """

    page: Path
    begin: str
    end: str
    render: Callable[[], str]
    script: str

    def updated(self, text: str) -> str:
        """Return the page ``text`` with the part between the markers generated anew.

        Raises:
            SystemExit: the markers are missing.
        """
        head, found, rest = text.partition(self.begin)
        if not found or self.end not in rest:
            raise SystemExit(
                f"{self.page}: the BEGIN/END markers of the generated part are missing"
            )
        tail = rest.partition(self.end)[2] or "\n"  # the page ends with a newline
        return f"{head}{self.begin}\n\n{self.render()}\n{self.end}{tail}"

    def main(self, argv: list[str] | None = None, *, description: str = "") -> int:
        """Rewrite the page, or with ``--check`` exit 1 when it is out of date."""
        parser = argparse.ArgumentParser(description=description)
        parser.add_argument("--check", action="store_true", help="only check, exit 1 if stale")
        args = parser.parse_args(argv)
        current = self.page.read_text(encoding="utf-8")
        fresh = self.updated(current)
        if args.check:
            if fresh != current:
                print(f"{self.page} is out of date: run python {self.script}")
                return 1
            return 0
        self.page.write_text(fresh, encoding="utf-8")
        return 0
