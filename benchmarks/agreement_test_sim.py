"""The whole-site agreement test in simulation: false promotions at the margin, and how soon a good version is promoted.

`routing.policy` judges a version's agreement with the teacher by two tests: unpaired (the
version's scores against the teacher's self-agreement reference) and paired (on calls the
teacher also answered twice, local agreement minus the teacher's self-agreement on that same
request). This runs `routing.policy.decide` after every shadow sample, as the router does, on
simulated shadow streams, at the shipped defaults, for two rules:

- `unpaired`: the test alone, each CS at alpha / 2 (the rule before the paired test);
- `product`: what the router runs in shadow now, the paired CS at alpha / 2 and each unpaired
  CS at alpha / 4 (`PromotionPolicy.unpaired_alpha`).

Per call, the local answer's agreement with the teacher's first answer and the teacher's second
answer's agreement with its first are Beta-distributed with the scenario's means and spreads,
tied by a Gaussian copula of correlation `corr` (the same request is hard or easy for both;
0.1 is what the showcase's `Level` site measured). Every answer is valid, so the decisions
rest on agreement. Before the version shadows, the teacher's reference window is full
(`reference_window` self-agreement samples, as in the learning curve); then

- `free` upstream (the offline teacher, a model server of one's own): a second answer on every
  shadowed call, so every sample is paired and the reference window slides by one per sample;
- `paid` upstream: a second answer on `self_agreement_rate` / 10 of calls once the window is full
  (`routing.router`), so pairs are rare and the unpaired test does the work.

The free reference is rebuilt every `--reference-every` samples (a CS over 200 scores costs
about 23 ms here; the router rebuilds it on every decision); the paired and the version's own
CSs are checked after every sample. Null scenarios are watched for `--null-samples` (default 600,
three times the default `max_shadow_samples`, past which the product has long retired the
version); power scenarios stop at `max_shadow_samples`, where the product retires an
undecided version.

    .venv/bin/python benchmarks/agreement_test_sim.py [--streams 200] [--power-streams 40] [--json] [--smoke]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections import Counter, deque
from dataclasses import dataclass

import numpy as np
from scipy import stats

from understudy.routing.policy import PromotionPolicy, SiteState, Verdict, decide


@dataclass(frozen=True)
class Scenario:
    name: str
    local: float  # mean agreement of the version's answers with the teacher's
    local_sd: float
    teacher: float  # the teacher's mean self-agreement
    teacher_sd: float
    corr: float = 0.1  # copula correlation of the two scores on one call

    @property
    def null(self) -> bool:
        """Worse than the teacher by more than the default margin: a promotion is a false one."""
        return self.local < self.teacher - PromotionPolicy().margin


SCENARIOS = (
    # Null: just past the margin (0.11 under the teacher), at the showcase's Level figures and at a
    # site where the teacher agrees with itself far more.
    Scenario("level-at-margin", 0.47, 0.27, 0.58, 0.22),
    Scenario("steady-at-margin", 0.74, 0.15, 0.85, 0.12),
    # Power: Level's first trained version as measured (0.56 vs the teacher's 0.58), and a version
    # exactly as good as the teacher.
    Scenario("level-like", 0.56, 0.27, 0.58, 0.22),
    Scenario("as-good", 0.58, 0.22, 0.58, 0.22),
)


def _beta(mean: float, sd: float):
    k = mean * (1 - mean) / sd**2 - 1
    return stats.beta(mean * k, (1 - mean) * k)


def draw(scenario: Scenario, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """n calls' (local agreement, teacher self-agreement), correlated through the request."""
    z = rng.multivariate_normal([0.0, 0.0], [[1.0, scenario.corr], [scenario.corr, 1.0]], size=n)
    u = stats.norm.cdf(z)
    local = _beta(scenario.local, scenario.local_sd).ppf(u[:, 0])
    teacher = _beta(scenario.teacher, scenario.teacher_sd).ppf(u[:, 1])
    return local, teacher


