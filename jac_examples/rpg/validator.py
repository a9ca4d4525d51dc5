"""Structured validation of the RPG call sites' typed outputs (`Map` and `Level`).

Training filters examples with it and routing scores local answers with it, so it returns a
report (one named `Check` per property, plus an overall `passed`) instead of a bool, and it
never raises on bad input: garbage, truncated JSON, wrong types and missing fields all become
failing checks whose `detail` says what is wrong.

Every map report has the same checks in the same order (see `MAP_CHECKS`); a check that
cannot run because an earlier part is unreadable fails with a "not checked: ..." detail, so
consumers can rely on the names being present. Coordinate conventions are those of
`mapmodel` (0-based cells, inclusive axis-aligned walls, 4-neighbour movement).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from understudy.jac_examples.rpg.mapmodel import (
    MAX_SIDE,
    Cell,
    as_cell,
    as_int,
    in_bounds,
    load_map_like,
    reachable,
    to_plain,
    wall_cells,
)

MAP_CHECKS = (
    "parse",
    "level_echo",
    "dimensions",
    "player_spawn",
    "wall_count",
    "wall_geometry",
    "obstacle_placement",
    "enemy_count",
    "enemy_placement",
    "no_overlap",
    "reachability",
)
LEVEL_CHECKS = ("parse", "dimensions", "counts", "difficulty", "novelty")

LEVEL_INT_FIELDS = ("difficulty", "width", "height", "num_wall", "num_enemies")
# Fields the Jac Level has beyond the ones the validator reasons about; checked when present.
LEVEL_OPTIONAL_INT_FIELDS = ("time_countdown", "n_retries_allowed")
_MAX_LISTED = 5  # how many offending items a detail names before summarising


@dataclass(frozen=True)
class Check:
    name: str
    passed: bool
    detail: str

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "passed": self.passed, "detail": self.detail}


@dataclass
class ValidationReport:
    passed: bool
    checks: list[Check] = field(default_factory=list)

    @classmethod
    def from_checks(cls, checks: list[Check]) -> ValidationReport:
        return cls(passed=all(c.passed for c in checks), checks=checks)

    def check(self, name: str) -> Check:
        """The check called `name` (KeyError when the report has none)."""
        for c in self.checks:
            if c.name == name:
                return c
        raise KeyError(name)

    @property
    def failed(self) -> list[str]:
        return [c.name for c in self.checks if not c.passed]

    def to_dict(self) -> dict[str, Any]:
        return {"passed": self.passed, "checks": [c.to_dict() for c in self.checks]}


# --------------------------------------------------------------------------- parsing


@dataclass
class _Wall:
    index: int
    start: Cell
    end: Cell
    cells: list[Cell] | None  # None: not axis-aligned


@dataclass
class _ParsedMap:
    problems: list[str] = field(default_factory=list)
    width: int | None = None
    height: int | None = None
    num_wall: int | None = None
    num_enemies: int | None = None
    wall_entries: int | None = None  # length of the `walls` list, readable entries or not
    walls: list[_Wall] = field(default_factory=list)
    bad_walls: list[int] = field(default_factory=list)
    obstacles: list[Cell] | None = None
    enemies: list[Cell] | None = None
    enemy_entries: int | None = None
    player: Cell | None = None


def _load(data: Any) -> tuple[Any, str | None]:
    """The decoded value, or an error message saying why it could not be decoded."""
    try:
        return load_map_like(data), None
    except UnicodeDecodeError as exc:
        return None, f"input is not UTF-8 text: {exc.reason}"
    except json.JSONDecodeError as exc:
        return None, f"not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})"
    except (ValueError, RecursionError) as exc:
        return None, f"input could not be decoded: {exc}"


def _cells(value: Any, key: str, problems: list[str]) -> tuple[list[Cell] | None, int | None]:
    """Readable cells of a list field and the list's length; notes problems."""
    if value is None:
        problems.append(f"{key} is missing")
        return None, None
    if not isinstance(value, list):
        problems.append(f"{key} is not a list")
        return None, None
    cells = []
    for i, item in enumerate(value):
        cell = as_cell(item)
        if cell is None:
            problems.append(f"{key}[{i}] is not an {{x: int, y: int}} object")
        else:
            cells.append(cell)
    return cells, len(value)


