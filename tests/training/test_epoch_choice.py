"""A job keeps the epoch whose held-out answers pass its checks most often; the held-out loss breaks
ties and decides alone where nothing can be checked (training.epoch_choice).

The rule on its own, then `train` with a scorer over real saved adapters (what it keeps is what the
scorer preferred, or the lowest loss when the scorer cannot tell the epochs apart), then the whole
job on the tiny model, where the site's validator and the held-out loss disagree about the epochs.
"""

from __future__ import annotations

import json

import pytest

from tests.training.examples import COLOR_SCHEMA, make_example, snapshot_rows
from understudy.inference.site_prompt import SitePrompt
from understudy.training.config import TrainConfig
from understudy.training.encoding import encode_examples
from understudy.training.epoch_choice import EpochCandidate, choose_epoch
from understudy.training.model_loading import load_model, load_tokenizer
from understudy.training.train import eval_loss, train


def test_the_pass_rate_decides_before_the_loss():
    candidates = [EpochCandidate(1, 0.40, 0.60), EpochCandidate(2, 0.30, 0.55), EpochCandidate(3, 0.45, 0.80)]
    assert choose_epoch(candidates).epoch == 3
    # control: the same losses, pass rates the epochs share -> the lowest loss
    assert choose_epoch([EpochCandidate(c.epoch, c.eval_loss, 0.60) for c in candidates]).epoch == 2


def test_without_a_measured_pass_rate_the_loss_decides():
    assert choose_epoch([EpochCandidate(1, 0.40), EpochCandidate(2, 0.30), EpochCandidate(3, 0.35)]).epoch == 2
    assert choose_epoch([EpochCandidate(1, 0.30), EpochCandidate(2, 0.30)]).epoch == 1  # equal losses: the earlier
    with pytest.raises(ValueError):
        choose_epoch([])


THINGS = ["sky", "grass", "sun", "rose", "snow", "sea", "leaf", "gold"]
COLORS = ["blue", "green", "yellow", "red", "white", "navy", "lime", "amber"]


def examples(colors: list[str]) -> list[dict]:
    return [
        make_example(f"color of {thing}?", json.dumps({"color": color}), COLOR_SCHEMA)
        for thing, color in zip(THINGS, colors)
    ]


def _config(tiny_llama, **overrides) -> TrainConfig:
    hf_dir, gguf = tiny_llama
    return TrainConfig.from_dict(
        {
            "base_model": str(hf_dir),
            "base_gguf": str(gguf),
            "lr": 1e-2,
            "batch_size": 2,
            "lora_dropout": 0.0,
            "device": "cpu",
            "precision": "float32",
            "verify_examples": 0,
            **overrides,
        }
    )


@pytest.mark.parametrize("scorer_prefers_the_first_epoch", [True, False])
def test_train_keeps_the_epoch_the_scorer_prefers_and_saves_its_weights(
    tiny_llama, tmp_path, scorer_prefers_the_first_epoch
):
    from peft import PeftModel

    hf_dir, _ = tiny_llama
    config = _config(tiny_llama)  # the default plan: 3 epochs
    data = examples(COLORS)  # held out with the same answers: the loss falls every epoch
    tokenizer = load_tokenizer(str(hf_dir))
    encoded = encode_examples(tokenizer, data, config.max_length, SitePrompt.from_dict(config.prompt))

    def loss_of(adapter_dir) -> float:
        saved = PeftModel.from_pretrained(load_model(str(hf_dir), "cpu", bf16=False), adapter_dir)
        return eval_loss(saved, encoded, tokenizer.pad_token_id, "cpu", config.batch_size)

    scored: dict[int, float] = {}

    def score(epoch: int, adapter_dir) -> float:
        scored[epoch] = loss_of(adapter_dir)  # the folder holds that epoch's weights (checked below)
        return 1.0 if scorer_prefers_the_first_epoch and epoch == 1 else 0.5

    result = train(config, data, data, tmp_path / "peft", progress=False, score_epoch=score)

    losses = result.epoch_eval_losses
    assert len(losses) == 3 and losses[0] > losses[-1]
    assert sorted(scored) == [1, 2, 3]
    assert [scored[e] for e in (1, 2, 3)] == pytest.approx(losses, rel=1e-4)
    chosen = 1 if scorer_prefers_the_first_epoch else losses.index(min(losses)) + 1
    assert result.best_epoch == chosen and result.eval_loss == pytest.approx(losses[chosen - 1])
    assert [c["held_out_pass"] for c in result.epoch_candidates] == (
        [1.0, 0.5, 0.5] if scorer_prefers_the_first_epoch else [0.5, 0.5, 0.5]
    )
    # what was saved is the chosen epoch's adapter
    assert loss_of(tmp_path / "peft") == pytest.approx(losses[chosen - 1], rel=1e-4)