def run_stream(
    scenario: Scenario,
    rule: str,
    upstream: str,
    n: int,
    policy: PromotionPolicy,
    rng: np.random.Generator,
    reference_every: int,
) -> tuple[str, int]:
    """(verdict or 'shadow', samples seen) of one version shadowing for up to n calls."""
    paired = rule == "product"
    _, prefill = draw(scenario, policy.reference_window, rng)
    local, teacher = draw(scenario, n, rng)
    second_rate = 1.0 if upstream == "free" else policy.self_agreement_rate / 10
    asked = rng.random(n) < second_rate
    window = deque(prefill.tolist(), maxlen=policy.reference_window)
    evidence = policy.new_evidence(paired=paired)
    reference = policy.new_reference(paired).extend(list(window))
    stale = 0
    for i in range(n):
        evidence.add(float(local[i]), True, True)
        if asked[i]:
            window.append(float(teacher[i]))
            stale += 1
            if paired:
                evidence.add_pair(f"c{i}", float(local[i]), float(teacher[i]))
        if stale and (upstream == "paid" or stale >= reference_every):
            reference, stale = policy.new_reference(paired).extend(list(window)), 0
        decision = decide(SiteState.SHADOW, evidence, reference, policy)
        if decision.verdict in (Verdict.PROMOTED, Verdict.REJECTED):
            return decision.verdict.value, i + 1
    return "shadow", n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, default=200, help="streams per null scenario and upstream")
    parser.add_argument("--power-streams", type=int, default=40, help="streams per power scenario, rule and upstream")
    parser.add_argument("--null-samples", type=int, default=600, help="how long a null stream is watched")
    parser.add_argument(
        "--reference-every", type=int, default=10, help="free upstream: rebuild the reference CS every N samples"
    )
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--smoke", action="store_true", help="a few streams, to check the benchmark runs")
    args = parser.parse_args()
    if args.smoke:
        args.streams, args.power_streams, args.null_samples = 4, 2, 200
    policy = PromotionPolicy()  # the shipped defaults
    rng = np.random.default_rng(args.seed)
    started = time.perf_counter()
    results: dict[str, dict] = {}
    for scenario in SCENARIOS:
        for upstream in ("free", "paid"):
            if scenario.null:
                outcomes = [
                    run_stream(scenario, "product", upstream, args.null_samples, policy, rng, args.reference_every)
                    for _ in range(args.streams)
                ]
                promoted = sum(verdict == "promoted" for verdict, _ in outcomes)
                results[f"{scenario.name}/{upstream}"] = {
                    "null": True,
                    "rule": "product",
                    "streams": args.streams,
                    "samples": args.null_samples,
                    "promoted": promoted,
                    "false_promotion_rate": promoted / args.streams,
                }
                continue
            for rule in ("unpaired", "product"):
                outcomes = [
                    run_stream(scenario, rule, upstream, policy.max_shadow_samples, policy, rng, args.reference_every)
                    for _ in range(args.power_streams)
                ]
                promoted = [k for verdict, k in outcomes if verdict == "promoted"]
                verdicts = dict(Counter(verdict for verdict, _ in outcomes))
                results[f"{scenario.name}/{upstream}/{rule}"] = {
                    "null": False,
                    "rule": rule,
                    "streams": args.power_streams,
                    "samples": policy.max_shadow_samples,
                    "verdicts": verdicts,
                    "promoted_rate": len(promoted) / args.power_streams,
                    "median_samples_to_promotion": statistics.median(promoted) if promoted else None,
                }
    report = {
        "policy": {
            "margin": policy.margin,
            "alpha": policy.alpha,
            "min_samples": policy.min_samples,
            "max_shadow_samples": policy.max_shadow_samples,
            "reference_window": policy.reference_window,
        },
        "scenarios": {s.name: s.__dict__ for s in SCENARIOS},
        "results": results,
        "reference_every": args.reference_every,
        "seconds": round(time.perf_counter() - started, 1),
    }
    if args.json:
        print(json.dumps(report))
        return
    print(
        f"defaults: margin {policy.margin}, alpha {policy.alpha}, min_samples {policy.min_samples}, "
        f"max_shadow_samples {policy.max_shadow_samples}, reference_window {policy.reference_window}"
    )
    for name, r in results.items():
        if r["null"]:
            print(
                f"{name:26} null   false promotions {r['promoted']}/{r['streams']} = "
                f"{r['false_promotion_rate']:.1%} within {r['samples']} samples (bound: alpha {policy.alpha:.0%})"
            )
        else:
            median = r["median_samples_to_promotion"]
            print(
                f"{name:26} power  promoted {r['promoted_rate']:.0%} of {r['streams']} within {r['samples']} "
                f"(median at {median if median is not None else '-'} samples); verdicts {r['verdicts']}"
            )
    print(f"{report['seconds']} s")


if __name__ == "__main__":
    main()
