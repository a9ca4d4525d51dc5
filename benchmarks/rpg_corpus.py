"""RPG corpus figures: generation time for N levels through proxy + offline teacher, the
validator pass rate of the teacher's maps at the given flaw share, and export sizes per site.

    .venv/bin/python benchmarks/rpg_corpus.py --levels 500 --data-dir /tmp/rpg-corpus
    .venv/bin/python benchmarks/rpg_corpus.py --smoke --data-dir /tmp/rpg-smoke   # 4 levels, one run at a time

The data directory is kept, so `benchmarks/train_gemma.py` can train on it afterwards.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from understudy.cli.corpus import generate_corpus
from understudy.settings import load_settings
from understudy.store import Store
from understudy.training.exports import export_site


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--levels", type=int, default=500)
    parser.add_argument("--levels-per-run", type=int, default=5)
    parser.add_argument("--parallel", type=int, default=2)
    parser.add_argument("--flaw-share", type=float, default=0.1)
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--smoke", action="store_true", help="4 levels in 2 runs, one at a time (about a minute).")
    args = parser.parse_args()
    if args.smoke:
        args.levels, args.levels_per_run, args.parallel = 4, 2, 1

    settings = load_settings(data_dir=args.data_dir)
    runs = math.ceil(args.levels / args.levels_per_run)
    result = generate_corpus(
        settings, runs=runs, levels=args.levels_per_run, parallel=args.parallel, flaw_share=args.flaw_share
    )
    print(
        f"corpus: {result.succeeded}/{runs} runs, {result.succeeded * args.levels_per_run} levels "
        f"in {result.seconds:.0f} s ({result.seconds / max(1, result.succeeded * args.levels_per_run):.2f} s/level)"
    )

    store = Store(settings.db_path, read_only=True)
    try:
        summaries = store.site_summaries()
        exports = args.data_dir / "exports"
        for site in summaries:
            filtered = export_site(
                store,
                site["id"],
                filtered=True,
                jsonl=exports / f"{site['id']}.jsonl",
                parquet=exports / f"{site['id']}.parquet",
            )
            unfiltered = export_site(
                store, site["id"], filtered=False, jsonl=exports / f"{site['id']}-all.jsonl", parquet=None
            )
            valid = "-" if site["valid_rate"] is None else f"{site['valid_rate']:.1%}"
            print(
                f"{site['name'][:44]:44} calls {site['calls']:5}  parse-valid {valid:>6}  "
                f"kept {filtered['kept']:4}/{unfiltered['kept']:4} (validator dropped {filtered['dropped_validator']}, "
                f"invalid {filtered['dropped_invalid']})  jsonl {filtered['files']['jsonl']['bytes'] / 1024:.0f} KiB  "
                f"parquet {filtered['files']['parquet']['bytes'] / 1024:.0f} KiB"
            )
            if site["returns"] == "Map":
                passed = filtered["kept"] / max(1, unfiltered["kept"])
                print(f"  teacher maps passing the validator at flaw share {args.flaw_share}: {passed:.1%}")
        print(json.dumps({"corpus": result.to_dict(), "sites": summaries}, default=str))
    finally:
        store.close()


if __name__ == "__main__":
    main()
