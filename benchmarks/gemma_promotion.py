"""End to end with the bundled Gemma base: a trained version of an RPG site enters shadow, the
Jac generator runs through the proxy against the offline teacher, and the report shows the
agreement and whether the site was promoted.

    .venv/bin/python benchmarks/gemma_promotion.py --data-dir /tmp/rpg-corpus \\
        --result /tmp/rpg-corpus/bench-adapters/<site>-<t>/result.json --runs 20 --levels 3

Uses the default promotion policy unless UNDERSTUDY_ROUTING_POLICY or `--policy` (the site's
overrides, as `understudy policy` takes them) says otherwise. Also prints the teacher's
self-agreement: its own answers to identical requests scored against each other with the
site's scoring, the ceiling a perfect student of a random teacher can reach.
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
from pathlib import Path

from jac_examples.corpus import generate_corpus
from routing.actions import set_policy
from routing.policy import PromotionPolicy
from routing.report import build_report
from routing.router import site_scoring
from routing.scoring import score_pair
from routing.similarity import cosine_similarity
from routing.validators import default_registry, schema_name
from understudy.settings import load_settings
from understudy.store import Store
from understudy.training_jobs import register_result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--result", type=Path, required=True, help="result.json of a training job")
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--levels", type=int, default=3)
    parser.add_argument("--policy", type=json.loads, default=None, help="Site overrides (JSON), e.g. "
                        '\'{"promotion": {"promote_threshold": 0.6}}\'')
    args = parser.parse_args()
    settings = load_settings(data_dir=args.data_dir)
    result = json.loads(args.result.read_text())

    store = Store(settings.db_path)
    try:
        version = register_result(store, result)
        print(f"registered v{version['version']} ({version['status']}) for site {result['site_id']}")
        if args.policy is not None:
            set_policy(store, result["site_id"], args.policy)
            print(f"site policy: {json.dumps(args.policy)}")
        ceiling, pairs = teacher_self_agreement(store, result["site_id"], args.policy or {})
        print(f"teacher self-agreement: {ceiling:.3f} over {pairs} pairs of answers to identical requests")
    finally:
        store.close()

    corpus = generate_corpus(settings, runs=args.runs, levels=args.levels, parallel=1)
    print(f"ran {corpus.succeeded}/{corpus.runs} generator runs in {corpus.seconds:.0f} s")

    store = Store(settings.db_path, read_only=True)
    try:
        [report] = build_report(store.cursor(), result["site_id"],
                                policy=PromotionPolicy.from_dict(settings.routing_policy))
        audit = store.cursor().execute(
            "SELECT ts, action, detail FROM audit WHERE site_id = ? ORDER BY ts", [result["site_id"]]).fetchall()
        shadow = store.cursor().execute(
            "SELECT avg(score), avg(local_valid::INT), avg(local_latency_ms), count(*) FROM shadow_results WHERE site_id = ?",
            [result["site_id"]]).fetchone()
    finally:
        store.close()
    agreement = report.agreement
    print(f"site {report.name}: state {report.state}, v{report.reported_version}")
    if agreement is not None:
        print(f"shadow samples {agreement.samples} (+{agreement.incomparable} incomparable), agreement {agreement.format()}, "
              f"local answers valid {shadow[1]:.0%}, local latency {shadow[2]:.0f} ms mean")
    print(f"calls {report.calls}: {report.local_calls} served locally ({(report.local_share or 0):.0%}), "
          f"{report.fallbacks} local fallbacks")
    for ts, action, detail in audit:
        print(f"  {ts:%H:%M:%S} {action}: {detail}")
    print(json.dumps(report.to_dict(), default=str)[:4000])


def teacher_self_agreement(store: Store, site_id: str, overrides: dict, max_pairs: int = 200) -> tuple[float, int]:
    """Mean score of the upstream's answers to one request against each other, with the site's scoring."""
    by_request: dict[str, list[str]] = {}
    response_format = None
    for request_json, response_json in store.cursor().execute(
            "SELECT request, response FROM calls WHERE site_id = ? AND status = 200 AND served_by = 'upstream'",
            [site_id]).fetchall():
        request = json.loads(request_json)
        response_format = request.get("response_format")
        answer = json.loads(response_json)["choices"][0]["message"]["content"]
        by_request.setdefault(json.dumps(request["messages"], sort_keys=True), []).append(answer)
    scoring = site_scoring(schema_name(response_format), overrides)
    validator = default_registry().for_response_format(response_format)
    pairs = itertools.islice(
        (pair for answers in by_request.values() for pair in itertools.combinations(answers, 2)), max_pairs)
    scores = [score_pair(a, b, response_format=response_format, policy=scoring, validator=validator,
                         similarity=cosine_similarity).score for a, b in pairs]
    return (statistics.mean(scores) if scores else float("nan")), len(scores)


if __name__ == "__main__":
    main()
