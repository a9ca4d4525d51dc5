"""The answer a request asks for, read once from the OpenAI wire format's `response_format`.

Every part that asks "what must this answer be?" and "is it?" asks here: the recorder (a call's
parse-valid flag), the router (the serving gate and the shadow scores), constrained decoding and
checked sampling (the schema to decode under), training's held-out evaluation and
`understudy eval`. One reading, so they cannot disagree about one answer:

- `{"type": "json_schema", "json_schema": {"name", "schema"}}`: a JSON answer fitting `schema`
  (any JSON value when the schema is missing);
- `{"type": "json_object"}`: a JSON object (OpenAI's JSON mode promises an object);
- anything else, or none: free text; any non-empty text fits.

A schema that the validator itself rejects was still accepted by the upstream, so it is our
limitation, not the answer's fault: the answer then only has to parse.

Validation is jsonschema-rs (the Rust `jsonschema` crate): the recorder checks every typed answer
on its writer thread, which shares the interpreter lock with the request path, and the Python
`jsonschema` package took ~47 µs a byLLM answer there against ~0.5 µs (benchmarks/proxy_overhead.py
measured the tail it caused). Compiled validators are cached per schema, keyed by the schema's
canonical JSON (msgspec, sorted keys: ~1 µs where `json.dumps` took ~10 µs).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from functools import lru_cache
from typing import Any

import jsonschema_rs
import msgspec

_canonical = msgspec.json.Encoder(order="sorted")

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
    validator = _validator(_canonical.encode(schema))
    if validator is None or validator.is_valid(value):
        return value, None
    error = next(iter(validator.iter_errors(value)))
    return None, f"schema: {error.message} at /{'/'.join(map(str, error.instance_path))}"


def fits(text: str | None, response_format: Any) -> bool | None:
    """True/False for a JSON answer (parses and fits its schema), None when the site answers free text."""
    if not is_json(response_format):
        return None
    return check_answer(text, response_format)[1] is None


@lru_cache(maxsize=256)
def _validator(schema_json: bytes) -> jsonschema_rs.Validator | None:
    """A site sends the same schema on every call: compiled once per distinct schema (its draft by
    `$schema`, else 2020-12); None when the validator rejects the schema itself."""
    try:
        return jsonschema_rs.validator_for(json.loads(schema_json))
    except (jsonschema_rs.ValidationError, jsonschema_rs.ReferencingError, ValueError):
        return None
