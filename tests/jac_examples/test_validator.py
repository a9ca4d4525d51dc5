"""The level validator: one good map, one bad map per check, garbage and partial input."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from understudy.jac_examples.rpg.validator import LEVEL_CHECKS, MAP_CHECKS, validate_level, validate_map


def pos(x: int, y: int) -> dict:
    return {"x": x, "y": y}


def wall(x0: int, y0: int, x1: int, y1: int) -> dict:
    return {"start_pos": pos(x0, y0), "end_pos": pos(x1, y1)}


def test_good_map_passes_every_check(good_map):
    report = validate_map(good_map, expected_width=6, expected_height=5)
    assert report.passed, report.to_dict()
    assert [c.name for c in report.checks] == list(MAP_CHECKS)
    assert all(c.passed and c.detail for c in report.checks)


def test_report_to_dict_shape(good_map):
    out = report = validate_map(good_map).to_dict()
    assert set(out) == {"passed", "checks"} and out["passed"] is True
    assert all(set(c) == {"name", "passed", "detail"} for c in report["checks"])
    json.dumps(out)  # serialisable as-is


@pytest.mark.parametrize("as_input", [lambda m: m, json.dumps, lambda m: json.dumps(m).encode()])
def test_accepts_dict_str_and_bytes(good_map, as_input):
    assert validate_map(as_input(good_map)).passed


def test_accepts_duck_typed_objects(good_map):
    def ns(value):
        if isinstance(value, dict):
            return SimpleNamespace(**{k: ns(v) for k, v in value.items()})
        if isinstance(value, list):
            return [ns(v) for v in value]
        return value

    assert validate_map(ns(good_map)).passed


def _break(good_map, mutate):
    mutate(good_map)
    return good_map


# (check that must fail, mutation of the good map, other validate_map kwargs)
BAD_MAPS = {
    "parse: missing walls": ("parse", lambda m: m.pop("walls"), {}),
    "parse: enemy not a position": ("parse", lambda m: m["enemies"].__setitem__(0, [5, 0]), {}),
    "dimensions: not as requested": ("dimensions", lambda m: None, {"expected_width": 7}),
    "dimensions: zero height": ("dimensions", lambda m: m["level"].__setitem__("height", 0), {}),
    "player_spawn: missing": ("player_spawn", lambda m: m.pop("player_pos"), {}),
    "player_spawn: out of bounds": ("player_spawn", lambda m: m.__setitem__("player_pos", pos(6, 0)), {}),
    "player_spawn: inside a wall": ("player_spawn", lambda m: m.__setitem__("player_pos", pos(2, 1)), {}),
    "enemy_count: fewer than num_enemies": ("enemy_count", lambda m: m["level"].__setitem__("num_enemies", 3), {}),
    "enemy_placement: inside a wall": ("enemy_placement", lambda m: m["enemies"].__setitem__(0, pos(2, 2)), {}),
    "enemy_placement: out of bounds": ("enemy_placement", lambda m: m["enemies"].__setitem__(0, pos(9, 9)), {}),
    "wall_count: more than walls": ("wall_count", lambda m: m["level"].__setitem__("num_wall", 3), {}),
    "wall_geometry: diagonal": ("wall_geometry", lambda m: m["walls"].__setitem__(1, wall(3, 1, 4, 2)), {}),
    "wall_geometry: leaves the grid": ("wall_geometry", lambda m: m["walls"].__setitem__(1, wall(4, 3, 6, 3)), {}),
    "obstacle_placement: out of bounds": ("obstacle_placement", lambda m: m["small_obstacles"].append(pos(-1, 2)), {}),
    "no_overlap: two enemies on one cell": ("no_overlap", lambda m: m["enemies"].__setitem__(1, pos(5, 0)), {}),
    "no_overlap: enemy on the player": ("no_overlap", lambda m: m["enemies"].__setitem__(1, pos(0, 0)), {}),
    "no_overlap: player on an obstacle": ("no_overlap", lambda m: m["small_obstacles"].append(pos(0, 0)), {}),
    # A wall across x=4..5 at y=1 plus one at (4,0) seals the enemy at (5,0) off.
    "reachability: enemy sealed off": (
        "reachability",
        lambda m: (m["walls"].extend([wall(4, 1, 5, 1), wall(4, 0, 4, 0)]), m["level"].__setitem__("num_wall", 4)),
        {},
    ),
    # Obstacles around the empty cell (3,0): open but unreachable.
    "reachability: open pocket": (
        "reachability",
        lambda m: m["small_obstacles"].extend([pos(4, 0), pos(3, 1)]),
        {},
    ),
}


@pytest.mark.parametrize("case", list(BAD_MAPS))
def test_bad_map_fails_its_check(good_map, case):
    check_name, mutate, kwargs = BAD_MAPS[case]
    report = validate_map(_break(good_map, mutate), **kwargs)
    assert not report.passed
    check = report.check(check_name)
    assert not check.passed and check.detail, report.to_dict()
    assert [c.name for c in report.checks] == list(MAP_CHECKS)


def test_checks_are_independent(good_map):
    """A single defect fails only the check about it."""
    good_map["level"]["num_enemies"] = 5
    assert validate_map(good_map).failed == ["enemy_count"]


def test_reachability_detail_names_lost_enemy(good_map):
    mutate = BAD_MAPS["reachability: enemy sealed off"][1]
    detail = validate_map(_break(good_map, mutate)).check("reachability").detail
    assert "(5, 0)" in detail and "enemies unreachable" in detail


@pytest.mark.parametrize(
    "garbage",
    ["", "not json at all", "{", '{"level": {"width": 6,', b"\xff\xfe\x00", "[1, 2, 3]", "42", "null", None, 3.5],
)
def test_garbage_gives_failing_report_not_exception(garbage):
    report = validate_map(garbage)
    assert not report.passed
    assert [c.name for c in report.checks] == list(MAP_CHECKS)
    assert not report.check("parse").passed and report.check("parse").detail
    assert all(not c.passed for c in report.checks)


def test_truncated_json_says_not_valid_json(good_map):
    text = json.dumps(good_map)
    detail = validate_map(text[: len(text) // 2]).check("parse").detail
    assert "not valid JSON" in detail


def test_partial_map_still_checks_what_it_can(good_map):
    del good_map["player_pos"]
    report = validate_map(good_map)
    assert "player_pos is missing" in report.check("parse").detail
    assert report.check("enemy_count").passed and report.check("wall_geometry").passed
    assert report.check("reachability").detail.startswith("not checked")


def test_wrong_types_are_reported(good_map):
    good_map["level"]["width"] = "6"
    good_map["walls"] = "many"
    report = validate_map(good_map)
    assert "level.width is missing or not an integer" in report.check("parse").detail
    assert "walls is missing or not a list" in report.check("parse").detail
    assert not report.check("dimensions").passed


def test_huge_grid_is_refused_without_bfs(good_map):
    good_map["level"]["width"] = 10**9
    report = validate_map(good_map)
    assert not report.check("dimensions").passed
    assert report.check("reachability").detail.startswith("not checked")


# --------------------------------------------------------------------------- Level


def test_good_level(good_map):
    report = validate_level(good_map["level"], expected_width=6, expected_height=5)
    assert report.passed, report.to_dict()
    assert [c.name for c in report.checks] == list(LEVEL_CHECKS)


@pytest.mark.parametrize(
    ("field", "value", "check"),
    [
        ("num_enemies", -1, "counts"),
        ("num_wall", -3, "counts"),
        ("num_enemies", 40, "counts"),  # 40 enemies + player do not fit in 6x5
        ("difficulty", 0, "difficulty"),
        ("difficulty", 11, "difficulty"),
        ("width", 0, "dimensions"),
        ("name", 7, "parse"),
        ("difficulty", "hard", "parse"),
    ],
)
def test_bad_level(good_map, field, value, check):
    level = good_map["level"]
    level[field] = value
    report = validate_level(level)
    assert not report.passed and not report.check(check).passed


def test_level_expected_size_and_difficulty(good_map):
    report = validate_level(good_map["level"], expected_width=8, expected_difficulty=3)
    assert report.failed == ["dimensions", "difficulty"]


@pytest.mark.parametrize("garbage", ["", '{"name": "x", "diff', b"\x80", "[]"])
def test_level_garbage(garbage):
    report = validate_level(garbage)
    assert not report.passed and [c.name for c in report.checks] == list(LEVEL_CHECKS)


# --- checked against the request ------------------------------------------------------------


def test_a_map_must_be_for_the_level_it_was_asked_for():
    game_map = {
        "level": {
            "name": "L",
            "difficulty": 1,
            "width": 6,
            "height": 5,
            "num_wall": 1,
            "num_enemies": 1,
            "time_countdown": 100,
            "n_retries_allowed": 3,
        },
        "walls": [{"start_pos": {"x": 2, "y": 0}, "end_pos": {"x": 2, "y": 1}}],
        "small_obstacles": [],
        "enemies": [{"x": 5, "y": 4}],
        "player_pos": {"x": 0, "y": 0},
    }
    assert validate_map(game_map, expected_level=game_map["level"]).passed
    bigger = {**game_map["level"], "width": 8}
    report = validate_map(game_map, expected_level=bigger)
    assert not report.passed and report.failed == ["level_echo", "dimensions"]
    assert "width is 6, 8 was requested" in report.check("dimensions").detail
    more_enemies = {**game_map["level"], "num_enemies": 2}
    assert validate_map(game_map, expected_level=more_enemies).failed == ["level_echo"]
    assert validate_map(game_map).check("level_echo").passed  # nothing asked, nothing to compare


def test_a_new_level_is_not_a_copy_of_one_it_was_given():
    level = {"name": "Level 2: Keep", "difficulty": 2, "width": 6, "height": 5, "num_wall": 1, "num_enemies": 1}
    assert validate_level(level, previous_levels=[{**level, "name": "Level 1: Cellar"}]).passed
    copy = validate_level(level, previous_levels=[{**level, "name": "level 2: keep "}])
    assert not copy.passed and copy.failed == ["novelty"]
    assert validate_level({**level, "name": "  "}).failed == ["novelty"]
