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
    out = subprocess.run(
        [sys.executable, str(BENCHMARKS / name), "--smoke", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO_ROOT,
    )
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
    out = _bench(
        "local_serving.py", "--data-dir", str(corpus_dir), "--result", trained["result"], "--step-by-step", "--json"
    )
    [figures] = _last_json(out)
    assert figures["requests"] == 2 and figures["raw_p50_s"] > 0 and figures["proxy_p50_s"] > 0
    assert figures["step_by_step"]["raw_p50_s"] > 0 and figures["step_by_step"]["tokens_per_s"] > 0
    assert figures["shadow_calls"] == 4 and 0.0 <= figures["shadow_sampled"] <= 1.0


def test_constraint_engines_smoke():
    figures = _last_json(_bench("constraint_engines.py", "--json"))
    assert figures["mask_us"]["llguidance median"] > 0 and figures["mask_us"]["gbnf median"] > 0
    assert set(figures["decode"]) == {"unconstrained", "llguidance", "step by step"}
    assert figures["decode"]["step by step"]["forced"] == 0


def test_partial_promotion_sim_smoke():
    figures = _last_json(_bench("partial_promotion_sim.py", "--json"))
    nulls = [r for r in figures["scenarios"].values() if r["null"]]
    assert len(nulls) == 3 and all(0 <= r["false_partial_rate"] <= 1 for r in nulls)
    assert figures["policy"]["calibration_samples"] == 40


def test_agreement_test_sim_smoke():
    figures = _last_json(_bench("agreement_test_sim.py", "--json"))
    nulls = [r for r in figures["results"].values() if r["null"]]
    assert len(nulls) == 4 and all(0 <= r["false_promotion_rate"] <= 1 for r in nulls)
    assert {r["rule"] for r in figures["results"].values() if not r["null"]} == {"unpaired", "product"}


def test_gpu_training_layout_and_adapter_eval_smoke(corpus_dir, tiny_llama, tmp_path):
    """`train_gpu.py` prepare and run (here on the CPU, the tiny model), then `eval_adapter.py` on its adapter."""
    hf_dir, gguf = (str(p) for p in tiny_llama)

    def script(name: str, *args: str) -> subprocess.CompletedProcess:
        out = subprocess.run(
            [sys.executable, str(BENCHMARKS / name), *args], capture_output=True, text=True, timeout=900, cwd=REPO_ROOT
        )
        assert out.returncode == 0, f"{name} exited {out.returncode}:\n{out.stdout[-2000:]}\n{out.stderr[-3000:]}"
        return out

    data = tmp_path / "data.json"
    script("train_gpu.py", "prepare", "--smoke", "--data-dir", str(corpus_dir), "--out", str(data), "--held-out", "2")
    config = {"max_steps": 2, "batch_size": 2, "precision": "float32", "verify_examples": 0}
    script(
        "train_gpu.py",
        "run",
        "--device",
        "cpu",
        "--data",
        str(data),
        "--base",
        hf_dir,
        "--base-gguf",
        gguf,
        "--out",
        str(tmp_path / "out"),
        "--sites",
        "Level",
        "--config",
        json.dumps(config),
        "--diagnose",
    )
    report = json.loads((tmp_path / "out" / "gpu.json").read_text())
    assert "error" not in report["Level"] and report["Level"]["steps"] == 2
    assert report["diagnosis"]["right_padded"]["loss_finite"]
    adapter = tmp_path / "out" / "Level" / "adapter.gguf"
    figures = _last_json(
        script(
            "eval_adapter.py",
            "--smoke",
            "--data",
            str(data),
            "--site",
            "Level",
            "--adapter",
            str(adapter),
            "--base-gguf",
            gguf,
            "--json",
        )
    )
    assert (figures["new"]["n"], figures["old"]["n"], figures["base"]["n"]) == (2, 1, 1)
    assert 0.0 <= figures["new"]["validator_pass"] <= 1.0 and figures["new"]["mean_tries"] >= 1


def test_learning_curve_smoke(tmp_path):
    out = _bench("learning_curve.py", "--data-dir", str(tmp_path / "curve"), "--json", timeout=1500)
    result = _last_json(out)
    assert result["curve"] and "Level" in json.dumps(result["summary"])
    # The version came from the product's scheduler and worker, not from a training call of the benchmark.
    assert "scheduler queued: Level" in out.stdout
    versions = result["curve"][-1]["versions"]
    assert versions["v1"]["control"] is None and versions["v1"]["status"] != "failed", versions

    # The curve's store replayed through the policy with recorded and with shared decoys.
    replayed = subprocess.run(
        [sys.executable, str(BENCHMARKS / "pair_decoys.py"), "--data-dir", str(tmp_path / "curve"), "--site", "Level"]
        + ["--version", "1", "--json"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert replayed.returncode == 0, replayed.stderr[-3000:]
    figures = json.loads(replayed.stdout.strip().splitlines()[-1])
    # every sample the curve saw, and any scored after its last look
    assert figures["site"].startswith("Level") and figures["samples"] >= versions["v1"]["shadow_samples"] > 0
    for mode in ("recorded", "shared"):
        assert figures[mode]["pairs"] <= figures["samples"]


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
        ("duckdb", 1),
        ("postgresql", 1),
        ("postgresql", 2),
        ("postgresql", 4),
    ]
    assert figures["ok"] and all(r["recorded"] == r["sent"] > 0 and r["rps"] > 0 for r in figures["results"])
