"""Installs like a library and keeps its import graph: checked on a real install of the package.

- nothing but `understudy` lands at the top of site-packages (the components install as
  understudy.proxy, understudy.routing, ... from their own folders);
- the import-linter contracts in pyproject.toml hold (and a planted violation breaks them);
- the kernel loads subsystems only where a command runs: importing the CLI or the kernel's
  core modules loads no proxy, routing or training module.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT, VENV_BIN

SUBSYSTEMS = ("proxy", "routing", "training", "inference", "reporting", "jac_examples")
KERNEL_CORE = (
    "settings",
    "store",
    "validators",
    "byllm.prompt",
    "layered_settings",
    "pricing",
    "migrations",
    "processes",
    "operations.client",  # the admin API client (the training worker uses it too)
    "cli.store_access",
    "operations",  # the operations table: each operation loads its subsystem when it runs
    "operations.training",  # what the training worker's client imports
    "cli.errors",
    "client_keys",
)


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    target = tmp_path_factory.mktemp("site-packages")
    build = tmp_path_factory.mktemp("build")
    # build from a copy: setuptools writes build/ and *.egg-info next to the sources
    source = build / "src"
    shutil.copytree(
        REPO_ROOT,
        source,
        ignore=shutil.ignore_patterns(".venv", ".git", "build", "*.egg-info", "__pycache__", ".jac", "understudy-data"),
    )
    out = subprocess.run(
        [
            str(VENV_BIN / "pip"),
            "install",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--target",
            str(target),
            str(source),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return target


def _lint(site_packages: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(site_packages)}
    return subprocess.run(
        [str(VENV_BIN / "lint-imports"), str(REPO_ROOT / "pyproject.toml"), "--no-cache"],
        cwd=site_packages,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_only_understudy_at_the_top_of_site_packages(installed):
    top = {p.name for p in installed.iterdir() if p.name != "bin"}
    assert {name for name in top if not name.endswith(".dist-info")} == {"understudy"}
    for name in SUBSYSTEMS:
        assert (installed / "understudy" / name / "__init__.py").exists()
    assert (installed / "understudy" / "jac_examples" / "rpg" / "level_generator.jac").exists()


def test_import_contracts_hold(installed):
    out = _lint(installed)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
    assert out.stdout.count("KEPT") == 7


def test_a_planted_violation_breaks_a_contract(installed, tmp_path):
    copy = tmp_path / "site-packages"
    shutil.copytree(installed / "understudy", copy / "understudy")
    quiet = copy / "understudy" / "training" / "quiet.py"
    quiet.write_text(quiet.read_text() + "\n\ndef _planted():\n    from understudy.proxy import callsite  # noqa\n")
    out = _lint(copy)
    assert out.returncode != 0 and "BROKEN" in out.stdout
    assert "understudy.training.quiet -> understudy.proxy.callsite" in out.stdout


def test_the_showcase_contract_lists_every_kernel_module():
    import tomllib

    config = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
    [showcase] = [
        c for c in config["tool"]["importlinter"]["contracts"] if c["source_modules"] == ["understudy.jac_examples"]
    ]
    kernel = {f"understudy.{p.stem}" for p in (REPO_ROOT / "understudy").glob("*.py") if p.stem != "__init__"}
    assert kernel <= set(showcase["forbidden_modules"])


def _subsystems_loaded_by(statement: str) -> list[str]:
    code = (
        f"import sys; {statement}; "
        "print(' '.join(sorted(n for n in sys.modules if n.split('.')[:2][-1] in "
        f"{SUBSYSTEMS!r} and n.startswith('understudy.'))))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO_ROOT)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout.split()


def test_the_kernel_loads_subsystems_only_where_a_command_runs():
    # the CLI mounts the showcase's command declarations (their work is imported inside them)
    assert set(_subsystems_loaded_by("import understudy.cli")) <= {
        "understudy.jac_examples",
        "understudy.jac_examples.cli",
    }
    for module in KERNEL_CORE:
        assert _subsystems_loaded_by(f"import understudy.{module}") == [], module
    # control: a command's own module does load its subsystem
    assert "understudy.proxy.callsite" in _subsystems_loaded_by("import understudy.operations.pair_scoring")
