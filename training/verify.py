"""Check a GGUF adapter before its model version is registered.

Training happens in transformers/peft, serving in llama.cpp: the export could go wrong
silently (a wrong tensor name, a missing q/k permutation, a tokenizer difference), so every
new adapter is loaded beside the serving base GGUF and must reproduce what the trained
HF model answered (greedy) on held-out examples — exactly, or nearly (float differences
between the two runtimes can flip a late token in a long answer).

Numerics: on the Gemma Q4_K_M base, llama.cpp's logits differ from the dequantized f32 HF
model's by up to ~0.85 on a 467-token prompt (llama.cpp quantizes activations for its
K-quant matmuls); the adapter's effect agrees (correlation 0.98 of the logit deltas). So an
under-trained adapter can flip a low-margin token; a case also passes when the local answer
equals the example's upstream completion (the behaviour we want anyway).

Reference answers: `trained_outputs` (the greedy answers `train()` records in
TrainResult.sample_outputs), aligned with `examples`; without them the examples'
upstream completions are the reference. `trained_tokens` (TrainResult.sample_tokens) are the
token ids those answers were generated as: the near-tie check forces them rather than the
re-tokenized text, which differs wherever the model wrote a byte that is not valid UTF-8 on its
own (U+FFFD in transformers' text, dropped in llama-cpp-python's: a tiny model does this often,
and the re-tokenized text then trails by 10+ nats where the model's own tokens trail by 0.06).

Near ties. A free generation that departs from the reference at a near tie (two names the
teacher picks at random are about equally likely) then writes a different rest of the answer,
which says nothing about the export. So a case that is neither exact nor near-exact is also
checked token by token with the reference forced: at every position, the reference token's
logit under llama.cpp must be within `MAX_LOGIT_GAP` of the best token's. An export that is
wrong (a missing permutation, a wrong tensor) puts gaps of 5 to 20 nats on most positions; the
two runtimes' numerics stay well under 2.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from pathlib import Path

from understudy.inference.site_prompt import SitePrompt, render_request

NEAR_RATIO = 0.95  # difflib similarity counted as "near-exact" (1.0 = identical)
MAX_TOKENS = 256  # cap on each local answer (tokens)
MAX_LOGIT_GAP = 2.0  # nats: the reference token may trail llama.cpp's best by this much (a near tie)


@dataclass
class VerifyCase:
    index: int
    reference: str
    local: str
    exact: bool
    ratio: float
    matches_completion: bool  # the local answer equals the upstream completion
    max_gap: float | None = None  # the reference forced: its worst logit gap to llama.cpp's best (nats)

    @property
    def ok(self) -> bool:
        return self.exact or self.matches_completion or self.max_gap is not None and self.max_gap <= MAX_LOGIT_GAP


@dataclass
class VerifyResult:
    ok: bool  # every case exact, near-exact or a near tie (and at least one case)
    n: int
    exact: int  # identical to the reference (or to the upstream completion)
    near: int  # near-exact (difflib ratio >= near_ratio), or a near tie with the reference forced
    cases: list[VerifyCase] = field(default_factory=list)

    def summary(self) -> str:
        return f"verify {'ok' if self.ok else 'FAILED'}: {self.exact}/{self.n} exact, {self.near} near"


def similarity(a: str, b: str) -> float:
    return difflib.SequenceMatcher(None, a, b, autojunk=False).ratio()


def verify_adapter(
    base_gguf: str | Path,
    adapter_gguf: str | Path,
    examples: list[dict],
    trained_outputs: list[str] | list[tuple[int, str]] | None = None,
    generator=None,
    near_ratio: float = NEAR_RATIO,
    max_tokens: int = MAX_TOKENS,
    site_prompt: SitePrompt | None = None,
    trained_tokens: list[list[int]] | None = None,
) -> VerifyResult:
    """Load `adapter_gguf` beside `base_gguf` (or on `generator`) and compare answers."""
    if trained_outputs is None:
        refs = [(i, ex["completion"]) for i, ex in enumerate(examples)]
    else:
        refs = [r if isinstance(r, tuple) else (i, r) for i, r in enumerate(trained_outputs)]
    ref_tokens: list[list[int] | None] = list(trained_tokens) if trained_tokens is not None else [None] * len(refs)
    own = generator is None
    if own:
        from understudy.inference.local_generate import LocalGenerator

        generator = LocalGenerator(base_gguf)
    cases = []
    try:
        for (index, reference), reference_tokens in zip(refs, ref_tokens, strict=True):
            ex = examples[index]
            prompt = render_request(ex, site_prompt)
            # no grammar: the HF reference was decoded without one
            local = generator.generate(prompt, adapter_path=adapter_gguf, max_tokens=max_tokens)
            ratio = similarity(reference, local)
            case = VerifyCase(index, reference, local, local == reference, ratio, local == ex["completion"])
            if not (case.exact or case.matches_completion or ratio >= near_ratio):
                case.max_gap = generator.forced_gap(prompt, reference_tokens or reference, adapter_path=adapter_gguf)
            cases.append(case)
    finally:
        if own:
            generator.close()
    exact = sum(c.exact or c.matches_completion for c in cases)
    near = sum(not (c.exact or c.matches_completion) and (c.ratio >= near_ratio or c.ok) for c in cases)
    return VerifyResult(
        ok=bool(cases) and exact + near == len(cases), n=len(cases), exact=exact, near=near, cases=cases
    )
