"""Mutation testing of the core modules with mutmut, each module against its own tests.

``nox -s mutation`` runs it (``nox -s mutation -- workers/_sse.py`` for one module); see
docs/development.md. For each module of ``MODULES`` it prepares a work directory
``.mutation/<slug>/`` (links to the repository's files plus a ``pyproject.toml`` whose
``[tool.mutmut]`` names that module and its test files), runs ``mutmut run`` there, and reads
mutmut's result files. The work directory is kept between runs: that is mutmut's cache, so a
re-run tests only the mutants of functions that changed (and the ones never tested).

A surviving mutant listed in ``tests/mutation_allowlist.toml`` counts as equivalent (no test
can tell it from the original; the file says why, one line each). The summary table gives per
module: mutants, killed (including timeouts), equivalent, survived, and the share of
non-equivalent mutants killed. The exit status is 1 if any module is under the goal (90 %).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tomllib
from collections.abc import Iterable, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / ".mutation"
ALLOWLIST = ROOT / "tests" / "mutation_allowlist.toml"
PACKAGE = "trio_orchestrator"
GOAL = 0.90

# Module (under trio_orchestrator/) -> the test files that pin its behaviour. A mutant is run
# against these only (and, of them, only the tests mutmut saw calling the mutated function).
MODULES: dict[str, tuple[str, ...]] = {
    "workers/_sse.py": ("tests/test_sse.py",),
    "service/guard.py": (
        "tests/test_service_routes_auth.py",
        "tests/test_service_security.py",
        "tests/test_mutation_guard.py",
    ),
    "service/validate.py": ("tests/test_validate.py", "tests/test_mutation_validate.py"),
    "service/chat.py": (
        "tests/test_service_chat.py",
        "tests/test_service_choices.py",
        "tests/test_mutation_chat.py",
    ),
    "resilience/keys.py": ("tests/test_keys.py", "tests/test_cache.py", "tests/test_coalesce.py"),
    "resilience/retry.py": ("tests/test_retry.py",),
    "resilience/cache.py": ("tests/test_cache.py",),
    "resilience/coalesce.py": ("tests/test_coalesce.py",),
    "resilience/stack.py": ("tests/test_stack.py", "tests/test_mutation_stack.py"),
    "resilience/ratelimit.py": ("tests/test_ratelimit.py", "tests/test_mutation_ratelimit.py"),
    "resilience/breaker.py": ("tests/test_breaker.py", "tests/test_mutation_breaker.py"),
    "resilience/adaptive_limiter.py": (
        "tests/test_adaptive_limiter.py",
        "tests/test_mutation_adaptive_limiter.py",
    ),
    "resilience/config.py": (
        "tests/test_config_load.py",
        "tests/test_reload_layers.py",
        "tests/test_mutation_resilience_config.py",
    ),
    "pipeline/dead_letters.py": ("tests/test_dead_letters.py",),
    "pipeline/post.py": ("tests/test_post.py",),
    "pipeline/rag.py": ("tests/test_rag.py",),
    "pipeline/priority.py": ("tests/test_priority.py",),
    "pipeline/job.py": (
        "tests/test_pipeline.py",
        "tests/test_accounting.py",
        "tests/test_mutation_job.py",
    ),
    "pipeline/core.py": (
        "tests/test_pipeline.py",
        "tests/test_accounting.py",
        "tests/test_pipeline_push.py",
        "tests/test_priority.py",
        "tests/test_mutation_job.py",
        "tests/test_mutation_core.py",
    ),
    "routing/router.py": ("tests/test_router.py", "tests/test_mutation_router.py"),
    # Not tests/test_semantic_cache.py: its prefilter test at 1536 dimensions and the worker
    # contract suite cost ~45 s per surviving mutant; the mutation tests cover both kernels.
    "resilience/semantic_cache.py": ("tests/test_mutation_semantic_cache.py",),
    "pipeline/assemble.py": ("tests/test_rag.py", "tests/test_mutation_pipeline_parts.py"),
    "pipeline/sinks.py": ("tests/test_pipeline.py", "tests/test_mutation_pipeline_parts.py"),
    "pipeline/statistics.py": ("tests/test_pipeline.py", "tests/test_mutation_pipeline_parts.py"),
    "workers/http.py": (
        "tests/test_mutation_http.py",
        "tests/test_openai_worker.py",
        "tests/test_anthropic_worker.py",
        "tests/test_http_timeouts.py",
        "tests/test_http_send.py",
    ),
}

# What mutmut's exit codes mean, grouped the way the summary counts them.
_KILLED = {1, 3, 36, 24, -24, 152, 255, 37}
_SURVIVED = {0}
_NO_TESTS = {5, 33}


def slug(module: str) -> str:
    """The work directory's name for ``module`` (``workers/_sse.py`` -> ``workers._sse``)."""
    return module.removesuffix(".py").replace("/", ".")


def mutmut_section(module: str, tests: Sequence[str]) -> str:
    """The ``[tool.mutmut]`` table that mutates ``module`` against ``tests`` alone."""
    section = {
        "source_paths": [PACKAGE],
        "only_mutate": [f"{PACKAGE}/{module}"],
        "pytest_add_cli_args_test_selection": list(tests),
        # Derandomized Hypothesis (tests/conftest.py): a mutant's verdict must not vary by run.
        "pytest_add_cli_args": ["-p", "no:cacheprovider", "-p", "no:randomly", "-x"],
        "use_git_change_detection": False,
        # A mutant that loops forever is killed after 6x its tests' CPU time (mutmut: 30x).
        "timeout_multiplier": 3.0,
        # ... plus this many seconds, times the multiplier, for the fork to collect its tests:
        # at mutmut's 1 s, a 0.04 s test on a loaded machine took 3.3 s and was called a
        # timeout ("killed") though the mutant survived.
        "timeout_constant": 10.0,
    }
    lines = ["", "[tool.mutmut]"]
    lines += [f"{key} = {json.dumps(value)}" for key, value in section.items()]
    return "\n".join(lines) + "\n"


