#!/usr/bin/env bash
# Compiler launcher for scripts/build_llama_server.sh (CMAKE_<LANG>_COMPILER_LAUNCHER): the
# arithmetic (ggml/, src/) is compiled as released, -O3, so the server's answers are the
# in-process llama-cpp-python's to the token; the rest (the HTTP server, JSON, chat templates,
# argument parsing, multimodal) at -O0, which is most of the build's time and none of the tests'.
# "$@" is the compiler's command line; the source follows -c.
source=""
previous=""
for arg in "$@"; do
    if [ "$previous" = "-c" ]; then source="$arg"; fi
    previous="$arg"
done
case "$source" in
    */llama.cpp/ggml/* | */llama.cpp/src/* | "") exec "$@" ;;
esac
args=()
for arg in "$@"; do
    case "$arg" in
        -O1 | -O2 | -O3) args+=("-O0") ;;
        *) args+=("$arg") ;;
    esac
done
exec "${args[@]}"
