#!/usr/bin/env bash
# Create .venv with Python 3.12 and install Understudy (with test extras) into it.
# Re-running is cheap: pip skips what is installed; llama-cpp-python builds from source
# once (about 9 minutes on 2 cores) and comes from pip's cache afterwards.
set -euo pipefail
cd "$(dirname "$0")/.."

find_python() {
    for candidate in "${UNDERSTUDY_PYTHON:-}" \
                     "$(command -v pyenv >/dev/null 2>&1 && echo "$(pyenv root)/versions/3.12.1/bin/python3.12")" \
                     "$(command -v python3.12 || true)"; do
        if [ -n "$candidate" ] && [ -x "$candidate" ]; then echo "$candidate"; return; fi
    done
    echo "error: Python 3.12 not found (set UNDERSTUDY_PYTHON to its path)" >&2
    exit 1
}

if [ ! -x .venv/bin/python ]; then
    "$(find_python)" -m venv .venv
fi
stamp=.venv/.understudy-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    .venv/bin/pip install --progress-bar off -e '.[test]'
    touch "$stamp"
fi
