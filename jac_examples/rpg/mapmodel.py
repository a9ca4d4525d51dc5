"""Plain-data view of RPG maps, shared by the validator, the renderer and the teacher.

A Map reaches Python in three shapes: a dict decoded from the model's JSON, a JSON string
or bytes, or a live Jac object (`Map`, `Level`, `Wall`, `Position` instances). Everything
here works on plain dicts, so `to_plain` turns live objects into the dict shape the model
emits (duck-typed: public attributes become keys).

Coordinate conventions (the same ones the Jac program's `sem` texts state):
- cells are `(x, y)`, 0-based, `x` in `[0, width)` (column), `y` in `[0, height)` (row);
- a wall covers every cell from `start_pos` to `end_pos` inclusive and is either horizontal
  (same `y`) or vertical (same `x`); a single-cell wall has `start_pos == end_pos`;
- each small obstacle blocks exactly one cell;
- movement is 4-neighbour (up, down, left, right); walls and obstacles block, enemies do not
  (the player must be able to walk up to them).

`layout_from` is deliberately lenient (it skips entries it cannot read) because the renderer
must draw whatever it is given; strict checking with messages lives in `validator`.
"""

from __future__ import annotations

import dataclasses
import json
from collections import deque
from collections.abc import Iterable
from enum import Enum
from typing import Any

Cell = tuple[int, int]

# Grids beyond this size are not something a level generator should emit; refusing them keeps
# BFS and rendering bounded when a model answers with absurd dimensions.
MAX_SIDE = 512


def to_plain(obj: Any) -> Any:
    """Convert a Jac/Python object graph into JSON-like dicts, lists and scalars."""
    if obj is None or isinstance(obj, (str, int, float, bool)):
        return obj
    if isinstance(obj, Enum):
        return obj.value
    if isinstance(obj, dict):
        return {str(k): to_plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set)):
        return [to_plain(v) for v in obj]
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if hasattr(obj, "__dict__"):
        # Jac `obj` instances keep their fields as public attributes; underscore-prefixed ones
        # are runtime bookkeeping, not part of the model-facing shape.
        return {k: to_plain(v) for k, v in vars(obj).items() if not k.startswith("_")}
    return obj


def load_map_like(data: Any) -> Any:
    """Decode JSON text/bytes, or flatten a live object; raises ValueError on bad JSON."""
    if isinstance(data, (bytes, bytearray)):
        data = bytes(data).decode("utf-8")
    if isinstance(data, str):
        return json.loads(data)
    return to_plain(data)


def as_int(value: Any) -> int | None:
    """The value as an int when it is one (bools are not coordinates), else None."""
    if isinstance(value, bool) or not isinstance(value, int):
        return None
    return value


def as_cell(value: Any) -> Cell | None:
    """An `{x, y}` mapping as a cell, or None when it is not one."""
    if not isinstance(value, dict):
        return None
    x, y = as_int(value.get("x")), as_int(value.get("y"))
    if x is None or y is None:
        return None
    return (x, y)


def wall_cells(start: Cell, end: Cell) -> list[Cell] | None:
    """Cells covered by an axis-aligned wall (inclusive, either direction); None if diagonal."""
    (x0, y0), (x1, y1) = start, end
    if x0 == x1:
        return [(x0, y) for y in range(min(y0, y1), max(y0, y1) + 1)]
    if y0 == y1:
        return [(x, y0) for x in range(min(x0, x1), max(x0, x1) + 1)]
    return None


def in_bounds(cell: Cell, width: int, height: int) -> bool:
    return 0 <= cell[0] < width and 0 <= cell[1] < height


def neighbours(cell: Cell, width: int, height: int) -> Iterable[Cell]:
    x, y = cell
    for nx, ny in ((x + 1, y), (x - 1, y), (x, y + 1), (x, y - 1)):
        if 0 <= nx < width and 0 <= ny < height:
            yield (nx, ny)


def reachable(start: Cell, blocked: set[Cell], width: int, height: int) -> set[Cell]:
    """Cells reachable from `start` by 4-neighbour moves that avoid `blocked` (BFS)."""
    if not in_bounds(start, width, height) or start in blocked:
        return set()
    seen = {start}
    queue = deque([start])
    while queue:
        for nxt in neighbours(queue.popleft(), width, height):
            if nxt not in seen and nxt not in blocked:
                seen.add(nxt)
                queue.append(nxt)
    return seen


@dataclasses.dataclass
class Layout:
    """A map reduced to cells: what rendering, rating and flaw injection need."""

    width: int
    height: int
    walls: set[Cell] = dataclasses.field(default_factory=set)
    obstacles: set[Cell] = dataclasses.field(default_factory=set)
    enemies: list[Cell] = dataclasses.field(default_factory=list)
    player: Cell | None = None

    @property
    def blocked(self) -> set[Cell]:
        return self.walls | self.obstacles

    def open_cells(self) -> set[Cell]:
        blocked = self.blocked
        return {(x, y) for x in range(self.width) for y in range(self.height) if (x, y) not in blocked}


def layout_from(map_like: Any) -> Layout:
    """Best-effort Layout of a Map (dict, JSON or live object); unreadable parts are skipped.

    Raises ValueError only when there is no usable width/height at all.
    """
    data = load_map_like(map_like)
    if not isinstance(data, dict):
        raise ValueError("a map must be a JSON object")
    level = found if isinstance(found := data.get("level"), dict) else {}
    width, height = as_int(level.get("width")), as_int(level.get("height"))
    if width is None or height is None or width <= 0 or height <= 0:
        raise ValueError("map.level needs positive integer width and height")
    if width > MAX_SIDE or height > MAX_SIDE:
        raise ValueError(f"map is larger than {MAX_SIDE}x{MAX_SIDE}")
    layout = Layout(width=width, height=height)
    for wall in _list(data.get("walls")):
        if not isinstance(wall, dict):
            continue
        start, end = as_cell(wall.get("start_pos")), as_cell(wall.get("end_pos"))
        cells = wall_cells(start, end) if start and end else None
        layout.walls.update(c for c in cells or () if in_bounds(c, width, height))
    layout.obstacles = {
        c for c in map(as_cell, _list(data.get("small_obstacles"))) if c and in_bounds(c, width, height)
    }
    layout.enemies = [c for c in map(as_cell, _list(data.get("enemies"))) if c and in_bounds(c, width, height)]
    player = as_cell(data.get("player_pos"))
    layout.player = player if player and in_bounds(player, width, height) else None
    return layout


def _list(value: Any) -> list:
    return value if isinstance(value, list) else []