def _parse_map(data: dict[str, Any]) -> _ParsedMap:
    pm = _ParsedMap()
    level = data.get("level")
    if not isinstance(level, dict):
        pm.problems.append("level is missing or not an object")
        level = {}
    for key in ("width", "height", "num_wall", "num_enemies"):
        value = as_int(level.get(key))
        if value is None:
            pm.problems.append(f"level.{key} is missing or not an integer")
        setattr(pm, key, value)

    walls = data.get("walls")
    if not isinstance(walls, list):
        pm.problems.append("walls is missing or not a list")
    else:
        pm.wall_entries = len(walls)
        for i, wall in enumerate(walls):
            start = as_cell(wall.get("start_pos")) if isinstance(wall, dict) else None
            end = as_cell(wall.get("end_pos")) if isinstance(wall, dict) else None
            if start is None or end is None:
                pm.problems.append(f"walls[{i}] needs start_pos and end_pos as {{x: int, y: int}}")
                pm.bad_walls.append(i)
            else:
                pm.walls.append(_Wall(i, start, end, wall_cells(start, end)))

    pm.obstacles, _ = _cells(data.get("small_obstacles"), "small_obstacles", pm.problems)
    pm.enemies, pm.enemy_entries = _cells(data.get("enemies"), "enemies", pm.problems)
    if "player_pos" not in data or data.get("player_pos") is None:
        pm.problems.append("player_pos is missing")
    else:
        pm.player = as_cell(data.get("player_pos"))
        if pm.player is None:
            pm.problems.append("player_pos is not an {x: int, y: int} object")
    return pm


# --------------------------------------------------------------------------- map checks


def _listed(items: list[Any]) -> str:
    shown = ", ".join(str(i) for i in items[:_MAX_LISTED])
    more = len(items) - _MAX_LISTED
    return shown + (f" and {more} more" if more > 0 else "")


def _dims_check(
    width: int | None, height: int | None, expected_width: int | None, expected_height: int | None
) -> tuple[Check, bool]:
    """The dimensions check and whether the grid is usable by later checks."""
    if width is None or height is None:
        return Check("dimensions", False, "level.width/level.height are missing or not integers"), False
    problems = []
    usable = 0 < width <= MAX_SIDE and 0 < height <= MAX_SIDE
    if not usable:
        problems.append(f"{width}x{height} is not a usable grid (each side must be 1..{MAX_SIDE})")
    if expected_width is not None and width != expected_width:
        problems.append(f"width is {width}, {expected_width} was requested")
    if expected_height is not None and height != expected_height:
        problems.append(f"height is {height}, {expected_height} was requested")
    if problems:
        return Check("dimensions", False, "; ".join(problems)), usable
    return Check("dimensions", True, f"{width}x{height}"), True


def _count_check(name: str, items: str, found: int | None, level_field: str, stated: int | None) -> Check:
    """The map holds as many `items` as the level's `level_field` says."""
    if found is None or stated is None:
        return Check(name, False, f"not checked: {items} or level.{level_field} unreadable")
    if found != stated:
        return Check(name, False, f"{found} {items}, level.{level_field} says {stated}")
    return Check(name, True, f"{found} {items}")


