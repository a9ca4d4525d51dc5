"""Held-out quality of a generator: exact-match, parse-valid and validator-pass rates.

`generate_fn(example) -> str` is any way of answering an example (the local GGUF model with
an adapter, the HF model, the upstream). For each held-out example we record:

- exact: the answer equals the upstream completion byte for byte, or — for JSON answers —
  parses to the same value (key order and whitespace do not matter to a typed caller);
- parse_valid: for json_schema / json_object sites, the answer parses as JSON and (for
  json_schema) validates against the schema with `jsonschema`; None for free-text sites;
- validator: the site's task validator (a `module:function` reference, e.g. the RPG level
  validator), bound to each example's own request so it checks the answer against that
  request's arguments; its pass rate is reported when given.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field

from understudy import wire
from understudy.validators import bind


@dataclass
class EvalReport:
    n: int
    exact_match: float  # fraction of examples
    parse_valid: float | None  # fraction of JSON-typed examples; None if there are none
    validator_pass: float | None  # fraction; None without a validator
    outputs: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {
            "n": self.n,
            "exact_match": self.exact_match,
            "parse_valid": self.parse_valid,
            "validator_pass": self.validator_pass,
        }


def _loads(text: str):
    try:
        return True, json.loads(text)
    except ValueError:
        return False, None


def is_exact(answer: str, completion: str, json_typed: bool) -> bool:
    if answer == completion:
        return True
    if json_typed:
        ok_a, a = _loads(answer)
        ok_c, c = _loads(completion)
        return ok_a and ok_c and a == c
    return False


def parse_valid(answer: str, response_format: dict | None) -> bool | None:
    """True/False for JSON-typed answers (parses and fits the schema), None when the site answers
    free text: understudy.wire.fits, as the recorder and the router read it."""
    return wire.fits(answer, response_format)


def evaluate(
    generate_fn: Callable[[dict], str],
    examples: list[dict],
    validator: str | None = None,
) -> EvalReport:
    exact = 0
    parsed: list[bool] = []
    passed: list[bool] = []
    outputs = []
    for ex in examples:
        answer = generate_fn(ex)
        outputs.append(answer)
        rf = ex.get("response_format")
        valid = parse_valid(answer, rf)
        if valid is not None:
            parsed.append(valid)
        exact += is_exact(answer, ex["completion"], valid is not None)
        if validator is not None:
            bound = bind(validator, {"messages": ex["messages"], "response_format": rf})
            assert bound is not None  # bind gives None only for an empty reference
            passed.append(bound(answer).passed)  # a crashing validator fails closed
    n = len(examples)
    return EvalReport(
        n=n,
        exact_match=exact / n if n else 0.0,
        parse_valid=sum(parsed) / len(parsed) if parsed else None,
        validator_pass=sum(passed) / len(passed) if validator is not None and n else None,
        outputs=outputs,
    )


def local_generate_fn(
    generator, adapter_path, max_tokens: int = 512, site_prompt=None, validator: str | None = None
) -> Callable[[dict], str]:
    """A generate_fn for `evaluate` from a inference.local_generate.LocalGenerator, in the site's prompt,
    answering as the proxy serves: under the response schema tightened by the validator for each
    example's request, drawn again while it fails its checks (inference.checked_sampling, default
    settings). Without a validator: the plain response schema, one greedy draw."""
    from understudy.inference.checked_sampling import draw_until_valid
    from understudy.inference.constraints import compile_schema
    from understudy.inference.local_model import LocalAnswer, checks_for
    from understudy.inference.site_prompt import SitePrompt, render_request

    site_prompt = site_prompt or SitePrompt()

    def generate(ex: dict) -> str:
        request = {"messages": ex["messages"], "response_format": ex.get("response_format")}
        checks = checks_for(request, bind(validator, request) if validator else None)
        constraint = None if checks.schema is None else compile_schema(checks.schema, site_prompt.lean)
        prompt = render_request(ex, site_prompt)

        def draw(temperature: float, seed: int | None) -> LocalAnswer:
            out = generator.complete(
                prompt,
                adapter_path=adapter_path,
                max_tokens=max_tokens,
                constraint=constraint,
                temperature=temperature,
                seed=seed,
                with_confidence=False,
            )
            return LocalAnswer(out.text, 0.0, out.prompt_tokens, out.completion_tokens)

        if validator is None:
            return draw(0.0, None).text
        return draw_until_valid(draw, checks).text

    return generate
