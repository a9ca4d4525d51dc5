"""Training figures on a GPU host without network: `prepare` here, `run` there, `evaluate` here.

A GPU host lent for a few minutes has torch, transformers and peft but no network and none of
this project's other dependencies (no llama-cpp-python, no DuckDB). So the work is split:

    # 1. here: the RPG sites' examples from a corpus (benchmarks/rpg_corpus.py) as one JSON file
    .venv/bin/python benchmarks/train_gpu.py prepare --data-dir /tmp/rpg-corpus --out .device-carry/pkg/data.json
    # 2. there (PYTHONPATH holding the package tree and a gguf wheel, ../shared/device/prepare.sh):
    python3 train_gpu.py run --data data.json --base /tmp/g/gemma.gguf --out "$OUT"
    #    first the NaN diagnosis (one micro-batch, left- against right-padded, loss and gradients),
    #    then each site trained at the shipped defaults on CUDA and exported as a GGUF adapter
    # 3. here: the adapters brought back, answered by llama.cpp on this CPU (held-out validator pass)
    .venv/bin/python benchmarks/eval_adapter.py ...

`run` writes `<out>/<site>/adapter.gguf`, `config.json`, `metrics.json` and `<out>/gpu.json`
(the diagnosis and every site's figures).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

SITES = {"Level": {"examples": 200, "epochs": 2.0}, "Map": {"examples": None, "epochs": None}}  # None: all / default
HELD_OUT = 40


def prepare(data_dir: Path, out: Path, held_out: int, smoke: bool = False) -> None:
    from understudy.inference import site_prompt
    from understudy.settings import load_settings
    from understudy.store import Store
    from understudy.training.snapshots import site_examples
    from understudy.validators import ValidatorRegistry, site_validator_for

    settings = load_settings(data_dir=data_dir)
    store = Store(settings.db_path, read_only=True)
    data = {}
    try:
        registry = ValidatorRegistry(settings.validators)
        for returns, plan in SITES.items():
            site = next(s for s in store.site_summaries() if s["returns"] == returns)
            examples, _ = site_examples(
                store.cursor(), site["id"], filtered=True, validator_for=site_validator_for(store, site["id"], registry)
            )
            train = [e for e in examples if e["split"] == "train"][: plan["examples"]]
            held = [e for e in examples if e["split"] == "eval"][:held_out]
            if smoke and not held:  # a smoke corpus of a few calls may have no held-out split: harness check only
                train, held = train[:-held_out], train[-held_out:]
            prompt = site_prompt.choose(train + held, marker=site["id"])
            config = {"prompt": prompt.to_dict(), **({"epochs": plan["epochs"]} if plan["epochs"] else {})}
            keep = ("messages", "response_format", "tools", "completion")
            data[returns] = {
                "site_id": site["id"],
                "config": config,
                "train": [{k: e[k] for k in keep} for e in train],
                "eval": [{k: e[k] for k in keep} for e in held],
            }
            print(f"{returns}: {len(train)} train, {len(held)} held out, {prompt.mode} prompt")
    finally:
        store.close()
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(data))


def _left_padded(batch):
    """The same micro-batch left-padded, as training.encoding.collate built it before the fix."""
    import torch

    from understudy.training.encoding import Batch

    width = batch.input_ids.shape[1]
    ids, mask = torch.full_like(batch.input_ids, 0), torch.zeros_like(batch.attention_mask)
    full_labels = torch.full_like(batch.input_ids, -100)
    full_labels[:, width - batch.keep + 1 :] = batch.labels
    labels = torch.full_like(full_labels, -100)
    for row in range(ids.shape[0]):
        n = int(batch.attention_mask[row].sum())
        ids[row, width - n :] = batch.input_ids[row, :n]
        mask[row, width - n :] = 1
        labels[row, width - n :] = full_labels[row, :n]
    first = int((labels != -100).int().argmax(dim=1).min())
    keep = width - first + 1
    positions = (mask.cumsum(dim=1) - 1).clamp(min=0)
    return Batch(ids, mask, positions, labels[:, width - keep + 1 :], keep)


def diagnose(base: str, site: dict, device: str = "cuda") -> dict:
    """One bf16 micro-batch of 16 on `device`, left- and right-padded: are the loss and the LoRA gradients finite?"""
    import torch

    from understudy.inference.site_prompt import SitePrompt
    from understudy.training.config import TrainConfig
    from understudy.training.encoding import collate, encode_examples
    from understudy.training.model_loading import add_lora, load_model, load_tokenizer
    from understudy.training.target_loss import target_loss

    config = TrainConfig.from_dict({**site["config"], "base_model": base, "lora_dropout": 0.0})
    tokenizer = load_tokenizer(base)
    model = add_lora(load_model(base, device, bf16=True), config)
    torch.manual_seed(0)
    for p in model.parameters():  # LoRA B starts at zero: give the gradients something to carry
        if p.requires_grad:
            torch.nn.init.normal_(p, std=0.01)
    encoded = encode_examples(tokenizer, site["train"][:16], config.max_length, SitePrompt.from_dict(config.prompt))
    right = collate(encoded, tokenizer.pad_token_id)
    out = {
        "attn_implementation": getattr(model.config, "_attn_implementation", None),
        "lengths": sorted(len(e.input_ids) for e in encoded),
    }
    for name, batch in (("left_padded", _left_padded(right)), ("right_padded", right)):
        model.zero_grad()
        loss, _ = target_loss(model, batch.to(device), bf16=True)
        loss.backward()
        grads = [p.grad for p in model.parameters() if p.requires_grad and p.grad is not None]
        out[name] = {
            "loss": float(loss),
            "loss_finite": bool(torch.isfinite(loss)),
            "nonfinite_grad_tensors": sum(int(not torch.isfinite(g).all()) for g in grads),
            "grad_tensors": len(grads),
        }
        # the decoder's hidden states at real and pad positions
        with torch.no_grad(), torch.autocast(device, dtype=torch.bfloat16):
            b = batch.to(device)
            hidden = (
                model.get_base_model()
                .get_decoder()(input_ids=b.input_ids, attention_mask=b.attention_mask, position_ids=b.position_ids)
                .last_hidden_state
            )
        real = b.attention_mask.bool()
        out[name]["nan_hidden_real"] = int(torch.isnan(hidden[real]).any(dim=-1).sum())
        out[name]["nan_hidden_pad"] = int(torch.isnan(hidden[~real]).any(dim=-1).sum())
    del model
    if device == "cuda":
        torch.cuda.empty_cache()
    return out


def run(
    data_path: Path,
    base: str,
    out: Path,
    sites: list[str],
    base_gguf: str | None = None,
    device: str = "cuda",
    overrides: dict | None = None,
    diagnose_padding: bool | None = None,
) -> None:
    import torch

    from understudy.training.config import TrainConfig
    from understudy.training.gguf_adapter import export_gguf_adapter
    from understudy.training.train import train

    data = json.loads(data_path.read_text())
    overrides = overrides or {}
    cuda = device == "cuda"
    report = {"device": torch.cuda.get_device_name(0) if cuda else device, "torch": torch.__version__}
    import peft
    import transformers

    report["transformers"], report["peft"] = transformers.__version__, peft.__version__
    if not (cuda if diagnose_padding is None else diagnose_padding):
        # bf16 backward passes on a CPU: the Gemma base on 16 Map examples ran over an hour here
        # (2026-12-07) before training began
        report["diagnosis"] = {"skipped": "the padding diagnosis runs on CUDA (or with --diagnose)"}
    else:
        try:
            report["diagnosis"] = diagnose(base, data["Map"], device)
        except Exception as exc:  # the figures below matter more than the diagnosis
            report["diagnosis"] = {"error": f"{type(exc).__name__}: {exc}"}
    print(json.dumps(report["diagnosis"]), flush=True)
    for returns in sites:
        site = data[returns]
        started = time.perf_counter()
        config = TrainConfig.from_dict(
            {**site["config"], "base_model": base, "base_gguf": base_gguf or base, "device": device, **overrides}
        )
        try:
            result = train(config, site["train"], site["eval"], out / returns / "peft", progress=False)
            adapter = export_gguf_adapter(out / returns / "peft", out / returns / "adapter.gguf", base_gguf or base)
            figures = {k: v for k, v in result.__dict__.items() if k not in ("sample_outputs", "sample_tokens")}
            figures.update(
                seconds_job=time.perf_counter() - started,
                adapter_bytes=adapter.stat().st_size,
                peak_gpu_gb=torch.cuda.max_memory_allocated() / 1e9 if cuda else None,
            )
            (out / returns / "peft" / "config.json").replace(out / returns / "config.json")
        except Exception as exc:
            figures = {"error": f"{type(exc).__name__}: {exc}"}
        report[returns] = figures
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        print(returns, json.dumps({k: v for k, v in figures.items() if k != "loss_history"}), flush=True)
    (out / "gpu.json").write_text(json.dumps(report, indent=2, default=str))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("prepare")
    p.add_argument("--data-dir", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--held-out", type=int, default=HELD_OUT)
    p.add_argument(
        "--smoke",
        action="store_true",
        help="a corpus too small to have a held-out split lends it training examples (checks the harness only)",
    )
    r = sub.add_parser("run")
    r.add_argument("--data", type=Path, required=True)
    r.add_argument("--base", required=True, help="the Gemma GGUF")
    r.add_argument("--out", type=Path, required=True)
    r.add_argument("--sites", default="Level,Map")
    r.add_argument("--base-gguf", default=None, help="the serving GGUF when --base is an HF folder (a smoke run)")
    r.add_argument("--device", default="cuda")
    r.add_argument(
        "--config",
        default="{}",
        help="TrainConfig overrides as JSON, e.g. '{\"epochs\": 2}' (a smoke run passes its tiny settings here)",
    )
    r.add_argument(
        "--diagnose",
        action="store_true",
        help="run the padding diagnosis off CUDA too (default: CUDA only; slow on a CPU with the Gemma base)",
    )
    args = parser.parse_args()
    if args.command == "prepare":
        prepare(args.data_dir, args.out, args.held_out, args.smoke)
    else:
        run(
            args.data,
            args.base,
            args.out,
            args.sites.split(","),
            args.base_gguf,
            args.device,
            json.loads(args.config),
            diagnose_padding=True if args.diagnose else None,
        )
    sys.stdout.flush()


if __name__ == "__main__":
    main()
