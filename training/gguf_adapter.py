"""Export a peft LoRA adapter as a GGUF LoRA adapter for llama.cpp.

Serving loads one shared base GGUF and a small GGUF adapter per call site (merging and
re-quantizing to Q4_K_M lost the trained behaviour in our measurements; a separate adapter
keeps full precision and is a few MB). llama.cpp's adapter loader
(src/llama-adapter.cpp) expects:

- metadata: general.architecture equal to the base model's, general.type="adapter",
  adapter.type="lora", adapter.lora.alpha (llama.cpp scales by alpha / rank, like peft);
- for every adapted base tensor `W` named e.g. `blk.3.attn_q.weight`, two tensors
  `blk.3.attn_q.weight.lora_a` and `.lora_b`. In GGML order (innermost dim first) A has
  ne = [in, r] and B has ne = [r, out], which is exactly peft's torch layout
  (A: [r, in], B: [out, r]) written as-is.

Names come from the `gguf` package's HF->GGUF tensor map for the base's architecture (read
from the base GGUF with GGUFReader, together with the head counts), and every adapted name
is checked against the base's tensor list and shapes before anything is written.

Llama-family bases: llama.cpp's converter permutes q/k rows (see permute_qk), so
the B matrices of q/k adapters get the same row permutation (W' = P W = (P B) A). Gemma 3
and other architectures the converter does not permute are written unchanged.
"""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path

import numpy as np

# Architectures whose llama.cpp converter permutes q/k projection rows (LlamaModel and
# subclasses with undo_permute=True). Gemma/Gemma3/Qwen/Phi are not permuted.
PERMUTED_QK_ARCHS = {"llama", "mistral"}


