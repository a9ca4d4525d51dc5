"""The RPG validators as Understudy calls them: an answer checked against its request's arguments.

Understudy finds these through the entry-point group `understudy.validators` (see the
project's pyproject.toml) and calls `check(answer_text, arguments)`, where `arguments` maps
each `by llm()` argument name to its value as plain data (a Jac object becomes a dict of its
fields). They wrap `validator.validate_level` / `validate_map` with what the request fixes:

- `create_next_level(last_levels, difficulty, level_width, level_height) -> Level`: the level
  has the requested difficulty, width and height, and is not a copy of a level it was given;
- `create_next_map(level) -> Map`: the map echoes the requested level field for field (so its
  size and counts are the requested ones) and is playable.

`constrained` in the detail names the answer fields the request fixed: agreement scoring
leaves them to this check instead of counting them as agreement.

Each check also declares, through `constrain(schema, arguments)`, the response schema tightened
with what the request fixes, so the local model decodes only answers that keep the bookkeeping:

- `Map`: `level` is the requested level (a `const`, fields in the schema's order), exactly
  `num_wall` walls and `num_enemies` enemies (`minItems` = `maxItems`), every position's `x` in
  [0, width) and `y` in [0, height) (`minimum`/`maximum` on every object with integer `x` and `y`);
- `Level`: the requested `width`, `height` and `difficulty` (`const`; difficulty 1-10 when not
  requested), counts never negative and enemies plus the player fitting the grid, a non-empty name.

What a schema cannot say (no enemy on a wall, every cell reachable, a name not repeating a given
level's) is left to the check itself.
`applies_to` keeps them to schemas shaped like the showcase's (another program's `Level` is
not this one).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from understudy.jac_examples.rpg.mapmodel import as_int
from understudy.jac_examples.rpg.validator import validate_level, validate_map

LEVEL_PROPERTIES = frozenset({"width", "height", "num_wall", "num_enemies"})
MAP_PROPERTIES = frozenset({"level", "walls", "enemies", "player_pos"})
# Argument names a level generator may use for what it asks for.
_WIDTH_ARGS = ("level_width", "width")
_HEIGHT_ARGS = ("level_height", "height")
_DIFFICULTY_ARGS = ("difficulty", "target_difficulty")


def _plain(value: Any) -> Any:
    """A parsed argument without its repr tags (`__type__`, positional `_args`)."""
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items() if k not in ("__type__", "_args")}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def _int_argument(arguments: Mapping[str, Any], names: tuple[str, ...]) -> int | None:
    for name in names:
        value = as_int(arguments.get(name))
        if value is not None:
            return value
    return None


def _is_level(value: Any) -> bool:
    return isinstance(value, dict) and {"width", "height"} <= value.keys()


def _requested_level(arguments: Mapping[str, Any]) -> dict[str, Any] | None:
    plain = [_plain(v) for v in arguments.values()]
    return next((v for v in plain if _is_level(v)), None)


def _given_levels(arguments: Mapping[str, Any]) -> list[dict[str, Any]]:
    for value in arguments.values():
        value = _plain(value)
        if isinstance(value, list) and all(_is_level(v) for v in value):
            return value
    return []


def check_level(answer: str, arguments: Mapping[str, Any]) -> tuple[bool, dict[str, Any]]:
    width = _int_argument(arguments, _WIDTH_ARGS)
    height = _int_argument(arguments, _HEIGHT_ARGS)
    difficulty = _int_argument(arguments, _DIFFICULTY_ARGS)
    report = validate_level(
        answer,
        expected_width=width,
        expected_height=height,
        expected_difficulty=difficulty,
        previous_levels=_given_levels(arguments),
    )
    detail = report.to_dict()
    detail["constrained"] = [
        f for f, v in (("width", width), ("height", height), ("difficulty", difficulty)) if v is not None
    ]
    return report.passed, detail


def check_map(answer: str, arguments: Mapping[str, Any]) -> tuple[bool, dict[str, Any]]:
    level = _requested_level(arguments)
    report = validate_map(answer, expected_level=level)
    detail = report.to_dict()
    detail["constrained"] = ["level"] if level is not None else []
    return report.passed, detail


def _resolved(node: Any, root: dict[str, Any], depth: int = 0) -> Any:
    """A schema node with a local `$ref` replaced by a copy of its target (so it can be tightened alone)."""
    ref = node.get("$ref") if isinstance(node, dict) else None
    if not isinstance(ref, str) or not ref.startswith("#/") or depth > 16:
        return node
    target: Any = root
    for part in ref[2:].split("/"):
        target = target.get(part) if isinstance(target, dict) else None
    if not isinstance(target, dict):
        return node
    merged = {**copy.deepcopy(target), **{k: v for k, v in node.items() if k != "$ref"}}
    return _resolved(merged, root, depth + 1)


def _objects(node: Any):
    """Every object schema in `node` (definitions included)."""
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from _objects(value)
    elif isinstance(node, list):
        for value in node:
            yield from _objects(value)


def _bound_positions(schema: dict[str, Any], width: int, height: int) -> None:
    for node in list(_objects(schema)):
        props = node.get("properties")
        if isinstance(props, dict) and all(
            isinstance(props.get(k), dict) and props[k].get("type") == "integer" for k in ("x", "y")
        ):
            props["x"].update(minimum=0, maximum=width - 1)
            props["y"].update(minimum=0, maximum=height - 1)


def _exact_count(props: dict[str, Any], name: str, count: int | None, root: dict[str, Any]) -> None:
    if count is None or count < 0 or name not in props:
        return
    props[name] = _resolved(props[name], root)
    if props[name].get("type") == "array":
        props[name].update(minItems=count, maxItems=count)


def constrain_map(schema: dict[str, Any], arguments: Mapping[str, Any]) -> dict[str, Any]:
    """The `Map` schema tightened to the requested level (see the module docstring)."""
    level = _requested_level(arguments)
    props = schema.get("properties")
    if level is None or not isinstance(props, dict):
        return schema
    width, height = as_int(level.get("width")), as_int(level.get("height"))
    if width is not None and height is not None and width > 0 and height > 0:
        _bound_positions(schema, width, height)
    if "level" in props:
        level_schema = _resolved(props["level"], schema)
        order = list((level_schema.get("properties") or {}).keys())
        echoed = {k: level[k] for k in order if k in level} | {k: v for k, v in level.items() if k not in order}
        props["level"] = {"const": echoed}
    _exact_count(props, "walls", as_int(level.get("num_wall")), schema)
    _exact_count(props, "enemies", as_int(level.get("num_enemies")), schema)
    return schema


def constrain_level(schema: dict[str, Any], arguments: Mapping[str, Any]) -> dict[str, Any]:
    """The `Level` schema tightened to the requested size and difficulty (see the module docstring)."""
    props = schema.get("properties")
    if not isinstance(props, dict):
        return schema
    width = _int_argument(arguments, _WIDTH_ARGS)
    height = _int_argument(arguments, _HEIGHT_ARGS)
    difficulty = _int_argument(arguments, _DIFFICULTY_ARGS)

    def tighten(name: str, **keywords: Any) -> None:
        if name in props:
            props[name] = {**_resolved(props[name], schema), **keywords}

    for name, value in (("width", width), ("height", height)):
        if value is not None and value > 0:
            tighten(name, const=value)
    if difficulty is not None and 1 <= difficulty <= 10:
        tighten("difficulty", const=difficulty)
    else:
        tighten("difficulty", minimum=1, maximum=10)
    for name in ("num_wall", "time_countdown", "n_retries_allowed"):
        tighten(name, minimum=0)
    if width is not None and height is not None and width > 0 and height > 0:
        tighten("num_enemies", minimum=0, maximum=width * height - 1)  # and the player
    else:
        tighten("num_enemies", minimum=0)
    tighten("name", minLength=1)
    return schema


def _has_properties(required: frozenset[str]):
    def applies_to(schema: dict[str, Any]) -> bool:
        return required <= set(schema.get("properties") or {})

    return applies_to


check_level.applies_to = _has_properties(LEVEL_PROPERTIES)  # type: ignore[attr-defined]
check_map.applies_to = _has_properties(MAP_PROPERTIES)  # type: ignore[attr-defined]
check_level.constrain = constrain_level  # type: ignore[attr-defined]
check_map.constrain = constrain_map  # type: ignore[attr-defined]
