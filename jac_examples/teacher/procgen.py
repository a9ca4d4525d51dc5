"""Procedural generation of `Level` and `Map` answers: what a good teacher model would say.

Levels follow the request's difficulty, width and height and grow with the level number;
maps honour their level's counts and the conventions in `jac_examples.rpg.mapmodel`.

Map construction places walls, then obstacles, one at a time and keeps a piece only when
every open cell is still reachable from the player (a BFS per placement; cheap at these
sizes), which makes a valid map likely on the first attempt. Each finished map is then run
through the real validator and regenerated on failure, so the teacher never trusts its own
construction; a deterministic lattice layout is the last resort for crowded levels.
All randomness comes from the `random.Random` passed in, so outputs are reproducible.
"""

from __future__ import annotations

import random
import re
from typing import Any

from understudy.jac_examples.rpg.mapmodel import MAX_SIDE, Cell, as_int, reachable, wall_cells
from understudy.jac_examples.rpg.validator import validate_map

_ADJECTIVES = (
    "Sunken",
    "Frozen",
    "Burning",
    "Whispering",
    "Forgotten",
    "Crimson",
    "Hollow",
    "Gilded",
    "Drowned",
    "Shattered",
)
_PLACES = ("Catacombs", "Keep", "Mines", "Sanctum", "Bastion", "Grotto", "Labyrinth", "Citadel", "Marsh", "Observatory")
_LEVEL_NUMBER = re.compile(r"Level\s+(\d+)")
_DEFAULT_SIDE = 20
_MIN_SIDE = 3
_MAP_ATTEMPTS = 30
_PLACEMENT_TRIES = 40


def _clamp(value: int, low: int, high: int) -> int:
    return max(low, min(high, value))


def _side(value: Any, fallback: int) -> int:
    side = as_int(value)
    return _clamp(side, _MIN_SIDE, MAX_SIDE) if side is not None else fallback


# --------------------------------------------------------------------------- levels