def permute_qk(weights: np.ndarray, n_head: int, n_head_kv: int | None = None) -> np.ndarray:
    """llama.cpp's q/k row order (same as its convert_hf_to_gguf LlamaModel.permute).

    HF Llama rotates the two halves of each head; llama.cpp rotates adjacent pairs. Rows of
    a q or k projection (and of a LoRA B matrix for it) are reordered to match.
    """
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    shape = weights.shape
    return weights.reshape(n_head, 2, shape[0] // n_head // 2, *shape[1:]).swapaxes(1, 2).reshape(shape)


def read_base_info(base_gguf_path: str | Path) -> dict:
    """Architecture, block count, head counts and tensor shapes of a base GGUF (cached)."""
    path = os.path.realpath(base_gguf_path)
    stat = os.stat(path)
    return _read_base_info(path, stat.st_mtime, stat.st_size)


@functools.lru_cache(maxsize=8)
def _read_base_info(base_gguf_path: str, _mtime: float, _size: int) -> dict:
    # GGUFReader parses every metadata array: ~9 s for Gemma's 262k-token vocabulary
    import gguf

    reader = gguf.GGUFReader(str(base_gguf_path))

    def field(key, default=None):
        f = reader.fields.get(key)
        return default if f is None else f.contents()

    arch = field("general.architecture")
    head_count = field(f"{arch}.attention.head_count")
    return {
        "arch": arch,
        "block_count": int(field(f"{arch}.block_count")),
        "head_count": head_count,
        "head_count_kv": field(f"{arch}.attention.head_count_kv", head_count),
        # GGML shape (innermost first), as llama.cpp checks it
        "tensors": {t.name: [int(x) for x in t.shape] for t in reader.tensors},
    }


def _load_peft(peft_dir: Path) -> tuple[dict, dict]:
    """(adapter_config, {name: float32 numpy array}) from a saved peft adapter dir."""
    from safetensors.numpy import load_file

    cfg = json.loads((peft_dir / "adapter_config.json").read_text())
    st = peft_dir / "adapter_model.safetensors"
    if st.exists():
        try:
            tensors = load_file(str(st))
        except TypeError:  # bf16 tensors are not readable by numpy: go through torch
            from safetensors.torch import load_file as load_torch

            tensors = {k: v.float().numpy() for k, v in load_torch(str(st)).items()}
    else:
        import torch

        state = torch.load(peft_dir / "adapter_model.bin", map_location="cpu", weights_only=True)
        tensors = {k: v.float().numpy() for k, v in state.items()}
    return cfg, {k: np.asarray(v, dtype=np.float32) for k, v in tensors.items()}


def _hf_module_name(peft_name: str) -> tuple[str, str]:
    """'base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight' ->
    ('model.layers.0.self_attn.q_proj', 'a')."""
    name = peft_name
    if name.startswith("base_model.model."):
        name = name[len("base_model.model.") :]
    for marker, which in ((".lora_A.", "a"), (".lora_B.", "b")):
        if marker in name:
            return name.split(marker)[0], which
    raise ValueError(f"unexpected tensor in peft adapter: {peft_name}")


def _as_layers(value, n_blocks: int) -> list[int]:
    """Head counts may be per-layer arrays in GGUF metadata."""
    if isinstance(value, (list, tuple)):
        return [int(v) for v in value]
    return [int(value)] * n_blocks


def export_gguf_adapter(peft_dir: str | Path, out_path: str | Path, base_gguf_path: str | Path) -> Path:
    """Write `out_path` (a GGUF LoRA adapter for `base_gguf_path`); returns the path."""
    import gguf

    peft_dir, out_path = Path(peft_dir), Path(out_path)
    cfg, tensors = _load_peft(peft_dir)
    if cfg.get("use_dora") or cfg.get("use_rslora"):
        raise ValueError("DoRA / rsLoRA adapters are not supported by the GGUF export")
    r = int(cfg["r"])
    alpha = float(cfg.get("lora_alpha", r))
    if cfg.get("rank_pattern") or cfg.get("alpha_pattern"):
        raise ValueError("per-module rank/alpha patterns are not supported by the export")

    base = read_base_info(base_gguf_path)
    arch, n_blocks = base["arch"], base["block_count"]
    try:
        model_arch = next(k for k, v in gguf.MODEL_ARCH_NAMES.items() if v == arch)
    except StopIteration:
        raise ValueError(f"unknown GGUF architecture {arch!r}") from None
    name_map = gguf.get_tensor_name_map(model_arch, n_blocks)
    heads = _as_layers(base["head_count"], n_blocks)
    heads_kv = _as_layers(base["head_count_kv"], n_blocks)

    pairs: dict[str, dict[str, np.ndarray]] = {}
    for peft_name, array in tensors.items():
        module, which = _hf_module_name(peft_name)
        gguf_name = name_map.get_name(module)
        if gguf_name is None:
            raise ValueError(f"no GGUF tensor name for module {module!r} (arch {arch})")
        pairs.setdefault(gguf_name + ".weight", {})[which] = array

    writer = gguf.GGUFWriter(str(out_path), arch)
    writer.add_string("general.type", "adapter")
    writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
    writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, alpha)
    writer.add_string("general.name", f"understudy-lora-{peft_dir.name}")

    for weight_name in sorted(pairs, key=_natural_key):
        pair = pairs[weight_name]
        if set(pair) != {"a", "b"}:
            raise ValueError(f"{weight_name}: lora_A/lora_B pair incomplete")
        a, b = pair["a"], pair["b"]  # a: [r, in], b: [out, r]
        if weight_name not in base["tensors"]:
            raise ValueError(f"{weight_name} is not a tensor of the base GGUF (wrong base?)")
        ne_in, ne_out = base["tensors"][weight_name][:2]
        if (a.shape[1], b.shape[0]) != (ne_in, ne_out) or a.shape[0] != b.shape[1]:
            raise ValueError(f"{weight_name}: adapter shapes A{a.shape} B{b.shape} do not fit base [{ne_in}, {ne_out}]")
        if arch in PERMUTED_QK_ARCHS:
            block = int(weight_name.split(".")[1])
            if ".attn_q." in weight_name:
                b = permute_qk(b, heads[block], heads[block])
            elif ".attn_k." in weight_name:
                b = permute_qk(b, heads[block], heads_kv[block])
        writer.add_tensor(weight_name + ".lora_a", np.ascontiguousarray(a, dtype=np.float32))
        writer.add_tensor(weight_name + ".lora_b", np.ascontiguousarray(b, dtype=np.float32))

    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return out_path


def _natural_key(name: str):
    return [int(p) if p.isdigit() else p for p in name.split(".")]
