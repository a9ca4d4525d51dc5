"""The whole pipeline on the tiny random Llama: train -> GGUF adapter -> llama.cpp.

Fast (seconds): the tiny model memorises two short answers in 40 steps at a high learning
rate; the GGUF adapter on the llama.cpp base must then reproduce them while the base alone
does not, and adapters must switch on one loaded model.
"""

from __future__ import annotations

import json

import pytest

from tests.training.examples import COLOR_SCHEMA, make_example
from understudy.inference.constraints import compile_schema
from understudy.inference.local_generate import LocalGenerator
from understudy.inference.prompt_format import render_prompt
from understudy.training.config import TrainConfig
from understudy.training.evaluate import evaluate, local_generate_fn
from understudy.training.gguf_adapter import export_gguf_adapter, read_base_info
from understudy.training.train import train
from understudy.training.verify import verify_adapter

BLUE_GREEN = [
    make_example("color of sky?", '{"color": "blue"}', COLOR_SCHEMA),
    make_example("color of grass?", '{"color": "green"}', COLOR_SCHEMA),
]
RED_YELLOW = [
    make_example("color of sky?", '{"color": "red"}', COLOR_SCHEMA),
    make_example("color of grass?", '{"color": "yellow"}', COLOR_SCHEMA),
]


def tiny_config(hf_dir, gguf_path) -> TrainConfig:
    return TrainConfig(
        base_model=str(hf_dir),
        base_gguf=str(gguf_path),
        lr=1e-2,  # far above real LoRA rates: memorise in a few steps
        max_steps=40,
        batch_size=2,
        grad_accum=1,
        lora_dropout=0.0,
        device="cpu",
    )


def _train_and_export(tiny_llama, examples, out):
    hf_dir, gguf_path = tiny_llama
    result = train(tiny_config(hf_dir, gguf_path), examples, examples, out / "peft", progress=False)
    adapter = export_gguf_adapter(out / "peft", out / "adapter.gguf", gguf_path)
    return result, adapter


@pytest.fixture(scope="module")
def blue_green(tiny_llama, tmp_path_factory):
    return _train_and_export(tiny_llama, BLUE_GREEN, tmp_path_factory.mktemp("blue-green"))


@pytest.fixture(scope="module")
def generator(tiny_llama):
    with LocalGenerator(tiny_llama[1], n_ctx=512, n_threads=2) as gen:
        yield gen


def _prompt(ex):
    return render_prompt(ex["messages"], ex["response_format"], ex["tools"])


def test_tokenizer_and_base_logits_match_llama_cpp(tiny_llama):
    import llama_cpp
    import numpy as np
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    hf_dir, gguf_path = tiny_llama
    tok = AutoTokenizer.from_pretrained(hf_dir)
    model = AutoModelForCausalLM.from_pretrained(hf_dir).eval()
    llm = llama_cpp.Llama(str(gguf_path), n_ctx=256, logits_all=True, verbose=False)
    try:
        text = render_prompt([{"role": "user", "content": 'héllo  "wörld" 中 {"a": [1, 2]}\n\tok'}], COLOR_SCHEMA)
        ids = tok(text)["input_ids"]
        assert llm.tokenize(text.encode(), add_bos=True, special=True) == ids
        assert tok.decode(ids, skip_special_tokens=True) == text
        llm.eval(ids)
        with torch.no_grad():
            hf_logits = model(torch.tensor([ids])).logits[0, -1].numpy()
        cpp_logits = np.array(llm.scores[llm.n_tokens - 1])
        # llama.cpp keeps its KV cache in f16: close, not bit-equal
        assert np.abs(cpp_logits - hf_logits).max() < 0.02 * np.abs(hf_logits).max()
        assert cpp_logits.argmax() == hf_logits.argmax()
    finally:
        llm.close()


def test_trained_adapter_reproduces_completions(blue_green, generator, tiny_llama):
    result, adapter = blue_green
    assert result.steps == 40 and result.train_loss < 0.2 < result.first_loss
    assert result.eval_loss is not None and result.seconds_per_step > 0
    assert [text for _, text in result.sample_outputs] == [ex["completion"] for ex in BLUE_GREEN]
    assert result.out_dir and (adapter.parent / "peft" / "config.json").exists()
    assert TrainConfig.from_json(adapter.parent / "peft").lora_r == 16

    for ex in BLUE_GREEN:
        assert generator.generate(_prompt(ex), adapter_path=adapter, max_tokens=32) == ex["completion"]
        assert generator.generate(_prompt(ex), max_tokens=32) != ex["completion"]

    verdict = verify_adapter(tiny_llama[1], adapter, BLUE_GREEN, result.sample_outputs, generator=generator)
    assert verdict.ok and verdict.exact == 2, verdict.summary()


