"""Run the Jac level generator in a subprocess (`<venv>/bin/jac run level_generator.jac`).

Used by corpus generation and the end-to-end tests. Two details shape it:
- `jac run` writes a compile cache next to the `.jac` file and a `.jac/data` store in the
  working directory, so the program is copied into a work directory and run there; the
  package tree stays clean and concurrent runs do not share state;
- litellm tries to download its model price map at import time, which stalls offline
  machines for seconds; `LITELLM_LOCAL_MODEL_COST_MAP=True` makes it use its bundled copy.

The program imports `jac_examples.rpg.*`, so it needs the project installed in the same
environment as `jac` (the venv), which is also where `jac` is looked up: next to
`sys.executable`.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

LEVEL_GENERATOR = Path(__file__).with_name("level_generator.jac")
_DEFAULT_ENV = {"LITELLM_LOCAL_MODEL_COST_MAP": "True", "PYTHONUNBUFFERED": "1"}


def jac_executable() -> Path:
    """The `jac` console script of the running interpreter's environment."""
    candidate = Path(sys.executable).with_name("jac")
    if candidate.exists():
        return candidate
    found = shutil.which("jac")
    if found is None:
        raise FileNotFoundError(f"no `jac` next to {sys.executable} or on PATH; install jaclang")
    return Path(found)


def run_level_generator(
    levels: int,
    env: dict[str, str],
    timeout: float,
    *,
    workdir: str | Path | None = None,
) -> subprocess.CompletedProcess[str]:
    """Play `levels` levels; `env` is layered over the current environment.

    `env` usually carries OPENAI_BASE_URL/OPENAI_API_KEY (litellm transport) or
    UNDERSTUDY_RPG_HTTP_CLIENT=1 + UNDERSTUDY_RPG_BASE_URL. Runs in `workdir` when given
    (kept afterwards), else in a temporary directory removed on return. Output is captured
    as text; raises `subprocess.TimeoutExpired` past `timeout` seconds.
    """
    if levels < 1:
        raise ValueError("levels must be at least 1")
    full_env = {**os.environ, **_DEFAULT_ENV, **env, "UNDERSTUDY_RPG_LEVELS": str(levels)}
    with tempfile.TemporaryDirectory(prefix="understudy-rpg-") as scratch:
        where = Path(workdir) if workdir is not None else Path(scratch)
        where.mkdir(parents=True, exist_ok=True)
        program = where / LEVEL_GENERATOR.name
        shutil.copyfile(LEVEL_GENERATOR, program)
        return subprocess.run(
            [str(jac_executable()), "run", str(program)],
            cwd=where,
            env=full_env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
