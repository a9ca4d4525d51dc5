"""Greedy generation with the trained HF/peft model, in the serving prompt format.

Used right after training to record what the trained model answers on a few held-out
examples; `training.verify` then checks that the GGUF adapter on the llama.cpp base gives
the same answer before a version is registered. Greedy (no sampling) so both sides are
deterministic; the text is cut at the first stop sequence, as llama-cpp does.
"""

from __future__ import annotations

import torch

from understudy.inference.prompt_format import STOP_SEQUENCES


def cut_at_stop(text: str, stops: list[str] = STOP_SEQUENCES) -> str:
    cuts = [text.find(s) for s in stops if s in text]
    return text[: min(cuts)] if cuts else text


@torch.no_grad()
def greedy_generate(model, tokenizer, prompt: str, max_new_tokens: int = 256) -> tuple[str, list[int]]:
    """The greedy answer's text (cut at the first stop sequence) and the token ids generated.

    The ids are what `training.verify` forces under llama.cpp: the text alone does not give them
    back, since a byte-fallback token that is not valid UTF-8 on its own decodes to U+FFFD here
    and to nothing in llama-cpp-python, and re-tokenizing either text gives other tokens."""
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
    tokens = out[0, ids.shape[1] :].tolist()
    return cut_at_stop(tokenizer.decode(tokens, skip_special_tokens=True)), tokens
