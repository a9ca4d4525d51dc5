"""Agreement scoring: how closely a local answer matches the upstream answer for one call.

Shadow mode runs the local model beside the upstream; this module turns one pair of answers
into an `AgreementScore` that the promotion policy (`routing.policy`) aggregates. It is pure:
no I/O, no model loading. Sentence embeddings come in through the `similarity` callable
(normally `routing.similarity.cosine_similarity`) and task validators through `validator`
(normally from `routing.validators`), so tests and callers choose what to plug in.

The formula
-----------
1. Gate. The local answer must be usable before agreement matters:
   - `parse_valid`: non-empty; for JSON sites (`response_format` of type `json_schema` or
     `json_object`) it must be strict JSON (byLLM rejects code fences and prose prefixes) and
     validate against the request's json_schema (jsonschema, the draft the schema declares).
   - `validator`: when a task validator is given, it must pass.
   If either fails the score is 0, whatever the similarity: an answer the program cannot use
   is worthless however close it looks. `local_valid` is the gate's verdict.
2. Quality components, each in [0, 1]:
   - `structural` (JSON sites): field-by-field agreement, `agreement(u, l)` =
       bool, null, enum/const strings or numbers ........ 1 if equal else 0
       number ....... 1 if |u - l| <= max(abs_tol, number_tolerance * |u|) else 0
                      (relative to the upstream value, the reference)
       string ....... 1 if equal after normalisation (casefold, collapsed whitespace), else
                      clip(similarity(u, l), 0, 1) when a similarity function is given, else 0
       list ......... multiset Jaccard of the items' canonical JSON, |U ∩ L| / |U ∪ L|
                      (order-free; two empty lists agree: 1)
       object ....... mean of agreement over the union of keys; a key on one side only is 0
       type mismatch  0
     Creative paths are left out of this mean.
   - `creative` (JSON sites whose policy names `creative_paths`): fields where many answers are
     right (a map's walls, enemy positions) are judged by shape, not equality: the same JSON
     type, lists of similar length (|len_u - len_l| <= list_length_tolerance * max length),
     objects by the mean over the union of their keys. Their correctness is the validator's
     job (the gate). `creative` is the mean over the creative fields found.
   - `semantic` (plain-text sites): clip(cosine(embed(u), embed(l)), 0, 1) through the
     similarity callable; without one, normalised equality (1 or 0), which is deliberately
     strict: a text site should not be promoted on a measure that cannot see paraphrase.
3. score = gate × Σ_c w_c·x_c / Σ_c w_c over the components present (`ScoringPolicy.weights`);
   a valid answer with no comparable content at all (e.g. both `{}`) scores 1.

When the upstream answer itself is unusable (empty, or not JSON on a JSON site) there is
nothing to agree with: the score is 0 and `comparable` is False, so the caller can keep the
sample out of the promotion window while still recording `local_valid`.

Paths, for `creative_paths`, are object keys joined by dots from the top of the answer
("walls", "level.name"); list items do not add a segment, and a `*` segment matches any key.
"""

from __future__ import annotations

import fnmatch
import json
import math
import re
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import jsonschema

from routing.policy import merge_layers
from routing.validators import Validator

Similarity = Callable[[str, str], float]
Component = float | bool | str

# Stored with every shadow result, so keep a failing validator's detail readable but bounded.
_MAX_DETAIL_CHARS = 2000

_DEFAULT_WEIGHTS = {"structural": 1.0, "creative": 1.0, "semantic": 1.0}


