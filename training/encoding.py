"""Turn examples into token ids and loss labels (loss on the response tokens only).

Each example is rendered with `inference.site_prompt` into (prompt, target). The model
sees prompt + target; the labels are -100 (ignored by the loss) on every prompt token, so
the loss only teaches the answer, never the request.

Token boundary. At serving time llama.cpp tokenizes the prompt alone and the model
continues from there, so the training ids must be `tokens(prompt) + tokens(target)` with
the prompt ids exactly as tokenized alone. We tokenize the whole text and keep its split
when its head equals the prompt's own tokens (true for our prompts, which end with a
newline); otherwise we concatenate separately tokenized parts.

Answer boundary. The target is the answer then the end marker, and the two are tokenized apart:
tokenized together, a merge across the boundary (Gemma's `}<` of `...3}<|end|>`) would teach the
model to close every JSON answer with a token the answer's constraint refuses, and its typed
answers would run on (`{"x":30555...`) wherever it decodes under a grammar (llama-server). Apart,
the model writes `}`, then the marker. A tokenizer that cannot spell the marker alone as it is
written (a SentencePiece dummy-prefix space) keeps the joint tokenization.

Length. When prompt + target exceed `max_length`, the target is kept whole and the prompt
is cut from the left (after BOS): the start of a site's prompt is its constant system text,
the end holds the varying arguments. A target longer than the limit is cut at the right.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from understudy.inference.prompt_format import END_MARKER
from understudy.inference.site_prompt import SitePrompt, render_training_pair

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


def _target_ids(tokenizer, prompt: str, prompt_ids: list[int], target: str) -> list[int]:
    """The target's ids after `prompt_ids` (see Token boundary and Answer boundary above)."""
    marker_ids = _ids(tokenizer, END_MARKER, special=False) if target.endswith(END_MARKER) else []
    if marker_ids and tokenizer.decode(marker_ids) == END_MARKER:
        answer = target[: -len(END_MARKER)]
    else:  # no marker, or one the tokenizer cannot spell alone: the target tokenized whole
        answer, marker_ids = target, []
    full_ids = _ids(tokenizer, prompt + answer, special=True)
    if full_ids[: len(prompt_ids)] == prompt_ids:
        answer_ids = full_ids[len(prompt_ids) :]
    else:
        answer_ids = _ids(tokenizer, answer, special=False)
    return answer_ids + marker_ids


def encode_pair(tokenizer, prompt: str, target: str, max_length: int) -> Encoded:
    prompt_ids = _ids(tokenizer, prompt, special=True)
    target_ids = _target_ids(tokenizer, prompt, prompt_ids, target)

    truncated = False
    if len(prompt_ids) + len(target_ids) > max_length:
        truncated = True
        has_bos = bool(prompt_ids) and prompt_ids[0] == tokenizer.bos_token_id
        head = prompt_ids[:1] if has_bos else []
        room = max_length - len(target_ids) - len(head)
        if room > 0:
            prompt_ids = head + prompt_ids[len(prompt_ids) - room :]
        else:
            prompt_ids = head
            target_ids = target_ids[: max_length - len(head)]
    return Encoded(
        input_ids=prompt_ids + target_ids,
        labels=[IGNORE_INDEX] * len(prompt_ids) + list(target_ids),
        truncated=truncated,
    )


def encode_examples(
    tokenizer, examples: list[dict], max_length: int, site_prompt: SitePrompt | None = None
) -> list[Encoded]:
    """Encoded examples; one the site prompt cannot render (another static part) is left out."""
    pairs = (render_training_pair(ex, site_prompt) for ex in examples)
    return [encode_pair(tokenizer, prompt, target, max_length) for prompt, target in (p for p in pairs if p)]


@dataclass
class Batch:
    """A right-padded micro-batch. Logits are computed for the last `keep` positions only
    (`logits_to_keep`), which start just before the earliest target token of any row: on a
    262k-token vocabulary the output layer is most of the work.

    Right, not left, padding: with left padding a pad position's query sees only pad keys (those
    before it are pads, those after it are hidden by causality), a fully masked attention row.
    The loss was NaN from the second step on an H200 (torch 2.11, bf16) with left padding, and
    the likeliest cause is such rows: a fused GPU attention kernel that returns NaN for them
    poisons the gradients even though their loss weight is zero. (On the CPU, torch 2.14's
    kernels return zeros for them, so CPU runs never showed it.) Right-padded pads sit after
    their row's tokens and always see them: no row is fully masked, on any kernel."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    position_ids: torch.Tensor
    labels: torch.Tensor  # the last `keep - 1` columns' tokens (column t predicts column t + 1); -100 where no loss
    keep: int

    def to(self, device: str) -> Batch:
        return Batch(
            self.input_ids.to(device),
            self.attention_mask.to(device),
            self.position_ids.to(device),
            self.labels.to(device),
            self.keep,
        )

    @property
    def tokens(self) -> int:
        return int(self.attention_mask.sum())


# Widths and kept positions are rounded up to these multiples: oneDNN compiles (and caches, with
# packed weights) a kernel per matmul shape, so every distinct length costs memory; rounding keeps
# the number of shapes small for a few padding tokens.
WIDTH_STEP = 32
KEEP_STEP = 16


def _round_up(n: int, step: int) -> int:
    return -(-n // step) * step


def _first_target(e: Encoded) -> int:
    return next((i for i, t in enumerate(e.labels) if t != IGNORE_INDEX), len(e.labels))


def collate(batch: list[Encoded], pad_id: int) -> Batch:
    width = _round_up(max(len(e.input_ids) for e in batch), WIDTH_STEP)
    first = min(_first_target(e) for e in batch)
    keep = min(width, _round_up(width - first + 1, KEEP_STEP))  # the position before the first target predicts it
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), width), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for row, e in enumerate(batch):
        n = len(e.input_ids)
        ids[row, :n] = torch.tensor(e.input_ids)
        labels[row, :n] = torch.tensor(e.labels)
        mask[row, :n] = 1
    positions = torch.arange(width, dtype=torch.long).expand(len(batch), width).clone()
    return Batch(ids, mask, positions, labels[:, width - keep + 1 :], keep)