OWN_COLOR = dict(zip(THINGS, COLORS))


def names_the_things_own_color(answer: str, arguments) -> bool:
    """The site's validator: the answer names the asked thing's color (the one it was trained on)."""
    thing = arguments.request["messages"][-1]["content"].removeprefix("color of ").removesuffix("?")
    return json.loads(answer).get("color") == OWN_COLOR[thing]


@pytest.fixture(scope="module")
def snapshot(tmp_path_factory):
    """Trained on each thing's own color, held out with other things' colors: the held-out loss and
    the validator (which wants the own color) read the epochs differently."""
    from understudy.training.snapshots import write_snapshot

    splits = [(e, "train") for e in examples(COLORS)] + [(e, "eval") for e in examples(COLORS[3:] + COLORS[:3])]
    return write_snapshot(snapshot_rows(splits), tmp_path_factory.mktemp("snapshot"), "site")


def test_a_job_keeps_the_epoch_whose_answers_pass_the_validator(tiny_llama, tmp_path, snapshot):
    from understudy.training.pipeline import run_training_job

    hf_dir, gguf = tiny_llama
    config = {
        "base_model": str(hf_dir),
        "base_gguf": str(gguf),
        "lr": 1e-2,
        "epochs": 25,  # a long plan: early stopping ends it, three epochs stay in the running
        "batch_size": 2,
        "lora_dropout": 0.0,
        "device": "cpu",
        "precision": "float32",
        "verify_max_tokens": 16,
    }
    validator = f"{__name__}:names_the_things_own_color"
    checked = run_training_job(
        "site", str(snapshot), str(tmp_path / "checked"), config, validator=validator, progress=False
    )
    # control: the same job without the validator (the schema alone: every epoch's answers parse)
    unchecked = run_training_job("site", str(snapshot), str(tmp_path / "unchecked"), config, progress=False)

    assert checked["error"] is None and unchecked["error"] is None
    by_validator, by_loss = checked["metrics"]["train"], unchecked["metrics"]["train"]
    assert by_validator["epoch_eval_losses"] == by_loss["epoch_eval_losses"]  # the same training
    losses = by_loss["epoch_eval_losses"]
    lowest_loss_epoch = losses.index(min(losses)) + 1
    candidates = by_validator["epoch_candidates"]
    assert len(candidates) == 3 and lowest_loss_epoch in [c["epoch"] for c in candidates]

    # without the validator every epoch passes the schema: the lowest held-out loss is kept
    assert [c["held_out_pass"] for c in by_loss["epoch_candidates"]] == [1.0, 1.0, 1.0]
    assert by_loss["best_epoch"] == lowest_loss_epoch
    # with it, the epoch whose answers pass most often, here not the lowest-loss one
    passes = {c["epoch"]: c["held_out_pass"] for c in candidates}
    assert passes[by_validator["best_epoch"]] == max(passes.values()) > passes[lowest_loss_epoch]
    assert by_validator["best_epoch"] != lowest_loss_epoch
    # the version's held-out figures are the kept epoch's (measured once, for the choice)
    assert checked["metrics"]["heldout"]["validator_pass_rate"] == max(passes.values())
    assert not (tmp_path / "checked" / "peft" / "epochs").exists()  # the candidates' copies are gone
