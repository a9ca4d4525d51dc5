#!/usr/bin/env bash
# Build llama.cpp's llama-server, the model server the remote local-model tests run against
# (inference.model_server), from the llama.cpp that ships inside the installed llama-cpp-python's
# source release (the same version the proxy runs in-process). Built once per version, into
# ${UNDERSTUDY_CACHE:-~/.cache/understudy}/llama-server-<version>/; prints the binary's path.
# Needs cmake and a C++ compiler, and pip's registry for the source.
#
# The server runs on the installed llama-cpp-python's own libraries (libllama, libggml*, libmtmd:
# the same C API, the same version), copied over the ones this build makes, so its arithmetic is
# the in-process one by construction. What is compiled here (the HTTP server, JSON, chat
# templates, and ggml/llama only so that the build links) is compiled at -O0: 179 s on 2 cores
# against 323 s with ggml and llama at -O3 and 445 s all at -O3 (measured 2026-12-06).
set -euo pipefail
cd "$(dirname "$0")/.."
version="$(.venv/bin/python -c 'import llama_cpp; print(llama_cpp.__version__)')"
venv_libs="$(.venv/bin/python -c 'import llama_cpp, pathlib; print(pathlib.Path(llama_cpp.__file__).parent / "lib")')"
home="${UNDERSTUDY_CACHE:-$HOME/.cache/understudy}/llama-server-$version"
binary="$home/build/bin/llama-server"
ready="$home/ready"  # written last: a build cut off before its libraries were swapped is built again
if [ -f "$ready" ] && [ -x "$binary" ]; then echo "$binary"; exit 0; fi
mkdir -p "$home"
work="$(mktemp -d "$home/src.XXXXXX")"
trap 'rm -rf "$work"' EXIT
.venv/bin/pip download --quiet --no-deps --no-binary :all: "llama-cpp-python==$version" -d "$work" >&2
tar -xzf "$work"/llama_cpp_python-*.tar.gz -C "$work"
src="$(echo "$work"/llama_cpp_python-*/vendor/llama.cpp)"
cmake -S "$src" -B "$home/build" -DCMAKE_BUILD_TYPE=Release -DCMAKE_C_FLAGS_RELEASE="-O0 -DNDEBUG" \
      -DCMAKE_CXX_FLAGS_RELEASE="-O0 -DNDEBUG" -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF \
      -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=ON -DLLAMA_BUILD_TOOLS=ON >&2
cmake --build "$home/build" --target llama-server -j "$(nproc)" >&2
# The server finds its libraries beside it (its RUNPATH); each soname's file becomes the venv's.
for soname in libllama.so.0 libggml.so.0 libggml-base.so.0 libggml-cpu.so.0 libmtmd.so.0; do
    file="$(readlink "$home/build/bin/$soname")"
    cp -f "$venv_libs/$file" "$home/build/bin/$file"
done
touch "$ready"
echo "$binary"
