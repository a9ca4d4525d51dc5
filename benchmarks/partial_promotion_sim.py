"""Partial promotion in simulation: how often an inferior confident subset is promoted, and how soon a good one is.

A version's shadow samples are drawn from a two-kind site: "easy" calls (a `share` of them) on
which the model is confident and "hard" ones on which it is not. Per call: the local answer's
confidence, its agreement with the teacher, and the teacher's self-agreement on the same call
(a free upstream: every shadowed call has a second answer). Agreement scores are clipped
normals in [0, 1]; every answer is valid.

Null scenarios (the subset is worse than the teacher on its own calls by more than the margin;
a partial promotion is a false one):
- `uninformative`: confidence does not track correctness; local agreement 0.12 under the
  teacher everywhere.
- `easy-for-both`: the confident calls are easy for the teacher too (0.95 there, 0.70 on the
  rest); local agreement 0.12 under the teacher on them. Against the site-wide teacher
  (0.80) that subset would look fine: the paired reference is what rejects it.
- `at-the-margin`: the subset 0.11 under the teacher, just past the margin.
For these, the subset rule alone is checked after `max_shadow_samples` samples. Its bounds
only tighten (running intersections), so "non-inferior at the end" is "non-inferior at some
look", and the whole-site decisions the product also takes can only pre-empt it: the rate is
an upper bound on the product's false partial promotions.

Power scenarios (the subset is as good as the teacher), run through `routing.policy.decide`
after every sample as the router does: `good-subset` and `level-like` (the showcase's Level
figures: teacher 0.63, the 36 % most confident 0.62, the rest 0.44).

    .venv/bin/python benchmarks/partial_promotion_sim.py [--streams 1000] [--power-streams 40] [--json] [--smoke]
"""

from __future__ import annotations

import argparse
import json
import random
import time
from dataclasses import dataclass

from understudy.routing.partial import ShadowSample, partial_evidence
from understudy.routing.policy import PromotionPolicy, SiteState, decide, judge


@dataclass(frozen=True)
class Scenario:
    name: str
    share: float  # of calls that are easy (the model confident)
    easy_local: float  # mean agreement of the local answer with the teacher's, easy calls
    hard_local: float
    easy_teacher: float  # the teacher's mean self-agreement, easy calls
    hard_teacher: float
    informative: bool = True  # confidence tracks easy/hard
    sd: float = 0.1  # spread of each agreement score

    @property
    def null(self) -> bool:
        """The confident subset is worse than the teacher on its calls by more than the default margin."""
        return self.easy_local < self.easy_teacher - PromotionPolicy().margin or not self.informative


SCENARIOS = (
    Scenario("uninformative", 0.4, 0.58, 0.58, 0.70, 0.70, informative=False),
    Scenario("easy-for-both", 0.4, 0.83, 0.40, 0.95, 0.70),
    Scenario("at-the-margin", 0.4, 0.79, 0.40, 0.90, 0.70),
    Scenario("good-subset", 0.4, 0.95, 0.45, 0.90, 0.85, sd=0.08),
    Scenario("level-like", 0.36, 0.62, 0.44, 0.63, 0.63, sd=0.2),
)


def draw(scenario: Scenario, n: int, rng: random.Random) -> tuple[list[ShadowSample], dict[str, float]]:
    clip = lambda v: min(1.0, max(0.0, v))  # noqa: E731
    samples, paired = [], {}
    for i in range(n):
        easy = rng.random() < scenario.share
        confidence = rng.uniform(0.85, 0.99) if easy else rng.uniform(0.3, 0.8)
        if not scenario.informative:
            confidence = rng.uniform(0.3, 0.99)
        local = clip(rng.gauss(scenario.easy_local if easy else scenario.hard_local, scenario.sd))
        call = f"c{i}"
        samples.append(ShadowSample(call, confidence, local, True, True))
        paired[call] = clip(rng.gauss(scenario.easy_teacher if easy else scenario.hard_teacher, scenario.sd))
    return samples, paired


def subset_promoted(samples: list[ShadowSample], paired: dict[str, float], policy: PromotionPolicy) -> bool:
    """The subset rule alone, after all samples (see the module's note on why that is every look)."""
    site_reference = sum(paired.values()) / len(paired)
    partial = partial_evidence(samples, paired, site_reference, policy)
    if partial.threshold is None:
        return False
    j = judge(partial.subset, partial.reference, policy)
    return j.validity.n >= policy.min_samples and j.agreement_non_inferior() and j.validity_non_inferior()


