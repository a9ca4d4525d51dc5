"""`levels validate` / `levels render`: output, exit codes 0/1/2, stdin."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from understudy.jac_examples.cli import levels_app

runner = CliRunner()


def _write(tmp_path, data) -> str:
    path = tmp_path / "map.json"
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return str(path)


def test_validate_pass(tmp_path, good_map):
    result = runner.invoke(levels_app, ["validate", _write(tmp_path, good_map)])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["passed"] is True
    assert {c["name"] for c in report["checks"]} >= {"parse", "reachability", "enemy_count"}


def test_validate_fail(tmp_path, good_map):
    good_map["level"]["num_wall"] = 9
    result = runner.invoke(levels_app, ["validate", _write(tmp_path, good_map)])
    assert result.exit_code == 1
    report = json.loads(result.stdout)
    assert report["passed"] is False
    assert [c["name"] for c in report["checks"] if not c["passed"]] == ["wall_count"]


def test_validate_expected_size(tmp_path, good_map):
    result = runner.invoke(levels_app, ["validate", "--width", "6", "--height", "9", _write(tmp_path, good_map)])
    assert result.exit_code == 1
    assert "height is 5, 9 was requested" in result.stdout


def test_validate_stdin(good_map):
    result = runner.invoke(levels_app, ["validate", "-"], input=json.dumps(good_map))
    assert result.exit_code == 0
    assert json.loads(result.stdout)["passed"] is True


def test_validate_missing_file(tmp_path):
    result = runner.invoke(levels_app, ["validate", str(tmp_path / "nope.json")])
    assert result.exit_code == 2
    assert result.stdout == ""
    assert "cannot read" in result.stderr and result.stderr.count("\n") == 1


def test_validate_not_json(tmp_path, good_map):
    result = runner.invoke(levels_app, ["validate", _write(tmp_path, json.dumps(good_map)[:40])])
    assert result.exit_code == 2
    assert "is not JSON" in result.stderr


def test_validate_json_but_not_a_map(tmp_path):
    result = runner.invoke(levels_app, ["validate", _write(tmp_path, "[1, 2]")])
    assert result.exit_code == 1
    assert json.loads(result.stdout)["passed"] is False


def test_validate_level_flag(tmp_path, good_map):
    result = runner.invoke(levels_app, ["validate", "--level", _write(tmp_path, good_map["level"])])
    assert result.exit_code == 0
    assert [c["name"] for c in json.loads(result.stdout)["checks"]] == [
        "parse",
        "dimensions",
        "counts",
        "difficulty",
        "novelty",
    ]


def test_render_ascii_and_png(tmp_path, good_map):
    png = tmp_path / "out.png"
    result = runner.invoke(levels_app, ["render", _write(tmp_path, good_map), "--png", str(png), "--cell", "4"])
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[0] == "P.#..E"
    assert png.read_bytes().startswith(b"\x89PNG")


def test_render_undrawable(tmp_path):
    result = runner.invoke(levels_app, ["render", _write(tmp_path, {"walls": []})])
    assert result.exit_code == 2
    assert "cannot draw" in result.stderr
