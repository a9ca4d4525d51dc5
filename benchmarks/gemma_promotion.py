"""End to end with the bundled Gemma base: a trained version of an RPG site enters shadow, the
Jac generator runs through the proxy against the offline teacher, and the report shows the
agreement and whether the site was promoted.

    .venv/bin/python benchmarks/gemma_promotion.py --data-dir /tmp/rpg-corpus \\
        --result /tmp/rpg-corpus/bench-adapters/<site>-<t>/result.json --runs 20 --levels 3

Uses the default promotion policy unless UNDERSTUDY_ROUTING_POLICY says otherwise.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from jac_examples.corpus import generate_corpus
from routing.policy import PromotionPolicy
from routing.report import build_report
from understudy.settings import load_settings
from understudy.store import Store
from understudy.training_jobs import register_result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--result", type=Path, required=True, help="result.json of a training job")
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--levels", type=int, default=3)
    args = parser.parse_args()
    settings = load_settings(data_dir=args.data_dir)
    result = json.loads(args.result.read_text())

    store = Store(settings.db_path)
    try:
        version = register_result(store, result)
        print(f"registered v{version['version']} ({version['status']}) for site {result['site_id']}")
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


if __name__ == "__main__":
    main()
