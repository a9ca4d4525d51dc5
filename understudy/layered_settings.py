"""Settings in layers: global defaults, then per-site overrides (promotion, scoring, sampling).

Each layer is a JSON object whose keys must be fields of the settings dataclass; a misspelt
key raises instead of being ignored, and values are checked against the declared types
because JSON arrives unchecked.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import fields
from typing import Any


def merge_layers(
    cls: type, what: str, layers: Sequence[Mapping[str, Any] | None], merge_keys: frozenset[str] = frozenset()
) -> dict[str, Any]:
    """Settings layers (global, then per site) merged in order: later layers win, and keys in
    `merge_keys` merge their own dicts key by key. Keys that are not fields of the dataclass
    `cls` raise ValueError: a misspelt setting silently ignored would change routing unseen."""
    known = {f.name for f in fields(cls)}
    merged: dict[str, Any] = {}
    for layer in layers:
        layer = layer or {}
        unknown = set(layer) - known
        if unknown:
            raise ValueError(f"unknown {what} setting(s): {sorted(unknown)}")
        for key, value in layer.items():
            merged[key] = {**merged.get(key, {}), **value} if key in merge_keys else value
    return merged


_FIELD_TYPES = {"int": (int,), "float": (int, float), "bool": (bool,), "tuple[str, ...]": (tuple, list)}


def check_field_types(settings: Any) -> None:
    """A settings dataclass's values have their declared types (JSON settings arrive unchecked)."""
    for f in fields(settings):
        value, expected = getattr(settings, f.name), _FIELD_TYPES.get(str(f.type))
        if expected is None:
            continue
        wrong = not isinstance(value, expected) or (isinstance(value, bool) and bool not in expected)
        if wrong or (isinstance(value, (tuple, list)) and not all(isinstance(v, str) for v in value)):
            raise ValueError(
                f"{f.name} must be {str(f.type).replace('tuple[str, ...]', 'a list of strings')}, not {value!r}"
            )
