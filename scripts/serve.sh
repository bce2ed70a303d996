#!/usr/bin/env bash
# Set up a virtualenv in .venv (once) and serve the gateway: the echo worker by default, so
# no API key is needed. Arguments go to `trio-orchestrator serve` (e.g. --config FILE --port N).
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' || {
    echo "trio-orchestrator needs Python 3.11 or newer; python3 is $(python3 --version)" >&2
    exit 1
}
if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e .
exec .venv/bin/trio-orchestrator serve "$@"