def _map_checks(pm: _ParsedMap, dims: Check, grid_ok: bool) -> list[Check]:
    w, h = pm.width or 0, pm.height or 0
    no_grid = "not checked: no usable width/height"
    wall_set: set[Cell] = set()
    for wall in pm.walls:
        wall_set.update(c for c in wall.cells or () if in_bounds(c, w, h))
    obstacle_set = {c for c in pm.obstacles or () if in_bounds(c, w, h)}
    blocked = wall_set | obstacle_set
    checks = [dims]

    # player_spawn
    if pm.player is None:
        checks.append(Check("player_spawn", False, "player_pos is missing or unreadable"))
    elif not grid_ok:
        checks.append(Check("player_spawn", False, no_grid))
    elif not in_bounds(pm.player, w, h):
        checks.append(Check("player_spawn", False, f"player at {pm.player} is outside the {w}x{h} grid"))
    elif pm.player in wall_set:
        checks.append(Check("player_spawn", False, f"player at {pm.player} is inside a wall"))
    elif pm.player in obstacle_set:
        checks.append(Check("player_spawn", False, f"player at {pm.player} is on an obstacle"))
    else:
        checks.append(Check("player_spawn", True, f"player at {pm.player}"))

    checks.append(_count_check("wall_count", "walls", pm.wall_entries, "num_wall", pm.num_wall))

    # wall_geometry
    if pm.wall_entries is None:
        checks.append(Check("wall_geometry", False, "not checked: walls unreadable"))
    elif not grid_ok:
        checks.append(Check("wall_geometry", False, no_grid))
    else:
        bad = [f"walls[{i}] unreadable" for i in pm.bad_walls]
        for wall in pm.walls:
            if wall.cells is None:
                bad.append(f"walls[{wall.index}] {wall.start}->{wall.end} is diagonal")
            elif not (in_bounds(wall.start, w, h) and in_bounds(wall.end, w, h)):
                bad.append(f"walls[{wall.index}] {wall.start}->{wall.end} leaves the grid")
        checks.append(
            Check("wall_geometry", False, _listed(bad))
            if bad
            else Check("wall_geometry", True, f"{len(pm.walls)} axis-aligned walls in bounds")
        )

    # obstacle_placement
    if pm.obstacles is None:
        checks.append(Check("obstacle_placement", False, "not checked: small_obstacles unreadable"))
    elif not grid_ok:
        checks.append(Check("obstacle_placement", False, no_grid))
    else:
        outside = [c for c in pm.obstacles if not in_bounds(c, w, h)]
        checks.append(
            Check("obstacle_placement", False, f"obstacles outside the grid: {_listed(outside)}")
            if outside
            else Check("obstacle_placement", True, f"{len(pm.obstacles)} obstacles in bounds")
        )

    checks.append(_count_check("enemy_count", "enemies", pm.enemy_entries, "num_enemies", pm.num_enemies))

    # enemy_placement
    if pm.enemies is None:
        checks.append(Check("enemy_placement", False, "not checked: enemies unreadable"))
    elif not grid_ok:
        checks.append(Check("enemy_placement", False, no_grid))
    else:
        bad = []
        for e in pm.enemies:
            if not in_bounds(e, w, h):
                bad.append(f"{e} outside the grid")
            elif e in wall_set:
                bad.append(f"{e} inside a wall")
            elif e in obstacle_set:
                bad.append(f"{e} on an obstacle")
        checks.append(
            Check("enemy_placement", False, _listed(bad))
            if bad
            else Check("enemy_placement", True, "all enemies on open cells")
        )

    checks.append(_overlap_check(pm))
    checks.append(_reachability_check(pm, grid_ok, blocked, wall_set, obstacle_set))
    return checks


def _overlap_check(pm: _ParsedMap) -> Check:
    occupied: dict[Cell, str] = {}
    clashes = []
    entities = [("player", pm.player)] if pm.player is not None else []
    entities += [("enemy", e) for e in pm.enemies or ()]
    obstacles = set(pm.obstacles or ())
    for kind, cell in entities:
        if cell in occupied:
            clashes.append(f"{occupied[cell]} and {kind} share {cell}")
        else:
            occupied[cell] = kind
        if cell in obstacles:
            clashes.append(f"{kind} on obstacle at {cell}")
    if clashes:
        return Check("no_overlap", False, _listed(clashes))
    return Check("no_overlap", True, "player, enemies and obstacles on distinct cells")


