# Sourced by the other scripts: check the Python version and make .venv once.
python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' || {
    echo "trio-orchestrator needs Python 3.11 or newer; python3 is $(python3 --version)" >&2
    exit 1
}
if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
