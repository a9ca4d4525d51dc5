"""Greedy generation with the trained HF/peft model, in the serving prompt format.

Used right after training to record what the trained model answers on a few held-out
examples; `training.verify` then checks that the GGUF adapter on the llama.cpp base gives
the same answer before a version is registered. Greedy (no sampling) so both sides are
deterministic; the text is cut at the first stop sequence, as llama-cpp does.
"""

from __future__ import annotations

import torch

from understudy.training.prompt_format import STOP_SEQUENCES


def cut_at_stop(text: str, stops: list[str] = STOP_SEQUENCES) -> str:
    cuts = [text.find(s) for s in stops if s in text]
    return text[: min(cuts)] if cuts else text


@torch.no_grad()
def greedy_generate(model, tokenizer, prompt: str, max_new_tokens: int = 256) -> str:
    model.eval()
    device = next(model.parameters()).device
    ids = tokenizer(prompt, add_special_tokens=True, return_tensors="pt")["input_ids"].to(device)
    out = model.generate(
        input_ids=ids,
        attention_mask=torch.ones_like(ids),
        max_new_tokens=max_new_tokens,
        do_sample=False,
        stop_strings=STOP_SEQUENCES,
        tokenizer=tokenizer,
        pad_token_id=tokenizer.pad_token_id,
    )
    text = tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True)
    return cut_at_stop(text)
