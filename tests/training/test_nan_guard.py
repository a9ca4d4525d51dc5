"""A run whose loss or gradients stop being finite is stopped, saves nothing and registers no usable version.

Forced on the CPU with a learning rate far past any real one: the first update throws the LoRA
weights to ~1e30, the next forward pass overflows. The control is the same job at the tiny
model's usual rate, which trains, exports and verifies.
"""

from __future__ import annotations

import pytest

from tests.training.examples import COLOR_SCHEMA, make_example, snapshot_rows
from understudy.routing.registry import list_versions, register_version
from understudy.settings import load_settings
from understudy.store import Store
from understudy.training.config import TrainConfig
from understudy.training.pipeline import run_training_job
from understudy.training.snapshots import write_snapshot
from understudy.training.train import NonFiniteLoss, train

EXAMPLES = [
    make_example("color of sky?", '{"color": "blue"}', COLOR_SCHEMA),
    make_example("color of grass?", '{"color": "green"}', COLOR_SCHEMA),
]
EXPLODING_LR = 1e30  # far past any real rate: the weights overflow after one update


def _config(tiny_llama, lr: float) -> dict:
    hf_dir, gguf = tiny_llama
    return {
        "base_model": str(hf_dir),
        "base_gguf": str(gguf),
        "lr": lr,
        "max_steps": 40,
        "batch_size": 2,
        "lora_dropout": 0.0,
        "device": "cpu",
        "precision": "float32",
        "verify_max_tokens": 16,
    }


def test_a_non_finite_loss_stops_training_and_saves_nothing(tiny_llama, tmp_path):
    config = TrainConfig.from_dict(_config(tiny_llama, EXPLODING_LR))
    with pytest.raises(NonFiniteLoss, match="training stopped, no adapter saved"):
        train(config, EXAMPLES, EXAMPLES, tmp_path / "peft", progress=False)
    assert not (tmp_path / "peft" / "adapter_model.safetensors").exists()


@pytest.mark.parametrize("lr, usable", [(EXPLODING_LR, False), (1e-2, True)])
def test_the_job_fails_and_registers_no_usable_version(tiny_llama, tmp_path, lr, usable):
    snapshot = write_snapshot(snapshot_rows(list(zip(EXAMPLES, ("train", "eval")))), tmp_path, "site")
    result = run_training_job("site", str(snapshot), str(tmp_path / "job"), _config(tiny_llama, lr), progress=False)
    settings = load_settings(data_dir=tmp_path / "data")
    store = Store(settings.db_path)
    try:
        store.cursor().execute(
            "INSERT INTO sites (id, name, name_source, kind, state, created_at) VALUES ('site', 'site', 'explicit', 'explicit', 'learning', now())"
        )
        version = register_version(store, "site", result)
        site = store.resolve_site("site")
        if usable:
            assert result["error"] is None and result["adapter_path"] and version.status == "active"
            assert site.active_version == version.version
        else:
            assert "NonFiniteLoss" in result["error"] and result["adapter_path"] is None
            assert not (tmp_path / "job" / "adapter.gguf").exists()
            assert version.status == "failed" and site.active_version is None
            assert [v.status for v in list_versions(store, "site")] == ["failed"]
    finally:
        store.close()
