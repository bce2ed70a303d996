"""The import graph is the architecture: modules import only their own layer and those below.

The layers, lowest first (docs/architecture.md draws them)::

    foundation → sections → workers → resilience → routing → config root → pipeline
               → above the pipeline → gateway → service, CLI, batch → package facades

Every ``import`` and ``from … import`` in the package counts, including those under
``TYPE_CHECKING`` and inside functions: a lazy import is still a dependency. A package's
``__init__`` is a facade that re-exports its modules; importing a submodule does not count as
importing the facade (the same rule as import-linter's).
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

import trio_orchestrator

PACKAGE = Path(trio_orchestrator.__file__).parent

# Each layer: patterns over dotted module names inside the package (first match wins).
LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    (
        "foundation",
        (
            r"types",
            r"errors",
            r"events",
            r"compatibility",
            r"sharding",
            r"config\.(secret|kinds|toml_writer|docs)",
            r"validators",
            r"observability\.spans",
            r"distributed\.codec",
            r"catalogue\.(facts|config)",
        ),
    ),
    (
        "sections",
        (
            r"(workers|resilience|distributed|observability)\.config",
            r"workers\.presets",
            r"routing\.registry",
            r"config\.service",
            r"storage\.config",
        ),
    ),
    ("workers", (r"workers\..*", r"seams", r"storage\..*")),
    ("resilience", (r"resilience\..*", r"distributed\.(connection|breaker|ratelimit|answers)")),
    ("routing", (r"routing\..*",)),
    ("config root", (r"config\..*",)),
    ("pipeline", (r"pipeline\..*",)),
    ("above the pipeline", (r"observability\..*", r"distributed\.(dead_letters|queue|state)")),
    ("gateway", (r"gateway",)),
    (
        "service and CLI",
        (r"service\..*", r"cli\..*", r"(distributed\.)?batch", r"testing\..*", r"__main__"),
    ),
)
FACADES = "facades"  # package __init__ modules: they may import anything below them


def modules() -> dict[str, Path]:
    """Every module of the package by dotted name (``""`` is the package itself)."""
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = [*parts[:-1], "__init__"]
        found[".".join(parts)] = path
    return found


def layer_of(module: str) -> int:
    """The index of ``module``'s layer (facades above every layer)."""
    if module == "__init__" or module.endswith(".__init__"):
        return len(LAYERS)
    for index, (_name, patterns) in enumerate(LAYERS):
        if any(re.fullmatch(pattern, module) for pattern in patterns):
            return index
    raise AssertionError(f"{module} is in no layer; add it to LAYERS in {__file__}")


def imports(module: str, path: Path, known: dict[str, Path]) -> Iterator[tuple[int, str]]:
    """(line, imported module) for every import of another module of the package."""
    package = module.rsplit(".", 1)[0] if "." in module else ""
    if module.endswith("__init__"):
        package = module.removesuffix(".__init__").removesuffix("__init__")
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        targets: list[str] = []
        if not isinstance(node, ast.Import | ast.ImportFrom):
            continue
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".") if package else []
                base = base[: len(base) - (node.level - 1)] if node.level > 1 else base
                origin = ".".join([*base, *([node.module] if node.module else [])])
            elif node.module and node.module.startswith("trio_orchestrator"):
                origin = node.module.removeprefix("trio_orchestrator").lstrip(".")
            else:
                continue
            for alias in node.names:
                candidate = f"{origin}.{alias.name}" if origin else alias.name
                targets.append(candidate if candidate in known else origin)
        else:
            targets = [
                a.name.removeprefix("trio_orchestrator").lstrip(".")
                for a in node.names
                if a.name.startswith("trio_orchestrator")
            ]
        line = node.lineno if isinstance(node, (ast.Import, ast.ImportFrom)) else 0
        for target in targets:
            resolved = target if target in known else f"{target}.__init__".lstrip(".")
            if resolved in known and resolved != module:
                yield line, resolved


def graph() -> dict[str, set[str]]:
    known = modules()
    return {m: {t for _, t in imports(m, p, known)} for m, p in known.items()}


def test_every_module_is_in_a_layer() -> None:
    """Each module of the package belongs to one layer of the architecture."""
    for module in modules():
        layer_of(module)


def test_no_module_imports_from_a_layer_above_its_own() -> None:
    """Imports run downward only: no module imports one of a higher layer."""
    known = modules()
    upward = [
        f"{module}:{line} imports {target} "
        f"({LAYERS[layer_of(module)][0]} → {LAYERS[layer_of(target)][0]})"
        for module, path in known.items()
        for line, target in imports(module, path, known)
        if layer_of(target) > layer_of(module) and layer_of(target) < len(LAYERS)
    ]
    facades = [
        f"{module}:{line} imports the facade {target}"
        for module, path in known.items()
        for line, target in imports(module, path, known)
        if target.endswith("__init__") and layer_of(module) < len(LAYERS)
        if not _facade_below(module, target)
    ]
    assert upward + facades == []


def _facade_below(module: str, facade: str) -> bool:
    # A facade counts as its highest module: importing it is fine from at least that layer.
    members = [m for m in modules() if m.startswith(facade.removesuffix("__init__"))]
    members = [m for m in members if not m.endswith("__init__")]
    return all(layer_of(m) <= layer_of(module) for m in members)


def test_the_import_graph_has_no_cycle() -> None:
    """No module reaches itself through imports (facades included)."""
    edges = graph()
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for target in sorted(edges[node]):
            if state.get(target) == 1:
                cycles.append([*trail[trail.index(target) :], target])
            elif target not in state:
                visit(target, [*trail, target])
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node, [node])
    assert cycles == []


def test_the_check_catches_an_upward_import(tmp_path: Path) -> None:
    """An import of a higher layer is found (the walk is not vacuous)."""
    known = modules()
    source = tmp_path / "errors.py"
    source.write_text("from .pipeline.core import Pipeline\n", encoding="utf-8")
    found = list(imports("errors", source, known))
    assert found == [(1, "pipeline.core")]
    assert layer_of("pipeline.core") > layer_of("errors")
