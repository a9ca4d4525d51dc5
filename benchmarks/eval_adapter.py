"""Held-out figures of a trained adapter as the proxy serves it: constraints and checked sampling, old and new.

Reads the held-out examples `benchmarks/train_gpu.py prepare` wrote (data.json) and an adapter
trained from them (`train_gpu.py run`, on a GPU host or with `--device cpu`), then answers every
held-out request with `inference.local_model.LocalModels` (what the proxy's worker thread runs):

- `new`: the response schema tightened by the site's validator for the request, checked sampling
  at the default settings (`inference.checked_sampling`), the token cap from the recorded answers;
- `old`: the request's own schema, one greedy draw, no cap (the decoding before this work);
- `base`: the bare base model under the same constraints and checked sampling as `new`.

Prints validator pass, parse-valid, draws, answer tokens (p50) and latency (p50) per mode, beside
the teacher's own validator pass on the site's recorded answers and its answer tokens.

    .venv/bin/python benchmarks/eval_adapter.py --data data.json --site Map --adapter DIR/adapter.gguf \\
        --n 40 --old 20 --base 10 [--json]
    .venv/bin/python benchmarks/eval_adapter.py --smoke --data D --site Level --adapter A --base-gguf TINY.gguf
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from understudy.inference.checked_sampling import SamplingPolicy
from understudy.inference.local_model import LocalModels, Variant, checks_for
from understudy.inference.site_prompt import SitePrompt
from understudy.training.config import default_gemma_gguf
from understudy.training.evaluate import parse_valid
from understudy.validators import ValidatorRegistry


def run_mode(models, examples, variant, registry, reference, *, constrained: bool, sampling: SamplingPolicy) -> dict:
    rows = []
    for ex in examples:
        request = {"messages": ex["messages"], "response_format": ex["response_format"]}
        validator = registry.for_request(request)
        checks = checks_for(
            request, validator if constrained else None, sampling, reference if constrained else (), "bench"
        )
        if not constrained:  # the request's own schema, nothing tightened; judged by the validator afterwards
            checks = checks_for(request, None, sampling)
        started = time.perf_counter()
        answer = models.complete_sync(request, variant, checks)
        seconds = time.perf_counter() - started
        rows.append(
            {
                "valid": bool(validator(answer.text).passed),
                "parse": parse_valid(answer.text, ex["response_format"]),
                "tries": answer.tries,
                "tokens": answer.completion_tokens,
                "seconds": seconds,
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    n = len(rows)
    return {
        "n": n,
        "validator_pass": sum(r["valid"] for r in rows) / n,
        "parse_valid": sum(bool(r["parse"]) for r in rows) / n,
        "mean_tries": sum(r["tries"] for r in rows) / n,
        "tokens_p50": statistics.median(r["tokens"] for r in rows),
        "seconds_p50": statistics.median(r["seconds"] for r in rows),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--site", default="Map")
    parser.add_argument("--adapter", type=Path, required=True, help="adapter.gguf (config.json beside it)")
    parser.add_argument("--n", type=int, default=40, help="held-out requests for `new`")
    parser.add_argument("--old", type=int, default=20, help="held-out requests for `old` (0: skip)")
    parser.add_argument("--base", type=int, default=10, help="held-out requests for `base` (0: skip)")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument(
        "--base-gguf", default=None, help="the base the adapter was trained on (default: the bundled Gemma)"
    )
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--smoke", action="store_true", help="2 new, 1 old and 1 base answer (checks the harness)")
    args = parser.parse_args()
    if args.smoke:
        args.n, args.old, args.base = 2, 1, 1

    site = json.loads(args.data.read_text())[args.site]
    held, train = site["eval"], site["train"]
    prompt = SitePrompt.from_dict(json.loads((args.adapter.parent / "config.json").read_text()).get("prompt"))
    registry = ValidatorRegistry()
    reference = tuple(e["completion"] for e in train[-64:])  # the site's recent upstream answers (the cap's measure)
    models = LocalModels(args.base_gguf or default_gemma_gguf(), n_threads=args.threads)
    teacher_valid = [
        registry.for_request({"messages": e["messages"], "response_format": e["response_format"]})(
            e["completion"]
        ).passed
        for e in held
    ]
    figures = {
        "site": args.site,
        "held_out": len(held),
        "teacher": {
            "validator_pass_heldout": sum(teacher_valid) / len(held),
            "tokens_p50": statistics.median(models.count_tokens(e["completion"]) for e in held),
        },
    }
    sampling = SamplingPolicy()
    try:
        adapter = Variant(str(args.adapter), prompt)
        figures["new"] = run_mode(
            models, held[: args.n], adapter, registry, reference, constrained=True, sampling=sampling
        )
        if args.old:
            figures["old"] = run_mode(
                models,
                held[: args.old],
                adapter,
                registry,
                reference,
                constrained=False,
                sampling=SamplingPolicy(tries=1, cap_factor=0),
            )
        if args.base:
            figures["base"] = run_mode(
                models, held[: args.base], Variant(None), registry, reference, constrained=True, sampling=sampling
            )
    finally:
        models.close()
    if args.json:
        print(json.dumps(figures))
        return
    print(
        f"{args.site}: teacher held-out validator pass {figures['teacher']['validator_pass_heldout']:.0%}, "
        f"answer tokens p50 {figures['teacher']['tokens_p50']:.0f}"
    )
    for mode in ("new", "old", "base"):
        if mode in figures:
            f = figures[mode]
            print(
                f"{mode:5} n={f['n']:3} validator pass {f['validator_pass']:.0%}  parse-valid {f['parse_valid']:.0%}  "
                f"draws {f['mean_tries']:.2f}  tokens p50 {f['tokens_p50']:.0f}  p50 {f['seconds_p50']:.1f} s"
            )
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
