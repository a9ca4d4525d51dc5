"""A real byLLM program (jaclang + byllm on Python 3.12) runs through the proxy on both transports."""

from __future__ import annotations

import json
import os
import subprocess
from collections import Counter
from pathlib import Path

import pytest

from tests.conftest import VENV_BIN
from tests.proxy.test_proxy_server import stored_calls

PROGRAM = Path(__file__).parent / "jac" / "three_sites.jac"


def run_jac(program: Path, env_overrides: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True", **env_overrides}
    return subprocess.run(
        [str(VENV_BIN / "jac"), "run", str(program)], capture_output=True, text=True, timeout=300, env=env, cwd=cwd
    )


@pytest.mark.parametrize("transport", ["litellm", "http_client"])
def test_jac_program_sites_are_recorded(proxy, fake_upstream, tmp_path, transport):
    if transport == "litellm":
        env = {"OPENAI_BASE_URL": proxy.url + "/v1", "OPENAI_API_KEY": "sk-e2e-key"}
    else:
        env = {"E2E_HTTP_CLIENT": "1", "E2E_BASE_URL": proxy.url + "/v1/chat/completions"}
    result = run_jac(PROGRAM, env, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("LEVEL") == 2 and "RATE 3" in result.stdout and "TAGLINE" in result.stdout
    assert len(fake_upstream.received) == 8  # 4 sites x 2 rounds, nothing lost, nothing extra

    sites = {row["id"]: row for row in json.loads(proxy.cli("sites", "--json").stdout)}
    proxy.stop()
    calls = stored_calls(proxy.data_dir)
    assert len(calls) == 8 and all(call["status"] == 200 for call in calls)
    per_site = Counter(call["site_id"] for call in calls)
    assert sorted(per_site.values()) == [2, 2, 2, 2] and set(per_site) == set(sites)
    names = {row["name"] for row in sites.values()}
    if transport == "http_client":  # byLLM 0.6 names the caller in metadata on this transport
        assert names == {"next_level", "rate", "describe", "tagline"}
    else:
        assert "describe" in names and "Level:create-the-next-level-a-bit-harder-than" in names
    typed = [row for row in sites.values() if row["returns"] in ("Level", "int")]
    assert len(typed) == 2 and all(row["valid_rate"] == 1.0 for row in typed)
    assert all("sk-e2e-key" not in call["request"] for call in calls)
