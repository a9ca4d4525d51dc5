"""A job chooses its epochs by the held-out loss: it stops once the loss stops improving and keeps
the best epoch's weights; a run whose held-out loss keeps falling trains every planned epoch.

The tiny Llama learns eight things' colors. Its held-out set either asks the same questions with
the same answers (the loss keeps falling: the control) or with other things' colors (the model
overfits to the training answers, so past some epoch the held-out loss rises). Both curves are
noisy from epoch to epoch (the control's rises once, at about epoch 17, and then keeps falling):
the shipped patience of 2 epochs must ride out such a rise and still stop the overfitting run.
"""

from __future__ import annotations

import json

import pytest

from tests.training.examples import COLOR_SCHEMA, make_example
from understudy.inference.site_prompt import SitePrompt
from understudy.training.config import TrainConfig
from understudy.training.encoding import encode_examples
from understudy.training.model_loading import load_model, load_tokenizer
from understudy.training.train import eval_loss, train

THINGS = ["sky", "grass", "sun", "rose", "snow", "sea", "leaf", "gold"]
COLORS = ["blue", "green", "yellow", "red", "white", "navy", "lime", "amber"]
EPOCHS = 40  # a long plan: its slowly decaying rate lets the model overfit the training answers


def examples(colors: list[str]) -> list[dict]:
    return [
        make_example(f"color of {thing}?", json.dumps({"color": color}), COLOR_SCHEMA)
        for thing, color in zip(THINGS, colors)
    ]


@pytest.mark.parametrize("held_out, stops", [("other things' colors", True), ("the same answers", False)])
def test_a_job_stops_when_the_held_out_loss_stops_improving_and_keeps_the_best_epoch(
    tiny_llama, tmp_path, held_out, stops
):
    hf_dir, gguf = tiny_llama
    config = TrainConfig.from_dict(
        {
            "base_model": str(hf_dir),
            "base_gguf": str(gguf),
            "lr": 1e-2,
            "epochs": EPOCHS,
            "batch_size": 2,
            "lora_dropout": 0.0,
            "device": "cpu",
            "precision": "float32",
            "verify_examples": 0,
        }
    )
    assert config.early_stop_patience == 2  # the shipped default
    train_set = examples(COLORS)
    eval_set = examples(COLORS[3:] + COLORS[:3]) if stops else train_set
    result = train(config, train_set, eval_set, tmp_path / "peft", progress=False)

    losses = result.epoch_eval_losses
    assert result.stopped_early is stops
    if stops:
        assert len(losses) < EPOCHS and result.steps < EPOCHS * 4
        assert losses[-1] >= min(losses) and result.best_epoch == losses.index(min(losses)) + 1 < len(losses)
        assert len(losses) - result.best_epoch == config.early_stop_patience  # stopped at the patience, no later
    else:
        assert len(losses) == EPOCHS and result.steps == EPOCHS * 4 and result.best_epoch == EPOCHS
    assert result.eval_loss == min(losses)

    # What was saved is the best epoch's adapter: its held-out loss, measured afresh, is the kept one.
    from peft import PeftModel

    tokenizer = load_tokenizer(str(hf_dir))
    saved = PeftModel.from_pretrained(load_model(str(hf_dir), "cpu", bf16=False), tmp_path / "peft")
    encoded = encode_examples(tokenizer, eval_set, config.max_length, SitePrompt.from_dict(config.prompt))
    assert eval_loss(saved, encoded, tokenizer.pad_token_id, "cpu", config.batch_size) == pytest.approx(
        min(losses), rel=1e-4
    )
