#!/usr/bin/env bash
# Set up and serve the bundled offline models of nexa.yaml.example.
# Extra arguments go to `nexa server` (e.g. --port 9000).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/nexa server -c nexa.yaml.example "$@"
