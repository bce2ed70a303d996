"""The package's public surface is exactly its __all__ (httpx's test of the same name)."""

import trio_orchestrator


def test_all_names_the_public_surface_exactly() -> None:
    """Every public name is in __all__, and every name in __all__ exists."""
    public = {name for name in dir(trio_orchestrator) if not name.startswith("_")}
    submodules = {
        name
        for name in public
        if getattr(getattr(trio_orchestrator, name), "__name__", "").startswith(
            "trio_orchestrator."
        )
        and type(getattr(trio_orchestrator, name)).__name__ == "module"
    }
    assert public - submodules == set(trio_orchestrator.__all__) - {"__version__"}
    for name in trio_orchestrator.__all__:
        assert hasattr(trio_orchestrator, name)
