"""Greedy decoding on a llama.cpp context, with the JSON grammar checked on the chosen token first.

llama-cpp-python's sampler chain applies a grammar to every candidate token before picking
one: on Gemma's 262k vocabulary that halves the generation speed (16 against 37 tokens/s on
2 cores, benchmarks/local_serving.py). Greedy decoding only needs the best *allowed* token, so
this loop does what llama.cpp's own `common_sampler` does: take the argmax of the raw logits,
ask the grammar about that one token, and only when it is refused apply the grammar to the whole
vocabulary and take the best allowed one. A trained adapter's choice is almost always allowed,
so the grammar costs little; the result is the same token the full check would pick.

The same pass reads the chosen token's log-probability from the logits (a log-sum-exp over
the vocabulary), so the answer's confidence comes free.

Prompts are evaluated from the longest prefix already in the context (a previous call's, or one
restored by `training.local_generate`): only the new tokens are evaluated.
"""

from __future__ import annotations

import ctypes
import math
from dataclasses import dataclass

import numpy as np

_TOKEN_DATA = np.dtype([("id", np.intc), ("logit", np.single), ("p", np.single)], align=True)


@dataclass
class Decoded:
    text: str
    tokens: int  # completion tokens
    prompt_tokens: int
    logprob: float  # sum over the chosen tokens
    counted: int  # tokens in `logprob`

    @property
    def confidence(self) -> float | None:
        return math.exp(self.logprob / self.counted) if self.counted else None


class GreedyDecoder:
    def __init__(self, llm, llama_cpp):
        self.llm = llm
        self.lc = llama_cpp
        self.vocab = llama_cpp.llama_model_get_vocab(llm.model)
        self.n_vocab = llm.n_vocab()
        self._all = (llama_cpp.llama_token_data * self.n_vocab)()  # every candidate, for a refused choice
        self._all_view = np.frombuffer(self._all, dtype=_TOKEN_DATA)
        self._all_view["id"] = np.arange(self.n_vocab, dtype=np.intc)
        self._one = (llama_cpp.llama_token_data * 1)()

    def evaluate_prompt(self, tokens: list[int]) -> None:
        """Evaluate `tokens`, reusing the longest prefix already in the context."""
        llm = self.llm
        common = 0
        for a, b in zip(llm.input_ids[: llm.n_tokens], tokens):
            if a != b:
                break
            common += 1
        common = min(common, len(tokens) - 1)  # evaluate at least the last token: its logits drive the first step
        if common > 0 and llm._ctx.kv_cache_seq_rm(-1, common, -1):
            llm.n_tokens = common
        else:
            llm.reset()
            common = 0
        llm.eval(tokens[common:])

    def decode(self, prompt_tokens: list[int], max_tokens: int, grammar: str | None, stop: list[str]) -> Decoded:
        self.evaluate_prompt(prompt_tokens)
        lc, llm = self.lc, self.llm
        room = llm.n_ctx() - len(prompt_tokens)
        sampler = lc.llama_sampler_init_grammar(self.vocab, grammar.encode(), b"root") if grammar else None
        out: list[int] = []
        logprob, counted, text = 0.0, 0, ""
        try:
            for _ in range(max(0, min(max_tokens, room))):
                logits = np.ctypeslib.as_array(lc.llama_get_logits_ith(llm.ctx, -1), shape=(self.n_vocab,))
                token = int(logits.argmax())
                if sampler is not None and not self._allowed(sampler, token, float(logits[token])):
                    token = self._best_allowed(sampler, logits)
                if token < 0 or lc.llama_vocab_is_eog(self.vocab, token):
                    break
                top = float(logits.max())
                logprob += float(logits[token]) - (top + math.log(float(np.exp(logits - top).sum())))
                counted += 1
                if sampler is not None:
                    lc.llama_sampler_accept(sampler, token)
                out.append(token)
                text = llm.detokenize(out).decode("utf-8", errors="ignore")
                cut = min((text.find(s) for s in stop if s in text), default=-1)
                if cut >= 0:
                    text = text[:cut]
                    break
                llm.eval([token])
        finally:
            if sampler is not None:
                lc.llama_sampler_free(sampler)
        return Decoded(text, len(out), len(prompt_tokens), logprob, counted)

    def forced_gap(self, prompt_tokens: list[int], tokens: list[int]) -> float:
        """With `tokens` forced after the prompt, the largest gap (nats) between each one's logit and
        the best logit at its position: how far the reference is from this model's greedy path.

        The last token is left out: tokenizing the reference text on its own can merge its end
        differently from how it was generated (the model wrote `4` then `}`, the tokenizer reads
        `4}`), which puts a gap of ~18 nats there under transformers and llama.cpp alike."""
        self.evaluate_prompt(prompt_tokens)
        worst = 0.0
        for token in tokens[:-1]:
            logits = np.ctypeslib.as_array(self.lc.llama_get_logits_ith(self.llm.ctx, -1), shape=(self.n_vocab,))
            worst = max(worst, float(logits.max() - logits[token]))
            self.llm.eval([token])
        return worst

    def _allowed(self, sampler, token: int, logit: float) -> bool:
        self._one[0].id, self._one[0].logit, self._one[0].p = token, logit, 0.0
        array = self.lc.llama_token_data_array(self._one, 1, -1, False)
        self.lc.llama_sampler_apply(sampler, ctypes.byref(array))
        return self._one[0].logit != -math.inf

    def _best_allowed(self, sampler, logits: np.ndarray) -> int:
        view = self._all_view
        view["id"] = np.arange(self.n_vocab, dtype=np.intc)
        view["logit"] = logits
        view["p"] = 0.0
        array = self.lc.llama_token_data_array(self._all, self.n_vocab, -1, False)
        self.lc.llama_sampler_apply(sampler, ctypes.byref(array))
        allowed = view["logit"]
        best = int(allowed.argmax())
        return -1 if allowed[best] == -np.inf else int(view["id"][best])
