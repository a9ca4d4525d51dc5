"""Where a typed answer ends: trained apart from the end marker, and closed when the model merges the two.

A target is the answer then the end marker (`inference.prompt_format`). A tokenizer that merges
across that boundary (Gemma: `}<` of `}<|end|>`) teaches the model to close an answer with a
token its constraint refuses, and under the constraint it wrote `{"rating":30555...` until
max_tokens (rate_difficulty's held-out answers, 5 of 13 unparsable). Both sides are covered:
training tokenizes the marker apart (`training.encoding`), and the decoder ends an answer the
model closed with such a token (`inference.decoding.Decoder._closing`), for adapters trained before.
"""

from __future__ import annotations

import pytest

from understudy.inference import decoding
from understudy.inference.constraints import compile_schema
from understudy.inference.local_generate import LocalGenerator
from understudy.inference.prompt_format import END_MARKER
from understudy.training.config import default_gemma_gguf
from understudy.training.encoding import IGNORE_INDEX, encode_pair

PROMPT = "<|user|>\nRate the level.<|end|>\n<|assistant|>\n"
ANSWER = '{"rating":3}'


@pytest.fixture(scope="module")
def merging_tokenizer():
    """A byte-level BPE trained here on answers that end `}<|end|>`: it learns the `}<` merge."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    corpus = [f'<|user|>\nRate {i}.<|end|>\n<|assistant|>\n{{"rating":{i % 9}}}<|end|>\n' for i in range(200)]
    trainer = trainers.BpeTrainer(
        vocab_size=400, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), special_tokens=["<s>"]
    )
    tokenizer.train_from_iterator(corpus, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="<s>", eos_token="<s>")


def test_the_answer_and_the_end_marker_are_tokenized_apart(merging_tokenizer):
    tok = merging_tokenizer
    joint = tok(PROMPT + ANSWER + END_MARKER, add_special_tokens=False)["input_ids"]
    # the control: tokenized together, the answer's last byte and the marker's first share a token
    assert any(tok.decode([i]).startswith("}<") for i in joint), [tok.decode([i]) for i in joint]

    encoded = encode_pair(tok, PROMPT, ANSWER + END_MARKER, max_length=512)
    target = [i for i, label in zip(encoded.input_ids, encoded.labels) if label != IGNORE_INDEX]
    marker = tok(END_MARKER, add_special_tokens=False)["input_ids"]
    assert target[-len(marker) :] == marker
    assert tok.decode(target[: -len(marker)]) == ANSWER and tok.decode(target[-len(marker) - 1 :][:1]) == "}"
    # the prompt keeps its own tokens, unmasked nowhere
    prompt_ids = tok(PROMPT, add_special_tokens=False)["input_ids"]
    assert encoded.input_ids[: len(prompt_ids)] == prompt_ids and encoded.labels[: len(prompt_ids)] == [
        IGNORE_INDEX
    ] * len(prompt_ids)


# Few-shot answers in the prompt format: the bare Gemma base continues the pattern and, like an
# adapter trained on merged targets, closes its answer with `}<`.
SHOTS = "".join(
    f'<|user|>\nRate {i}<|end|>\n<|assistant|>\n{{"rating":{v}}}<|end|>\n' for i, v in enumerate([3, 5, 2, 4, 6, 3])
)
FEW_SHOT = SHOTS + "<|user|>\nRate 6<|end|>\n<|assistant|>\n"
RATING = {
    "type": "object",
    "properties": {"rating": {"type": "integer"}},
    "required": ["rating"],
    "additionalProperties": False,
}


@pytest.fixture(scope="module")
def gemma():
    with LocalGenerator(str(default_gemma_gguf()), n_ctx=1024, n_threads=1) as gen:
        yield gen


def test_an_answer_closed_together_with_the_end_marker_ends_there(gemma, monkeypatch):
    constraint = compile_schema(RATING, lean=True)
    free = gemma.complete(FEW_SHOT, max_tokens=12)
    merged = [gemma.llm.detokenize([t]) for t in gemma.llm.tokenize((free.text + END_MARKER).encode(), add_bos=False)]
    assert free.text == '{"rating":4}' and b"}<" in merged, merged  # the model means `4`, then the end

    closed = gemma.complete(FEW_SHOT, max_tokens=12, constraint=constraint)
    assert closed.text == '{"rating":4}' and 0 < closed.confidence < 1

    # the control: without closing, the refused `}<` makes way for the best allowed token, a digit
    monkeypatch.setattr(decoding.Decoder, "_closing", lambda *args: [])
    run_on = gemma.complete(FEW_SHOT, max_tokens=12, constraint=constraint)
    assert run_on.text.startswith('{"rating":4') and run_on.text != '{"rating":4}'


def test_an_incomplete_answer_is_never_closed(gemma):
    """`}<` where the schema still needs a field: the answer goes on (the model's own problem)."""
    two_fields = {
        **RATING,
        "properties": {**RATING["properties"], "note": {"type": "string"}},
        "required": ["rating", "note"],
    }
    out = gemma.complete(FEW_SHOT, max_tokens=24, constraint=compile_schema(two_fields, lean=True))
    assert out.text != '{"rating":4}' and not out.text.startswith('{"rating":4}')
