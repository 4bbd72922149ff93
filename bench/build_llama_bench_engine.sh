#!/usr/bin/env bash
# Build `llama-bench` of the llama.cpp that llama-cpp-python vendors (the engine the gateway runs), to
# compare it with the `llama-bench` of bench/build_llama_server.sh's newer llama.cpp: the same benchmark
# on both engines tells an engine-version difference apart from the gateway's own cost (RESULTS.md §19).
# Same cmake flags as bench/build_llama_server.sh; only the one target (about 15 min on 2 cores).
#
#   bash bench/build_llama_bench_engine.sh [VERSION] [CACHE_DIR]
#
# VERSION defaults to the llama-cpp-python of the project's virtualenv (.venv), else 0.3.36.
# Prints the folder holding the binary (CACHE_DIR/llama_cpp_python-VERSION/vendor/llama.cpp/build/bin).
# The sdist comes from the package index's simple page, sha256-checked (bench/sdist.sh).
set -euo pipefail
. "$(dirname "$0")/sdist.sh"

HERE="$(cd "$(dirname "$0")/.." && pwd)"
DEFAULT_VERSION=0.3.36
if [ -x "$HERE/.venv/bin/python" ]; then
  DEFAULT_VERSION=$("$HERE/.venv/bin/python" -c "import importlib.metadata as m; print(m.version('llama-cpp-python'))" 2>/dev/null || echo "$DEFAULT_VERSION")
fi
VERSION="${1:-$DEFAULT_VERSION}"
CACHE="${2:-${XDG_CACHE_HOME:-$HOME/.cache}/nexa/llama-server}"
JOBS="${JOBS:-$(nproc)}"
mkdir -p "$CACHE"
cd "$CACHE"

TREE="llama_cpp_python-$VERSION"
if [ ! -d "$TREE/vendor/llama.cpp" ]; then
  fetch_sdist llama-cpp-python "$VERSION"
fi

cd "$TREE/vendor/llama.cpp"
cmake -B build -G Ninja -DCMAKE_BUILD_TYPE=Release -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF \
  -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF >&2
cmake --build build --target llama-bench -j "$JOBS" >&2
echo "$PWD/build/bin"