def prepare(module: str) -> Path:
    """Make (or refresh) ``module``'s work directory and return it.

    Everything at the repository's top level is linked in, so tests that read docs or examples
    find them; only ``pyproject.toml`` is a copy, with the module's ``[tool.mutmut]`` appended.
    """
    work = WORK / slug(module)
    work.mkdir(parents=True, exist_ok=True)
    for entry in ROOT.iterdir():
        if entry.name in {"pyproject.toml", ".mutation", "mutants", ".git"}:
            continue
        link = work / entry.name
        if not link.is_symlink() and not link.exists():
            link.symlink_to(entry)
    text = (ROOT / "pyproject.toml").read_text("utf-8") + mutmut_section(module, MODULES[module])
    target = work / "pyproject.toml"
    if not target.exists() or target.read_text("utf-8") != text:
        target.write_text(text, "utf-8")
    return work


def run_mutmut(work: Path, max_children: int, names: Sequence[str]) -> int:
    """Run ``mutmut run`` in ``work``; return its exit status."""
    env = dict(os.environ, HYPOTHESIS_PROFILE="mutation")
    env.pop("PYTHONPATH", None)  # mutmut puts mutants/ first; the real package must not shadow it
    command = [sys.executable, "-m", "mutmut", "run", "--max-children", str(max_children), *names]
    return subprocess.run(command, cwd=work, env=env, check=False).returncode


def results(module: str) -> dict[str, int | None]:
    """Mutant name -> mutmut's exit code for ``module``, from its work directory's meta file."""
    meta = WORK / slug(module) / "mutants" / PACKAGE / f"{module}.meta"
    if not meta.exists():
        return {}
    codes: dict[str, int | None] = json.loads(meta.read_text("utf-8"))["exit_code_by_key"]
    return codes


def allowlist() -> dict[str, str]:
    """Equivalent mutants: name -> the one-line reason no test can kill it."""
    if not ALLOWLIST.exists():
        return {}
    data = tomllib.loads(ALLOWLIST.read_text("utf-8"))
    return {name: reason for table in data.values() for name, reason in table.items()}


def tally(codes: dict[str, int | None], equivalent: Iterable[str]) -> dict[str, int]:
    """Count ``codes`` into mutants / killed / equivalent / survived / no tests / unchecked."""
    allowed = set(equivalent)
    counts = dict.fromkeys(("mutants", "killed", "equivalent", "survived", "no_tests", "other"), 0)
    for name, code in codes.items():
        counts["mutants"] += 1
        if code in _KILLED:
            counts["killed"] += 1
        elif code in _SURVIVED or code in _NO_TESTS:
            key = "no_tests" if code in _NO_TESTS else "survived"
            counts["equivalent" if name in allowed else key] += 1
        else:
            counts["other"] += 1
    return counts


def score(counts: dict[str, int]) -> float:
    """The share of non-equivalent mutants killed (1.0 when there are none)."""
    alive = counts["mutants"] - counts["equivalent"]
    return counts["killed"] / alive if alive else 1.0


def table(modules: Sequence[str]) -> tuple[str, bool]:
    """The summary table (markdown) for ``modules``, and whether every one meets the goal."""
    equivalent = allowlist()
    rows = [
        "| module | mutants | killed | equivalent | survived | no tests | other | killed % |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    ok = True
    for module in modules:
        counts = tally(results(module), equivalent)
        if not counts["mutants"]:
            rows.append(f"| {module} | not run | | | | | | |")
            continue
        share = score(counts)
        ok = ok and share >= GOAL
        cells = [counts[k] for k in ("mutants", "killed", "equivalent", "survived", "no_tests")]
        cells.append(counts["other"])
        rows.append(f"| {module} | " + " | ".join(map(str, cells)) + f" | {share:.1%} |")
    return "\n".join(rows), ok


def survivors(module: str) -> list[str]:
    """The surviving (or untested) mutants of ``module`` that the allow-list does not excuse."""
    equivalent = allowlist()
    return sorted(
        name
        for name, code in results(module).items()
        if (code in _SURVIVED or code in _NO_TESTS) and name not in equivalent
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run the session; return the exit status (1 when a module is under the goal)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("modules", nargs="*", help="modules under trio_orchestrator/ (all)")
    parser.add_argument("--max-children", type=int, default=1, help="mutmut workers (1)")
    parser.add_argument("--summary", action="store_true", help="only print the last results")
    parser.add_argument("--mutant", action="append", default=[], help="re-run these mutants")
    parser.add_argument(
        "--retest", action="store_true", help="re-run the last survivors (after adding tests)"
    )
    args = parser.parse_args(argv)
    unknown = [m for m in args.modules if m not in MODULES]
    if unknown:
        parser.error(f"not a mapped module: {', '.join(unknown)} (see MODULES in {__file__})")
    modules = args.modules or list(MODULES)
    if not args.summary:
        for module in modules:
            print(f"== {module} against {' '.join(MODULES[module])}", flush=True)
            # mutmut keeps a verdict until the function changes; new tests need the names.
            names = [*args.mutant, *(survivors(module) if args.retest else [])]
            if args.retest and not names:
                continue
            status = run_mutmut(prepare(module), args.max_children, names)
            if status:
                print(f"mutmut exited with {status} for {module}", file=sys.stderr)
                return status
    summary, ok = table(modules)
    print(summary)
    for module in modules:
        for name in survivors(module):
            print(f"survived: {name}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
