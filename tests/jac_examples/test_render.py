"""ASCII and PNG renderings of maps."""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest
from PIL import Image

from understudy.jac_examples.rpg.render import COLOURS, ENEMY, OBSTACLE, OPEN, PLAYER, WALL, ascii_grid, render_png

GOOD_GRID = "\n".join(["P.#..E", "..#...", "..#...", "o...##", ".E...."])


def test_ascii_grid_of_good_map(good_map):
    assert ascii_grid(good_map) == GOOD_GRID


def test_ascii_grid_from_json_text_and_bytes(good_map):
    assert ascii_grid(json.dumps(good_map)) == GOOD_GRID
    assert ascii_grid(json.dumps(good_map).encode()) == GOOD_GRID


@dataclass
class Position:
    x: int
    y: int


@dataclass
class Wall:
    start_pos: Position
    end_pos: Position


class Level:  # plain attributes, like a Jac `obj`
    def __init__(self, width: int, height: int) -> None:
        self.name, self.width, self.height, self.num_wall, self.num_enemies = "x", width, height, 1, 1


class Map:
    def __init__(self) -> None:
        self.level = Level(4, 3)
        self.walls = [Wall(Position(1, 0), Position(1, 2))]
        self.small_obstacles = [Position(3, 2)]
        self.enemies = [Position(3, 0)]
        self.player_pos = Position(0, 1)


def test_ascii_grid_of_duck_typed_objects():
    assert ascii_grid(Map()) == "\n".join([".#.E", "P#..", ".#.o"])


def test_precedence_and_lenience(good_map):
    # Player on an enemy on an obstacle inside a wall: the player is drawn.
    good_map["enemies"].append({"x": 2, "y": 1})
    good_map["small_obstacles"].append({"x": 2, "y": 1})
    good_map["player_pos"] = {"x": 2, "y": 1}
    # Unreadable and out-of-grid entries are skipped, not fatal.
    good_map["enemies"].append({"x": 99, "y": 0})
    good_map["walls"].append({"start_pos": {"x": 0}})
    rows = ascii_grid(good_map).split("\n")
    assert rows[1][2] == PLAYER and rows[0][0] == OPEN
    assert len(rows) == 5 and all(len(r) == 6 for r in rows)


def test_legend_symbols():
    assert (WALL, OBSTACLE, ENEMY, PLAYER, OPEN) == ("#", "o", "E", "P", ".")


def test_no_dimensions_is_an_error():
    with pytest.raises(ValueError):
        ascii_grid({"walls": []})


def test_render_png(good_map, tmp_path):
    out = render_png(good_map, tmp_path / "map.png", cell=10)
    image = Image.open(out).convert("RGB")
    assert image.size == (60, 50)
    # Cell centres: wall at (2,0), obstacle at (0,3), enemy at (5,0), player at (0,0).
    assert image.getpixel((25, 5)) == COLOURS[WALL]
    assert image.getpixel((5, 35)) == COLOURS[OBSTACLE]
    assert image.getpixel((55, 5)) == COLOURS[ENEMY]
    assert image.getpixel((5, 5)) == COLOURS[PLAYER]
    assert image.getpixel((35, 25)) == COLOURS[OPEN]


def test_render_png_rejects_tiny_cells(good_map, tmp_path):
    with pytest.raises(ValueError):
        render_png(good_map, tmp_path / "x.png", cell=1)
