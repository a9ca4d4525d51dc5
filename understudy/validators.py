"""Task validators: checks an answer must pass against the request it answers.

A validator is any function `check(answer: str, arguments: CallArguments)` where `arguments`
holds the call's arguments read from the request (`understudy.byllm.prompt.call_arguments`:
byLLM's argument lines by name, earlier tool calls, the whole request). It returns a bool,
`(passed, detail)`, a dict with a `passed` key, or an object with `passed` and `to_dict()`.
`detail` may name `constrained` answer paths (e.g. `["width", "height"]`): fields the request
fixed and the validator checked, which agreement scoring then leaves to the validator.

One validator call serves three places, always with the request's arguments: the training
filter (an answer that fails is not learned), the serving gate (a local answer that fails is
never returned) and shadow scoring (a failing local answer scores 0).

Where validators come from, most specific first:
- per site: the site's policy, `understudy policy SITE '{"validator": "module:function"}'`
  (`"validator": "none"` switches a type's validator off for that site);
- per response type (the name of the request's `json_schema`, e.g. byLLM's `Map`): the
  `validators` setting (`UNDERSTUDY_VALIDATORS='{"Recipe": "myapp.checks:recipe"}'`), then
  the entry-point group `understudy.validators` (name = response type, value = module:function),
  which is how this project ships the RPG showcase's `Level` and `Map` validators.
A function may carry `applies_to(schema: dict) -> bool`; it is then used only for schemas it
accepts (another program's `Level` is not the showcase's).

Constraints bound to the request. A function may also carry
`constrain(schema: dict, arguments: CallArguments) -> dict`: the response schema tightened with
what this request fixes (counts, coordinate ranges, fields to echo as `const`), in standard JSON
Schema keywords. The local model decodes under the tightened schema (`inference.constraints`),
so an answer that breaks a count or a bound cannot be produced at all; the validator still
checks every answer (a schema cannot say "no enemy on a wall"). `constrain` must return a new
schema and leave the one it is given alone; one that raises is logged and ignored (the plain
schema is used: constraints help the decoder, the validator is the judge).

Running a validator never raises: one that crashes fails closed (an answer we could not check
is not one we may serve or learn from).
"""

from __future__ import annotations

import copy
import json
import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any

from understudy import response_types, wire
from understudy.byllm.prompt import CallArguments, call_arguments

ENTRY_POINT_GROUP = "understudy.validators"
DISABLED = "none"  # a site policy's "validator": "none" turns the response type's validator off
MAX_DETAIL_CHARS = 2000  # a failing validator's detail is stored with every shadow result

log = logging.getLogger("understudy.validators")
ValidatorFn = Callable[[str, CallArguments], Any]


class ValidatorError(ValueError):
    """A validator reference that cannot be loaded (bad `module:function`, import error)."""


@dataclass(frozen=True)
class Verdict:
    passed: bool
    detail: dict[str, Any] = field(default_factory=dict)
    constrained: tuple[str, ...] = ()  # answer paths the request fixed (checked here, not by agreement)

    @property
    def failed_checks(self) -> list[str]:
        return [
            str(c.get("name")) for c in self.detail.get("checks", []) if isinstance(c, dict) and not c.get("passed")
        ]

    def summary(self) -> str:
        return ", ".join(self.failed_checks) or str(self.detail.get("error") or "invalid")

    def bounded_detail(self) -> str:
        text = json.dumps(self.detail, default=str, ensure_ascii=False)
        return text if len(text) <= MAX_DETAIL_CHARS else text[: MAX_DETAIL_CHARS - 1] + "…"


@dataclass(frozen=True)
class BoundValidator:
    """A validator with the arguments of one request: `bound(answer_text) -> Verdict`."""

    reference: str  # module:function, as stored in jobs and shown in reports
    fn: ValidatorFn
    arguments: CallArguments

    def __call__(self, answer: str) -> Verdict:
        return run_validator(self.fn, answer, self.arguments)

    def constrain(self, schema: dict[str, Any]) -> dict[str, Any]:
        """The response schema tightened for this request (the schema itself when the validator
        declares no constraints, or when its `constrain` fails)."""
        constrain = getattr(self.fn, "constrain", None)
        if not callable(constrain):
            return schema
        try:
            tightened = constrain(copy.deepcopy(schema), self.arguments)
        except Exception as exc:  # noqa: BLE001 - the user's code; the validator still judges
            _warn_once(
                self.reference,
                f"validator {self.reference}: constrain raised {type(exc).__name__}: {exc}; "
                "decoding under the plain response schema",
            )
            return schema
        if not isinstance(tightened, dict):
            _warn_once(
                self.reference,
                f"validator {self.reference}: constrain returned {type(tightened).__name__}, "
                "not a JSON schema object; decoding under the plain response schema",
            )
            return schema
        return tightened


_warned: set[str] = set()


def _warn_once(key: str, message: str) -> None:
    if key not in _warned:
        _warned.add(key)
        log.warning("%s", message)


def run_validator(fn: ValidatorFn, answer: str, arguments: CallArguments) -> Verdict:
    try:
        return _as_verdict(fn(answer, arguments))
    except Exception as exc:  # noqa: BLE001 - fail closed, whatever the user's code does
        return Verdict(False, {"error": f"validator raised {type(exc).__name__}: {exc}"})


