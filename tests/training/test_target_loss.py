"""The chunked target loss equals the model's own loss, in value and in LoRA gradients.

Checked on the tiny Llama and on a tiny random Gemma 3 (the bundled base's family, with final
logit soft-capping switched on so that path is exercised too), with chunks smaller than the
number of targets so several chunks and the checkpointed backward pass run.
"""

from __future__ import annotations

import pytest
import torch

from understudy.training.config import TrainConfig
from understudy.training.encoding import IGNORE_INDEX, Encoded, collate
from understudy.training.model_loading import add_lora
from understudy.training.target_loss import chunkable, target_loss


def _batch(vocab: int, seed: int = 0):
    rng = torch.Generator().manual_seed(seed)
    encoded = []
    for prompt_len, target_len in ((7, 5), (12, 9), (3, 2)):
        ids = torch.randint(3, vocab, (prompt_len + target_len,), generator=rng).tolist()
        encoded.append(Encoded(input_ids=ids, labels=[IGNORE_INDEX] * prompt_len + ids[prompt_len:], truncated=False))
    return collate(encoded, pad_id=0)


def _reference_loss(model, b):
    """The model's own loss: full logits, labels shifted by HF, padding ignored."""
    width = b.input_ids.shape[1]
    labels = torch.full((b.input_ids.shape[0], width), IGNORE_INDEX)
    labels[:, width - b.keep + 1 :] = b.labels  # labels[t] is the token at column t
    out = model(input_ids=b.input_ids, attention_mask=b.attention_mask, position_ids=b.position_ids, labels=labels)
    return out.loss


def _lora_grads(model):
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


def _check(model, vocab):
    model = add_lora(model, TrainConfig(lora_dropout=0.0))
    for p in model.parameters():  # LoRA B starts at zero: give the adapters something to differentiate
        if p.requires_grad:
            torch.nn.init.normal_(p, std=0.02)
    assert chunkable(model)
    b = _batch(vocab)
    expected = _reference_loss(model, b)
    expected.backward()
    expected_grads = _lora_grads(model)
    model.zero_grad()

    loss, count = target_loss(model, b, chunk=4)  # 16 targets: four chunks
    assert count == 16
    loss.backward()
    assert torch.allclose(loss, expected, atol=1e-5), (float(loss), float(expected))
    for name, grad in _lora_grads(model).items():
        assert torch.allclose(grad, expected_grads[name], atol=1e-6, rtol=1e-4), name


def test_equals_the_model_loss_on_the_tiny_llama(tiny_llama):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_llama[0], dtype=torch.float32)
    _check(model, model.config.vocab_size)


@pytest.mark.parametrize("softcap", [None, 30.0])
def test_equals_the_model_loss_on_a_tiny_gemma3(softcap):
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    torch.manual_seed(0)
    config = Gemma3TextConfig(
        vocab_size=512,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=32,
        sliding_window=8,
        final_logit_softcapping=softcap,
        attn_implementation="eager",
    )
    model = Gemma3ForCausalLM(config)
    _check(model, config.vocab_size)


def test_no_attention_row_is_fully_masked():
    """Every position of a collated batch, pads included, sees at least one real token under the
    causal mask: a fully masked row is what a fused GPU attention kernel can turn into NaN."""
    b = _batch(vocab=32)
    width = b.input_ids.shape[1]
    causal = torch.ones(width, width, dtype=torch.bool).tril()
    for row in range(b.input_ids.shape[0]):
        visible = causal & b.attention_mask[row].bool()[None, :]
        assert visible.any(dim=1).all(), f"row {row} has a query with no visible key"