def _reachability_check(
    pm: _ParsedMap, grid_ok: bool, blocked: set[Cell], wall_set: set[Cell], obstacle_set: set[Cell]
) -> Check:
    w, h = pm.width or 0, pm.height or 0
    if not grid_ok:
        return Check("reachability", False, "not checked: no usable width/height")
    if pm.player is None or not in_bounds(pm.player, w, h) or pm.player in blocked:
        return Check("reachability", False, "not checked: no valid player spawn to start from")
    seen = reachable(pm.player, blocked, w, h)
    lost_enemies = [e for e in pm.enemies or () if e not in seen]
    open_cells = w * h - len(blocked)
    lost_open = open_cells - len(seen)
    if lost_enemies or lost_open:
        parts = []
        if lost_enemies:
            parts.append(f"{len(lost_enemies)} enemies unreachable: {_listed(lost_enemies)}")
        if lost_open:
            parts.append(f"{lost_open} of {open_cells} open cells unreachable")
        return Check("reachability", False, "; ".join(parts))
    return Check("reachability", True, f"all {open_cells} open cells and every enemy reachable")


def _echo_check(level: Any, expected: dict[str, Any] | None) -> Check:
    """The map's `level` is the level it was asked to lay out."""
    if expected is None:
        return Check("level_echo", True, "no level was given to compare with")
    if not isinstance(level, dict):
        return Check("level_echo", False, "level is missing or not an object")
    differ = [k for k in sorted(set(expected) | set(level)) if level.get(k) != expected.get(k)]
    if differ:
        shown = ", ".join(f"{k}={level.get(k)!r} (asked {expected.get(k)!r})" for k in differ[:_MAX_LISTED])
        return Check("level_echo", False, f"the map's level differs from the requested one: {shown}")
    return Check("level_echo", True, "the requested level, field for field")


def _not_checked(names: tuple[str, ...], reason: str) -> list[Check]:
    return [Check(n, False, f"not checked: {reason}") for n in names]


def validate_map(
    data: Any,
    *,
    expected_width: int | None = None,
    expected_height: int | None = None,
    expected_level: dict[str, Any] | None = None,
) -> ValidationReport:
    """Validate one `Map` (dict, JSON str/bytes, or a live Jac object); never raises.

    `expected_level` is the `Level` the map was asked for: the map must echo it field for
    field (so its size and counts are the requested ones), and its size is then expected too.
    """
    try:
        if expected_level is not None:
            expected_level = to_plain(expected_level)
            expected_width = expected_width if expected_width is not None else as_int(expected_level.get("width"))
            expected_height = expected_height if expected_height is not None else as_int(expected_level.get("height"))
        decoded, error = _load(data)
        if error is None and not isinstance(decoded, dict):
            error = f"expected a JSON object, got {type(decoded).__name__}"
        if error is not None:
            return ValidationReport.from_checks(
                [Check("parse", False, error)] + _not_checked(MAP_CHECKS[1:], "the map could not be parsed")
            )
        pm = _parse_map(decoded)
        parse = Check("parse", not pm.problems, _listed(pm.problems) if pm.problems else "well-formed Map")
        echo = _echo_check(decoded.get("level"), expected_level)
        dims, grid_ok = _dims_check(pm.width, pm.height, expected_width, expected_height)
        return ValidationReport.from_checks([parse, echo] + _map_checks(pm, dims, grid_ok))
    except Exception as exc:  # a validator that raises would take the request path down with it
        return ValidationReport.from_checks(
            [Check("parse", False, f"validator could not read the input: {exc!r}")]
            + _not_checked(MAP_CHECKS[1:], "internal validator error")
        )


# --------------------------------------------------------------------------- level checks


