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

JSON-schema answers are decoded under a llama.cpp grammar built from the schema
(`LlamaGrammar.from_json_schema`, cached per schema), so a local typed answer always parses.

CPU extra buffer types (weight repacking, Intel AMX) are off by default: on this project's
machines (AMX_INT8 CPUs, llama-cpp-python 0.3.36 built natively) llama.cpp's AMX matmul
segfaults on the Q4_K_M Gemma base in the first decode. llama-cpp-python does not expose
`use_extra_bufts`, so it is set through the default-params hook while the model loads.

Confidence: `complete` also returns the model's own confidence in its answer, the geometric
mean of its chosen tokens' probabilities. llama-cpp-python returns log-probabilities only for a
context that keeps the logits of every position (`logits_all`, 4 GB for Gemma's 262k vocabulary
at 4k context), so a logits processor reads each step's logits as they pass (before the
grammar) and scores the token chosen at that step when the next step shows it; the last token
of an answer is not counted.

Thread safety: one llama context cannot run two generations at once; a lock serialises
`generate` calls (the proxy runs it in a worker thread, off the event loop).
"""

from __future__ import annotations

import ctypes
import json
import math
import os
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from training.prompt_format import STOP_SEQUENCES

DEFAULT_N_CTX = 4096  # tokens; enough for byLLM prompts plus their answers
MAX_LOADED_ADAPTERS = 32  # adapters kept in memory (LRU); each is a few MB
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


class _ConfidenceMeter:
    """A logits processor that sums the log-probability of each chosen token (see module doc)."""

    def __init__(self) -> None:
        self._previous: np.ndarray | None = None  # the last step's logits (copied: llama.cpp reuses the buffer)
        self._previous_lse = 0.0
        self.total = 0.0
        self.count = 0

    def __call__(self, input_ids: np.ndarray, logits: np.ndarray) -> np.ndarray:
        if self._previous is not None:
            self.total += float(self._previous[int(input_ids[-1])]) - self._previous_lse
            self.count += 1
        top = float(logits.max())
        self._previous_lse = top + math.log(float(np.exp(logits - top).sum()))
        self._previous = np.array(logits, copy=True)
        return logits

    @property
    def confidence(self) -> float | None:
        return math.exp(self.total / self.count) if self.count else None


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
        self._grammars: dict[str, object] = {}
        self._max_adapters = max_adapters

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

    # --- generation -----------------------------------------------------------------
    def _grammar(self, schema: dict | str):
        # Key order matters: the grammar writes properties in the order the schema lists them,
        # which is the order the model was trained to write them in. Never sort keys here.
        text = schema if isinstance(schema, str) else json.dumps(schema)
        grammar = self._grammars.get(text)
        if grammar is None:
            grammar = self._llama_cpp.LlamaGrammar.from_json_schema(text, verbose=False)
            self._grammars[text] = grammar
        return grammar

    def generate(
        self,
        prompt: str,
        adapter_path: str | Path | None = None,
        max_tokens: int = 512,
        grammar_schema: dict | str | None = None,
        temperature: float = 0.0,
        stop: list[str] | None = None,
    ) -> str:
        """Complete `prompt` (rendered by training.prompt_format) with the given adapter."""
        return self.complete(prompt, adapter_path, max_tokens, grammar_schema, temperature, stop,
                             with_confidence=False).text

    def complete(
        self,
        prompt: str,
        adapter_path: str | Path | None = None,
        max_tokens: int = 512,
        grammar_schema: dict | str | None = None,
        temperature: float = 0.0,
        stop: list[str] | None = None,
        with_confidence: bool = True,
    ) -> Generation:
        """`generate`, with the answer's confidence and token counts."""
        meter = _ConfidenceMeter() if with_confidence else None
        with self._lock:
            self._activate(adapter_path)
            out = self.llm.create_completion(
                prompt,
                max_tokens=max_tokens,
                temperature=temperature,
                top_k=1 if temperature == 0.0 else 40,
                repeat_penalty=1.0,  # the answers are exact copies of structured text
                stop=STOP_SEQUENCES if stop is None else stop,
                grammar=None if grammar_schema is None else self._grammar(grammar_schema),
                logits_processor=None if meter is None else self._llama_cpp.LogitsProcessorList([meter]),
            )
        usage = out.get("usage") or {}
        return Generation(out["choices"][0]["text"], meter.confidence if meter else None,
                          int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0))

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
