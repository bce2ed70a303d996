#!/usr/bin/env bash
# Set up a virtualenv in .venv (once) with everything the tests need, then run them.
#
# Usage:
#   bash scripts/test.sh              what CI runs: the gates (ruff check, ruff format --check,
#                                     mypy --strict), then the whole suite with branch coverage
#                                     on two workers (pytest-xdist), failing under
#                                     [tool.coverage.report] fail_under
#   bash scripts/test.sh ARGS...      pytest ARGS alone: no gates, no coverage (a quick run of
#                                     some tests; `--cov` among ARGS measures them)
#   bash scripts/test.sh --gates      the gates alone
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/_venv.sh
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
export HYPOTHESIS_PROFILE="${HYPOTHESIS_PROFILE:-ci}"

# Every gate runs, so one run names all that fail; the suite runs only once they pass.
gates() {
    local failed=()
    echo "== ruff check" && .venv/bin/ruff check . || failed+=("ruff check")
    echo "== ruff format --check" && .venv/bin/ruff format --check . || failed+=("ruff format")
    echo "== mypy (strict)" && .venv/bin/mypy || failed+=("mypy")
    if ((${#failed[@]})); then
        local IFS=","
        echo "gates failed: ${failed[*]}" >&2
        return 1
    fi
}

if [ "$#" -eq 0 ]; then
    gates
    echo "== pytest with branch coverage"
    exec .venv/bin/python -m pytest -n 2 --cov --cov-report=term
elif [ "$1" = "--gates" ] && [ "$#" -eq 1 ]; then
    gates
else
    exec .venv/bin/python -m pytest "$@"
fi