def make_level(
    rng: random.Random,
    *,
    difficulty: Any = None,
    width: Any = None,
    height: Any = None,
    last_levels: Any = None,
) -> dict[str, Any]:
    """The next `Level` as a dict with the Jac object's fields."""
    previous = [lv for lv in last_levels if isinstance(lv, dict)] if isinstance(last_levels, list) else []
    last = previous[-1] if previous else {}
    d = as_int(difficulty)
    if d is None:
        d = (as_int(last.get("difficulty")) or 0) + 1
    d = _clamp(d, 1, 10)
    w = _side(width, _side(last.get("width"), _DEFAULT_SIDE))
    h = _side(height, _side(last.get("height"), _DEFAULT_SIDE))

    match = _LEVEL_NUMBER.search(str(last.get("name", "")))
    number = int(match.group(1)) + 1 if match else len(previous) + 1
    used = {str(lv.get("name", "")) for lv in previous}
    name = f"Level {number}: The {rng.choice(_ADJECTIVES)} {rng.choice(_PLACES)}"
    for _ in range(5):  # prefer a theme the recent levels did not use
        if not any(name.split(": ", 1)[1] in u for u in used):
            break
        name = f"Level {number}: The {rng.choice(_ADJECTIVES)} {rng.choice(_PLACES)}"

    area = w * h
    # Density grows with difficulty; caps keep every level comfortably buildable.
    num_wall = _clamp(round(area / 30 * (0.5 + d / 10)) + rng.randint(-1, 1), 1, max(1, area // 14))
    num_enemies = _clamp(round((1 + d / 2) * max(area, 100) / 400) + rng.randint(0, 2), 1, max(1, area // 12))
    return {
        "name": name,
        "difficulty": d,
        "width": w,
        "height": h,
        "num_wall": num_wall,
        "num_enemies": num_enemies,
        "time_countdown": max(30, 300 - 20 * d + rng.choice((-10, 0, 10))),
        "n_retries_allowed": max(1, 4 - d // 3),
    }


# --------------------------------------------------------------------------- maps


def _pos(cell: Cell) -> dict[str, int]:
    return {"x": cell[0], "y": cell[1]}


def _connected(player: Cell, blocked: set[Cell], w: int, h: int) -> bool:
    return len(reachable(player, blocked, w, h)) == w * h - len(blocked)


def _place_walls(
    rng: random.Random, count: int, player: Cell, w: int, h: int, max_len: int
) -> tuple[list, set[Cell]] | None:
    walls: list[tuple[Cell, Cell]] = []
    blocked: set[Cell] = set()
    for _ in range(count):
        for _ in range(_PLACEMENT_TRIES):
            length = rng.randint(1, max_len)
            if rng.random() < 0.5:
                x0, y0 = rng.randrange(0, max(1, w - length + 1)), rng.randrange(h)
                start, end = (x0, y0), (min(w - 1, x0 + length - 1), y0)
            else:
                x0, y0 = rng.randrange(w), rng.randrange(0, max(1, h - length + 1))
                start, end = (x0, y0), (x0, min(h - 1, y0 + length - 1))
            cells = set(wall_cells(start, end) or ())
            if player in cells or cells & blocked:
                continue
            if _connected(player, blocked | cells, w, h):
                walls.append((start, end))
                blocked |= cells
                break
        else:
            return None
    return walls, blocked


def _place_obstacles(rng: random.Random, count: int, player: Cell, blocked: set[Cell], w: int, h: int) -> list[Cell]:
    obstacles: list[Cell] = []
    for _ in range(count):
        for _ in range(_PLACEMENT_TRIES):
            cell = (rng.randrange(w), rng.randrange(h))
            if cell == player or cell in blocked:
                continue
            if _connected(player, blocked | {cell}, w, h):
                obstacles.append(cell)
                blocked.add(cell)
                break
    return obstacles


def _place_enemies(
    rng: random.Random, count: int, player: Cell, blocked: set[Cell], w: int, h: int
) -> list[Cell] | None:
    free = [(x, y) for x in range(w) for y in range(h) if (x, y) not in blocked and (x, y) != player]
    if len(free) < count:
        return None
    # Keep enemies off the spawn's doorstep when the grid has room for it.
    far = [c for c in free if abs(c[0] - player[0]) + abs(c[1] - player[1]) >= max(3, (w + h) // 5)]
    pool = far if len(far) >= count else free
    return rng.sample(pool, count)


def _assemble(level: dict, walls: list, obstacles: list[Cell], enemies: list[Cell], player: Cell) -> dict[str, Any]:
    return {
        "level": level,
        "walls": [{"start_pos": _pos(s), "end_pos": _pos(e)} for s, e in walls],
        "small_obstacles": [_pos(c) for c in obstacles],
        "enemies": [_pos(c) for c in enemies],
        "player_pos": _pos(player),
    }


def _attempt(rng: random.Random, level: dict, w: int, h: int, shrink: int) -> dict[str, Any] | None:
    num_wall = max(0, as_int(level.get("num_wall")) or 0)
    num_enemies = max(0, as_int(level.get("num_enemies")) or 0)
    difficulty = _clamp(as_int(level.get("difficulty")) or 5, 1, 10)
    max_len = max(1, min(w, h) // (2 + shrink))
    player = (rng.randrange(w), rng.randrange(h))
    placed = _place_walls(rng, num_wall, player, w, h, max_len)
    if placed is None:
        return None
    walls, blocked = placed
    n_obstacles = rng.randint(difficulty // 2, difficulty + 2) * max(w * h, 200) // 400
    obstacles = _place_obstacles(rng, n_obstacles, player, blocked, w, h)
    enemies = _place_enemies(rng, num_enemies, player, blocked, w, h)
    if enemies is None:
        return None
    return _assemble(level, walls, obstacles, enemies, player)


def _lattice(level: dict, w: int, h: int) -> dict[str, Any]:
    """Single-cell walls on odd/odd cells: even rows and columns stay open, so all is reachable."""
    num_wall = max(0, as_int(level.get("num_wall")) or 0)
    num_enemies = max(0, as_int(level.get("num_enemies")) or 0)
    spots = [(x, y) for y in range(1, h, 2) for x in range(1, w, 2)][:num_wall]
    player = (0, 0)
    taken = set(spots) | {player}
    free = sorted(
        ((x, y) for x in range(w) for y in range(h) if (x, y) not in taken),
        key=lambda c: -(c[0] + c[1]),
    )
    return _assemble(level, [(c, c) for c in spots], [], free[:num_enemies], player)


def make_map(rng: random.Random, level: dict[str, Any]) -> dict[str, Any]:
    """A `Map` for `level` that passes the validator whenever the level is buildable at all."""
    w = _side(level.get("width"), _DEFAULT_SIDE)
    h = _side(level.get("height"), _DEFAULT_SIDE)
    for attempt in range(_MAP_ATTEMPTS):
        candidate = _attempt(rng, level, w, h, shrink=attempt // 10)
        if candidate is not None and validate_map(candidate).passed:
            return candidate
    return _lattice(level, w, h)
