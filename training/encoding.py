"""Turn examples into token ids and loss labels (loss on the response tokens only).

Each example is rendered with `training.prompt_format` into (prompt, target). The model
sees prompt + target; the labels are -100 (ignored by the loss) on every prompt token, so
the loss only teaches the answer, never the request.

Token boundary. At serving time llama.cpp tokenizes the prompt alone and the model
continues from there, so the training ids must be `tokens(prompt) + tokens(target)` with
the prompt ids exactly as tokenized alone. We tokenize the whole text and keep its split
when its head equals the prompt's own tokens (true for our prompts, which end with a
newline); otherwise we concatenate separately tokenized parts.

Length. When prompt + target exceed `max_length`, the target is kept whole and the prompt
is cut from the left (after BOS): the start of a site's prompt is its constant system text,
the end holds the varying arguments. A target longer than the limit is cut at the right.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from training.prompt_format import render_example

IGNORE_INDEX = -100  # label value torch's cross-entropy ignores


@dataclass
class Encoded:
    input_ids: list[int]
    labels: list[int]
    truncated: bool


def _ids(tokenizer, text: str, special: bool) -> list[int]:
    ids = tokenizer(text, add_special_tokens=special)["input_ids"]
    if special and getattr(tokenizer, "add_eos_token", False) and ids[-1:] == [tokenizer.eos_token_id]:
        ids = ids[:-1]  # a tokenizer that appends EOS itself: our end marker ends targets
    return ids


def encode_pair(tokenizer, prompt: str, target: str, max_length: int) -> Encoded:
    prompt_ids = _ids(tokenizer, prompt, special=True)
    full_ids = _ids(tokenizer, prompt + target, special=True)
    if full_ids[: len(prompt_ids)] == prompt_ids:
        target_ids = full_ids[len(prompt_ids):]
    else:
        target_ids = _ids(tokenizer, target, special=False)

    truncated = False
    if len(prompt_ids) + len(target_ids) > max_length:
        truncated = True
        has_bos = bool(prompt_ids) and prompt_ids[0] == tokenizer.bos_token_id
        head = prompt_ids[:1] if has_bos else []
        room = max_length - len(target_ids) - len(head)
        if room > 0:
            prompt_ids = head + prompt_ids[len(prompt_ids) - room:]
        else:
            prompt_ids = head
            target_ids = target_ids[: max_length - len(head)]
    return Encoded(
        input_ids=prompt_ids + target_ids,
        labels=[IGNORE_INDEX] * len(prompt_ids) + list(target_ids),
        truncated=truncated,
    )


def encode_examples(tokenizer, examples: list[dict], max_length: int) -> list[Encoded]:
    return [encode_pair(tokenizer, *render_example(ex), max_length) for ex in examples]


def collate(batch: list[Encoded], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad a micro-batch; padded positions are masked out of attention and loss."""
    width = max(len(e.input_ids) for e in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), width), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for row, e in enumerate(batch):
        n = len(e.input_ids)
        ids[row, :n] = torch.tensor(e.input_ids)
        labels[row, :n] = torch.tensor(e.labels)
        mask[row, :n] = 1
    return {"input_ids": ids, "labels": labels, "attention_mask": mask}
