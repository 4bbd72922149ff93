#!/usr/bin/env bash
# Set up and serve the bundled offline models of nexa.yaml.example.
# Extra arguments go to `nexa server` (e.g. --port 9000).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# The example's voice (piper-joe) phonemizes with eSpeak NG, a Debian package.
if ! ldconfig -p 2>/dev/null | grep -q libespeak-ng && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    (apt-get update -qq && apt-get install -y -qq espeak-ng >/dev/null) || echo "warning: could not install espeak-ng; /v1/audio/speech will not load" >&2
fi
exec .venv/bin/nexa server -c nexa.yaml.example "$@"
