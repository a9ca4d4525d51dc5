"""Local generation: one llama.cpp base model, per-site LoRA adapters switched per call.

The proxy serves many call sites from one small base GGUF. Each site has its own GGUF LoRA
adapter (a few MB); loading the base once and switching adapters on the one context is far
cheaper than a model per site. llama-cpp-python 0.3.x exposes the llama.cpp C API for it:

- `llama_adapter_lora_init(model, path)` loads an adapter file (kept loaded, LRU-bounded);
- `llama_set_adapters_lora(ctx, adapters, n, scales)` makes a set of adapters active
  (n = 0 for the plain base).

llama-cpp-python reuses the KV cache of a previous prompt's common prefix; that cache was
computed under whichever adapter was active then, so the prompt state is reset whenever the
active adapter changes.

Reused prefixes: every call of a site begins with the same text (the site prompt's fixed
prefix, `inference.site_prompt.render_with_prefix`). The first time a prefix is evaluated under
an adapter, the evaluated state of that sequence (its KV cells only: `llama_state_seq_get_data`)
is kept, keyed by (adapter, prefix tokens); a later call under the same adapter restores it and
evaluates only its new tokens, even after other sites' calls ran in between. A state is never
restored under another adapter (a LoRA on q/k/v changes the keys and values). The output is
token-identical to a cold evaluation (tests/training/test_prefix_reuse.py). At most
`MAX_PREFIX_STATES` are kept (LRU).

JSON-schema answers are decoded under a `inference.constraints.Constraint` (the schema compiled
by llguidance, cached per schema): a local typed answer always parses and honours the schema's
ranges, item counts, string lengths and patterns. llguidance replaced llama.cpp's GBNF grammar
here: llama-cpp-python's `json_schema_to_gbnf` silently drops `minimum`/`maximum` and other
value keywords, and applying a llama.cpp grammar to Gemma's 262k vocabulary costs milliseconds
where llguidance's full mask takes tens of microseconds (benchmarks/constraint_engines.py).
`schema_grammar` (GBNF) remains only for a llama-server (inference.model_server).

CPU extra buffer types (weight repacking, Intel AMX) are off by default: on this project's
machines (AMX_INT8 CPUs, llama-cpp-python 0.3.36 built natively) llama.cpp's AMX matmul
segfaults on the Q4_K_M Gemma base in the first decode. llama-cpp-python does not expose
`use_extra_bufts`, so it is set through the default-params hook while the model loads.

Decoding is greedy (temperature 0) or sampled with a seed, with the constraint checked on the
chosen token first (`inference.decoding`): as fast as unconstrained generation when the model's
choice is allowed. `complete` also returns the model's own confidence in its answer, the
geometric mean of its chosen tokens' probabilities (read from the raw logits at each step;
llama-cpp-python itself returns log-probabilities only when it keeps every position's logits,
4 GB for Gemma's vocabulary).

Thread safety: one llama context cannot run two generations at once; a lock serialises
`generate` calls (the proxy runs it in a worker thread, off the event loop).
"""

from __future__ import annotations

import ctypes
import functools
import os
import re
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

from understudy.inference.constraints import Constraint
from understudy.inference.decoding import Decoder
from understudy.inference.prompt_format import STOP_SEQUENCES

DEFAULT_N_CTX = 4096  # tokens; enough for byLLM prompts plus their answers
MAX_LOADED_ADAPTERS = 32  # adapters kept in memory (LRU); each is a few MB
MAX_PREFIX_STATES = 64  # evaluated prefixes kept (LRU); ~18 KB per token on the Gemma base
LEAN_SPACE = 'space ::= ""'  # the JSON grammar's optional whitespace, taken away for lean answers
_LOAD_LOCK = threading.Lock()  # guards the temporary default-params hook below


def _load_llama(llama_cpp, use_extra_bufts: bool, **kwargs):
    """llama_cpp.Llama(**kwargs) with model_params.use_extra_bufts set as asked."""
    low = llama_cpp.llama_cpp
    with _LOAD_LOCK:
        original = low.llama_model_default_params

        def params():
            p = original()
            p.use_extra_bufts = use_extra_bufts
            return p

        low.llama_model_default_params = params
        try:
            return llama_cpp.Llama(**kwargs)
        finally:
            low.llama_model_default_params = original


@dataclass
class Generation:
    text: str
    confidence: float | None  # geometric mean probability of the chosen tokens; None when not measured
    prompt_tokens: int
    completion_tokens: int


