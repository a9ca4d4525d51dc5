"""QLoRA: the tiny Llama loaded 4-bit NF4 with bitsandbytes (on CPU), trained, exported as a GGUF
adapter, and reproduced by llama.cpp on the full-precision base."""

from __future__ import annotations

from tests.training.examples import COLOR_SCHEMA, make_example
from understudy.inference.local_generate import LocalGenerator
from understudy.inference.prompt_format import render_prompt
from understudy.training.config import TrainConfig
from understudy.training.gguf_adapter import export_gguf_adapter
from understudy.training.train import train

EXAMPLES = [
    make_example("color of sky?", '{"color": "blue"}', COLOR_SCHEMA),
    make_example("color of grass?", '{"color": "green"}', COLOR_SCHEMA),
]


def test_qlora_trains_and_its_adapter_reproduces_on_the_base(tiny_llama, tmp_path):
    hf_dir, gguf = tiny_llama
    config = TrainConfig(
        base_model=str(hf_dir),
        base_gguf=str(gguf),
        qlora=True,
        lr=1e-2,
        max_steps=40,
        batch_size=2,
        grad_accum=1,
        lora_dropout=0.0,
        device="cpu",
    )
    result = train(config, EXAMPLES, EXAMPLES, tmp_path / "peft", progress=False)
    assert [text for _, text in result.sample_outputs] == [ex["completion"] for ex in EXAMPLES]
    adapter = export_gguf_adapter(tmp_path / "peft", tmp_path / "adapter.gguf", gguf)
    with LocalGenerator(gguf, n_ctx=256, n_threads=2) as generator:
        for example in EXAMPLES:
            prompt = render_prompt(example["messages"], example["response_format"])
            assert generator.generate(prompt, adapter_path=adapter, max_tokens=16) == example["completion"]
            assert generator.generate(prompt, max_tokens=16) != example["completion"]
