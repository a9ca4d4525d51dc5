"""Agreement scoring: how well a local answer answers *its* request, next to the upstream's.

Shadow mode runs the local model beside the upstream; this module turns one pair of answers
into an `AgreementScore` that the promotion policy (`routing.policy`) aggregates. It is pure:
no I/O, no model loading. Sentence embeddings come in through the `similarity` callable
(normally `routing.similarity.cosine_similarity`) and the task validator already bound to
the request's arguments (`understudy.validators.BoundValidator`).

Every point an answer earns comes from a check a wrong answer would fail:

1. Gate. The local answer must be usable for this request, else the score is 0:
   - `parse_valid`: non-empty; on JSON sites strict JSON that validates against the
     request's json_schema;
   - `validator`: when the site has a task validator, it passes *with the request's
     arguments* (a map of the wrong size, a level of the wrong difficulty fail here).
   `local_valid` is the gate's verdict. The upstream answer goes through the same gate
   (`upstream_valid`): a pair whose upstream answer fails it is not `comparable` (there is
   nothing right to agree with), though `local_valid` still counts.
2. Raw agreement with the upstream answer, in [0, 1]:
   - JSON sites, field by field (`structural`):
       bool, null, enum/const .... 1 if equal else 0
       number .................... 1 if |u - l| <= max(abs_tol, number_tolerance * |u|)
       string .................... 1 if equal after normalisation, else clip(similarity, 0, 1)
                                   when a similarity function is given, else 0
       list ...................... multiset Jaccard of the items' canonical JSON
       object .................... mean over the union of keys; a key on one side only is 0
     Two kinds of field are left out, because the validator already checked them:
     `constrained` paths the validator reports (fields the request fixed, such as a level's
     requested width), and the site's `creative_paths` (fields with many right answers, such
     as a map's walls) — the latter only when a validator ran and passed: without one a
     creative field is compared like any other, so it never earns credit for free. When
     nothing is left to compare the validator's verdict is the whole judgement (1).
   - text sites (`semantic`): clip(cosine(embed(u), embed(l)), 0, 1) with a similarity
     function, else normalised equality.
3. Chance correction. An answer to a *different* request of the same site often looks a lot
   like this one's (same fields, similar numbers, the same kind of prose). `decoys` are
   upstream answers to other requests of the site; `chance` is the local answer's mean raw
   agreement with them, and

       score = clip((raw - chance) / (1 - chance), 0, 1)

   (Cohen's kappa in spirit): an answer that matches other requests as well as its own scores
   0, one that matches its own request exactly scores 1. Without decoys, or when the decoys
   match as perfectly as the answer (a site whose answers never vary), score = raw.

Paths, for `creative_paths` and `constrained`, are object keys joined by dots from the top of
the answer ("walls", "level.name"); list items do not add a segment, `*` matches any key, and
a path names its whole subtree.
"""

from __future__ import annotations

import fnmatch
import json
import math
import re
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from understudy import wire
from understudy.layered_settings import check_field_types, merge_layers
from understudy.validators import BoundValidator, Verdict

Similarity = Callable[[str, str], float]
Component = float | bool | str | int | None

# Settings older versions accepted; stored site policies may still carry them.
_RETIRED_SETTINGS = frozenset({"weights", "list_length_tolerance"})


@dataclass(frozen=True)
class ScoringPolicy:
    """How one site's answers are compared; `from_dict` builds it from site configuration."""

    number_tolerance: float = 0.10  # relative to upstream: 100 vs 110 agree, 100 vs 111 do not
    number_abs_tolerance: float = 1e-9  # so values at or near zero can still agree
    creative_paths: tuple[str, ...] = ()  # many right answers: left to the validator, never compared
    decoys: int = 5  # upstream answers to other requests used for the chance correction; 0: none

    def __post_init__(self) -> None:
        # Accept any iterable of paths from config but store a tuple (hashable, immutable).
        check_field_types(self)
        object.__setattr__(self, "creative_paths", tuple(self.creative_paths))
        if self.number_tolerance < 0 or self.number_abs_tolerance < 0:
            raise ValueError("number tolerances must be >= 0")
        if self.decoys < 0:
            raise ValueError("decoys must be >= 0")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None, overrides: Mapping[str, Any] | None = None) -> ScoringPolicy:
        """Global settings, then per-site `overrides` on top.

        Unknown keys raise ValueError: a misspelt setting silently ignored would change
        routing without anyone noticing.
        """
        layers = [{k: v for k, v in (layer or {}).items() if k not in _RETIRED_SETTINGS} for layer in (data, overrides)]
        return cls(**merge_layers(cls, "scoring", layers))


@dataclass(frozen=True)
class AgreementScore:
    """One shadow comparison. `components` is JSON-serialisable and stored as is."""

    score: float
    components: dict[str, Component]
    local_valid: bool
    comparable: bool = True  # False when the upstream answer gave nothing right to compare against
    upstream_valid: bool | None = None  # the upstream answer through the same gate

    @property
    def agreement(self) -> float | None:
        """The agreement of two valid answers where there was something to compare, else None.

        What the policy's agreement test weighs; validity is judged on its own. A pair with
        nothing left to compare (every field constrained or creative) says nothing here.
        """
        if not (self.comparable and self.local_valid) or self.components.get("compared_fields") == 0:
            return None
        return self.score