class LocalGenerator:
    def __init__(
        self,
        base_gguf: str | Path,
        n_ctx: int = DEFAULT_N_CTX,
        n_threads: int | None = None,
        seed: int = 0,
        max_adapters: int = MAX_LOADED_ADAPTERS,
        use_extra_bufts: bool = False,  # True re-enables repack/AMX kernels (see module doc)
        verbose: bool = False,
    ):
        import llama_cpp

        self._llama_cpp = llama_cpp
        self.base_gguf = str(base_gguf)
        self.llm = _load_llama(
            llama_cpp,
            use_extra_bufts,
            model_path=self.base_gguf,
            n_ctx=n_ctx,
            n_threads=n_threads,
            seed=seed,
            verbose=verbose,
        )
        self._lock = threading.Lock()
        self._adapters: OrderedDict[tuple[str, float], object] = OrderedDict()
        self._active: tuple[str, float] | None = None
        self._max_adapters = max_adapters
        # (adapter key, prefix tokens) -> the sequence's evaluated state (KV cells)
        self._prefix_states: OrderedDict[tuple, bytes] = OrderedDict()
        self.prefix_hits = 0
        self._decoder = Decoder(self.llm, llama_cpp)

    # --- adapters -------------------------------------------------------------------
    def _adapter_key(self, path: str | Path) -> tuple[str, float]:
        path = os.path.realpath(path)
        return path, os.path.getmtime(path)  # a rewritten file is a new adapter

    def _load_adapter(self, key: tuple[str, float]):
        if key in self._adapters:
            self._adapters.move_to_end(key)
            return self._adapters[key]
        adapter = self._llama_cpp.llama_adapter_lora_init(self.llm.model, key[0].encode())
        if not adapter:
            raise ValueError(f"llama.cpp could not load LoRA adapter {key[0]} for {self.base_gguf}")
        self._adapters[key] = adapter
        while len(self._adapters) > self._max_adapters:
            old_key, old = next(iter(self._adapters.items()))
            if old_key == self._active:
                self._adapters.move_to_end(old_key)
                continue
            del self._adapters[old_key]
            self._llama_cpp.llama_adapter_lora_free(old)
        return adapter

    def _activate(self, adapter_path: str | Path | None, scale: float = 1.0) -> None:
        lc = self._llama_cpp
        key = None if adapter_path is None else self._adapter_key(adapter_path)
        if key == self._active:
            return
        if key is None:
            rc = lc.llama_set_adapters_lora(self.llm.ctx, None, 0, None)
        else:
            adapter = self._load_adapter(key)
            adapters = (lc.llama_adapter_lora_p_ctypes * 1)(adapter)
            scales = (ctypes.c_float * 1)(scale)
            rc = lc.llama_set_adapters_lora(self.llm.ctx, adapters, 1, scales)
        if rc != 0:
            raise RuntimeError(f"llama_set_adapters_lora failed ({rc}) for {adapter_path}")
        self._active = key
        self.llm.reset()  # cached prompt state was computed under the previous adapter

    def unload_adapter(self, adapter_path: str | Path) -> None:
        """Free a loaded adapter (e.g. a rolled-back version)."""
        with self._lock:
            real = os.path.realpath(adapter_path)
            for key in [k for k in self._adapters if k[0] == real]:
                if key == self._active:
                    self._activate(None)
                self._llama_cpp.llama_adapter_lora_free(self._adapters.pop(key))
                for state_key in [k for k in self._prefix_states if k[0] == key]:
                    del self._prefix_states[state_key]

    # --- reused prefixes --------------------------------------------------------------
    def _restore_prefix(self, prompt: str, prefix: str | None) -> None:
        """Put the evaluated state of `prefix` under the active adapter in place (see module doc)."""
        if not prefix or not prompt.startswith(prefix):
            return
        llm, lc = self.llm, self._llama_cpp
        tokens = llm.tokenize(prompt.encode(), special=True)
        head = llm.tokenize(prefix.encode(), special=True)
        if len(head) >= len(tokens) or tokens[: len(head)] != head:
            return  # the prefix does not end on a token boundary of this prompt: evaluate it whole
        key = (self._active, tuple(head))
        if llm.n_tokens >= len(head) and list(llm.input_ids[: len(head)]) == head:
            return  # already in the context (the last call shared it)
        state = self._prefix_states.get(key)
        if state is None:
            llm.reset()
            llm.eval(head)
            size = lc.llama_state_seq_get_size(llm.ctx, 0)
            buffer = (ctypes.c_uint8 * size)()
            written = lc.llama_state_seq_get_data(llm.ctx, buffer, size, 0)
            self._prefix_states[key] = bytes(buffer[:written])
            while len(self._prefix_states) > MAX_PREFIX_STATES:
                self._prefix_states.popitem(last=False)
            return
        self._prefix_states.move_to_end(key)
        memory = lc.llama_get_memory(llm.ctx)
        lc.llama_memory_clear(memory, True)
        data = (ctypes.c_uint8 * len(state)).from_buffer_copy(state)
        if lc.llama_state_seq_set_data(llm.ctx, data, len(state), 0) == 0:
            llm.reset()  # could not restore: evaluate from scratch
            return
        llm.input_ids[: len(head)] = head
        llm.n_tokens = len(head)
        self.prefix_hits += 1

    def generate(
        self,
        prompt: str,
        adapter_path: str | Path | None = None,
        max_tokens: int = 512,
        constraint: Constraint | None = None,
        temperature: float = 0.0,
        stop: list[str] | None = None,
        seed: int | None = None,
    ) -> str:
        """Complete `prompt` (rendered by inference.site_prompt) with the given adapter."""
        return self.complete(
            prompt, adapter_path, max_tokens, constraint, temperature, stop, with_confidence=False, seed=seed
        ).text

    def complete(
        self,
        prompt: str,
        adapter_path: str | Path | None = None,
        max_tokens: int = 512,
        constraint: Constraint | None = None,
        temperature: float = 0.0,
        stop: list[str] | None = None,
        with_confidence: bool = True,
        prefix: str | None = None,
        seed: int | None = None,
    ) -> Generation:
        """`generate`, with the answer's confidence and token counts.

        `constraint`: a typed answer's schema (`inference.constraints.compile_schema(schema, lean)`;
        lean: compact JSON). `temperature` 0 is greedy; above 0 the answer is sampled, the same
        for the same `seed`. `stop`: strings that end a free-text answer (default: the prompt
        format's). `prefix`: the fixed start of `prompt` whose evaluated state is kept and reused
        per adapter.
        """
        with self._lock:
            self._activate(adapter_path)
            self._restore_prefix(prompt, prefix)
            tokens = self.llm.tokenize(prompt.encode(), special=True)
            out = self._decoder.decode(
                tokens,
                max_tokens,
                constraint,
                STOP_SEQUENCES if stop is None else stop,
                temperature=temperature,
                seed=seed,
            )
        return Generation(out.text, out.confidence if with_confidence else None, out.prompt_tokens, out.tokens)

    def forced_gap(self, prompt: str, reference: str | list[int], adapter_path: str | Path | None = None) -> float:
        """The reference answer (its text, or the token ids it was generated as) forced after
        `prompt`: its worst logit gap to the best token (training.verify)."""
        with self._lock:
            self._activate(adapter_path)
            tokens = self.llm.tokenize(prompt.encode(), special=True)
            if isinstance(reference, str):
                answer = self.llm.tokenize(reference.encode(), add_bos=False, special=True)
            else:
                answer = list(reference)
            return self._decoder.forced_gap(tokens, answer)

    def close(self) -> None:
        with self._lock:
            if self.llm is None:
                return
            self._llama_cpp.llama_set_adapters_lora(self.llm.ctx, None, 0, None)
            for adapter in self._adapters.values():
                self._llama_cpp.llama_adapter_lora_free(adapter)
            self._adapters.clear()
            self._active = None
            self.llm.close()
            self.llm = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


@functools.lru_cache(maxsize=256)
def schema_grammar(schema: str, lean: bool = False) -> str:
    """The GBNF grammar for a JSON schema (its JSON text; cached), properties in the schema's
    order; `lean`: compact JSON only (no optional whitespace between tokens). Sent to a model
    server (inference.model_server); in-process decoding uses inference.constraints instead. It
    does not enforce `minimum`/`maximum` and other value keywords."""
    from llama_cpp.llama_grammar import json_schema_to_gbnf

    grammar = json_schema_to_gbnf(schema)
    if lean:
        grammar = re.sub(r"^space ::= .*$", LEAN_SPACE, grammar, flags=re.MULTILINE)
    return grammar
