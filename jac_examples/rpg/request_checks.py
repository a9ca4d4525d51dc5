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
`applies_to` keeps them to schemas shaped like the showcase's (another program's `Level` is
not this one).
"""

from __future__ import annotations

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
    report = validate_level(answer, expected_width=width, expected_height=height, expected_difficulty=difficulty,
                            previous_levels=_given_levels(arguments))
    detail = report.to_dict()
    detail["constrained"] = [f for f, v in (("width", width), ("height", height), ("difficulty", difficulty))
                             if v is not None]
    return report.passed, detail


def check_map(answer: str, arguments: Mapping[str, Any]) -> tuple[bool, dict[str, Any]]:
    level = _requested_level(arguments)
    report = validate_map(answer, expected_level=level)
    detail = report.to_dict()
    detail["constrained"] = ["level"] if level is not None else []
    return report.passed, detail


def _has_properties(required: frozenset[str]):
    def applies_to(schema: dict[str, Any]) -> bool:
        return required <= set(schema.get("properties") or {})
    return applies_to


check_level.applies_to = _has_properties(LEVEL_PROPERTIES)  # type: ignore[attr-defined]
check_map.applies_to = _has_properties(MAP_PROPERTIES)  # type: ignore[attr-defined]