def validate_level(
    data: Any,
    *,
    expected_width: int | None = None,
    expected_height: int | None = None,
    expected_difficulty: int | None = None,
    previous_levels: list[Any] | None = None,
) -> ValidationReport:
    """Validate one bare `Level` (what `create_next_level` returns); never raises.

    The expected size and difficulty are what the request fixed; `previous_levels` are the
    levels it was given, which the new one must not copy (checked by name).
    """
    try:
        decoded, error = _load(data)
        if error is None and not isinstance(decoded, dict):
            error = f"expected a JSON object, got {type(decoded).__name__}"
        if error is not None:
            return ValidationReport.from_checks(
                [Check("parse", False, error)] + _not_checked(LEVEL_CHECKS[1:], "the level could not be parsed")
            )
        checks = _level_checks(decoded, expected_width, expected_height, expected_difficulty)
        return ValidationReport.from_checks(checks + [_novelty_check(decoded, previous_levels)])
    except Exception as exc:  # see validate_map
        return ValidationReport.from_checks(
            [Check("parse", False, f"validator could not read the input: {exc!r}")]
            + _not_checked(LEVEL_CHECKS[1:], "internal validator error")
        )


def _level_checks(level: dict[str, Any], exp_w: int | None, exp_h: int | None, exp_d: int | None) -> list[Check]:
    problems = []
    if not isinstance(level.get("name"), str):
        problems.append("name is missing or not a string")
    values = {k: as_int(level.get(k)) for k in LEVEL_INT_FIELDS}
    problems += [f"{k} is missing or not an integer" for k, v in values.items() if v is None]
    optional = {k: level[k] for k in LEVEL_OPTIONAL_INT_FIELDS if k in level}
    problems += [f"{k} is not an integer" for k, v in optional.items() if as_int(v) is None]
    checks = [Check("parse", not problems, _listed(problems) if problems else "well-formed Level")]

    dims, grid_ok = _dims_check(values["width"], values["height"], exp_w, exp_h)
    checks.append(dims)

    nw, ne = values["num_wall"], values["num_enemies"]
    if nw is None or ne is None:
        checks.append(Check("counts", False, "not checked: num_wall/num_enemies unreadable"))
    else:
        bad = [f"{k} is negative ({v})" for k, v in (("num_wall", nw), ("num_enemies", ne)) if v < 0]
        bad += [f"{k} is negative ({v})" for k, v in optional.items() if as_int(v) is not None and v < 0]
        if grid_ok and ne + 1 > values["width"] * values["height"]:
            bad.append(f"{ne} enemies and the player do not fit in {values['width']}x{values['height']}")
        checks.append(
            Check("counts", False, "; ".join(bad)) if bad else Check("counts", True, f"{nw} walls, {ne} enemies")
        )

    d = values["difficulty"]
    if d is None:
        checks.append(Check("difficulty", False, "not checked: difficulty unreadable"))
    elif not 1 <= d <= 10:
        checks.append(Check("difficulty", False, f"difficulty {d} is outside 1-10"))
    elif exp_d is not None and d != exp_d:
        checks.append(Check("difficulty", False, f"difficulty is {d}, {exp_d} was requested"))
    else:
        checks.append(Check("difficulty", True, f"difficulty {d}"))
    return checks


def _novelty_check(level: dict[str, Any], previous: list[Any] | None) -> Check:
    """A new level is not a copy of one it was given (the call site's docstring asks for that)."""
    names = [str(to_plain(p).get("name")) for p in previous or () if isinstance(to_plain(p), dict)]
    name = level.get("name")
    if isinstance(name, str) and name.strip().casefold() in {n.strip().casefold() for n in names}:
        return Check("novelty", False, f"{name!r} repeats a level it was given")
    if isinstance(name, str) and not name.strip():
        return Check("novelty", False, "the name is empty")
    return Check("novelty", True, f"new name among {len(names)} given levels")
