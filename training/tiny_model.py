"""A tiny random Llama, as an HF checkpoint and as a GGUF, made in a few seconds.

Fast tests need a base model that goes through the whole pipeline (train with peft, export
a GGUF adapter, load it with llama-cpp beside the base GGUF) without any download. This
module makes one from nothing:

1. a SentencePiece BPE tokenizer trained in-process on a small built-in text (byte
   fallback on, so any UTF-8 text encodes; no dummy prefix, so a prompt tokenizes the same
   whether or not it follows other text);
2. a random LlamaForCausalLM (hidden 64, 2 layers, 4 heads, 2 KV heads so the grouped
   q/k permutation is exercised) saved with save_pretrained, plus the tokenizer as an HF
   `LlamaTokenizer` built from the same vocabulary and merges;
3. the same weights written as an f32 GGUF of arch "llama" with our own GGUFWriter code
   (llama.cpp's converter script is not installed). llama.cpp expects the q/k projection
   rows permuted (it uses the interleaved rotary layout), see `gguf_adapter.permute_qk`.

The SPM tokenizer metadata llama.cpp needs: tokenizer.ggml.model="llama", tokens, scores,
token_type (1 normal, 2 unknown, 3 control, 6 byte), bos/eos/unk ids, add_bos_token, and
add_space_prefix=False to match the tokenizer's no-dummy-prefix setting.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from understudy.training.gguf_adapter import permute_qk

# Model size: as small as possible while still able to memorise a few short examples.
HIDDEN = 64
LAYERS = 2
HEADS = 4
KV_HEADS = 2  # grouped-query attention: exercises the n_head != n_head_kv permutation
FFN = 128  # MLP inner size
CONTEXT = 512  # tokens; plenty for the test examples
VOCAB = 400  # 256 byte pieces + 3 specials + ~140 learned pieces
RMS_EPS = 1e-5
ROPE_THETA = 10000.0
SEED = 1234
# Weight init std. HF's 0.02 leaves a frozen 64-wide lm_head unable to produce confident
# logits after the final RMSNorm (max logit ~ 0.02*64 = 1.3), so LoRA could never memorise.
INIT_STD = 0.25

UNK, BOS, EOS = 0, 1, 2

# Text the tokenizer learns its merges from: the prompt format's markers, JSON and English.
_CORPUS = """\
<|system|> You are a helpful assistant. Answer with JSON only.<|end|>
<|user|> What is the capital of France?<|end|>
<|assistant|> {"answer": "Paris", "confidence": 0.9}<|end|>
<|schema|> {"type":"object","properties":{"name":{"type":"string"}},"required":["name"]}<|end|>
<|tools|> [{"name":"roll_dice","description":"Roll dice","parameters":{}}]<|end|>
The quick brown fox jumps over the lazy dog. A level has rooms, walls, doors and monsters.
Generate a dungeon level with a width, a height and a list of enemies for the hero.
{"width": 10, "height": 8, "enemies": [{"kind": "goblin", "x": 3, "y": 4}]}
The color of the sky is blue. The color of grass is green. Numbers: 0 1 2 3 4 5 6 7 8 9.
"""


def train_tokenizer(out_dir: Path) -> Path:
    """Train the SentencePiece BPE model in-process; returns the tokenizer.model path."""
    import sentencepiece as spm

    lines = [line for line in _CORPUS.splitlines() if line.strip()] * 4
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines),
        model_writer=buf,
        model_type="bpe",
        vocab_size=VOCAB,
        byte_fallback=True,  # every byte has a piece: no <unk> on unseen text
        character_coverage=1.0,
        add_dummy_prefix=False,  # no implicit leading space (matches add_space_prefix=False)
        remove_extra_whitespaces=False,
        normalization_rule_name="identity",  # the text is tokenized exactly as given
        split_digits=True,
        unk_id=UNK,
        bos_id=BOS,
        eos_id=EOS,
        pad_id=-1,
        hard_vocab_limit=False,
        minloglevel=2,
        num_threads=1,  # deterministic
    )
    path = out_dir / "tokenizer.model"
    path.write_bytes(buf.getvalue())
    return path


def _spm_vocab(model_path: Path):
    """(pieces, scores, gguf token types) from a SentencePiece model."""
    import gguf
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(model_path))
    pieces, scores, types = [], [], []
    for i in range(sp.get_piece_size()):
        pieces.append(sp.id_to_piece(i))
        scores.append(sp.get_score(i))
        if sp.is_unknown(i):
            types.append(gguf.TokenType.UNKNOWN)
        elif sp.is_control(i):
            types.append(gguf.TokenType.CONTROL)
        elif sp.is_byte(i):
            types.append(gguf.TokenType.BYTE)
        else:
            types.append(gguf.TokenType.NORMAL)
    return pieces, scores, types


def _hf_tokenizer(pieces: list[str], scores: list[float]):
    """An HF LlamaTokenizer (tokenizers BPE) with the SentencePiece vocabulary and merges."""
    from transformers import LlamaTokenizer
    from transformers.tokenization_utils_base import generate_merges

    vocab = {p: i for i, p in enumerate(pieces)}
    # BPE merge priority = SentencePiece score of the merged piece (what llama.cpp uses)
    merges = generate_merges(vocab, {p: s for p, s in zip(pieces, scores)})
    return LlamaTokenizer(
        vocab=vocab,
        merges=merges,
        add_prefix_space=False,
        legacy=False,
        unk_token=pieces[UNK],
        bos_token=pieces[BOS],
        eos_token=pieces[EOS],
        add_bos_token=True,
        add_eos_token=False,
    )


def write_llama_gguf(model, pieces, scores, types, path: Path) -> Path:
    """Write an HF LlamaForCausalLM as an f32 GGUF of arch 'llama'."""
    import gguf

    cfg = model.config
    arch = gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.LLAMA]
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_name("understudy-tiny-llama")
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    writer.add_context_length(cfg.max_position_embeddings)
    writer.add_embedding_length(cfg.hidden_size)
    writer.add_block_count(cfg.num_hidden_layers)
    writer.add_feed_forward_length(cfg.intermediate_size)
    writer.add_head_count(cfg.num_attention_heads)
    writer.add_head_count_kv(cfg.num_key_value_heads)
    writer.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    writer.add_rope_dimension_count(cfg.hidden_size // cfg.num_attention_heads)
    writer.add_rope_freq_base(ROPE_THETA)
    writer.add_vocab_size(cfg.vocab_size)

    writer.add_tokenizer_model("llama")  # SentencePiece-style (SPM) vocabulary
    writer.add_tokenizer_pre("default")
    writer.add_token_list(pieces)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    writer.add_bos_token_id(BOS)
    writer.add_eos_token_id(EOS)
    writer.add_unk_token_id(UNK)
    writer.add_add_bos_token(True)
    writer.add_add_eos_token(False)
    writer.add_add_space_prefix(False)

    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, cfg.num_hidden_layers)
    for hf_name, tensor in model.state_dict().items():
        data = tensor.detach().to("cpu").float().numpy()
        if hf_name.endswith("q_proj.weight"):
            data = permute_qk(data, cfg.num_attention_heads, cfg.num_attention_heads)
        elif hf_name.endswith("k_proj.weight"):
            data = permute_qk(data, cfg.num_attention_heads, cfg.num_key_value_heads)
        name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if name is None:
            raise ValueError(f"no GGUF name for {hf_name}")
        writer.add_tensor(name, np.ascontiguousarray(data, dtype=np.float32))

    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def make_tiny_llama(directory: str | Path) -> tuple[Path, Path]:
    """Build the tiny model under `directory`; returns (hf_dir, gguf_path)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    directory = Path(directory)
    hf_dir = directory / "tiny-llama-hf"
    hf_dir.mkdir(parents=True, exist_ok=True)
    spm_path = train_tokenizer(directory)
    pieces, scores, types = _spm_vocab(spm_path)

    torch.manual_seed(SEED)
    config = LlamaConfig(
        vocab_size=len(pieces),
        hidden_size=HIDDEN,
        intermediate_size=FFN,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        num_key_value_heads=KV_HEADS,
        max_position_embeddings=CONTEXT,
        rms_norm_eps=RMS_EPS,
        rope_parameters={"rope_type": "default", "rope_theta": ROPE_THETA},
        tie_word_embeddings=False,
        initializer_range=INIT_STD,
        bos_token_id=BOS,
        eos_token_id=EOS,
        pad_token_id=EOS,
    )
    model = LlamaForCausalLM(config).eval()
    model.save_pretrained(hf_dir)
    _hf_tokenizer(pieces, scores).save_pretrained(hf_dir)

    gguf_path = write_llama_gguf(model, pieces, scores, types, directory / "tiny-llama-f32.gguf")
    return hf_dir, gguf_path
