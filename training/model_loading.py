"""Load the base model and tokenizer for training, and wrap it with LoRA.

`base_model` can be:
- a path to a .gguf file (the offline default, Gemma 3 270M Q4_K_M): transformers loads it
  dequantized with `from_pretrained(folder, gguf_file=name)`; the tokenizer comes from the
  same file, so training and llama.cpp serving share one vocabulary;
- a Hugging Face directory or hub id (e.g. TinyLlama/TinyLlama-1.1B-Chat-v1.0).

QLoRA loads the base in bitsandbytes NF4. transformers cannot apply a bitsandbytes config
while it dequantizes a GGUF, so a GGUF base is first dequantized into a temporary HF
checkpoint and reloaded from there in 4 bit.

dtype: bfloat16 where training runs in bf16 (CUDA, or a CPU with AVX512-BF16/AMX: see
train.use_bf16), which halves a dense base's memory and spares autocast a bf16 copy of every
weight (Level, 8 steps on this CPU: peak RSS 4.0 GB against 5.1 GB, the same seconds per
step); float32 elsewhere (bf16 matmuls are slow on CPUs without those units). The LoRA
weights themselves stay float32 either way (PEFT casts adapters up), so updates keep precision.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch

from understudy.training.config import TrainConfig


def _split_gguf(base: str) -> tuple[str, dict]:
    """(folder or id, extra from_pretrained kwargs) for a base model reference."""
    if base.endswith(".gguf"):
        path = Path(base)
        return str(path.parent), {"gguf_file": path.name}
    return base, {}


def load_tokenizer(base: str):
    from transformers import AutoTokenizer

    where, extra = _split_gguf(base)
    tokenizer = AutoTokenizer.from_pretrained(where, **extra)
    if tokenizer.pad_token_id is None:  # padding only pads; labels of pads are -100
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _forget_gguf_quantizer(model) -> None:
    """A GGUF-loaded model remembers its GGUF 'quantizer'; clear it so it can be saved."""
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config


def load_model(base: str, device: str, qlora: bool = False, bf16: bool | None = None):
    """The base causal LM on `device`, frozen, in training dtype (bf16 None: bf16 on CUDA only)."""
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    where, extra = _split_gguf(base)
    if bf16 is None:
        bf16 = device.startswith("cuda")
    # (for a GGUF base transformers may warn that packed GGUF weights are fastest in float32:
    # without the `kernels` package it dequantizes the whole model, so the dtype holds)
    dtype = torch.bfloat16 if bf16 else torch.float32
    if not qlora:
        model = AutoModelForCausalLM.from_pretrained(where, dtype=dtype, **extra)
        if extra:
            _forget_gguf_quantizer(model)
        return model.to(device)  # type: ignore[arg-type]  # transformers wraps .to with functools.wraps: mypy sees no bound self

    bnb = BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_compute_dtype=dtype,
        bnb_4bit_use_double_quant=True,  # quantize the quantization constants too
    )
    if not extra:
        return AutoModelForCausalLM.from_pretrained(
            where, dtype=dtype, quantization_config=bnb, device_map={"": device}
        )
    with tempfile.TemporaryDirectory(prefix="understudy-dequant-") as tmp:
        dense = AutoModelForCausalLM.from_pretrained(where, dtype=dtype, **extra)
        _forget_gguf_quantizer(dense)
        dense.save_pretrained(tmp)
        del dense
        return AutoModelForCausalLM.from_pretrained(tmp, dtype=dtype, quantization_config=bnb, device_map={"": device})


def add_lora(model, config: TrainConfig):
    """Wrap `model` with fresh LoRA adapters on `config.target_modules`."""
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    if config.qlora:
        # casts norms to fp32 and enables input grads; no gradient checkpointing at this size
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    lora = LoraConfig(
        r=config.lora_r,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules=list(config.target_modules),
        bias="none",  # llama.cpp adapters carry no bias deltas
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, lora)