@dataclass(frozen=True)
class ScoringPolicy:
    """How one site's answers are compared; `from_dict` builds it from site configuration."""

    number_tolerance: float = 0.10  # relative to upstream: 100 vs 110 agree, 100 vs 111 do not
    number_abs_tolerance: float = 1e-9  # so values at or near zero can still agree
    list_length_tolerance: float = 0.5  # creative lists: relative length difference allowed
    creative_paths: tuple[str, ...] = ()  # judged by shape + validator, never by equality
    weights: Mapping[str, float] = field(default_factory=lambda: dict(_DEFAULT_WEIGHTS))

    def __post_init__(self) -> None:
        # Accept any iterable of paths from config but store a tuple (hashable, immutable).
        object.__setattr__(self, "creative_paths", tuple(self.creative_paths))
        # Weights given in part keep the defaults for the rest.
        object.__setattr__(self, "weights", {**_DEFAULT_WEIGHTS, **self.weights})
        unknown = set(self.weights) - set(_DEFAULT_WEIGHTS)
        if unknown:
            raise ValueError(f"unknown scoring weight(s): {sorted(unknown)}")
        if any(w < 0 for w in self.weights.values()):
            raise ValueError("scoring weights must be >= 0")

    @classmethod
    def from_dict(
        cls, data: Mapping[str, Any] | None, overrides: Mapping[str, Any] | None = None
    ) -> ScoringPolicy:
        """Global settings, then per-site `overrides` on top; `weights` merge key by key.

        Unknown keys raise ValueError: a misspelt setting silently ignored would change
        routing without anyone noticing.
        """
        return cls(**merge_layers(cls, "scoring", (data, overrides), merge_keys=frozenset({"weights"})))

    def is_creative(self, path: tuple[str, ...]) -> bool:
        return any(_path_matches(pattern, path) for pattern in self.creative_paths)


@dataclass(frozen=True)
class AgreementScore:
    """One shadow comparison. `components` is JSON-serialisable and stored as is."""

    score: float
    components: dict[str, Component]
    local_valid: bool
    comparable: bool = True  # False when the upstream answer gave nothing to compare against


def score_pair(
    upstream_text: str,
    local_text: str,
    *,
    response_format: Mapping[str, Any] | None,
    policy: ScoringPolicy,
    validator: Validator | None = None,
    similarity: Similarity | None = None,
) -> AgreementScore:
    """Score a local answer against the upstream one (see the module docstring)."""
    is_json, schema = _expected_output(response_format)
    components: dict[str, Component] = {}

    local_value, error = _parse_local(local_text, is_json, schema)
    components["parse_valid"] = error is None
    if error is not None:
        components["error"] = error
        return AgreementScore(0.0, components, local_valid=False)

    if validator is not None:
        passed, detail = _run_validator(validator, local_text)
        components["validator"] = passed
        if not passed:
            components["validator_detail"] = _bounded_json(detail)
            return AgreementScore(0.0, components, local_valid=False)

    if is_json:
        try:
            upstream_value = json.loads(upstream_text)
        except ValueError:
            components["upstream_parse_valid"] = False
            return AgreementScore(0.0, components, local_valid=True, comparable=False)
        _add_json_components(components, upstream_value, local_value, schema, policy, similarity)
    else:
        if not upstream_text.strip():
            components["upstream_parse_valid"] = False
            return AgreementScore(0.0, components, local_valid=True, comparable=False)
        components["semantic"] = _text_agreement(upstream_text, local_text, similarity)

    return AgreementScore(_combine(components, policy.weights), components, local_valid=True)


# --- gate ---------------------------------------------------------------------------------


def _expected_output(response_format: Mapping[str, Any] | None) -> tuple[bool, dict | None]:
    """(is this a JSON site?, the json_schema to validate against, if any)."""
    if not response_format:
        return False, None
    kind = response_format.get("type")
    if kind == "json_schema":
        schema = (response_format.get("json_schema") or {}).get("schema")
        return True, schema if isinstance(schema, dict) else None
    if kind == "json_object":
        return True, None
    return False, None


def unusable_reason(text: str, response_format: Mapping[str, Any] | None) -> str | None:
    """Why a local answer cannot stand as this request's answer (empty, not JSON, off-schema), or None."""
    is_json, schema = _expected_output(response_format)
    return _parse_local(text, is_json, schema)[1]


