"""One training job, start to finish: snapshot → LoRA → GGUF adapter → verify → evaluate.

A plain function (the Huey task is a thin wrapper around it, and `understudy train --now`
calls it directly). It reads only the immutable Parquet snapshot it is given and writes only
under its output directory; the result (also saved as `result.json` there) reaches the store
through the proxy's admin API, or the CLI when no proxy runs: the worker never opens the
DuckDB file.

The held-out set is evaluated twice, with the bare base model and with the new adapter, so
a version's metrics say what training bought.
"""

from __future__ import annotations

import json
import shutil
import traceback
from dataclasses import asdict
from pathlib import Path
from typing import Any

from understudy import wire
from understudy.inference.site_prompt import SitePrompt, render_request
from understudy.training.config import TrainConfig
from understudy.training.dataset import load_examples
from understudy.training.evaluate import EvalReport, evaluate, local_generate_fn

RESULT_FILENAME = "result.json"
MAX_EVAL_EXAMPLES = 20  # held-out examples generated per evaluation (each is a full local generation)


def run_training_job(
    site_id: str,
    snapshot: str,
    out_dir: str,
    config: dict[str, Any],
    *,
    validator: str | None = None,
    progress: bool = True,
    control: str | None = None,
) -> dict[str, Any]:
    """Train one version for one site; never raises (a failure is a result with `error`).

    `validator` is the site's validator reference (`module:function`); the held-out sets are
    checked with it, bound to each example's own request.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cfg = TrainConfig.from_dict(config)
    result: dict[str, Any] = {
        "site_id": site_id,
        "dataset_snapshot": snapshot,
        "config": cfg.to_dict(),
        "base_model": cfg.resolved_base_model(),
        "base_gguf": cfg.resolved_base_gguf(),
        "adapter_path": None,
        "verified": False,
        "metrics": {},
        "error": None,
        "control": control,
    }
    try:
        _train_export_verify(cfg, snapshot, out, result, validator, progress)
    except Exception as exc:  # the version is recorded as failed, with the reason
        result["error"] = f"{type(exc).__name__}: {exc}"
        result["traceback"] = traceback.format_exc(limit=8)
    (out / RESULT_FILENAME).write_text(json.dumps(result, indent=2, default=str))
    return result


def _train_export_verify(
    cfg: TrainConfig, snapshot: str, out: Path, result: dict[str, Any], validator: str | None, progress: bool
) -> None:
    from understudy.inference.local_generate import LocalGenerator
    from understudy.training.gguf_adapter import export_gguf_adapter
    from understudy.training.train import EPOCHS_DIRNAME, train
    from understudy.training.verify import verify_adapter

    site_prompt = SitePrompt.from_dict(cfg.prompt)
    # Examples whose static part is not the site's cannot be rendered compactly: not learned from.
    train_examples, eval_examples = (
        [e for e in split if render_request(e, site_prompt) is not None] for split in load_examples(snapshot)
    )
    if not eval_examples:  # tiny datasets: hold out the last training example rather than nothing
        eval_examples = train_examples[-1:]
    held_out = eval_examples[:MAX_EVAL_EXAMPLES]
    base_gguf = cfg.resolved_base_gguf()
    generator: LocalGenerator | None = None

    def local_generator() -> LocalGenerator:
        nonlocal generator
        if generator is None:
            generator = LocalGenerator(base_gguf)
        return generator

    def evaluate_adapter(adapter: Path) -> EvalReport:
        """The held-out set answered with `adapter` as the proxy would serve it, and checked."""
        answer = local_generate_fn(local_generator(), str(adapter), site_prompt=site_prompt, validator=validator)
        return evaluate(answer, held_out, validator)

    # The epoch kept is chosen by the held-out pass rate where answers can be checked (a validator, or
    # a response schema), by the held-out loss alone where they cannot (training.epoch_choice).
    epoch_reports: dict[int, EvalReport] = {}

    def score_epoch(epoch: int, peft_dir: Path) -> float | None:
        report = evaluate_adapter(export_gguf_adapter(peft_dir, peft_dir / "adapter.gguf", base_gguf))
        epoch_reports[epoch] = report
        return report.validator_pass if report.validator_pass is not None else report.parse_valid

    checkable = validator is not None or any(wire.is_json(e.get("response_format")) for e in held_out)
    try:
        trained = train(
            cfg,
            train_examples,
            eval_examples,
            out / "peft",
            progress=progress,
            score_epoch=score_epoch if checkable else None,
        )
        shutil.rmtree(out / "peft" / EPOCHS_DIRNAME, ignore_errors=True)  # the candidates' copies: measured, done
        result["metrics"]["train"] = {
            k: v for k, v in asdict(trained).items() if k not in ("loss_history", "sample_outputs", "sample_tokens")
        }
        adapter = export_gguf_adapter(out / "peft", out / "adapter.gguf", base_gguf)
        result["adapter_path"] = str(adapter)
        result["metrics"]["adapter_bytes"] = adapter.stat().st_size
        verdict = verify_adapter(
            base_gguf,
            adapter,
            eval_examples,
            trained.sample_outputs,
            trained_tokens=trained.sample_tokens,
            generator=local_generator(),
            max_tokens=cfg.verify_max_tokens,
            site_prompt=site_prompt,
        )
        result["verified"] = verdict.ok
        result["metrics"]["verify"] = {"n": verdict.n, "exact": verdict.exact, "near": verdict.near}
        failed = next((case for case in verdict.cases if not case.ok), None)
        if failed is not None:  # what a failed export looks like, for whoever reads the version's metrics
            result["metrics"]["verify"]["first_failure"] = {
                "example": failed.index,
                "reference": failed.reference[:500],
                "local": failed.local[:500],
                "similarity": round(failed.ratio, 3),
                "max_logit_gap": failed.max_gap,
            }
        # The bare base reads the full prompt (it never learned a site's compact one).
        result["metrics"]["base_heldout"] = _rates(
            evaluate(local_generate_fn(local_generator(), None, validator=validator), held_out, validator)
        )
        # The kept epoch's answers were measured for the choice, with the same weights: not asked twice.
        kept = epoch_reports.get(trained.best_epoch) if trained.best_epoch is not None else None
        result["metrics"]["heldout"] = _rates(kept if kept is not None else evaluate_adapter(adapter))
    finally:
        if generator is not None:
            generator.close()


def _rates(report: EvalReport) -> dict[str, Any]:
    return {
        "n": report.n,
        "exact_match_rate": report.exact_match,
        "parse_valid_rate": report.parse_valid,
        "validator_pass_rate": report.validator_pass,
    }
