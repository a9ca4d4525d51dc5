"""Every benchmark at its `--smoke` size, so none can rot: each runs end to end and prints its figures.

These check that the harnesses work, not how fast anything is (benchmarks are never timed tests).
The corpus, training and local-serving benchmarks share one data directory, in the order a user
runs them: `rpg_corpus.py` fills it, `train_gemma.py` trains the tiny model on it, and
`local_serving.py` serves that version.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import REPO_ROOT

BENCHMARKS = REPO_ROOT / "benchmarks"


def _bench(name: str, *args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    out = subprocess.run([sys.executable, str(BENCHMARKS / name), "--smoke", *args], capture_output=True, text=True,
                         timeout=timeout, cwd=REPO_ROOT)
    assert out.returncode == 0, f"{name} --smoke exited {out.returncode}:\n{out.stdout[-2000:]}\n{out.stderr[-3000:]}"
    return out


def _last_json(out: subprocess.CompletedProcess):
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_proxy_overhead_smoke():
    out = _bench("proxy_overhead.py")
    figures = _last_json(out)
    assert [r["concurrency"] for r in figures["results"]] == [1, 4]
    assert figures["recorded"] == figures["sent"] > 0  # recording on, nothing lost
    assert all(r["proxy"]["rps"] > 0 and r["proxy"]["p50"] > 0 for r in figures["results"])
    assert "added p50" in out.stdout


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("bench") / "rpg-smoke"
    out = _bench("rpg_corpus.py", "--data-dir", str(data_dir))
    figures = _last_json(out)
    assert figures["corpus"]["succeeded"] == figures["corpus"]["runs"] == 2
    assert {s["returns"] for s in figures["sites"]} >= {"Level", "Map"}
    return data_dir


@pytest.fixture(scope="module")
def trained(corpus_dir):
    figures = _last_json(_bench("train_gemma.py", "--data-dir", str(corpus_dir), "--json"))
    return figures


def test_train_smoke(trained):
    assert trained["returns"] == "Level" and trained["steps"] >= 1 and isinstance(trained["verified"], bool)
    assert trained["seconds_total"] > 0 and trained["tokens_per_example"] > 0
    assert trained["heldout"]["n"] == trained["base_heldout"]["n"] >= 1


def test_local_serving_smoke(corpus_dir, trained):
    out = _bench("local_serving.py", "--data-dir", str(corpus_dir), "--result", trained["result"], "--json")
    [figures] = _last_json(out)
    assert figures["requests"] == 2 and figures["raw_p50_s"] > 0 and figures["proxy_p50_s"] > 0
    assert figures["shadow_calls"] == 4 and 0.0 <= figures["shadow_sampled"] <= 1.0


def test_learning_curve_smoke(tmp_path):
    out = _bench("learning_curve.py", "--data-dir", str(tmp_path / "curve"), "--json", timeout=1500)
    result = _last_json(out)
    assert result["curve"] and "Level" in json.dumps(result["summary"])


def test_durability_smoke(tmp_path):
    """Two SIGKILLs and a clean stop under 200 connections: the store reopens every time, what is
    missing after a kill was answered within the window, nothing is missing after SIGTERM."""
    out = _bench("durability.py", "--json", "--data-dir", str(tmp_path / "data"))
    figures = _last_json(out)
    assert figures["ok"] and [c["signal"] for c in figures["cycles"]] == ["SIGKILL", "SIGKILL", "SIGTERM"]
    assert all(c["acknowledged"] > 0 for c in figures["cycles"]) and figures["cycles"][-1]["missing"] == 0
    assert all(c["oldest_missing_s"] <= figures["window_s"] for c in figures["cycles"])


def test_load_smoke(tmp_path):
    out = _bench("load.py", "--json", "--data-dir", str(tmp_path / "data"))
    figures = _last_json(out)
    assert figures["ok"] and figures["errors"] == {} and figures["lost"] == 0 and figures["answered"] > 0
    assert figures["rss_mb"]["max"] > 0


def test_scale_out_smoke():
    figures = _last_json(_bench("scale_out.py", "--json"))
    assert [(r["store"], r["workers"]) for r in figures["results"]] == [
        ("duckdb", 1), ("postgresql", 1), ("postgresql", 2), ("postgresql", 4)]
    assert figures["ok"] and all(r["recorded"] == r["sent"] > 0 and r["rps"] > 0 for r in figures["results"])
