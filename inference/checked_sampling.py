"""Checked sampling: a local answer that fails its checks is drawn again before the upstream answers.

A small model under constraints (`inference.constraints`) cannot break what a schema can say (a
count, a range, a field to echo), but it can still break what only the validator knows (an enemy
on a wall, an unreachable cell). Such an answer is not served; instead the model draws again:

- the first draw is greedy (temperature 0), the answer the version was judged on first;
- each further draw samples at the site's `temperature` with a new seed (1, 2, ...: the same
  request draws the same sequence, so what was judged is what is served);
- at most `tries` draws, and no new draw starts once `budget_s` seconds have passed since the
  first began: past that the upstream is faster than another try;
- the first answer that passes the serving gate (parses, fits the request's schema, passes the
  site's validator bound to the request) is the answer; if none does, the last one is returned
  unserved and the upstream answers (`LocalAnswer.passed` False).

Best-of-n lifts validity as 1 - (1 - p)^n: it helps a model that is sometimes right, not one
that never is (the base control stays invalid). Shadow samples go through exactly this path, so
what the policy judges is what would be served, tries included; the tries of every local answer
are recorded on its call (`calls.local_tries`, `shadow_results.local_tries`).

A site's token cap comes from its own recorded upstream answers: `cap_factor` x the longest of
the recent ones, counted in the local model's tokens (a map the teacher writes in ~300 tokens
does not run on to 570). The request's own `max_tokens` still applies when smaller.

Settings per site under the policy's `sampling` section (`understudy policy SITE
'{"sampling": {"tries": 6}}'`) or globally (`UNDERSTUDY_SAMPLING_POLICY`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from understudy.layered_settings import check_field_types, merge_layers

CAP_REFERENCE_ANSWERS = 8  # the longest recent upstream answers the token cap is measured on
MIN_CAP_SAMPLES = 4  # fewer recorded answers than this: the request's max_tokens (or the default) caps
CAP_SLACK_TOKENS = 16  # added to the cap: a closing bracket or two beyond the longest answer seen


@dataclass(frozen=True)
class SamplingPolicy:
    tries: int = 4  # draws per local answer (the first greedy) before the upstream answers
    temperature: float = 0.7  # the later draws' sampling temperature
    budget_s: float = 30.0  # seconds after the first draw began past which no new draw starts
    cap_factor: float = 1.5  # token cap = this x the longest recent upstream answer (local tokens); 0: no cap

    def __post_init__(self) -> None:
        check_field_types(self)
        if self.tries < 1:
            raise ValueError("sampling tries must be >= 1")
        if not 0.0 < self.temperature <= 2.0:
            raise ValueError("sampling temperature must be in (0, 2]")
        if self.budget_s <= 0:
            raise ValueError("sampling budget_s must be > 0")
        if self.cap_factor < 0:
            raise ValueError("sampling cap_factor must be >= 0 (0: no cap)")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None, overrides: Mapping[str, Any] | None = None) -> SamplingPolicy:
        """Global settings, then the site's overrides; unknown keys raise ValueError."""
        return cls(**merge_layers(cls, "sampling", (data, overrides)))


Check = Callable[[str], tuple[bool, str]]  # answer text -> (may it be served?, why not)


def _always(_text: str) -> tuple[bool, str]:
    return True, "ok"


@dataclass(frozen=True)
class AnswerChecks:
    """What one request's local answer must satisfy, and how hard to try (built by the router)."""

    schema: dict[str, Any] | None = None  # the response schema tightened for this request; None: free text
    check: Check = _always  # the serving gate: parses, fits the schema, passes the bound validator
    sampling: SamplingPolicy = field(default_factory=SamplingPolicy)
    reference_answers: Sequence[str] = ()  # the site's recent upstream answers (the token cap's measure)
    site: str | None = None  # for reporting keywords the decoder cannot enforce, once per site


def token_cap(checks: AnswerChecks, count_tokens: Callable[[str], int]) -> int | None:
    """The site's cap in local tokens, or None when it has too few recorded answers to measure."""
    if checks.sampling.cap_factor <= 0 or len(checks.reference_answers) < MIN_CAP_SAMPLES:
        return None
    longest = sorted(checks.reference_answers, key=len, reverse=True)[:CAP_REFERENCE_ANSWERS]
    return math.ceil(checks.sampling.cap_factor * max(count_tokens(t) for t in longest)) + CAP_SLACK_TOKENS


Draw = Callable[[float, int | None], Any]  # (temperature, seed) -> LocalAnswer


def draw_until_valid(draw: Draw, checks: AnswerChecks) -> Any:
    """Draw answers (greedy first, then sampled with new seeds) until one passes `checks.check`,
    `tries` are spent or the budget has passed; the answer carries its tries and verdict."""
    started = time.perf_counter()
    answer = None
    for attempt in range(checks.sampling.tries):
        temperature, seed = (0.0, None) if attempt == 0 else (checks.sampling.temperature, attempt)
        answer = draw(temperature, seed)
        passed, why = checks.check(answer.text)
        elapsed_ms = (time.perf_counter() - started) * 1000
        answer = replace(answer, latency_ms=elapsed_ms, tries=attempt + 1, passed=passed, why=why)
        if passed or elapsed_ms >= checks.sampling.budget_s * 1000:
            break
    return answer
