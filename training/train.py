"""Train one call site's LoRA adapter: `train(config, train_examples, eval_examples, out_dir)`.

Reads top to bottom like nanoGPT's train.py:

    seed -> load base + tokenizer -> wrap with LoRA -> encode examples in the site's prompt
    rendering (loss on the response tokens only) -> length-bucketed micro-batches -> AdamW
    with linear warmup/decay, gradient accumulation and clipping -> eval loss -> greedy
    answers on a few held-out examples (for the GGUF check in training.verify) -> save the
    peft adapter, config.json and metrics.json.

Throughput (the same code on CPU and CUDA):
- micro-batches group examples of similar length (no padding to the longest of a random
  batch), right-padded (no fully masked attention row: `training.encoding.Batch`), and the
  output layer runs on the target positions only: with a 262k vocabulary it is most of the work;
- torch uses every core (`num_threads` 0) and bf16 autocast where the hardware has it
  (`precision` "auto": CUDA with bf16, or a CPU with AVX512-BF16/AMX), float32 otherwise;
- gradient checkpointing only for a micro-batch long enough to need it
  (`checkpoint_above_tokens` padded tokens), decided batch by batch; CUDA takes a larger `cuda_batch_size`.

A non-finite loss or gradient norm stops the job (`NonFiniteLoss`): nothing trained on it is
saved, exported or registered (the training job records the error).

A plain loop rather than transformers.Trainer: the datasets are small (tens to thousands
of examples), the loop is easy to follow, and it keeps the rich progress bar and the
measurements (seconds/step, peak RSS) exactly where they are taken.

The output folder holds what peft's `save_pretrained` writes (adapter_config.json,
adapter_model.safetensors), our `config.json` (TrainConfig) and `metrics.json`
(TrainResult without the big fields). `training.gguf_adapter` turns it into a GGUF adapter.
"""

from __future__ import annotations

import ctypes
import gc
import json
import math
import os
import random
import resource
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch

from understudy.inference.site_prompt import SitePrompt, render_request
from understudy.training.config import CONFIG_FILENAME, TrainConfig
from understudy.training.encoding import Encoded, collate, encode_examples
from understudy.training.epoch_choice import EPOCH_CANDIDATES, EpochCandidate, choose_epoch
from understudy.training.hf_generate import greedy_generate
from understudy.training.model_loading import add_lora, load_model, load_tokenizer
from understudy.training.target_loss import target_loss

METRICS_FILENAME = "metrics.json"
EPOCHS_DIRNAME = "epochs"  # the candidate epochs' adapters, saved for their held-out check


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
    tokens_per_example: float = 0.0  # prompt + target tokens, mean over the train split
    precision: str = "float32"  # bfloat16 when autocast ran in bf16
    batch_size: int = 1  # sequences per micro-batch actually used
    gradient_checkpointing: bool = False  # some micro-batch was long enough to need it
    checkpointed_batches: int = 0
    loss_history: list[float] = field(default_factory=list)  # per optimizer step
    epoch_eval_losses: list[float] = field(default_factory=list)  # held-out loss after each whole epoch
    best_epoch: int | None = None  # the epoch whose weights were kept (training.epoch_choice); None: the last step's
    # the epochs compared for that choice: epoch, held-out loss, held-out pass rate (None: not measured)
    epoch_candidates: list[dict] = field(default_factory=list)
    stopped_early: bool = False  # the job ended before its planned epochs: the held-out loss stopped improving
    # greedy answers of the trained HF model on the first eval examples: (index, text), and the
    # token ids each one was generated as (aligned with sample_outputs)
    sample_outputs: list[tuple[int, str]] = field(default_factory=list)
    sample_tokens: list[list[int]] = field(default_factory=list)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def release_freed_memory() -> None:
    """Hand freed heap pages back to the OS (glibc keeps them; other C libraries lack the call)."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


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


BUCKET_BATCHES = 16  # micro-batches sorted by length together: similar lengths, still shuffled


def micro_batches(data: list[Encoded], batch_size: int, rng: random.Random):
    """An endless stream of length-bucketed micro-batches (reshuffled every epoch): each window of
    `BUCKET_BATCHES` batches is sorted by length before it is cut, and the batches are shuffled."""
    order = list(range(len(data)))
    window = batch_size * BUCKET_BATCHES
    while True:
        rng.shuffle(order)
        batches = []
        for start in range(0, len(order), window):
            chunk = sorted(order[start : start + window], key=lambda j: len(data[j].input_ids))
            batches += [chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size)]
        rng.shuffle(batches)
        for batch in batches:
            yield [data[j] for j in batch]


def use_bf16(config: TrainConfig, device: str) -> bool:
    """bf16 autocast where the hardware computes in bf16 natively (`precision` "auto")."""
    if config.precision != "auto":
        return config.precision == "bfloat16"
    if device.startswith("cuda"):
        return torch.cuda.is_bf16_supported()
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return " avx512_bf16" in flags or " amx_bf16" in flags


class NonFiniteLoss(RuntimeError):
    """The loss or the gradient norm became NaN or infinite: the run is stopped, nothing is saved."""


def _check_finite(step: int, loss: float, grad_norm: torch.Tensor, config: TrainConfig, bf16: bool) -> None:
    if math.isfinite(loss) and bool(torch.isfinite(grad_norm)):
        return
    what = "loss" if not math.isfinite(loss) else "gradient norm"
    value = loss if what == "loss" else float(grad_norm)
    raise NonFiniteLoss(
        f"{what} is {value} at optimizer step {step + 1} (lr {config.lr}, "
        f"{'bfloat16' if bf16 else 'float32'}): training stopped, no adapter saved; "
        "lower `lr` or train in float32 (`precision`)"
    )


def _checkpointing_calls(model) -> tuple:
    """(enable(**kwargs), disable()) across transformers versions: 5.x after 5.17 names them
    `activation_checkpointing_*` (the `gradient_checkpointing_*` names warn), earlier versions
    have only `gradient_checkpointing_*` (5.17's Gemma3ForCausalLM on the GPU host had no other)."""
    if hasattr(model, "activation_checkpointing_enable"):
        return (
            lambda kwargs: model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs),
            model.activation_checkpointing_disable,
        )
    return (
        lambda kwargs: model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs),
        model.gradient_checkpointing_disable,
    )


