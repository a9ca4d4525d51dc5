#!/usr/bin/env bash
# The machine packages the test suite needs (Debian's, not Python ones), installed when missing:
# headless Chromium (the HTML report and review page), PostgreSQL and Redis (the shared store and
# queue: the tests start their own servers from these binaries), cmake and a C++ compiler (the
# tests build llama.cpp's llama-server once, scripts/build_llama_server.sh).
# Both `make test` and `.ci/run` call this, so the README's test command is the whole suite on a
# fresh machine. Without root (or sudo) and with something missing, it names the one command to run.
set -euo pipefail
need=()
command -v chromium >/dev/null 2>&1 || need+=(chromium)
compgen -G "/usr/lib/postgresql/*/bin/postgres" >/dev/null || need+=(postgresql)
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
command -v cmake >/dev/null 2>&1 || need+=(cmake)
command -v g++ >/dev/null 2>&1 || need+=(g++)
[ "${#need[@]}" -eq 0 ] && exit 0
if [ "$(id -u)" -eq 0 ]; then
    sudo=()
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    sudo=(sudo -n)
else
    echo "error: the tests need ${need[*]}; install them with: sudo apt-get install -y ${need[*]}" >&2
    exit 1
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "error: the tests need ${need[*]} (Debian package names) and this machine has no apt-get; install them" >&2
    exit 1
fi
echo "installing the test suite's machine packages: ${need[*]}" >&2
"${sudo[@]}" apt-get update -qq
"${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
