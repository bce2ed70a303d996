"""docs/providers.md's kind x feature table is generated from workers.kinds.FEATURES."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import attrs

from trio_orchestrator.workers.config import ProviderConfig
from trio_orchestrator.workers.kinds import FEATURES, TABLE_COLUMNS, KindFeatures, lists_models

SCRIPT = Path(__file__).parent.parent / "docs" / "gen_providers.py"


def generator() -> ModuleType:
    """docs/gen_providers.py, imported as a module."""
    spec = importlib.util.spec_from_file_location("gen_providers", SCRIPT)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_table_is_up_to_date() -> None:
    """docs/providers.md holds the table FEATURES generates today."""
    script = generator()
    page = script.PAGE.read_text(encoding="utf-8")
    assert script.updated(page) == page, "run: python docs/gen_providers.py"


def test_a_changed_feature_makes_the_page_stale() -> None:
    """Flipping one kind's feature changes the generated table (the check has teeth)."""
    script = generator()
    page = script.PAGE.read_text(encoding="utf-8")
    flipped = dict(FEATURES, echo=attrs.evolve(FEATURES["echo"], tools=True))
    script.FEATURES = flipped  # type: ignore[attr-defined]
    assert script.updated(page) != page


def test_every_kind_has_a_row_and_every_feature_a_column() -> None:
    """Each kind of FEATURES is a row; each feature but lists_models is a column."""
    table = generator().render_table()
    for kind in FEATURES:
        assert f"| `{kind}` |" in table
    shown = {f.name for f in attrs.fields(KindFeatures)} - {"lists_models"}
    assert set(TABLE_COLUMNS) == shown


def test_only_non_openai_servers_are_asked_for_their_models() -> None:
    """A local OpenAI-compatible server naming no models lists its own; OpenAI's API does not,
    nor a provider that names its models."""
    local = ProviderConfig("openai", "local", "http://127.0.0.1:8000/v1")
    assert lists_models(local)
    assert not lists_models(ProviderConfig("openai", "cloud"))
    assert not lists_models(ProviderConfig("openai", "cloud", "https://api.openai.com/v1"))
    assert not lists_models(attrs.evolve(local, models=["m"]))
    assert not lists_models(ProviderConfig("anthropic", "claude"))
