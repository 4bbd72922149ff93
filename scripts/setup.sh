#!/usr/bin/env bash
# Create (or update) the project's virtual environment in .venv.
# The first run compiles llama-cpp-python (4-5 min on 2 cores); pip caches the wheel.
set -euo pipefail
cd "$(dirname "$0")/.."
EXTRAS="${1:-}"
PY="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
stamp=".venv/.installed${EXTRAS:+-$EXTRAS}"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    .venv/bin/python -m pip install --quiet --disable-pip-version-check --upgrade pip
    .venv/bin/python -m pip install --disable-pip-version-check -e ".${EXTRAS:+[$EXTRAS]}"
    touch "$stamp"
fi
