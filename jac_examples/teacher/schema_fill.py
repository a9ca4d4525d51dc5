"""Values that satisfy a JSON schema, for typed call sites the teacher knows nothing about.

Two jobs:
- `fill(schema)` invents a plausible value (enums pick a member, integers respect bounds,
  objects get every property) so an unknown typed call site still gets a parseable answer;
- `conform(value, schema)` fits a value the procedural generator produced to the schema the
  request actually carries (a `Level` in another program may have fewer fields; byLLM wraps
  non-object returns in `{"schema_object_wrapper": ...}`), keeping what fits and filling or
  dropping the rest.

It covers the JSON-schema subset byLLM and pydantic emit: `$ref`/`$defs`, `anyOf`/`oneOf`,
`enum`, `const`, and the basic types with their common bounds.
"""

from __future__ import annotations

import random
from typing import Any

WRAPPER_KEYS = ("schema_object_wrapper", "schema_dict_wrapper")
_WORDS = ("ember", "vault", "shade", "granite", "moss", "echo", "lantern", "thorn", "ash", "tide")


def resolve(schema: dict[str, Any], root: dict[str, Any]) -> dict[str, Any]:
    """Follow local `$ref`s (`#/$defs/X`, `#/definitions/X`) and pick a usable `anyOf` branch."""
    seen = 0
    while isinstance(schema, dict) and "$ref" in schema and seen < 32:
        seen += 1
        target: Any = root
        for part in str(schema["$ref"]).lstrip("#/").split("/"):
            target = target.get(part, {}) if isinstance(target, dict) else {}
        schema = {**target, **{k: v for k, v in schema.items() if k != "$ref"}}
    for key in ("anyOf", "oneOf"):
        branches = schema.get(key) if isinstance(schema, dict) else None
        if isinstance(branches, list) and branches:
            non_null = [b for b in branches if isinstance(b, dict) and b.get("type") != "null"]
            chosen = non_null[0] if non_null else branches[0]
            merged = {k: v for k, v in schema.items() if k != key}
            return resolve({**merged, **chosen}, root)
    return schema if isinstance(schema, dict) else {}


def _type_of(schema: dict[str, Any]) -> str | None:
    t = schema.get("type")
    if isinstance(t, list):
        non_null = [x for x in t if x != "null"]
        return non_null[0] if non_null else "null"
    if t is None and "properties" in schema:
        return "object"
    return t


def fill(schema: dict[str, Any], rng: random.Random, root: dict[str, Any] | None = None) -> Any:
    """A value valid against `schema`."""
    root = root if root is not None else schema
    schema = resolve(schema, root)
    if "const" in schema:
        return schema["const"]
    if isinstance(schema.get("enum"), list) and schema["enum"]:
        return rng.choice(schema["enum"])
    kind = _type_of(schema)
    if kind == "object":
        props = found if isinstance(found := schema.get("properties"), dict) else {}
        return {name: fill(sub, rng, root) for name, sub in props.items()}
    if kind == "array":
        items = found if isinstance(found := schema.get("items"), dict) else {}
        low = int(schema.get("minItems", 1))
        high = int(schema.get("maxItems", max(low, 3)))
        return [fill(items, rng, root) for _ in range(rng.randint(low, max(low, high)))]
    if kind == "integer":
        low = int(schema.get("minimum", 1))
        high = int(schema.get("maximum", max(low, 10)))
        return rng.randint(low, max(low, high))
    if kind == "number":
        least = float(schema.get("minimum", 0.0))
        most = float(schema.get("maximum", max(least, 1.0)))
        return round(rng.uniform(least, most), 3)
    if kind == "boolean":
        return rng.random() < 0.5
    if kind == "null":
        return None
    return f"{rng.choice(_WORDS)} {rng.choice(_WORDS)}"


def _fits_scalar(value: Any, kind: str | None) -> bool:
    if kind == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "number":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind == "string":
        return isinstance(value, str)
    if kind == "boolean":
        return isinstance(value, bool)
    if kind == "null":
        return value is None
    return kind is None


def conform(value: Any, schema: dict[str, Any], rng: random.Random, root: dict[str, Any] | None = None) -> Any:
    """`value` fitted to `schema`: matching parts kept, missing parts filled, extras dropped."""
    root = root if root is not None else schema
    schema = resolve(schema, root)
    props = found if isinstance(found := schema.get("properties"), dict) else {}
    wrapper = next((k for k in WRAPPER_KEYS if list(props) == [k]), None)
    if wrapper is not None and not (isinstance(value, dict) and wrapper in value):
        return {wrapper: conform(value, props[wrapper], rng, root)}
    if "const" in schema:
        return schema["const"]
    if isinstance(schema.get("enum"), list) and schema["enum"]:
        return value if value in schema["enum"] else rng.choice(schema["enum"])
    kind = _type_of(schema)
    if kind == "object":
        if not isinstance(value, dict):
            return fill(schema, rng, root)
        if not props:  # a free-form object: anything goes
            return value
        return {
            name: conform(value[name], sub, rng, root) if name in value else fill(sub, rng, root)
            for name, sub in props.items()
        }
    if kind == "array":
        items = found if isinstance(found := schema.get("items"), dict) else {}
        if not isinstance(value, list):
            return fill(schema, rng, root)
        return [conform(v, items, rng, root) for v in value]
    if _fits_scalar(value, kind):
        low, high = schema.get("minimum"), schema.get("maximum")
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if low is not None and value < low:
                return low
            if high is not None and value > high:
                return high
        return value
    if kind == "string" and value is not None:
        return str(value)
    return fill(schema, rng, root)


def enum_members(schema: dict[str, Any], root: dict[str, Any] | None = None, _depth: int = 0) -> list[Any]:
    """The first `enum` found walking the schema depth-first (e.g. the items of a wrapped
    `list[EnemyKind]`); empty when there is none."""
    root = root if root is not None else schema
    schema = resolve(schema, root)
    if isinstance(schema.get("enum"), list):
        return list(schema["enum"])
    if _depth > 16:
        return []
    children = []
    if isinstance(schema.get("items"), dict):
        children.append(schema["items"])
    if isinstance(schema.get("properties"), dict):
        children += [v for v in schema["properties"].values() if isinstance(v, dict)]
    for child in children:
        found = enum_members(child, root, _depth + 1)
        if found:
            return found
    return []
