"""Task validators: per-site checks a local answer must pass before it may count or be served.

Agreement with the upstream is not enough for outputs with many right answers (a level map
is good if it is playable, not if it copies the upstream's walls), so a site can have a
validator: `validator(text) -> (passed, detail)`, where `detail` is a JSON-serialisable dict
saying why. `routing.scoring` turns a failed validation into a score of 0.

Sites are matched by the name of their response schema (`response_format.json_schema.name`,
e.g. byLLM's `Map` for a function returning `Map`), because that is what a call site's typed
output is, and it is stable across argument values. Names are per deployment: a registry is
built by `default_registry()` (the validators this project ships) and extended by the caller.

Validators are registered as factories and resolved on first use, so this module imports
without the packages they live in (the RPG validator lives in `jac_examples`); a factory that
cannot import its validator yields no validator rather than failing every score.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from typing import Any

Validator = Callable[[str], tuple[bool, dict[str, Any]]]
ValidatorFactory = Callable[[], Validator | None]

log = logging.getLogger(__name__)

_UNRESOLVED = object()


class ValidatorRegistry:
    """Schema name → validator, with factories resolved once, thread-safely, on first lookup."""

    def __init__(self) -> None:
        self._factories: dict[str, ValidatorFactory] = {}
        self._resolved: dict[str, Validator | None] = {}
        # Schema names are per program: another program's `Level` is not the RPG `Level`.
        # A validator may name the properties a schema must have for it to apply.
        self._required: dict[str, frozenset[str]] = {}
        self._lock = threading.Lock()

    def register(self, schema_name: str, validator: Validator) -> None:
        """Register a ready validator for `schema_name` (replacing any earlier one)."""
        self.register_factory(schema_name, lambda: validator)

    def register_factory(self, schema_name: str, factory: ValidatorFactory,
                         required_properties: frozenset[str] = frozenset()) -> None:
        """Register a factory called on first lookup; it may return None (not available).

        With `required_properties`, the validator applies only to schemas of that name whose
        top-level properties include them all.
        """
        with self._lock:
            self._factories[schema_name] = factory
            self._required[schema_name] = frozenset(required_properties)
            self._resolved.pop(schema_name, None)

    def names(self) -> list[str]:
        return sorted(self._factories)

    def get(self, schema_name: str | None) -> Validator | None:
        """The validator for a schema name, or None when there is none (or it is unavailable)."""
        if schema_name is None:
            return None
        resolved = self._resolved.get(schema_name, _UNRESOLVED)
        if resolved is not _UNRESOLVED:
            return resolved  # type: ignore[return-value]
        with self._lock:
            if schema_name not in self._resolved:
                factory = self._factories.get(schema_name)
                self._resolved[schema_name] = factory() if factory is not None else None
            return self._resolved[schema_name]

    def for_response_format(self, response_format: Mapping[str, Any] | None) -> Validator | None:
        """The validator for a request's `response_format` (json_schema sites only)."""
        name = schema_name(response_format)
        required = self._required.get(name or "")
        if required:
            schema = (response_format.get("json_schema") or {}).get("schema") or {}
            if not required <= set(schema.get("properties") or {}):
                return None
        return self.get(name)


def schema_name(response_format: Mapping[str, Any] | None) -> str | None:
    """`response_format.json_schema.name`, or None for text / json_object sites."""
    if not response_format or response_format.get("type") != "json_schema":
        return None
    name = (response_format.get("json_schema") or {}).get("name")
    return name if isinstance(name, str) else None


RPG_LEVEL_PROPERTIES = frozenset({"width", "height", "num_wall", "num_enemies"})
RPG_MAP_PROPERTIES = frozenset({"level", "walls", "enemies", "player_pos"})


def default_registry() -> ValidatorRegistry:
    """A registry holding the validators this project ships."""
    registry = ValidatorRegistry()
    registry.register_factory("Map", _rpg_map_validator, RPG_MAP_PROPERTIES)
    registry.register_factory("Level", _rpg_level_validator, RPG_LEVEL_PROPERTIES)
    return registry


# --- shipped validators -------------------------------------------------------------------


def validate_rpg_map(
    text: str, expected_width: int | None = None, expected_height: int | None = None
) -> tuple[bool, dict[str, Any]]:
    """The RPG level generator's `Map` validator (playable, consistent with its `level`)."""
    # Imported here so routing does not depend on the showcase package at import time.
    from jac_examples.rpg.validator import validate_map

    report = validate_map(text, expected_width=expected_width, expected_height=expected_height)
    return bool(report.passed), report.to_dict()


def _rpg_map_validator() -> Validator | None:
    try:
        import jac_examples.rpg.validator  # noqa: F401 - availability check only
    except ImportError as exc:
        log.warning("RPG map validator unavailable (%s); Map sites are scored without it", exc)
        return None
    return validate_rpg_map


def validate_rpg_level(text: str) -> tuple[bool, dict[str, Any]]:
    """The RPG generator's `Level` validator (sane sizes, counts and difficulty)."""
    from jac_examples.rpg.validator import validate_level

    report = validate_level(text)
    return bool(report.passed), report.to_dict()


def _rpg_level_validator() -> Validator | None:
    return validate_rpg_level if _rpg_map_validator() is not None else None
