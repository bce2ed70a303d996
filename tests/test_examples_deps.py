"""Every package an example imports is installed by the package or its ``examples`` extra,
and an example that needs the extra says so in its docstring."""

from __future__ import annotations

import ast
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).parent.parent
EXAMPLES = sorted((ROOT / "examples").glob("*.py"))


def _requirements() -> tuple[set[str], set[str]]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    core: set[str] = {canonicalize_name(Requirement(r).name) for r in project["dependencies"]}
    extras = project["optional-dependencies"]

    def expand(extra: str) -> set[str]:  # "trio-orchestrator[testing]" is that extra's list
        names: set[str] = set()
        for text in extras[extra]:
            requirement = Requirement(text)
            if canonicalize_name(requirement.name) == canonicalize_name(project["name"]):
                names |= set().union(*(expand(e) for e in requirement.extras))
            else:
                names.add(canonicalize_name(requirement.name))
        return names

    return core, expand("examples")


def _third_party_imports(path: Path) -> set[str]:
    local = {p.stem for p in EXAMPLES}
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    ours = {"trio_orchestrator", "__future__", *local}
    return {n for n in names if n not in ours and n not in sys.stdlib_module_names}


def test_every_example_import_is_declared() -> None:
    """Each third-party module an example imports comes from a core dependency or the
    ``examples`` extra, and the examples needing the extra name it in their docstring."""
    core, extra = _requirements()
    distributions = packages_distributions()
    for path in EXAMPLES:
        needed = {
            canonicalize_name(dist)
            for module in _third_party_imports(path)
            for dist in distributions.get(module, [module])
        }
        assert needed <= core | extra, f"{path.name} imports {needed - core - extra}"
        # pytest-trio is what runs the example's async tests, imported by nobody.
        if needed & extra or path.name.startswith("test_"):
            docstring = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))) or ""
            assert "trio-orchestrator[examples]" in docstring, path.name
