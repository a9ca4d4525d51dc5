"""Cross-entropy on the target tokens, with the output layer applied a chunk at a time.

On a 262k-token vocabulary (Gemma 3) the logits are the largest tensors of a training step by
far: 4 answers of ~300 tokens give 1,200 x 262,144 floats, 1.3 GB, and autocast, the softmax and
their gradients hold several copies of that at once. So the decoder runs once for the hidden
states, and the output layer plus the loss run over chunks of target positions, each chunk
recomputed in the backward pass (activation checkpointing) instead of kept: peak memory for the
loss becomes one chunk's logits, whatever the answer length. Only positions that predict a
target token go through the output layer at all.

The result equals the model's own loss (tests/training/test_target_loss.py checks value and
gradients against `model(..., labels=...)`); model families whose output layer does more than a
linear map and an optional final soft-capping (a logit scale, say) take the plain path.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from understudy.training.encoding import IGNORE_INDEX, Batch

CHUNK_POSITIONS = 256  # target positions per output-layer chunk: 256 x 262k floats = 268 MB
_EXTRA_OUTPUT_SCALING = ("logit_scale", "logits_scaling", "output_multiplier_scale")


def _causal_lm(model):
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def chunkable(model) -> bool:
    """The output layer is a linear map (+ optional final soft-capping) we can apply ourselves."""
    causal_lm = _causal_lm(model)
    config = causal_lm.config
    config = getattr(config, "text_config", None) or config
    return (
        hasattr(causal_lm, "get_decoder")
        and causal_lm.get_output_embeddings() is not None
        and not any(getattr(config, name, None) not in (None, 1, 1.0) for name in _EXTRA_OUTPUT_SCALING)
    )


def _chunk_loss(
    hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, labels: torch.Tensor, softcap: float | None
) -> torch.Tensor:
    logits = F.linear(hidden, weight, bias).float()
    if softcap:
        logits = torch.tanh(logits / softcap) * softcap
    return F.cross_entropy(logits, labels, reduction="sum")


def target_loss(model, b: Batch, bf16: bool = False, chunk: int = CHUNK_POSITIONS) -> tuple[torch.Tensor, int]:
    """(mean loss over the batch's target tokens, number of those tokens)."""
    device_type = b.input_ids.device.type
    autocast = torch.autocast(device_type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
    targets = b.labels != IGNORE_INDEX
    count = int(targets.sum())
    if not chunkable(model):
        with autocast:
            logits = model(
                input_ids=b.input_ids,
                attention_mask=b.attention_mask,
                position_ids=b.position_ids,
                logits_to_keep=b.keep,
            ).logits
        loss = F.cross_entropy(
            logits[:, :-1].float().reshape(-1, logits.shape[-1]), b.labels.reshape(-1), ignore_index=IGNORE_INDEX
        )
        return loss, count

    causal_lm = _causal_lm(model)
    head = causal_lm.get_output_embeddings()
    config = getattr(causal_lm.config, "text_config", None) or causal_lm.config
    softcap = getattr(config, "final_logit_softcapping", None)
    with autocast:
        hidden = causal_lm.get_decoder()(
            input_ids=b.input_ids, attention_mask=b.attention_mask, position_ids=b.position_ids, use_cache=False
        ).last_hidden_state
        # columns -keep .. -2 predict the labels' columns; keep only rows with a target
        hidden = hidden[:, -b.keep : -1][targets]
        labels = b.labels[targets]
        total = hidden.new_zeros((), dtype=torch.float32)
        for start in range(0, count, chunk):
            part = slice(start, start + chunk)
            if torch.is_grad_enabled():
                total = total + checkpoint(
                    _chunk_loss, hidden[part], head.weight, head.bias, labels[part], softcap, use_reentrant=False
                )
            else:
                total = total + _chunk_loss(hidden[part], head.weight, head.bias, labels[part], softcap)
    return total / max(count, 1), count
