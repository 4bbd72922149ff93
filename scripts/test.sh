#!/usr/bin/env bash
# Set up and run the whole test suite. Model files are fetched once per machine
# into ~/.cache/nexa/hub (NEXA_CACHE_ROOT) and reused afterwards.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh test
export GGML_NO_BACKTRACE=1
exec .venv/bin/python -m pytest -q -ra "$@"
