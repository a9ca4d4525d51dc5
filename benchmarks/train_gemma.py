"""Training figures on the RPG corpus with the bundled Gemma 3 270M base (CPU unless CUDA).

Takes one RPG site's filtered examples from a corpus data directory (see
`benchmarks/rpg_corpus.py`), trains a LoRA version on N of them for E epochs, exports the
GGUF adapter, verifies it, and evaluates the held-out set with the bare base and with the
adapter. Prints seconds per step, wall time, peak RSS, adapter size, and held-out
parse-valid / validator-pass / exact rates before and after.

    .venv/bin/python benchmarks/train_gemma.py --data-dir /tmp/rpg-corpus --returns Level --examples 200 --epochs 2
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from training.pipeline import run_training_job
from training.snapshots import site_examples, write_snapshot
from understudy.settings import load_settings
from understudy.store import Store
from understudy.validators import ValidatorRegistry, site_validator_for, site_validator_reference


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--returns", default="Level", help="Which RPG site, by its return type.")
    parser.add_argument("--examples", type=int, default=200, help="Training examples.")
    parser.add_argument("--eval", type=int, default=20, help="Held-out examples.")
    parser.add_argument("--epochs", type=float, default=2)
    parser.add_argument("--max-steps", type=int, default=None)
    args = parser.parse_args()

    settings = load_settings(data_dir=args.data_dir)
    store = Store(settings.db_path, read_only=True)
    try:
        site = next(s for s in store.site_summaries() if s["returns"] == args.returns)
        registry = ValidatorRegistry(settings.validators)
        examples, counts = site_examples(store.cursor(), site["id"], filtered=True,
                                         validator_for=site_validator_for(store, site["id"], registry))
        validator = site_validator_reference(store, site["id"], examples[0]["response_format"], registry)
    finally:
        store.close()
    train = [e for e in examples if e["split"] == "train"][: args.examples]
    held = [e for e in examples if e["split"] == "eval"][: args.eval]
    snapshot = write_snapshot(train + held, args.data_dir / "snapshots", site["id"])
    config = {"epochs": args.epochs, "max_steps": args.max_steps, "lora_r": 16, "lora_alpha": 32,
              "batch_size": 1, "grad_accum": 4, "max_length": 1024, "verify_examples": 2, "verify_max_tokens": 256}
    out = args.data_dir / "bench-adapters" / f"{site['id']}-{int(time.time())}"
    started = time.monotonic()
    result = run_training_job(site["id"], str(snapshot), str(out), config, validator=validator)
    wall = time.monotonic() - started
    if result.get("error"):
        raise SystemExit(f"training failed: {result['error']}\n{result.get('traceback', '')}")
    m = result["metrics"]
    t = m["train"]
    print(f"site {site['name']} ({args.returns}): {len(train)} train x {args.epochs:g} epochs, {len(held)} held out")
    print(f"steps {t['steps']}, {t['seconds_per_step']:.2f} s/step (optimizer step = 4 examples), "
          f"train loop {t['train_seconds']:.0f} s, train() wall {t['wall_seconds']:.0f} s, job wall {wall:.0f} s")
    print(f"loss {t['first_loss']:.3f} -> {t['train_loss']:.3f}, eval loss {t['eval_loss']}")
    print(f"peak RSS {t['peak_rss_mb']:.0f} MB, adapter {m['adapter_bytes'] / 2**20:.1f} MiB, verified {result['verified']} {m['verify']}")
    for label, key in (("base", "base_heldout"), ("fine-tuned", "heldout")):
        h = m[key]
        print(f"held-out {label:10}: parse-valid {h['parse_valid_rate']}, validator-pass {h['validator_pass_rate']}, "
              f"exact {h['exact_match_rate']:.2f} (n={h['n']})")
    print(json.dumps(result, default=str))


if __name__ == "__main__":
    main()
