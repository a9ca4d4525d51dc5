"""Loading the byLLM wire captures (tests/fixtures/byllm/captures)."""

from __future__ import annotations

import json
from pathlib import Path

from tests.conftest import FIXTURES_DIR

# Functions with identical docstring, parameters and schema send byte-identical requests
# (fixtures README): one task, one site. These are the documented twins.
TWINS = {frozenset({"describe_a", "describe_b"})}


def capture_files() -> list[Path]:
    return sorted(p for p in (FIXTURES_DIR / "captures").glob("*.jsonl") if p.stat().st_size > 0)


def load_capture(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
