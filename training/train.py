"""Train one call site's LoRA adapter: `train(config, train_examples, eval_examples, out_dir)`.

Reads top to bottom like nanoGPT's train.py:

    seed -> load base + tokenizer -> wrap with LoRA -> encode examples (loss on the
    response tokens only) -> AdamW with linear warmup/decay, gradient accumulation and
    clipping -> eval loss -> greedy answers on a few held-out examples (for the GGUF
    check in training.verify) -> save the peft adapter, config.json and metrics.json.

A plain loop rather than transformers.Trainer: the datasets are small (tens to thousands
of examples), the loop is easy to follow, and it keeps the rich progress bar and the
measurements (seconds/step, peak RSS) exactly where they are taken.

The output folder holds what peft's `save_pretrained` writes (adapter_config.json,
adapter_model.safetensors), our `config.json` (TrainConfig) and `metrics.json`
(TrainResult without the big fields). `training.gguf_adapter` turns it into a GGUF adapter.
"""

from __future__ import annotations

import json
import math
import random
import resource
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from training.config import CONFIG_FILENAME, TrainConfig
from training.encoding import Encoded, collate, encode_examples
from training.hf_generate import greedy_generate
from training.model_loading import add_lora, load_model, load_tokenizer
from training.prompt_format import render_prompt

METRICS_FILENAME = "metrics.json"


@dataclass
class TrainResult:
    out_dir: str
    steps: int
    epochs: float  # passes over the train split actually made
    wall_seconds: float  # whole call: loading, training, eval, saving
    train_seconds: float  # the optimisation loop only
    seconds_per_step: float
    peak_rss_mb: float  # process peak resident memory (includes loading)
    train_loss: float | None  # mean loss of the last optimizer step
    eval_loss: float | None  # mean token loss over the eval split
    first_loss: float | None  # loss of the first optimizer step (did it learn?)
    n_train: int
    n_eval: int
    n_truncated: int  # examples cut to max_length
    train_tokens: int  # target (loss) tokens in the train split
    trainable_params: int
    device: str
    loss_history: list[float] = field(default_factory=list)  # per optimizer step
    # greedy answers of the trained HF model on the first eval examples: (index, text)
    sample_outputs: list[tuple[int, str]] = field(default_factory=list)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)
    try:
        import numpy as np

        np.random.seed(seed)
    except ImportError:
        pass


def lr_at(step: int, total: int, config: TrainConfig) -> float:
    """Linear warmup to config.lr, then linear decay towards 0 at `total` steps."""
    if config.warmup_steps and step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    remaining = max(total - config.warmup_steps, 1)
    done = step - config.warmup_steps
    return config.lr * max(0.0, 1.0 - done / remaining)


def micro_batches(data: list[Encoded], batch_size: int, rng: random.Random):
    """An endless stream of shuffled micro-batches (reshuffled every epoch)."""
    order = list(range(len(data)))
    while True:
        rng.shuffle(order)
        for i in range(0, len(order), batch_size):
            yield [data[j] for j in order[i:i + batch_size]]


def batch_loss(model, batch: list[Encoded], pad_id: int, device: str) -> tuple[torch.Tensor, int]:
    """(mean loss over the batch's target tokens, number of those tokens)."""
    tensors = {k: v.to(device) for k, v in collate(batch, pad_id).items()}
    out = model(**tensors)
    n_tokens = int((tensors["labels"][:, 1:] != -100).sum())
    return out.loss, n_tokens


@torch.no_grad()
def eval_loss(model, data: list[Encoded], pad_id: int, device: str, batch_size: int) -> float | None:
    if not data:
        return None
    model.eval()
    total, count = 0.0, 0
    for i in range(0, len(data), batch_size):
        loss, n = batch_loss(model, data[i:i + batch_size], pad_id, device)
        total += float(loss) * n
        count += n
    model.train()
    return total / max(count, 1)


