"""Sessions: tests, lint, typing, docs, bench, mutation (``nox -l`` lists them).

The default sessions (tests, lint, typing) are CI's gates, as ``bash scripts/test.sh`` runs them.
"""

from __future__ import annotations

import nox

nox.options.sessions = ["tests", "lint", "typing"]
nox.options.default_venv_backend = "venv"


@nox.session
def tests(session: nox.Session) -> None:
    """The suite with the CI Hypothesis profile and branch coverage (fails under the floor).

    With arguments (``nox -s tests -- tests/test_x.py``) they go to pytest alone, unmeasured,
    as with ``bash scripts/test.sh ARGS``.
    """
    session.install("-e", ".[dev]")
    args = session.posargs or ["--cov", "--cov-report=term"]
    session.run("pytest", *args, env={"HYPOTHESIS_PROFILE": "ci"})


@nox.session
def tests_httpx2(session: nox.Session) -> None:
    """The provider tests with httpx2 standing in for httpx (both must pass)."""
    session.install("-e", ".[dev]")
    providers = [
        "tests/test_openai_worker.py",
        "tests/test_anthropic_worker.py",
        "tests/test_fake_provider.py",
        "tests/test_providers_e2e.py",
    ]
    session.run("python", "scripts/pytest_httpx2.py", *providers, *session.posargs)


@nox.session
def thorough(session: nox.Session) -> None:
    """Run the test suite with many more Hypothesis examples (nightly-style)."""
    session.install("-e", ".[dev]")
    session.run("pytest", *session.posargs, env={"HYPOTHESIS_PROFILE": "thorough"})


@nox.session
def lint(session: nox.Session) -> None:
    """Ruff, with the flake8-async rules, and ruff's formatting (the pinned ruff of ``[lint]``)."""
    session.install(".[lint]")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session
def typing(session: nox.Session) -> None:
    """mypy --strict over the package, tests, benchmarks and examples."""
    session.install("-e", ".[dev]")
    session.run("mypy")


@nox.session
def docs(session: nox.Session) -> None:
    """Build the documentation site; any warning is an error (``mkdocs --strict``)."""
    session.install("-e", ".[docs]")
    session.run("mkdocs", "build", "--strict", "--site-dir", "site")


@nox.session
def bench(session: nox.Session) -> None:
    """Every benchmark, quick mode (pass ``-- --full`` for full runs)."""
    session.install("-e", ".[dev]")
    quick = [] if "--full" in session.posargs else ["--quick"]
    for script in sorted(__import__("pathlib").Path("benchmarks").glob("bench_*.py")):
        session.run("python", str(script), *quick)


@nox.session
def mutation(session: nox.Session) -> None:
    """Mutation testing of the core with mutmut, each module against its own tests (not in CI).

    ``nox -s mutation -- workers/_sse.py`` runs one module; ``-- --summary`` prints the last
    results. Run it under ``nice``; ``--max-children N`` uses N cores (default 1). See
    docs/development.md.
    """
    session.install("-e", ".[dev]", "mutmut==3.8.1")
    session.run("python", "scripts/mutation.py", *session.posargs)
