"""Training figures on the RPG corpus with the bundled Gemma 3 270M base (CPU unless CUDA).

Takes one RPG site's filtered examples from a corpus data directory (see
`benchmarks/rpg_corpus.py`), trains a LoRA version on N of them for E epochs, exports the
GGUF adapter, verifies it, and evaluates the held-out set with the bare base and with the
adapter. Prints the whole job's wall time, seconds per example, tokens per example, peak RSS,
adapter size, and held-out parse-valid / validator-pass / exact rates before and after.

    .venv/bin/python benchmarks/train_gemma.py --data-dir /tmp/rpg-corpus --returns Level --examples 200 --epochs 2
    ... --full-prompt   # the full rendering of every request instead of the site-compact one
    ... --json          # one JSON object (seconds_total, seconds_per_example, tokens_per_example, peak_rss_mb, ...)
    .venv/bin/python benchmarks/train_gemma.py --smoke --data-dir /tmp/rpg-smoke   # the tiny random model, 20 steps;
                        # makes a 4-level corpus first when the data directory has none

The training settings are the shipped defaults (`training.config.TrainConfig`): LoRA r=16 on
q/k/v/o, length-bucketed micro-batches of 4, logits on the target tokens only, bf16 where the
CPU or GPU has it, every core.
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from pathlib import Path

from understudy.inference import site_prompt
from understudy.settings import load_settings
from understudy.store import Store
from understudy.training.pipeline import run_training_job
from understudy.training.snapshots import site_examples, write_snapshot
from understudy.validators import ValidatorRegistry, site_validator_for, site_validator_reference


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--returns", default="Level", help="Which RPG site, by its return type.")
    parser.add_argument("--examples", type=int, default=200, help="Training examples.")
    parser.add_argument("--eval", type=int, default=20, help="Held-out examples.")
    parser.add_argument("--epochs", type=float, default=2)
    parser.add_argument("--max-steps", type=int, default=None)
    parser.add_argument("--full-prompt", action="store_true", help="Train on the full rendering (today's default).")
    parser.add_argument("--json", action="store_true", help="Print one JSON object.")
    parser.add_argument("--smoke", action="store_true", help="The tiny random model, 16 examples, 20 steps (seconds).")
    args = parser.parse_args()

    started = time.monotonic()
    settings = load_settings(data_dir=args.data_dir)
    smoke_config = configure_smoke(args, settings) if args.smoke else {}
    store = Store(settings.db_path, read_only=True)
    try:
        site = next(s for s in store.site_summaries() if s["returns"] == args.returns)
        registry = ValidatorRegistry(settings.validators)
        examples, _ = site_examples(
            store.cursor(), site["id"], filtered=True, validator_for=site_validator_for(store, site["id"], registry)
        )
        validator = site_validator_reference(store, site["id"], examples[0]["response_format"], registry)
    finally:
        store.close()
    train = [e for e in examples if e["split"] == "train"][: args.examples]
    held = [e for e in examples if e["split"] == "eval"][: args.eval]
    snapshot = write_snapshot(train + held, args.data_dir / "snapshots", site["id"])
    prompt = site_prompt.choose(
        train + held, marker=site["id"], mode=site_prompt.FULL if args.full_prompt else site_prompt.COMPACT
    )
    config = {"epochs": args.epochs, "max_steps": args.max_steps, "prompt": prompt.to_dict(), **smoke_config}
    out = args.data_dir / "bench-adapters" / f"{site['id']}-{prompt.mode}-{int(time.time())}"
    result = run_training_job(site["id"], str(snapshot), str(out), config, validator=validator, progress=not args.json)
    wall = time.monotonic() - started
    if result.get("error"):
        raise SystemExit(f"training failed: {result['error']}\n{result.get('traceback', '')}")
    m, t = result["metrics"], result["metrics"]["train"]
    figures = {
        "site": site["name"],
        "returns": args.returns,
        "prompt": prompt.mode,
        "examples": len(train),
        "held_out": len(held),
        "epochs": args.epochs,
        "steps": t["steps"],
        "seconds_total": wall,
        "seconds_train_loop": t["train_seconds"],
        "seconds_per_example": t["train_seconds"] / max(1, t["steps"] * t["batch_size"]),
        "seconds_per_step": t["seconds_per_step"],
        "tokens_per_example": t["tokens_per_example"],
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
        "precision": t["precision"],
        "batch_size": t["batch_size"],
        "gradient_checkpointing": t["gradient_checkpointing"],
        "first_loss": t["first_loss"],
        "last_loss": t["train_loss"],
        "eval_loss": t["eval_loss"],
        "adapter_mib": m["adapter_bytes"] / 2**20,
        "verified": result["verified"],
        "verify": m["verify"],
        "base_heldout": m["base_heldout"],
        "heldout": m["heldout"],
        "result": str(out / "result.json"),
    }
    if args.json:
        print(json.dumps(figures, default=str))
        return
    print(
        f"site {site['name']} ({args.returns}), {prompt.mode} prompt: {len(train)} train x {args.epochs:g} epochs, "
        f"{len(held)} held out"
    )
    print(
        f"whole job {wall:.0f} s; train loop {t['train_seconds']:.0f} s, {t['seconds_per_step']:.2f} s/step "
        f"({t['batch_size']} examples, {t['precision']}), {figures['seconds_per_example']:.2f} s/example"
    )
    print(
        f"tokens per example {t['tokens_per_example']:.0f}; loss {t['first_loss']:.3f} -> {t['train_loss']:.3f}, "
        f"eval loss {t['eval_loss']}"
    )
    print(
        f"peak RSS {figures['peak_rss_mb']:.0f} MB, adapter {figures['adapter_mib']:.1f} MiB, "
        f"verified {result['verified']} {m['verify']}"
    )
    for label, key in (("base", "base_heldout"), ("fine-tuned", "heldout")):
        h = m[key]
        print(
            f"held-out {label:10}: parse-valid {h['parse_valid_rate']}, validator-pass {h['validator_pass_rate']}, "
            f"exact {h['exact_match_rate']:.2f} (n={h['n']})"
        )
    print(json.dumps(figures, default=str))


def configure_smoke(args, settings) -> dict:
    """The tiny random Llama instead of Gemma, a few examples and steps; a 4-level corpus when there is none."""
    from understudy.training.tiny_model import make_tiny_llama

    if not settings.db_path.exists():
        from understudy.cli.corpus import generate_corpus

        generate_corpus(settings, runs=2, levels=2, parallel=1, progress=False)
    hf_dir, gguf = make_tiny_llama(args.data_dir / "tiny-model")
    args.examples, args.eval, args.max_steps = 16, 4, 20
    return {"base_model": str(hf_dir), "base_gguf": str(gguf), "lr": 1e-2, "device": "cpu", "verify_max_tokens": 32}


if __name__ == "__main__":
    main()