def _parse_local(text: str, is_json: bool, schema: dict | None) -> tuple[Any, str | None]:
    """The parsed local answer and None, or (None, why it is unusable)."""
    if not text.strip():
        return None, "empty output"
    if not is_json:
        return text, None
    try:
        value = json.loads(text)
    except ValueError as exc:
        return None, f"invalid JSON: {exc}"
    if schema is not None:
        try:
            error = jsonschema.exceptions.best_match(_schema_validator(_canonical(schema)).iter_errors(value))
        except jsonschema.exceptions.SchemaError:
            # The upstream accepted this schema, so a schema jsonschema rejects is our
            # limitation, not the local model's fault: fall back to "parses as JSON".
            return value, None
        if error is not None:
            return None, f"schema: {error.message} at /{'/'.join(map(str, error.absolute_path))}"
    return value, None


@lru_cache(maxsize=256)
def _schema_validator(schema_json: str) -> jsonschema.protocols.Validator:
    # A site sends the same schema on every call; compile it once per distinct schema.
    schema = json.loads(schema_json)
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema)


def _run_validator(validator: Validator, text: str) -> tuple[bool, Mapping[str, Any]]:
    try:
        passed, detail = validator(text)
    except Exception as exc:  # noqa: BLE001 - a crashing validator must not stop shadowing
        # Fail closed: an output we could not check is not one we may serve.
        return False, {"error": f"validator raised {type(exc).__name__}: {exc}"}
    return bool(passed), detail or {}


def _bounded_json(detail: Mapping[str, Any]) -> str:
    text = json.dumps(detail, default=str, ensure_ascii=False)
    return text if len(text) <= _MAX_DETAIL_CHARS else text[: _MAX_DETAIL_CHARS - 1] + "…"


# --- quality components -------------------------------------------------------------------


def _add_json_components(
    components: dict[str, Component],
    upstream: Any,
    local: Any,
    schema: dict | None,
    policy: ScoringPolicy,
    similarity: Similarity | None,
) -> None:
    comparer = _JsonComparer(policy, similarity, root_schema=schema or {})
    structural = comparer.agreement(upstream, local, schema or {}, ())
    if structural is not None:
        components["structural"] = structural
    if comparer.creative_scores:
        components["creative"] = _mean(comparer.creative_scores)


def _text_agreement(upstream: str, local: str, similarity: Similarity | None) -> float:
    if _normalise(upstream) == _normalise(local):
        return 1.0
    if similarity is None:
        return 0.0
    return _clip01(similarity(upstream, local))


def _combine(components: Mapping[str, Component], weights: Mapping[str, float]) -> float:
    present = [(weights[name], components[name]) for name in _DEFAULT_WEIGHTS if name in components]
    total = sum(w for w, _ in present)
    if total == 0:
        return 1.0  # valid, and nothing that could disagree
    return _clip01(sum(w * float(x) for w, x in present) / total)


