"""Corpus generation end to end (Jac generator -> proxy -> offline teacher) and per-site export."""

from __future__ import annotations

import json

import duckdb

from tests.conftest import run_cli
from understudy.cli.corpus import generate_corpus
from understudy.jac_examples.rpg.validator import validate_map
from understudy.settings import load_settings

RPG_RETURNS = {"Level", "Map", "str", "list", "int"}


def test_corpus_fills_every_site_and_exports_filter_it(isolated_data_dir, tmp_path):
    settings = load_settings(data_dir=isolated_data_dir)
    result = generate_corpus(settings, runs=2, levels=3, parallel=1, seed=3, flaw_share=0.5, progress=False)
    assert result.succeeded == 2, result.failures
    assert not (isolated_data_dir / "proxy.json").exists()  # the proxy it started has stopped

    sites = json.loads(run_cli("sites", "--json", "--data-dir", str(isolated_data_dir)).stdout)
    assert {site["returns"] for site in sites} == RPG_RETURNS
    assert all(site["calls"] >= 6 for site in sites)  # 2 runs x 3 levels, plus retries
    map_site = next(site for site in sites if site["returns"] == "Map")

    out = tmp_path / "export"
    filtered = json.loads(
        run_cli(
            "export",
            map_site["id"],
            "--jsonl",
            str(out / "f.jsonl"),
            "--parquet",
            str(out / "f.parquet"),
            "--data-dir",
            str(isolated_data_dir),
        ).stdout
    )
    unfiltered = json.loads(
        run_cli(
            "export",
            map_site["id"],
            "--unfiltered",
            "--jsonl",
            str(out / "u.jsonl"),
            "--data-dir",
            str(isolated_data_dir),
        ).stdout
    )
    assert unfiltered["kept"] > filtered["kept"] > 0
    assert filtered["dropped_validator"] + filtered["dropped_invalid"] >= 1

    lines = [json.loads(line) for line in (out / "f.jsonl").read_text().splitlines()]
    assert len(lines) == filtered["kept"]
    for record in lines:
        assert record["messages"][-1]["role"] == "assistant"
        assert record["messages"][0]["role"] == "system"
        assert validate_map(record["messages"][-1]["content"]).passed
    rows = duckdb.sql(f"SELECT split, completion, validator_passed FROM '{out / 'f.parquet'}'").fetchall()
    assert len(rows) == filtered["kept"] and {split for split, _, _ in rows} <= {"train", "eval"}
    assert all(passed for _, _, passed in rows)
    assert len((out / "u.jsonl").read_text().splitlines()) == unfiltered["kept"]

    missing = run_cli(
        "export", "nope", "--jsonl", str(out / "x.jsonl"), "--data-dir", str(isolated_data_dir), check=False
    )
    assert missing.returncode == 1 and missing.stderr.startswith("error: no site matches")
