"""Decoding on a llama.cpp context: greedy or sampled, under an llguidance constraint checked on the chosen token first.

Constraint (inference.constraints): a JSON-schema answer is decoded under an llguidance
`LLMatcher`. Computing the full mask of allowed tokens on every step would cost a pass over
Gemma's 262k vocabulary; instead this loop does what llama.cpp's own `common_sampler` does:
pick a token from the raw logits (argmax, or a sample), ask the matcher about that one token,
and only when it is refused compute the full mask and pick among the allowed tokens. A
trained adapter's choice is almost always allowed, so the constraint costs little, and the
result is the token the full mask would give (greedy: the best allowed token; sampled: a draw
from the masked, renormalised distribution, see `_pick`).

The answer ends when it is complete: once the matcher is stopped (nothing but the end may
follow, e.g. after an object's closing brace) no further token is evaluated; when the model
picks an end-of-generation token, it ends if the matcher accepts the answer as complete
(otherwise that token is refused like any other). Stop strings end free-text answers (no
constraint); under a constraint they matter once: a token that is the answer's last bytes and a
stop string's first (`}<`) ends the answer where it completes (`Decoder._closing`).

Sampling: temperature 0 is greedy; above 0, tokens are drawn from softmax(logits / T) with a
numpy Generator seeded by `seed`, so a seed gives the same text every time.

Forced tokens are fast-forwarded: where the constraint leaves only one continuation (an
object's keys and punctuation, a `const` value, the closing brackets of a fixed-length array),
llguidance names its tokens (`compute_ff_tokens`, in the tokenizer's canonical split, as the
training data was tokenized) and they are evaluated in one batch with the chosen token before
them, instead of one decoding step each. On this 2-core CPU a step of one token costs about
as much as a batch of a few, and 70 % of a compact `Map`-like answer's tokens are forced
(`benchmarks/constraint_engines.py`). Nothing is chosen there, so the text is the one the constraint
allows; only where the model would have split the same bytes into other tokens does the
answer's path differ from step-by-step decoding.

The same pass reads the chosen token's log-probability under the raw, unconstrained softmax
(temperature 1, a log-sum-exp over the vocabulary), so the answer's confidence comes free.
Forced tokens are not chosen and have no logits of their own (a batch yields the last
position's only): the confidence is over the chosen tokens, and an answer the constraint forced
whole is certain (1.0).

Prompts are evaluated from the longest prefix already in the context (a previous call's, or one
restored by `inference.local_generate`): only the new tokens are evaluated.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from understudy.inference.constraints import Constraint, LlamaVocab


@dataclass
class Decoded:
    text: str
    tokens: int  # completion tokens
    prompt_tokens: int
    logprob: float  # sum over the chosen tokens
    counted: int  # tokens in `logprob`
    masked: int = 0  # steps where the constraint refused the model's pick and the full mask was computed
    forced: int = 0  # tokens the constraint forced (fast-forwarded, not chosen, not in `logprob`)

    @property
    def confidence(self) -> float | None:
        if not self.counted:
            return 1.0 if self.forced else None  # all forced: the request fixed the whole answer
        return math.exp(self.logprob / self.counted)


class Decoder:
    def __init__(self, llm, llama_cpp):
        self.llm = llm
        self.lc = llama_cpp
        self.vocab = llama_cpp.llama_model_get_vocab(llm.model)
        self.n_vocab = llm.n_vocab()
        self._llg: LlamaVocab | None = None  # built on the first constrained answer
        self._mask = None
        self._masked = 0
        # Off only where a benchmark measures the step-by-step path beside it (local_serving.py).
        self.fast_forward = True

    def vocabulary(self) -> LlamaVocab:
        """llguidance's tokenizer for this model (built once, ~1 s on a 262k vocabulary)."""
        if self._llg is None:
            from llguidance.numpy import allocate_token_bitmask

            self._llg = LlamaVocab(self.llm)
            self._mask = allocate_token_bitmask(1, self.n_vocab)
        return self._llg

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

    def decode(
        self,
        prompt_tokens: list[int],
        max_tokens: int,
        constraint: Constraint | None = None,
        stop: list[str] | tuple[str, ...] = (),
        temperature: float = 0.0,
        seed: int | None = None,
    ) -> Decoded:
        if temperature < 0:
            raise ValueError(f"temperature must be >= 0, not {temperature}")
        matcher = None if constraint is None else self.vocabulary().matcher(constraint)
        self.evaluate_prompt(prompt_tokens)
        lc, llm = self.lc, self.llm
        rng = np.random.default_rng(seed) if temperature > 0 else None
        room = max(0, min(max_tokens, llm.n_ctx() - len(prompt_tokens)))
        out: list[int] = []
        logprob, counted, text = 0.0, 0, ""
        self._masked = 0
        forced = self._fast_forward(matcher, room) if matcher is not None else []
        if forced:  # an answer's forced opening (`{"`, a const field) joins the prompt's last batch
            out += forced
            llm.eval(forced)
        while len(out) < room and not (matcher is not None and matcher.is_stopped()):
            logits = np.ctypeslib.as_array(lc.llama_get_logits_ith(llm.ctx, -1), shape=(self.n_vocab,))
            token = _pick(logits, temperature, rng)
            if matcher is not None and not self._takes(matcher, token):
                closing = self._closing(matcher, token, stop)
                if closing:  # the answer's last bytes and the end marker's first, in one token
                    logprob += _logprob(logits, token)
                    counted += 1
                    out += closing
                    break
                token = self._masked_pick(matcher, logits, temperature, rng)
            if token < 0 or lc.llama_vocab_is_eog(self.vocab, token):
                break
            logprob += _logprob(logits, token)
            counted += 1
            out.append(token)
            if matcher is not None:
                forced = self._fast_forward(matcher, room - len(out))
                out += forced
                if matcher.is_stopped():  # complete: only the end may follow
                    break
                llm.eval([token, *forced])  # the chosen token and what the constraint forces after it, one batch
                continue
            if stop:
                text = llm.detokenize(out).decode("utf-8", errors="ignore")
                cut = min((text.find(s) for s in stop if s in text), default=-1)
                if cut >= 0:
                    return Decoded(text[:cut], len(out), len(prompt_tokens), logprob, counted, self._masked)
            llm.eval([token])
        text = llm.detokenize(out).decode("utf-8", errors="ignore")
        return Decoded(text, len(out), len(prompt_tokens), logprob, counted, self._masked, len(out) - counted)

    def _fast_forward(self, matcher, room: int) -> list[int]:
        """The tokens the constraint forces next (keys, punctuation, a const value), consumed, at most
        `room`: nothing is chosen there, so they are evaluated in one batch with the token before
        them instead of one step each (a batch of a few tokens costs about one step on a CPU)."""
        if not self.fast_forward:
            return []
        forced = matcher.compute_ff_tokens()[: max(0, room)]
        if forced and not matcher.consume_tokens(forced):
            raise RuntimeError(f"the constraint refused its own forced tokens: {matcher.get_error()}")
        return forced

    def _closing(self, matcher, token: int, stop: list[str] | tuple[str, ...]) -> list[int]:
        """The tokens that complete the answer, consumed, when the refused `token` is the answer's
        last bytes followed by the start of a stop string; [] otherwise (refused for another reason:
        `_masked_pick` chooses among the allowed tokens).

        A target is trained as the answer followed by the end marker, and a tokenizer that merges
        across that boundary teaches the model to close an answer with such a token: Gemma writes
        `3` then `}<` (of `}<|end|>`). The constraint refuses `}<` (a `<` after a complete object),
        and the best allowed token is then a digit, not `}`: `{"x":3` became `{"x":30555...` until
        max_tokens. The model meant to end there; its answer ends there."""
        if not stop or self.lc.llama_vocab_is_eog(self.vocab, token):
            return []
        piece = self.llm.detokenize([token]).decode("utf-8", errors="ignore")
        for cut in range(len(piece) - 1, 0, -1):
            head, tail = piece[:cut], piece[cut:]
            if not any(s.startswith(tail) for s in stop):
                continue
            ids = self.llm.tokenize(head.encode(), add_bos=False, special=False)
            if ids and matcher.validate_tokens(ids) == len(ids):
                matcher.consume_tokens(ids)
                if matcher.is_accepting():
                    return ids
                matcher.rollback(len(ids))
        return []

    def _takes(self, matcher, token: int) -> bool:
        """Whether the matcher allows the model's pick (consumed if so): an end-of-generation token
        where the answer may end, any other token it accepts."""
        if self.lc.llama_vocab_is_eog(self.vocab, token):
            return matcher.is_accepting()
        return matcher.try_consume_tokens([token]) == 1

    def _masked_pick(self, matcher, logits: np.ndarray, temperature: float, rng) -> int:
        """A pick among the tokens the matcher allows (consumed), once the model's own was refused; -1 if none."""
        from llguidance.numpy import fill_next_token_bitmask

        fill_next_token_bitmask(matcher, self._mask)
        self._masked += 1
        allowed = np.unpackbits(self._mask.view(np.uint8), bitorder="little")[: self.n_vocab].astype(bool)
        if not allowed.any():
            return -1
        token = _pick(np.where(allowed, logits, -np.inf), temperature, rng)
        if not self.lc.llama_vocab_is_eog(self.vocab, token) and not matcher.consume_token(token):
            return -1
        return token

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


def _logprob(logits: np.ndarray, token: int) -> float:
    """The token's log-probability under the raw softmax (temperature 1)."""
    top = float(logits.max())
    return float(logits[token]) - (top + math.log(float(np.exp(logits - top).sum())))


def _pick(logits: np.ndarray, temperature: float, rng) -> int:
    """Greedy (rng None): the argmax. Otherwise a draw from softmax(logits / temperature).

    Under a constraint the draw is first made from the unconstrained distribution p and, only
    if the matcher refuses it, made again from p restricted to the allowed set A and
    renormalised. That is exactly the masked distribution: a token a in A is taken with
    probability p(a) + (1 - p(A)) * p(a) / p(A) = p(a) / p(A)."""
    if rng is None:
        return int(logits.argmax())
    z = logits.astype(np.float64) / temperature
    z -= z.max()
    cdf = np.cumsum(np.exp(z))
    # side="right": a token of probability 0 (masked, cdf flat across it) is never drawn
    return min(int(np.searchsorted(cdf, rng.random() * cdf[-1], side="right")), len(cdf) - 1)