class _JsonComparer:
    """Walks the upstream and local values side by side, with the schema alongside.

    The schema is followed only to learn which strings and numbers are enums (compared
    exactly); the values themselves drive the walk, so a missing or partial schema still works.
    """

    def __init__(self, policy: ScoringPolicy, similarity: Similarity | None, root_schema: dict):
        self.policy = policy
        self.similarity = similarity
        self.root = root_schema
        self.creative_scores: list[float] = []

    def agreement(self, up: Any, lo: Any, schema: dict, path: tuple[str, ...]) -> float | None:
        """Agreement in [0, 1], or None when the subtree is entirely creative."""
        if path and self.policy.is_creative(path):
            self.creative_scores.append(self._shape_agreement(up, lo))
            return None
        schema = self._resolve(schema)
        if isinstance(up, dict) and isinstance(lo, dict):
            return self._object_agreement(up, lo, schema, path)
        if isinstance(up, list) and isinstance(lo, list):
            return _list_agreement(up, lo)
        if isinstance(up, bool) or isinstance(lo, bool) or up is None or lo is None:
            return float(up is lo)  # bool/None: exact, and never equal to 0/1 numbers
        if _is_number(up) and _is_number(lo):
            if self._is_enum(schema):
                return float(up == lo)
            return float(self._numbers_agree(up, lo))
        if isinstance(up, str) and isinstance(lo, str):
            if self._is_enum(schema):
                return float(up == lo)
            return _text_agreement(up, lo, self.similarity)
        return 0.0  # different JSON types

    def _object_agreement(self, up: dict, lo: dict, schema: dict, path: tuple[str, ...]) -> float | None:
        if not up and not lo:
            return 1.0
        scores = []
        for key in list(up) + [k for k in lo if k not in up]:
            child_path = path + (key,)
            if key not in up or key not in lo:
                if self.policy.is_creative(child_path):
                    self.creative_scores.append(0.0)
                else:
                    scores.append(0.0)
                continue
            score = self.agreement(up[key], lo[key], self._property_schema(schema, key), child_path)
            if score is not None:
                scores.append(score)
        return _mean(scores) if scores else None

    def _shape_agreement(self, up: Any, lo: Any) -> float:
        if isinstance(up, dict) and isinstance(lo, dict):
            keys = set(up) | set(lo)
            if not keys:
                return 1.0
            return _mean(self._shape_agreement(up[k], lo[k]) if k in up and k in lo else 0.0 for k in keys)
        if isinstance(up, list) and isinstance(lo, list):
            longest = max(len(up), len(lo))
            return float(abs(len(up) - len(lo)) <= self.policy.list_length_tolerance * longest)
        return float(_json_type(up) == _json_type(lo))

    def _numbers_agree(self, up: float, lo: float) -> bool:
        if not (math.isfinite(up) and math.isfinite(lo)):
            return up == lo
        allowed = max(self.policy.number_abs_tolerance, self.policy.number_tolerance * abs(up))
        return abs(up - lo) <= allowed

    # Schema navigation: just enough of JSON Schema to find enums (local $refs, combinators).

    def _resolve(self, schema: dict, depth: int = 0) -> dict:
        ref = schema.get("$ref") if isinstance(schema, dict) else None
        if not isinstance(ref, str) or not ref.startswith("#") or depth > 32:
            return schema if isinstance(schema, dict) else {}
        target: Any = self.root
        for part in ref.lstrip("#").strip("/").split("/"):
            if not part:
                continue
            target = target.get(part.replace("~1", "/").replace("~0", "~"), {}) if isinstance(target, dict) else {}
        return self._resolve(target, depth + 1)

    def _branches(self, schema: dict) -> Iterable[dict]:
        yield schema
        for key in ("anyOf", "oneOf", "allOf"):
            for branch in schema.get(key, ()):
                yield from self._branches(self._resolve(branch))

    def _is_enum(self, schema: dict) -> bool:
        return any("enum" in s or "const" in s for s in self._branches(schema))

    def _property_schema(self, schema: dict, key: str) -> dict:
        for branch in self._branches(schema):
            props = branch.get("properties")
            if isinstance(props, dict) and key in props:
                return self._resolve(props[key])
        return {}


def _list_agreement(up: list, lo: list) -> float:
    if not up and not lo:
        return 1.0
    c_up, c_lo = Counter(map(_canonical, up)), Counter(map(_canonical, lo))
    return sum((c_up & c_lo).values()) / sum((c_up | c_lo).values())


# --- helpers ------------------------------------------------------------------------------

_WHITESPACE = re.compile(r"\s+")


def _normalise(text: str) -> str:
    return _WHITESPACE.sub(" ", text).strip().casefold()


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if _is_number(value):
        return "number"
    if isinstance(value, str):
        return "string"
    return "array" if isinstance(value, list) else "object"


def _path_matches(pattern: str, path: tuple[str, ...]) -> bool:
    parts = pattern.split(".")
    return len(parts) == len(path) and all(fnmatch.fnmatchcase(k, p) for p, k in zip(parts, path))


def _mean(values: Iterable[float]) -> float:
    values = list(values)
    return sum(values) / len(values)


def _clip01(x: float) -> float:
    if math.isnan(x):
        return 0.0
    return min(1.0, max(0.0, float(x)))