class _Checkpointing:
    """Gradient checkpointing per micro-batch: on for one whose padded tokens exceed the
    threshold (its activations would dominate peak memory: a batch of 4 x 928 tokens adds
    3.5 GB without it on Gemma 3 270M), off otherwise (recomputing costs a third more time)."""

    def __init__(self, model, above_tokens: int):
        self.above_tokens, self.on, self.used = above_tokens, False, 0
        self.model = model.get_base_model() if hasattr(model, "get_base_model") else model
        self._enable, self._disable = _checkpointing_calls(self.model)
        self.model.enable_input_require_grads()  # checkpointed layers need a grad-requiring input

    def choose(self, micro_batch: list[Encoded]) -> None:
        needed = len(micro_batch) * max(len(e.input_ids) for e in micro_batch) > self.above_tokens
        self.used += needed
        if needed and not self.on:
            self._enable({"use_reentrant": False})
        elif self.on and not needed:
            self._disable()
        self.on = needed

    def off(self) -> None:
        if self.on:
            self._disable()
            self.on = False


class _BestEpoch:
    """Early stopping on the held-out loss, measured at the end of every whole epoch, and the
    choice of the epoch whose weights are saved (`training.epoch_choice`).

    Keeps a copy of the trainable (LoRA) weights of the `EPOCH_CANDIDATES` epochs of lowest held-out
    loss so far: a few MB each, so no disk checkpoint is needed. After `early_stop_patience` epochs
    in a row without a new best, the job stops. At the end the chosen epoch's weights are put back:
    the one whose held-out answers pass most often where they can be checked, else the lowest loss.
    So a small snapshot that overfits keeps its best epoch, and a large one that still improves
    trains every epoch.
    """

    def __init__(self, params: list[torch.Tensor], config: TrainConfig, steps_per_epoch: int, has_eval: bool):
        self.params, self.steps_per_epoch = params, steps_per_epoch
        self.patience = config.early_stop_patience
        # whole epochs to compare: only when the run is planned in epochs, more than one of them
        self.active = has_eval and self.patience > 0 and not config.max_steps and config.epochs > 1
        self.losses: list[float] = []
        self.best_loss = math.inf
        self.best_epoch: int | None = None  # 1-based, among `losses`: the lowest held-out loss
        self.kept: dict[int, list[torch.Tensor]] = {}  # epoch -> its weights, the lowest losses only
        self.candidates: list[EpochCandidate] = []  # what the choice compared, once made
        self.chosen_epoch: int | None = None
        self.stopped = False

    def epoch_ends(self, step: int, total_steps: int) -> bool:
        """After optimizer step `step` (0-based) a whole epoch is done, and more steps are planned."""
        return self.active and step + 1 < total_steps and (step + 1) % self.steps_per_epoch == 0

    def stop_after(self, loss: float | None, final: bool = False) -> bool:
        """Record the epoch's held-out loss; True when the job should stop now (never after the `final` one)."""
        if loss is None or not math.isfinite(loss):
            return False  # the non-finite guard speaks for itself at the end
        self.losses.append(loss)
        epoch = len(self.losses)
        self._keep(epoch)
        if loss < self.best_loss:
            self.best_loss, self.best_epoch = loss, epoch
            return False
        assert self.best_epoch is not None  # the first finite loss set it
        self.stopped = not final and epoch - self.best_epoch >= self.patience
        return self.stopped

    def _keep(self, epoch: int) -> None:
        self.kept[epoch] = [p.detach().clone() for p in self.params]
        if len(self.kept) > EPOCH_CANDIDATES:  # drop the highest loss (the later epoch among equals)
            del self.kept[max(self.kept, key=lambda e: (self.losses[e - 1], e))]

    def _load(self, epoch: int) -> None:
        with torch.no_grad():
            for param, kept in zip(self.params, self.kept[epoch]):
                param.copy_(kept)

    def choose(self, last_loss: float | None, score: Callable[[int], float | None] | None) -> float | None:
        """Put the chosen epoch's weights back and return its held-out loss. `score(epoch)`, called
        with that epoch's weights in place, measures its held-out pass rate (None: nothing to check);
        without it the lowest loss wins."""
        if not self.active or not self.kept:
            return last_loss  # one epoch, or a plan in steps: the last weights are the ones
        candidates = [EpochCandidate(e, self.losses[e - 1]) for e in sorted(self.kept)]
        if score is not None and len(candidates) > 1:
            measured = []
            for candidate in candidates:
                self._load(candidate.epoch)
                measured.append(replace(candidate, held_out_pass=score(candidate.epoch)))
            candidates = measured
        chosen = choose_epoch(candidates)
        self._load(chosen.epoch)
        self.candidates, self.chosen_epoch = candidates, chosen.epoch
        return chosen.eval_loss