def score_pair(
    upstream_text: str,
    local_text: str,
    *,
    response_format: Mapping[str, Any] | None,
    policy: ScoringPolicy,
    validator: BoundValidator | None = None,
    similarity: Similarity | None = None,
    decoys: Sequence[str] = (),
) -> AgreementScore:
    """Score a local answer against the upstream one for the same request (module docstring)."""
    is_json, schema = _expected_output(response_format)
    components: dict[str, Component] = {}

    upstream_value, upstream_error = _parse(upstream_text, response_format)
    upstream_verdict = validator(upstream_text) if validator is not None and upstream_error is None else None
    upstream_valid = upstream_error is None and (upstream_verdict is None or upstream_verdict.passed)
    components["upstream_valid"] = upstream_valid

    local_value, error = _parse(local_text, response_format)
    components["parse_valid"] = error is None
    if error is not None:
        components["error"] = error
        return AgreementScore(
            0.0, components, local_valid=False, comparable=upstream_valid, upstream_valid=upstream_valid
        )
    verdict = validator(local_text) if validator is not None else None
    if verdict is not None:
        components["validator"] = verdict.passed
        if not verdict.passed:
            components["validator_detail"] = verdict.bounded_detail()
            return AgreementScore(
                0.0, components, local_valid=False, comparable=upstream_valid, upstream_valid=upstream_valid
            )
    if not upstream_valid:
        if upstream_error is None:
            assert upstream_verdict is not None  # it parsed, so its validator failed it
            upstream_error = f"upstream answer fails its validator ({upstream_verdict.summary()})"
        components["upstream_error"] = upstream_error
        return AgreementScore(0.0, components, local_valid=True, comparable=False, upstream_valid=False)

    measure = _Measure(is_json, schema, policy, similarity, verdict)
    raw = measure(upstream_value, local_value)
    components["structural" if is_json else "semantic"] = raw
    if is_json:
        components["compared_fields"] = measure.fields
    decoy_values = [v for v, e in (_parse(d, response_format) for d in decoys[: policy.decoys]) if e is None]
    chance = _mean(measure(d, local_value) for d in decoy_values) if decoy_values else None
    components["decoys"] = len(decoy_values)
    components["chance"] = chance
    score = _beyond_chance(raw, chance)
    components["agreement"] = score
    return AgreementScore(score, components, local_valid=True, comparable=True, upstream_valid=True)


def _beyond_chance(raw: float, chance: float | None) -> float:
    if chance is None or chance >= 1.0 - 1e-9:
        return _clip01(raw)  # no decoys, or every answer alike: nothing to correct for
    return _clip01((raw - chance) / (1.0 - chance))


# --- gate ---------------------------------------------------------------------------------


def _expected_output(response_format: Mapping[str, Any] | None) -> tuple[bool, dict | None]:
    """(is this a JSON site?, the schema its answers must fit), as understudy.wire reads them."""
    return wire.is_json(response_format), wire.response_schema(response_format)


def _parse(text: str | None, response_format: Mapping[str, Any] | None) -> tuple[Any, str | None]:
    """The parsed answer and None, or (None, why it is unusable): understudy.wire.check_answer."""
    return wire.check_answer(text, response_format)


# --- raw agreement ------------------------------------------------------------------------


class _Measure:
    """Raw agreement of one answer with a reference, with the site's exclusions applied."""

    def __init__(
        self,
        is_json: bool,
        schema: dict | None,
        policy: ScoringPolicy,
        similarity: Similarity | None,
        verdict: Verdict | None,
    ):
        self.is_json = is_json
        self.schema = schema or {}
        self.policy = policy
        self.similarity = similarity
        excluded = tuple(verdict.constrained) if verdict is not None else ()
        if verdict is not None and verdict.passed:
            excluded += policy.creative_paths  # vouched for by the validator
        self.excluded = excluded
        self.fields = 0  # leaf fields compared in the last JSON comparison

    def __call__(self, reference: Any, answer: Any) -> float:
        if not self.is_json:
            return _text_agreement(str(reference), str(answer), self.similarity)
        comparer = _JsonComparer(self.policy, self.similarity, self.schema, self.excluded)
        value = comparer.agreement(reference, answer, self.schema, ())
        self.fields = comparer.leaves
        return 1.0 if value is None else value  # nothing left to compare: the validator decided


def _text_agreement(upstream: str, local: str, similarity: Similarity | None) -> float:
    if _normalise(upstream) == _normalise(local):
        return 1.0
    if similarity is None:
        return 0.0
    return _clip01(similarity(upstream, local))


class _JsonComparer:
    """Walks the reference and the answer side by side, with the schema alongside.

    The schema is followed only to learn which strings and numbers are enums (compared
    exactly); the values themselves drive the walk, so a missing or partial schema still works.
    """

    def __init__(
        self, policy: ScoringPolicy, similarity: Similarity | None, root_schema: dict, excluded: tuple[str, ...]
    ):
        self.policy = policy
        self.similarity = similarity
        self.root = root_schema
        self.excluded = excluded
        self.leaves = 0

    def is_excluded(self, path: tuple[str, ...]) -> bool:
        return any(_path_matches(pattern, path) for pattern in self.excluded)

    def agreement(self, up: Any, lo: Any, schema: dict, path: tuple[str, ...]) -> float | None:
        """Agreement in [0, 1], or None when the whole subtree is excluded."""
        if path and self.is_excluded(path):
            return None
        schema = self._resolve(schema)
        if isinstance(up, dict) and isinstance(lo, dict):
            return self._object_agreement(up, lo, schema, path)
        self.leaves += 1
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
            self.leaves += 1
            return 1.0
        scores = []
        for key in list(up) + [k for k in lo if k not in up]:
            child_path = path + (key,)
            if self.is_excluded(child_path):
                continue
            if key not in up or key not in lo:
                self.leaves += 1
                scores.append(0.0)
                continue
            score = self.agreement(up[key], lo[key], self._property_schema(schema, key), child_path)
            if score is not None:
                scores.append(score)
        return _mean(scores) if scores else None

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