def test_schema_constrained_decoding_parses(blue_green, generator):
    _, adapter = blue_green
    report = evaluate(local_generate_fn(generator, adapter, max_tokens=32), BLUE_GREEN)
    assert report.exact_match == 1.0 and report.parse_valid == 1.0
    # the base alone is random, yet under a grammar its answer follows the schema
    enum_schema = {"type": "object", "properties": {"color": {"enum": ["blue", "green"]}}, "required": ["color"]}
    text = generator.generate(_prompt(BLUE_GREEN[0]), max_tokens=64, constraint=compile_schema(enum_schema))
    assert json.loads(text)["color"] in ("blue", "green")


def test_adapters_switch_on_one_model(blue_green, generator, tiny_llama, tmp_path):
    _, blue = blue_green
    _, red = _train_and_export(tiny_llama, RED_YELLOW, tmp_path)
    sky = _prompt(BLUE_GREEN[0])
    outputs = [generator.generate(sky, adapter_path=a, max_tokens=32) for a in (blue, red, blue, None, red)]
    assert outputs[0] == outputs[2] == '{"color": "blue"}'
    assert outputs[1] == outputs[4] == '{"color": "red"}'
    assert outputs[3] not in ('{"color": "blue"}', '{"color": "red"}')
    generator.unload_adapter(red)
    assert generator.generate(sky, adapter_path=red, max_tokens=32) == '{"color": "red"}'


def test_verify_rejects_an_adapter_that_is_not_the_trained_one(blue_green, generator, tiny_llama, tmp_path):
    # control for the near-tie allowance: the red adapter standing in for a broken blue export
    # must fail, its forced reference tokens far behind its own best ones
    result, _ = blue_green
    _, red = _train_and_export(tiny_llama, RED_YELLOW, tmp_path)
    verdict = verify_adapter(tiny_llama[1], red, BLUE_GREEN, result.sample_outputs, generator=generator)
    assert not verdict.ok and verdict.exact == 0, verdict.summary()
    assert all(case.max_gap is not None and case.max_gap > 2.0 for case in verdict.cases)


def test_export_checks_the_base(blue_green, tmp_path):
    from understudy.training.config import default_gemma_gguf

    _, adapter = blue_green
    info = read_base_info(default_gemma_gguf())
    assert info["arch"] == "gemma3" and "blk.0.attn_q.weight" in info["tensors"]
    with pytest.raises(ValueError):
        export_gguf_adapter(adapter.parent / "peft", tmp_path / "x.gguf", default_gemma_gguf())


def test_adapter_gguf_metadata(blue_green):
    import gguf

    _, adapter = blue_green
    reader = gguf.GGUFReader(str(adapter))
    assert reader.fields["general.type"].contents() == "adapter"
    assert reader.fields["adapter.type"].contents() == "lora"
    assert reader.fields["adapter.lora.alpha"].contents() == 32.0
    assert reader.fields["general.architecture"].contents() == "llama"
    names = {t.name for t in reader.tensors}
    assert {"blk.0.attn_q.weight.lora_a", "blk.1.attn_output.weight.lora_b"} <= names
    assert len(names) == 2 * 4 * 2  # 2 layers x q,k,v,o x (a, b)


def test_the_near_tie_check_forces_the_tokens_the_answer_was_generated_as(tiny_llama, generator):
    """The bare tiny model writes bytes that are not UTF-8 on their own (U+FFFD in transformers'
    text): forced as the ids it generated, its own greedy answer trails llama.cpp's best by
    nothing; forced as its re-tokenized text (the control) it trails by several nats, which is
    what failed a sound adapter before the ids were kept."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from understudy.training.hf_generate import greedy_generate

    hf_dir, _ = tiny_llama
    model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(hf_dir)
    prompt = "color of sky?"
    text, tokens = greedy_generate(model, tokenizer, prompt, max_new_tokens=24)
    assert "\ufffd" in text  # the case in point: a byte the text cannot carry
    assert generator.forced_gap(prompt, tokens) < 0.5
    assert generator.forced_gap(prompt, text) > 2.0  # MAX_LOGIT_GAP: the text would fail the check
