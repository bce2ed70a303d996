#!/usr/bin/env bash
# Set up a virtualenv in .venv (once) with everything the tests need, then run them.
# Usage: bash scripts/test.sh [pytest arguments]
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' || {
    echo "trio-orchestrator needs Python 3.11 or newer; python3 is $(python3 --version)" >&2
    exit 1
}
if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
export HYPOTHESIS_PROFILE="${HYPOTHESIS_PROFILE:-ci}"
exec .venv/bin/python -m pytest "$@"
