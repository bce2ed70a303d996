"""The generated option reference in docs/configuration.md."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

from config_classes import Root

from trio_orchestrator.config.reference import render_reference

SCRIPT = Path(__file__).parent.parent / "docs" / "gen_config_reference.py"


def generator() -> ModuleType:
    """docs/gen_config_reference.py, imported as a module."""
    spec = importlib.util.spec_from_file_location("gen_config_reference", SCRIPT)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_configuration_page_is_up_to_date() -> None:
    """docs/configuration.md holds the reference the classes generate today."""
    script = generator()
    page = script.PAGE.read_text(encoding="utf-8")
    assert script.updated(page) == page, "run: python docs/gen_config_reference.py"


def test_reference_lists_every_option_with_its_default() -> None:
    """Each option is a row with its type, default and reloadability."""
    reference = render_reference()
    assert "| `rag_capacity` | a whole number ≥ 1 | `512` | no |" in reference
    assert "| `grace_period` | a number of seconds ≥ 0 | `10.0` | yes |" in reference


def test_reference_names_tables_as_toml_does() -> None:
    """Nested sections, tables of sections and arrays of tables get their TOML headers."""
    reference = render_reference(Root)
    for header in (
        "### `[providers.<name>]`",
        "### `[providers.<name>.limits]`",
        "### `[[routes]]`",
    ):
        assert header in reference
    assert "| `model` | string | required | no |" in reference
    assert "| `rate` | a number of seconds > 0 (inf for no limit) | `inf` | no |" in reference