def _epoch_scorer(
    model, out_dir: Path, score_epoch: Callable[[int, Path], float | None]
) -> Callable[[int], float | None]:
    """`score(epoch)` for `_BestEpoch.choose`: saves the model as it stands (that epoch's weights) to
    `out_dir/epochs/epoch-N` and hands the folder to `score_epoch`."""

    def score(epoch: int) -> float | None:
        adapter_dir = out_dir / EPOCHS_DIRNAME / f"epoch-{epoch}"
        model.save_pretrained(adapter_dir)
        return score_epoch(epoch, adapter_dir)

    return score


def batch_loss(model, batch: list[Encoded], pad_id: int, device: str, bf16: bool = False) -> tuple[torch.Tensor, int]:
    """(mean loss over the batch's target tokens, number of those tokens)."""
    return target_loss(model, collate(batch, pad_id).to(device), bf16)


@torch.no_grad()
def eval_loss(
    model, data: list[Encoded], pad_id: int, device: str, batch_size: int, bf16: bool = False
) -> float | None:
    if not data:
        return None
    model.eval()
    total, count = 0.0, 0
    ordered = sorted(data, key=lambda e: len(e.input_ids))
    for i in range(0, len(ordered), batch_size):
        loss, n = batch_loss(model, ordered[i : i + batch_size], pad_id, device, bf16)
        total += float(loss) * n
        count += n
    model.train()
    return total / max(count, 1)


def _progress(enabled: bool):
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    return Progress(
        TextColumn("[bold]train[/]"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]}"),
        TextColumn("eval {task.fields[eval]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),  # stdout stays for results (the CLI prints JSON there)
        disable=not enabled,
    )


