"""No module reaches into another module's private names (an AST walk over the package).

What is checked, in every module of ``trio_orchestrator/``:

1. ``from M import _name`` (any module ``M``): a private name is imported.
2. ``alias._name`` where ``alias`` was bound by an ``import`` statement (``import M as alias``,
   ``from pkg import module``): a private name is read through a module.
3. ``x._name`` on any other expression except ``self``, ``cls`` and ``super()``, when
   ``_name`` is defined in some *other* module of the package and nowhere in this one. A
   module may use the private attributes of its own classes on other instances
   (``other._keys`` in a merge); reading a private attribute that only another module
   defines is reaching into that module (``pool._keys_in`` from ``workers/http.py``).
   "Defined" means: a module-level name, a name in a class body (method, field, class
   attribute) or an assignment to ``self._name``. Private names of third-party libraries
   (attrs' ``_validators``) are not package names and are not judged here.

Dunder names (``__all__``, ``__name__``) are not private. ``tests/`` is not checked.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

PACKAGE = Path(__file__).parent.parent / "trio_orchestrator"

# Known, with the reason, until the named change lands; each entry is (module, name).
KNOWN: set[tuple[str, str]] = set()  # (module path, name) pairs allowed for now: none


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def _modules() -> dict[str, ast.Module]:
    return {
        path.relative_to(PACKAGE).as_posix(): ast.parse(path.read_text(encoding="utf-8"))
        for path in sorted(PACKAGE.rglob("*.py"))
    }


def _defined(tree: ast.Module) -> set[str]:
    """The private names a module defines (module level, class bodies, ``self._x = ``)."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.add(node.id)
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
        elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
            names.add(node.attr)
    return {name for name in names if _private(name)}


def _imported_names(tree: ast.Module) -> set[str]:
    """Names bound by ``import`` statements (modules, or names imported from them)."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update((a.asname or a.name).split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            names.update(a.asname or a.name for a in node.names)
    return names


def _is_own(value: ast.expr) -> bool:
    if isinstance(value, ast.Name):
        return value.id in ("self", "cls")
    return (
        isinstance(value, ast.Call)
        and isinstance(value.func, ast.Name)
        and value.func.id == "super"
    )


def _violations(
    module: str, tree: ast.Module, own: set[str], elsewhere: set[str]
) -> Iterator[tuple[str, str, int]]:
    imported = _imported_names(tree)
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            for alias in node.names:
                if _private(alias.name):
                    yield module, alias.name, node.lineno
        elif isinstance(node, ast.Attribute) and _private(node.attr) and not _is_own(node.value):
            through_module = isinstance(node.value, ast.Name) and node.value.id in imported
            if through_module or (node.attr in elsewhere and node.attr not in own):
                yield module, node.attr, node.lineno


def find_violations(modules: dict[str, ast.Module]) -> list[tuple[str, str, int]]:
    """Every (module, private name, line) reaching into another module's private name."""
    defined = {module: _defined(tree) for module, tree in modules.items()}
    found: list[tuple[str, str, int]] = []
    for module, tree in modules.items():
        elsewhere = set().union(*(names for other, names in defined.items() if other != module))
        found.extend(_violations(module, tree, defined[module], elsewhere))
    return found


def test_no_module_uses_another_modules_private_names() -> None:
    """No module imports or reads a private name that another module of the package owns."""
    found = [v for v in find_violations(_modules()) if (v[0], v[1]) not in KNOWN]
    assert found == [], "\n".join(f"{m}:{line}: {name}" for m, name, line in found)


def test_the_walk_flags_each_kind_of_reach() -> None:
    """The checker flags an imported private name, one read through a module, and one read
    on an object when only another module defines it; its own and self's are allowed."""
    owner = ast.parse("def _parse(): ...\nclass Pool:\n    _keys_in = ()\n")
    user = ast.parse(
        "from .owner import _parse\n"
        "from . import owner\n"
        "owner._helper()\n"
        "def f(pool, other):\n"
        "    pool._keys_in\n"
        "    other._mine\n"
        "class Own:\n"
        "    _mine = 1\n"
        "    def g(self):\n"
        "        return self._anything, super()._x\n"
    )
    found = {(m, name) for m, name, _ in find_violations({"owner.py": owner, "user.py": user})}
    assert found == {("user.py", "_parse"), ("user.py", "_helper"), ("user.py", "_keys_in")}