def _progress(enabled: bool):
    from rich.console import Console
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                               TimeElapsedColumn, TimeRemainingColumn)

    return Progress(
        TextColumn("[bold]train[/]"), BarColumn(), MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]}"), TextColumn("eval {task.fields[eval]}"),
        TimeElapsedColumn(), TimeRemainingColumn(),
        console=Console(stderr=True),  # stdout stays for results (the CLI prints JSON there)
        disable=not enabled,
    )


def train(
    config: TrainConfig,
    train_examples: list[dict],
    eval_examples: list[dict],
    out_dir: str | Path,
    progress: bool = True,
) -> TrainResult:
    t_start = time.perf_counter()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if not train_examples:
        raise ValueError("no training examples")
    seed_everything(config.seed)
    if config.num_threads:
        torch.set_num_threads(config.num_threads)
    device = config.resolved_device()

    # --- model ----------------------------------------------------------------------
    base = config.resolved_base_model()
    tokenizer = load_tokenizer(base)
    model = load_model(base, device, qlora=config.qlora)
    model = add_lora(model, config)
    model.train()
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)

    # --- data -----------------------------------------------------------------------
    train_data = encode_examples(tokenizer, train_examples, config.max_length)
    eval_data = encode_examples(tokenizer, eval_examples, config.max_length)
    pad_id = tokenizer.pad_token_id
    steps_per_epoch = math.ceil(len(train_data) / (config.batch_size * config.grad_accum))
    total_steps = config.max_steps or max(1, math.ceil(steps_per_epoch * config.epochs))
    batches = micro_batches(train_data, config.batch_size, random.Random(config.seed))

    # --- optimisation ---------------------------------------------------------------
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    losses: list[float] = []
    last_eval: float | None = None
    t_train = time.perf_counter()
    with _progress(progress) as bar:
        task = bar.add_task("train", total=total_steps, loss="-", eval="-")
        for step in range(total_steps):
            for group in optimizer.param_groups:
                group["lr"] = lr_at(step, total_steps, config)
            step_loss = 0.0
            for _ in range(config.grad_accum):
                loss, _n = batch_loss(model, next(batches), pad_id, device)
                (loss / config.grad_accum).backward()
                step_loss += loss.item() / config.grad_accum
            torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(step_loss)
            if config.eval_every and (step + 1) % config.eval_every == 0 and step + 1 < total_steps:
                last_eval = eval_loss(model, eval_data, pad_id, device, config.batch_size)
            bar.update(task, advance=1, loss=f"{step_loss:.4f}",
                       eval="-" if last_eval is None else f"{last_eval:.4f}")
        train_seconds = time.perf_counter() - t_train
        last_eval = eval_loss(model, eval_data, pad_id, device, config.batch_size)
        bar.update(task, eval="-" if last_eval is None else f"{last_eval:.4f}")

    # --- greedy answers on held-out examples, for the GGUF check ----------------------
    samples = []
    for i, ex in enumerate(eval_examples[:config.verify_examples]):
        prompt = render_prompt(ex["messages"], ex.get("response_format"), ex.get("tools"))
        samples.append((i, greedy_generate(model, tokenizer, prompt, config.verify_max_tokens)))

    # --- save -----------------------------------------------------------------------
    model.save_pretrained(out_dir)
    config.to_json(out_dir / CONFIG_FILENAME)
    result = TrainResult(
        out_dir=str(out_dir),
        steps=total_steps,
        epochs=total_steps * config.batch_size * config.grad_accum / len(train_data),
        wall_seconds=time.perf_counter() - t_start,
        train_seconds=train_seconds,
        seconds_per_step=train_seconds / total_steps,
        peak_rss_mb=peak_rss_mb(),
        train_loss=losses[-1] if losses else None,
        eval_loss=last_eval,
        first_loss=losses[0] if losses else None,
        n_train=len(train_data),
        n_eval=len(eval_data),
        n_truncated=sum(e.truncated for e in train_data + eval_data),
        train_tokens=sum(sum(1 for t in e.labels if t != -100) for e in train_data),
        trainable_params=trainable,
        device=device,
        loss_history=losses,
        sample_outputs=samples,
    )
    (out_dir / METRICS_FILENAME).write_text(result.to_json() + "\n")
    return result