def train(
    config: TrainConfig,
    train_examples: list[dict],
    eval_examples: list[dict],
    out_dir: str | Path,
    progress: bool = True,
    score_epoch: Callable[[int, Path], float | None] | None = None,
) -> TrainResult:
    """Train a LoRA adapter and save it under `out_dir`. `score_epoch(epoch, adapter_dir)`, where
    given, measures the held-out pass rate of an epoch's adapter (saved to `adapter_dir`) for the
    choice of the epoch kept (`training.epoch_choice`); without it the lowest held-out loss is kept."""
    t_start = time.perf_counter()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if not train_examples:
        raise ValueError("no training examples")
    seed_everything(config.seed)
    torch.set_num_threads(config.num_threads or os.cpu_count() or 1)
    device = config.resolved_device()
    bf16 = use_bf16(config, device)
    batch_size = config.cuda_batch_size if device.startswith("cuda") and config.cuda_batch_size else config.batch_size
    site_prompt = SitePrompt.from_dict(config.prompt)

    # --- model ----------------------------------------------------------------------
    base = config.resolved_base_model()
    tokenizer = load_tokenizer(base)
    model = load_model(base, device, qlora=config.qlora, bf16=bf16)
    release_freed_memory()  # the GGUF loader's temporaries: lower the floor the training peak sits on
    model = add_lora(model, config)
    model.train()
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)

    # --- data -----------------------------------------------------------------------
    train_data = encode_examples(tokenizer, train_examples, config.max_length, site_prompt)
    eval_data = encode_examples(tokenizer, eval_examples, config.max_length, site_prompt)
    if not train_data:
        raise ValueError("no training example renders in the site's prompt")
    pad_id = tokenizer.pad_token_id
    steps_per_epoch = math.ceil(len(train_data) / (batch_size * config.grad_accum))
    total_steps = config.max_steps or max(1, math.ceil(steps_per_epoch * config.epochs))
    batches = micro_batches(train_data, batch_size, random.Random(config.seed))
    checkpointing = _Checkpointing(model, config.checkpoint_above_tokens)

    # --- optimisation ---------------------------------------------------------------
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    losses: list[float] = []
    last_eval: float | None = None
    best = _BestEpoch(params, config, steps_per_epoch, bool(eval_data))
    t_train = time.perf_counter()
    with _progress(progress) as bar:
        task = bar.add_task("train", total=total_steps, loss="-", eval="-")
        for step in range(total_steps):
            for group in optimizer.param_groups:
                group["lr"] = lr_at(step, total_steps, config)
            step_loss = 0.0
            for _ in range(config.grad_accum):
                micro_batch = next(batches)
                checkpointing.choose(micro_batch)
                loss, _n = batch_loss(model, micro_batch, pad_id, device, bf16)
                (loss / config.grad_accum).backward()
                step_loss += loss.item() / config.grad_accum
            grad_norm = torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm)
            _check_finite(step, step_loss, grad_norm, config, bf16)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(step_loss)
            if config.eval_every and (step + 1) % config.eval_every == 0 and step + 1 < total_steps:
                last_eval = eval_loss(model, eval_data, pad_id, device, batch_size, bf16)
            if best.epoch_ends(step, total_steps):
                last_eval = eval_loss(model, eval_data, pad_id, device, batch_size, bf16)
                if best.stop_after(last_eval):
                    total_steps = step + 1
                    break
            bar.update(task, advance=1, loss=f"{step_loss:.4f}", eval="-" if last_eval is None else f"{last_eval:.4f}")
        train_seconds = time.perf_counter() - t_train
        if not best.stopped:
            last_eval = eval_loss(model, eval_data, pad_id, device, batch_size, bf16)
            if best.active:
                best.stop_after(last_eval, final=True)  # the last (maybe partial) epoch, to compare with the best
        bar.update(task, eval="-" if last_eval is None else f"{last_eval:.4f}")
    if last_eval is not None and not math.isfinite(last_eval):
        raise NonFiniteLoss(f"held-out eval loss is {last_eval} after training: no adapter saved")
    last_eval = best.choose(last_eval, None if score_epoch is None else _epoch_scorer(model, out_dir, score_epoch))

    # --- greedy answers on held-out examples, for the GGUF check ----------------------
    samples, sample_tokens = [], []
    checkpointing.off()
    for i, ex in enumerate(eval_examples[: config.verify_examples]):
        prompt = render_request(ex, site_prompt)
        if prompt is not None:
            text, tokens = greedy_generate(model, tokenizer, prompt, config.verify_max_tokens)
            samples.append((i, text))
            sample_tokens.append(tokens)

    # --- save -----------------------------------------------------------------------
    model.save_pretrained(out_dir)
    config.to_json(out_dir / CONFIG_FILENAME)
    result = TrainResult(
        out_dir=str(out_dir),
        steps=total_steps,
        epochs=total_steps * batch_size * config.grad_accum / len(train_data),
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
        tokens_per_example=sum(len(e.input_ids) for e in train_data) / len(train_data),
        precision="bfloat16" if bf16 else "float32",
        batch_size=batch_size,
        gradient_checkpointing=checkpointing.used > 0,
        checkpointed_batches=checkpointing.used,
        loss_history=losses,
        sample_outputs=samples,
        sample_tokens=sample_tokens,
        epoch_eval_losses=best.losses,
        best_epoch=best.chosen_epoch if best.active else None,
        epoch_candidates=[c.as_dict() for c in best.candidates],
        stopped_early=best.stopped,
    )
    (out_dir / METRICS_FILENAME).write_text(result.to_json() + "\n")
    return result
