#!/usr/bin/env bash
# Build llama.cpp's llama-server, the model server the remote local-model tests run against
# (inference.model_server), from the llama.cpp that ships inside the installed llama-cpp-python's
# source release (the same version the proxy runs in-process). Built once per version, into
# ${UNDERSTUDY_CACHE:-~/.cache/understudy}/llama-server-<version>/ (5.4 min on 2 cores: only the arithmetic
# at -O3, scripts/llama_server_cc.sh; 7.4 min all at -O3, measured 2026-12-06);
# prints the binary's path. Needs cmake and a C++ compiler, and pip's registry for the source.
set -euo pipefail
cd "$(dirname "$0")/.."
version="$(.venv/bin/python -c 'import llama_cpp; print(llama_cpp.__version__)')"
home="${UNDERSTUDY_CACHE:-$HOME/.cache/understudy}/llama-server-$version"
binary="$home/build/bin/llama-server"
if [ -x "$binary" ]; then echo "$binary"; exit 0; fi
mkdir -p "$home"
work="$(mktemp -d "$home/src.XXXXXX")"
trap 'rm -rf "$work"' EXIT
.venv/bin/pip download --quiet --no-deps --no-binary :all: "llama-cpp-python==$version" -d "$work" >&2
tar -xzf "$work"/llama_cpp_python-*.tar.gz -C "$work"
src="$(echo "$work"/llama_cpp_python-*/vendor/llama.cpp)"
launcher="$PWD/scripts/llama_server_cc.sh"  # -O3 for the arithmetic, -O0 for the rest (see there)
cmake -S "$src" -B "$home/build" -DCMAKE_BUILD_TYPE=Release -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF \
      -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=ON -DLLAMA_BUILD_TOOLS=ON \
      -DCMAKE_C_COMPILER_LAUNCHER="$launcher" -DCMAKE_CXX_COMPILER_LAUNCHER="$launcher" >&2
cmake --build "$home/build" --target llama-server -j "$(nproc)" >&2
echo "$binary"
