"""The real offline base: Gemma 3 270M (bundled GGUF) trained a few steps, served by llama.cpp.

Slow (a minute or two on 2 CPU cores: ~40 s to load the GGUF dequantized into
transformers, a few seconds per step). Run with `pytest -m slow`.
"""

from __future__ import annotations

import json

import pytest

from tests.training.examples import make_example
from understudy.inference.local_generate import LocalGenerator
from understudy.inference.prompt_format import render_prompt
from understudy.training.config import TrainConfig, default_gemma_gguf
from understudy.training.gguf_adapter import export_gguf_adapter
from understudy.training.train import train
from understudy.training.verify import verify_adapter

SCHEMA = {
    "type": "json_schema",
    "json_schema": {
        "name": "Monster",
        "schema": {
            "type": "object",
            "properties": {"name": {"type": "string"}, "hp": {"type": "integer"}},
            "required": ["name", "hp"],
        },
    },
}


def _examples():
    names = ["Grolk", "Vexa", "Thurm", "Ozzle"]
    return [
        make_example(
            f"make_monster\n\nlevel = ({i}, 'dungeon level')",
            json.dumps({"name": f"{names[i]} the Vile", "hp": 17 * (i + 1)}),
            SCHEMA,
            system="Return only the output, as JSON.",
        )
        for i in range(4)
    ]


@pytest.mark.slow
def test_gemma_adapter_loads_and_changes_output(tmp_path):
    examples = _examples()
    config = TrainConfig(
        max_steps=8,
        lr=2e-3,
        batch_size=1,
        grad_accum=1,
        lora_dropout=0.0,
        verify_examples=1,
        verify_max_tokens=24,  # keep the HF greedy pass short
    )
    # memorise all four, check on the last: a confident model makes the HF / llama.cpp
    # comparison robust to their small numeric differences (see training.verify)
    result = train(config, examples, examples[3:], tmp_path / "peft", progress=False)
    print(
        "\nGemma 270M:",
        json.dumps(
            {k: v for k, v in vars(result).items() if k not in ("loss_history", "sample_outputs", "sample_tokens")}
        ),
    )
    assert result.train_loss < result.first_loss

    base_gguf = default_gemma_gguf()
    adapter = export_gguf_adapter(tmp_path / "peft", tmp_path / "adapter.gguf", base_gguf)
    print("adapter bytes:", adapter.stat().st_size)

    with LocalGenerator(base_gguf, n_ctx=1024, n_threads=2) as gen:
        ex = examples[3]
        prompt = render_prompt(ex["messages"], ex["response_format"], ex["tools"])
        base_text = gen.generate(prompt, max_tokens=24)
        verdict = verify_adapter(base_gguf, adapter, examples[3:], result.sample_outputs, generator=gen, max_tokens=24)
        print(verdict.summary(), verdict.cases, "base:", repr(base_text))
        assert verdict.ok
        assert verdict.cases[0].local != base_text
