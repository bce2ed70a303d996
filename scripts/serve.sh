#!/usr/bin/env bash
# Set up a virtualenv in .venv (once) and serve the gateway: the echo worker by default, so
# no API key is needed. Arguments go to `trio-orchestrator serve` (e.g. --config FILE --port N).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/_venv.sh
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e .
exec .venv/bin/trio-orchestrator serve "$@"