def run_product_rule(
    samples: list[ShadowSample], paired: dict[str, float], policy: PromotionPolicy
) -> tuple[str, int, float | None]:
    """`decide` after every sample, as the router calls it: (verdict or 'shadow', samples, subset share)."""
    evidence, reference, seen = policy.new_evidence(paired=True), policy.new_reference(paired=True), {}
    decision, partial = None, None
    for k, sample in enumerate(samples, start=1):
        evidence.add(sample.agreement, sample.local_valid, sample.upstream_valid)
        evidence.add_pair(sample.call_id, sample.agreement, paired[sample.call_id])
        reference.add(paired[sample.call_id])
        seen[sample.call_id] = paired[sample.call_id]
        partial = partial_evidence(samples[:k], seen, sum(seen.values()) / len(seen), policy)
        decision = decide(SiteState.SHADOW, evidence, reference, policy, partial=partial)
        if decision.new_state is not SiteState.SHADOW:
            return decision.verdict.value, k, partial.share
    return "shadow", len(samples), None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, default=1000, help="streams per null scenario")
    parser.add_argument("--power-streams", type=int, default=40, help="streams per power scenario (slower)")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--smoke", action="store_true", help="a few streams, to check the benchmark runs")
    args = parser.parse_args()
    if args.smoke:
        args.streams, args.power_streams = 20, 2
    policy = PromotionPolicy()  # the shipped defaults
    rng = random.Random(args.seed)
    started = time.perf_counter()
    results = {}
    for scenario in SCENARIOS:
        if scenario.null:
            promoted = sum(
                subset_promoted(*draw(scenario, policy.max_shadow_samples, rng), policy) for _ in range(args.streams)
            )
            results[scenario.name] = {
                "null": True,
                "streams": args.streams,
                "partly_promoted": promoted,
                "false_partial_rate": promoted / args.streams,
            }
        else:
            outcomes = [
                run_product_rule(*draw(scenario, policy.max_shadow_samples, rng), policy)
                for _ in range(args.power_streams)
            ]
            partial = [(k, share) for verdict, k, share in outcomes if verdict == "partial"]
            verdicts = {}
            for verdict, _, _ in outcomes:
                verdicts[verdict] = verdicts.get(verdict, 0) + 1
            results[scenario.name] = {
                "null": False,
                "streams": args.power_streams,
                "verdicts": verdicts,
                "partial_rate": len(partial) / args.power_streams,
                "median_samples_to_partial": sorted(k for k, _ in partial)[len(partial) // 2] if partial else None,
                "median_served_share": sorted(s for _, s in partial)[len(partial) // 2] if partial else None,
            }
    report = {
        "policy": {
            "margin": policy.margin,
            "alpha": policy.alpha,
            "min_samples": policy.min_samples,
            "calibration_samples": policy.calibration_samples,
            "max_shadow_samples": policy.max_shadow_samples,
        },
        "scenarios": {s.name: {**s.__dict__, **results[s.name]} for s in SCENARIOS},
        "seconds": round(time.perf_counter() - started, 1),
    }
    if args.json:
        print(json.dumps(report))
        return
    print(
        f"defaults: margin {policy.margin}, alpha {policy.alpha}, calibration {policy.calibration_samples}, "
        f"max_shadow_samples {policy.max_shadow_samples}"
    )
    for s in SCENARIOS:
        r = results[s.name]
        if r["null"]:
            print(
                f"{s.name:15} null   false partial promotions {r['partly_promoted']}/{r['streams']} "
                f"= {r['false_partial_rate']:.1%} (bound: alpha {policy.alpha:.0%})"
            )
        else:
            share = "-" if r["median_served_share"] is None else f"{r['median_served_share']:.0%}"
            print(
                f"{s.name:15} power  partly promoted {r['partial_rate']:.0%} of {r['streams']} streams "
                f"(median at {r['median_samples_to_partial']} samples, serving {share}); verdicts {r['verdicts']}"
            )
    print(f"{report['seconds']} s")


if __name__ == "__main__":
    main()
