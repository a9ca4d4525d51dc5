#!/usr/bin/env bash
# Build llama.cpp's llama-server, the model server the remote local-model tests run against
# (inference.model_server), from the llama.cpp that ships inside the installed llama-cpp-python's
# source release (the same version the proxy runs in-process). Built once per version, into
# ${UNDERSTUDY_CACHE:-~/.cache/understudy}/llama-server-<version>/; prints the binary's path.
# Needs cmake and a C++ compiler, and pip's registry for the source.
#
# The server runs on the installed llama-cpp-python's own libraries (libllama, libggml*, libmtmd:
# the same C API, the same version), so its arithmetic is the in-process one by construction;
# llama.cpp's own copies of them are not compiled at all (scripts/llama_server_launcher.sh: their
# link steps copy the venv's files), and the rest (the HTTP server, JSON, chat templates) is
# compiled at -O0. 124 s on 2 cores (the download and configuring included), against 183 s
# compiling the libraries too at -O0, 323 s with them at -O3 and 445 s all at -O3 (2026-12-06).
set -euo pipefail
cd "$(dirname "$0")/.."
version="$(.venv/bin/python -c 'import llama_cpp; print(llama_cpp.__version__)')"
UNDERSTUDY_VENV_LLAMA_LIBS="$(.venv/bin/python -c 'import llama_cpp, pathlib; print(pathlib.Path(llama_cpp.__file__).parent / "lib")')"
export UNDERSTUDY_VENV_LLAMA_LIBS  # read by the launcher
home="${UNDERSTUDY_CACHE:-$HOME/.cache/understudy}/llama-server-$version"
binary="$home/build/bin/llama-server"
ready="$home/ready"  # written last: a build cut off before its end is built again
if [ -f "$ready" ] && [ -x "$binary" ]; then echo "$binary"; exit 0; fi
rm -rf "$home/build"  # an unfinished or older build: its cache names a source folder that is gone
mkdir -p "$home"
work="$(mktemp -d "$home/src.XXXXXX")"
trap 'rm -rf "$work"' EXIT
.venv/bin/pip download --quiet --no-deps --no-binary :all: "llama-cpp-python==$version" -d "$work" >&2
tar -xzf "$work"/llama_cpp_python-*.tar.gz -C "$work"
src="$(echo "$work"/llama_cpp_python-*/vendor/llama.cpp)"
launcher="$PWD/scripts/llama_server_launcher.sh"
cmake -S "$src" -B "$home/build" -DCMAKE_BUILD_TYPE=Release -DCMAKE_C_FLAGS_RELEASE="-O0 -DNDEBUG" \
      -DCMAKE_CXX_FLAGS_RELEASE="-O0 -DNDEBUG" -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF \
      -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=ON -DLLAMA_BUILD_TOOLS=ON \
      -DCMAKE_C_COMPILER_LAUNCHER="$launcher" -DCMAKE_CXX_COMPILER_LAUNCHER="$launcher" \
      -DCMAKE_C_LINKER_LAUNCHER="$launcher" -DCMAKE_CXX_LINKER_LAUNCHER="$launcher" >&2
cmake --build "$home/build" --target llama-server -j "$(nproc)" >&2
# The server finds its libraries beside it (its RUNPATH): each one the venv also has must be the
# venv's, byte for byte (the launcher's copy).
for lib in "$UNDERSTUDY_VENV_LLAMA_LIBS"/*.so*; do
    [ -e "$home/build/bin/$(basename "$lib")" ] || continue  # not one the server links
    cmp -s "$lib" "$home/build/bin/$(basename "$lib")" || {
        echo "error: $home/build/bin/$(basename "$lib") is not the venv's $lib" >&2
        exit 1
    }
done
touch "$ready"
echo "$binary"
