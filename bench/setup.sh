#!/usr/bin/env bash
# The benchmark environment, bench/.venv: the gateway (editable) plus what only the
# benchmarks need, i.e. llama-cpp-python's own OpenAI server (the `[server]` extra:
# fastapi, uvicorn, sse-starlette) as the peer of bench/peer.py. The project's own
# dependencies are not changed. pip's wheel cache makes the llama-cpp-python build a one-off.
set -euo pipefail
cd "$(dirname "$0")"
PY="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
if [ ! -f .venv/.installed ] || [ ../pyproject.toml -nt .venv/.installed ] || [ "$0" -nt .venv/.installed ]; then
    .venv/bin/python -m pip install --quiet --disable-pip-version-check --upgrade pip
    .venv/bin/python -m pip install --disable-pip-version-check -e .. "llama-cpp-python[server]==0.3.36"
    touch .venv/.installed
fi
echo "bench environment ready: bench/.venv/bin/python"
