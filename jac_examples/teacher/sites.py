"""Which RPG call site a request belongs to.

Evidence, strongest first: the function name (`metadata.jac_caller_name` on byLLM's
`http_client` transport, or a header that is a bare identifier when the function has no
docstring), then the response schema (`Level` / `Map` shapes, int or enum-list wrappers),
then words in the header. The default litellm transport sends no name, so the schema and
header carry identification there. Anything unrecognised is `TYPED` (answered by filling
the schema) or `TEXT` (a generic short answer).
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from understudy.jac_examples.teacher.prompt import ParsedRequest
from understudy.jac_examples.teacher.schema_fill import WRAPPER_KEYS


class Site(StrEnum):
    LEVEL = "create_next_level"
    MAP = "create_next_map"
    DESCRIBE = "describe_level"
    ENEMIES = "enemy_archetypes"
    RATE = "rate_difficulty"
    TYPED = "typed"  # unknown typed output: schema-filled
    TEXT = "text"  # unknown str output: generic text


_BY_NAME = {s.value: s for s in (Site.LEVEL, Site.MAP, Site.DESCRIBE, Site.ENEMIES, Site.RATE)}


def _properties(schema: dict[str, Any] | None) -> dict[str, Any]:
    props = schema.get("properties") if isinstance(schema, dict) else None
    return props if isinstance(props, dict) else {}


def _wrapped(schema: dict[str, Any] | None) -> dict[str, Any] | None:
    """The inner schema of byLLM's `schema_object_wrapper`, if that is what this is."""
    props = _properties(schema)
    for key in WRAPPER_KEYS:
        if list(props) == [key] and isinstance(props[key], dict):
            return props[key]
    return None


def _has_object_arg(req: ParsedRequest) -> bool:
    return any(isinstance(v, dict) for v in req.args.values())


def identify(req: ParsedRequest) -> Site:
    name = req.function_name
    if name in _BY_NAME:
        return _BY_NAME[name]

    props = _properties(req.schema)
    if req.schema_name == "Map" or {"walls", "player_pos"} <= props.keys():
        return Site.MAP
    if req.schema_name == "Level" or {"num_wall", "num_enemies"} <= props.keys():
        return Site.LEVEL

    header = req.header.lower()
    inner = _wrapped(req.schema)
    if inner is not None:
        if inner.get("type") == "integer" and ("rate" in header or "difficult" in header):
            return Site.RATE
        if inner.get("type") == "array" and ("enem" in header or "archetype" in header):
            return Site.ENEMIES
    if req.schema is None and "describ" in header and _has_object_arg(req):
        return Site.DESCRIBE
    return Site.TYPED if req.schema is not None else Site.TEXT
