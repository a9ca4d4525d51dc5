#!/usr/bin/env bash
# Compiler and linker launcher for scripts/build_llama_server.sh (CMAKE_<LANG>_COMPILER_LAUNCHER,
# CMAKE_<LANG>_LINKER_LAUNCHER). llama-server runs on the installed llama-cpp-python's own
# libraries ($UNDERSTUDY_VENV_LLAMA_LIBS: libllama, libggml*, libmtmd, of the same version and C
# API), so compiling llama.cpp's own copies of them would be wasted (about a minute of the build on 2 cores):
# - a source of those libraries (ggml/, src/, tools/mtmd/) compiles to an empty object;
# - linking one of those libraries copies the venv's file of that name instead;
# - everything else (the HTTP server, JSON, chat templates) is compiled and linked as asked.
# "$@" is the compiler's or linker's command line.
set -euo pipefail
source="" output="" depfile="" previous=""
for arg in "$@"; do
    case "$previous" in
        -c) source="$arg" ;;
        -o) output="$arg" ;;
        -MF) depfile="$arg" ;;
    esac
    previous="$arg"
done
libs="${UNDERSTUDY_VENV_LLAMA_LIBS:?the build script sets it}"
if [ -n "$source" ]; then
    case "$source" in
        */llama.cpp/ggml/* | */llama.cpp/src/* | */llama.cpp/tools/mtmd/*)
            [ -z "$depfile" ] || echo "$output:" > "$depfile"
            exec "$1" -c -x c /dev/null -o "$output" ;;
    esac
elif [ -n "$output" ] && [ -f "$libs/$(basename "$output")" ]; then
    exec cp -f "$libs/$(basename "$output")" "$output"
fi
exec "$@"