def _as_verdict(result: Any) -> Verdict:
    if isinstance(result, Verdict):
        return result
    if isinstance(result, bool):
        return Verdict(result)
    if isinstance(result, tuple) and len(result) == 2:
        passed, detail = result
        detail = dict(detail or {}) if isinstance(detail, Mapping) else {"detail": str(detail)}
    elif isinstance(result, Mapping) and "passed" in result:
        passed, detail = result["passed"], dict(result)
    elif hasattr(result, "passed"):
        passed = result.passed
        detail = dict(result.to_dict()) if hasattr(result, "to_dict") else {}
    else:
        raise TypeError(f"a validator must return a bool, (passed, detail) or a report, not {type(result).__name__}")
    constrained = detail.get("constrained") or ()
    return Verdict(bool(passed), detail, tuple(str(p) for p in constrained))


# Versions recorded before the components installed as understudy.<name> name validators by
# the old top-level packages.
_RENAMED_PACKAGES = frozenset({"proxy", "routing", "training", "jac_examples"})


def load_validator(reference: str) -> ValidatorFn:
    """The function a `module:function` reference names."""
    module_name, _, attribute = reference.partition(":")
    if not module_name or not attribute:
        raise ValidatorError(f"validator must be given as module:function, not {reference!r}")
    if module_name.split(".")[0] in _RENAMED_PACKAGES:  # recorded before the components moved under understudy.
        module_name = "understudy." + module_name
    try:
        target: Any = response_types.load(f"{module_name}:{attribute}")
    except (ImportError, AttributeError) as exc:
        raise ValidatorError(f"cannot load validator {reference!r}: {exc}") from None
    if not callable(target):
        raise ValidatorError(f"validator {reference!r} is not callable")
    return target


class ValidatorRegistry:
    """Response type → validator reference (settings over entry points), loaded once each."""

    def __init__(self, by_type: Mapping[str, str] | None = None, *, use_entry_points: bool = True):
        self._by_type: dict[str, str] = {}
        if use_entry_points:
            for ep in entry_points(group=ENTRY_POINT_GROUP):
                self._by_type[ep.name] = ep.value
        self._by_type.update(by_type or {})
        self._loaded: dict[str, ValidatorFn | None] = {}
        self._lock = threading.Lock()

    def types(self) -> dict[str, str]:
        return dict(self._by_type)

    def reference_for(self, response_format: Mapping[str, Any] | None, site_reference: str | None = None) -> str | None:
        """The `module:function` that validates answers of this shape (None: no validator)."""
        if site_reference:
            return None if site_reference == DISABLED else site_reference
        reference = self._by_type.get(wire.schema_name(response_format) or "")
        if reference is None:
            return None
        fn = self._load(reference)
        applies = getattr(fn, "applies_to", None)
        if fn is None or (callable(applies) and not applies(wire.response_schema(response_format) or {})):
            return None
        return reference

    def for_request(
        self, request: Mapping[str, Any], site_reference: str | None = None, arguments: CallArguments | None = None
    ) -> BoundValidator | None:
        """The validator for this request, bound to its arguments; None when there is none."""
        reference = self.reference_for(request.get("response_format"), site_reference)
        if reference is None:
            return None
        fn = self._load(reference)
        if fn is None:
            return None
        return BoundValidator(reference, fn, arguments if arguments is not None else call_arguments(request))

    def _load(self, reference: str) -> ValidatorFn | None:
        if reference in self._loaded:
            return self._loaded[reference]
        with self._lock:
            if reference not in self._loaded:
                try:
                    self._loaded[reference] = load_validator(reference)
                except ValidatorError as exc:
                    # Fail closed at the call site: a validator that cannot load validates nothing,
                    # and says so once instead of on every request.
                    log.error("%s; answers of this type are checked without it", exc)
                    self._loaded[reference] = None
            return self._loaded[reference]


def bind(reference: str | None, request: Mapping[str, Any]) -> BoundValidator | None:
    """A validator named by reference (as a training job carries it), bound to one request."""
    if not reference:
        return None
    return BoundValidator(reference, load_validator(reference), call_arguments(request))


def site_validator_for(
    store: Any, site_id: str, registry: ValidatorRegistry | None = None
) -> Callable[[Mapping[str, Any]], BoundValidator | None]:
    """request -> the site's validator bound to it (the site's policy first, then its response type)."""
    registry = registry or ValidatorRegistry()
    site_reference = store.site_policy(site_id).get("validator")
    return lambda request: registry.for_request(request, site_reference)


def site_validator_reference(
    store: Any, site_id: str, response_format: Mapping[str, Any] | None, registry: ValidatorRegistry | None = None
) -> str | None:
    """The `module:function` validating this site's answers (what a training job carries)."""
    return (registry or ValidatorRegistry()).reference_for(response_format, store.site_policy(site_id).get("validator"))


def local_verdict(
    text: str, response_format: Mapping[str, Any] | None, validator: BoundValidator | None
) -> tuple[bool, str]:
    """May this answer stand as the request's answer? (parses, fits the schema, passes the validator)

    The serving gate; `routing.scoring.score_pair` applies the same checks to both answers of a pair.
    """
    error = wire.check_answer(text, response_format)[1]
    if error is not None:
        return False, f"unusable: {error}"
    if validator is not None:
        verdict = validator(text)
        if not verdict.passed:
            return False, f"fails its validator ({verdict.summary()})"
    return True, "ok"
