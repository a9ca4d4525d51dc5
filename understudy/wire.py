"""The answer a request asks for, read once from the OpenAI wire format's `response_format`.

Every part that asks "what must this answer be?" and "is it?" asks here: the recorder (a call's
parse-valid flag), the router (the serving gate and the shadow scores), constrained decoding and
checked sampling (the schema to decode under), training's held-out evaluation and
`understudy eval`. One reading, so they cannot disagree about one answer:

- `{"type": "json_schema", "json_schema": {"name", "schema"}}`: a JSON answer fitting `schema`
  (any JSON value when the schema is missing);
- `{"type": "json_object"}`: a JSON object (OpenAI's JSON mode promises an object);
- anything else, or none: free text; any non-empty text fits.

A schema that jsonschema itself rejects was still accepted by the upstream, so it is our
limitation, not the answer's fault: the answer then only has to parse.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from functools import lru_cache
from typing import Any

import jsonschema

JSON_OBJECT = {"type": "object"}


def is_json(response_format: Any) -> bool:
    """Does the request ask for a JSON answer (a schema, or JSON mode)?"""
    return isinstance(response_format, Mapping) and response_format.get("type") in ("json_schema", "json_object")


def response_schema(response_format: Any) -> dict[str, Any] | None:
    """The JSON schema the answer must fit: the request's own, `{"type": "object"}` in JSON
    mode, None for free text or a json_schema request without a schema object."""
    if not isinstance(response_format, Mapping):
        return None
    kind = response_format.get("type")
    if kind == "json_schema":
        spec = response_format.get("json_schema")
        schema = spec.get("schema") if isinstance(spec, Mapping) else None
        return schema if isinstance(schema, dict) else None
    if kind == "json_object":
        return dict(JSON_OBJECT)
    return None


def schema_name(response_format: Any) -> str | None:
    """`response_format.json_schema.name` (byLLM's return type), or None."""
    if not isinstance(response_format, Mapping) or response_format.get("type") != "json_schema":
        return None
    spec = response_format.get("json_schema")
    name = spec.get("name") if isinstance(spec, Mapping) else None
    return name if isinstance(name, str) else None


def check_answer(text: str | None, response_format: Any) -> tuple[Any, str | None]:
    """(the parsed answer, None), or (None, why it does not fit): empty, not JSON, or off its schema.
    A free-text answer is returned as it is."""
    if text is None or not text.strip():
        return None, "empty output"
    if not is_json(response_format):
        return text, None
    try:
        value = json.loads(text)
    except (ValueError, RecursionError) as exc:
        return None, f"invalid JSON: {exc}"
    schema = response_schema(response_format)
    if schema is None:
        return value, None
    validator = _validator(json.dumps(schema, sort_keys=True, separators=(",", ":")))
    if validator is None:
        return value, None
    error = jsonschema.exceptions.best_match(validator.iter_errors(value))
    if error is not None:
        return None, f"schema: {error.message} at /{'/'.join(map(str, error.absolute_path))}"
    return value, None


def fits(text: str | None, response_format: Any) -> bool | None:
    """True/False for a JSON answer (parses and fits its schema), None when the site answers free text."""
    if not is_json(response_format):
        return None
    return check_answer(text, response_format)[1] is None


@lru_cache(maxsize=256)
def _validator(schema_json: str) -> jsonschema.protocols.Validator | None:
    """A site sends the same schema on every call: compiled once per distinct schema; None when
    jsonschema rejects the schema itself."""
    schema = json.loads(schema_json)
    cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
    try:
        cls.check_schema(schema)
    except jsonschema.exceptions.SchemaError:
        return None
    return cls(schema)
