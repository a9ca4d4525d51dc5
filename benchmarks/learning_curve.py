"""The learning curve on the RPG workload, at the default policy, with the base-model control.

One command, from an empty data directory: the offline teacher (flaw share 0.1) answers as the
upstream, the proxy runs with its shipped defaults (bundled Gemma 3 270M base, default
promotion policy), and the Jac level generator plays batches of games through it. Per site:

1. record until the site has `--train-at` recorded calls;
2. register the bare base model as a version (`--control base`): it shadows until the policy
   decides, which must be a rejection;
3. train a version on the site's calls (the shipped training defaults) and register it; it
   shadows until the policy decides (the target: promoted);
4. keep playing until `--max-calls` recorded calls per site, serving locally once promoted.

After every batch it prints, per site: calls recorded, state, local share, the validator pass
rate of the teacher (its answers to the recorded calls), of the base control and of each
version (their shadow answers), the teacher's self-agreement, the version's agreement, and the
local share and agreement with and without the confidence cascade; `--json` prints the whole
curve as one object, `--plot` draws it (PNG). The generator waits for the proxy's shadow
backlog to drain between batches, so each sampled call gets its local answer.

    .venv/bin/python benchmarks/learning_curve.py --data-dir /tmp/curve --plot curve.png
    .venv/bin/python benchmarks/learning_curve.py --smoke --data-dir /tmp/curve-smoke   # the tiny model, minutes
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from understudy.corpus import generate_corpus
from understudy.training.pipeline import run_training_job
from understudy.processes import start_proxy, start_teacher
from understudy.proxy_client import StoreAccess
from understudy.settings import load_settings
from understudy.training_jobs import base_control_result


def shadow_backlog(url: str) -> int:
    return int(httpx.get(url + "/healthz", timeout=10).json().get("shadow_pending", 0))


def wait_for_backlog(url: str, limit_s: float) -> None:
    deadline = time.monotonic() + limit_s
    while shadow_backlog(url) and time.monotonic() < deadline:
        time.sleep(1)


def site_rows(access: StoreAccess, wanted: list[str]) -> dict[str, dict]:
    return {row["returns"]: row for row in access.sites() if row["returns"] in wanted}


def teacher_validity(access: StoreAccess, site: str, tmp: Path) -> float | None:
    """The share of the teacher's answers to the site's calls that pass the site's validator (with their args)."""
    exported = access.export(site, filtered=True, jsonl=str(tmp / f"{site}.jsonl"), parquet=None)
    considered = exported["considered"] - exported["duplicates"]
    return exported["kept"] / considered if considered else None


def snapshot(access: StoreAccess, returns: str, site: dict, phase: str, tmp: Path) -> dict[str, Any]:
    [report] = json.loads(access.report(site["id"], "json"))
    versions = {f"v{v['version']}": {"status": v["status"], "control": v["control"],
                                     "shadow_samples": v["shadow"]["samples"],
                                     "local_valid_rate": v["shadow"]["local_valid_rate"],
                                     "upstream_valid_rate": v["shadow"]["upstream_valid_rate"],
                                     "agreement": v["shadow"]["mean"]}
                for v in report["versions"]}
    judgement, cascade, teacher = report["judgement"], report["cascade"], report["teacher"]
    return {
        "site": returns, "phase": phase, "calls": report["calls"], "state": report["state"],
        "version": report["active_version"], "local_share": report["local_share"],
        "teacher_validity": teacher_validity(access, site["id"], tmp),
        "teacher_self_agreement": teacher["mean"] if teacher else None,
        "teacher_samples": teacher["n"] if teacher else 0,
        "agreement": judgement["agreement"]["mean"] if judgement else None,
        "validity_difference": judgement["validity"]["mean"] if judgement else None,
        "samples": judgement["validity"]["n"] if judgement else 0,
        "cascade_threshold": cascade["threshold"] if cascade else None,
        "agreement_without_cascade": cascade["agreement_without"] if cascade else None,
        "agreement_with_cascade": cascade["agreement_with"] if cascade else None,
        "local_share_with_cascade": cascade["local_share_with"] if cascade else None,
        "versions": versions, "why": report["why"],
    }


def train_version(access: StoreAccess, site_id: str) -> dict[str, Any]:
    job = access.training_job(site_id)
    print(f"  training {job['site_name']} on {job['examples']['kept']} examples ({job['config']['prompt']['mode']} "
          "prompt)", flush=True)
    started = time.monotonic()
    result = run_training_job(job["site_id"], job["snapshot"], job["out_dir"], job["config"],
                              validator=job.get("validator"), progress=False)
    if result.get("error"):
        raise SystemExit(f"training failed: {result['error']}")
    version = access.register(result)
    train = result["metrics"]["train"]
    print(f"  v{version['version']} {version['status']} after {time.monotonic() - started:.0f} s "
          f"({train['n_train']} examples, {train['tokens_per_example']:.0f} tokens each); held-out "
          f"{result['metrics']['heldout']}", flush=True)
    return version


def print_row(row: dict[str, Any]) -> None:
    def pct(x):
        return "-" if x is None else f"{x:.0%}"

    def num(x):
        return "-" if x is None else f"{x:.2f}"

    versions = "; ".join(f"{name} {v['status']} valid {pct(v['local_valid_rate'])} agree {num(v['agreement'])}"
                         for name, v in row["versions"].items())
    print(f"  {row['site']:6} {row['phase']:8} calls {row['calls']:4} {row['state']:8} local {pct(row['local_share']):>4} "
          f"| teacher valid {pct(row['teacher_validity'])} self-agree {num(row['teacher_self_agreement'])} "
          f"(n={row['teacher_samples']}) | agreement {num(row['agreement'])} cascade "
          f"{num(row['agreement_with_cascade'])}@{pct(row['local_share_with_cascade'])} | {versions}", flush=True)


def plot(curve: list[dict[str, Any]], sites: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(sites), figsize=(7 * len(sites), 4.5), squeeze=False)
    for ax, site in zip(axes[0], sites):
        rows = [r for r in curve if r["site"] == site]
        x = [r["calls"] for r in rows]
        for key, label, style in (("teacher_validity", "teacher validator pass", "k--"),
                                  ("teacher_self_agreement", "teacher self-agreement", "k:"),
                                  ("agreement", "version agreement", "b-"),
                                  ("agreement_with_cascade", "agreement with cascade", "c-"),
                                  ("local_share", "local share", "g-")):
            ax.plot(x, [r[key] if r[key] is not None else float("nan") for r in rows], style, label=label)
        valid = [max((v["local_valid_rate"] or 0) for v in r["versions"].values()) if r["versions"] else float("nan")
                 for r in rows]
        ax.plot(x, valid, "m-", label="local validator pass (latest version)")
        for prev, row in zip(rows, rows[1:]):
            if row["state"] != prev["state"]:
                ax.axvline(row["calls"], color="grey", alpha=0.3)
                ax.text(row["calls"], 1.02, row["state"], fontsize=8, rotation=45)
        ax.set_title(f"{site}: learning curve at the default policy")
        ax.set_xlabel("calls recorded")
        ax.set_ylim(0, 1.1)
        ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, required=True, help="An empty (or new) data directory.")
    parser.add_argument("--sites", default="Level,Map", help="RPG sites by return type.")
    parser.add_argument("--train-at", type=int, default=120, help="Recorded calls before a site's controls and training.")
    parser.add_argument("--max-calls", type=int, default=300, help="Stop once every site has this many recorded calls.")
    parser.add_argument("--batch-runs", type=int, default=4, help="Generator runs between snapshots.")
    parser.add_argument("--levels", type=int, default=5, help="Levels per generator run.")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--flaw-share", type=float, default=0.1)
    parser.add_argument("--json", action="store_true", help="Print the whole curve as one JSON object.")
    parser.add_argument("--plot", type=Path, default=None, help="Write the curve as a PNG.")
    parser.add_argument("--smoke", action="store_true", help="The tiny random model and a few calls (minutes).")
    args = parser.parse_args()

    if args.smoke:
        configure_smoke(args)
    sites = args.sites.split(",")
    if args.data_dir.exists():
        shutil.rmtree(args.data_dir)
    settings = load_settings(data_dir=args.data_dir)
    tmp = args.data_dir / "bench-exports"
    tmp.mkdir(parents=True, exist_ok=True)
    teacher = start_teacher(seed=args.seed, flaw_share=args.flaw_share)
    proxy = start_proxy(settings, teacher.url, upstream_free=True)
    access = StoreAccess(settings)
    phase = {site: "record" for site in sites}
    curve: list[dict[str, Any]] = []
    started = time.monotonic()
    try:
        batch = 0
        while True:
            result = generate_corpus(settings, runs=args.batch_runs, levels=args.levels, parallel=1,
                                     seed=args.seed + batch, flaw_share=args.flaw_share, progress=False)
            batch += 1
            wait_for_backlog(proxy.url, limit_s=1800)
            rows = site_rows(access, sites)
            print(f"batch {batch}: {result.succeeded}/{result.runs} runs, {time.monotonic() - started:.0f} s",
                  flush=True)
            calls = {}
            for site in sites:
                if site not in rows:
                    continue
                row = snapshot(access, site, rows[site], phase[site], tmp)
                curve.append({**row, "batch": batch, "seconds": time.monotonic() - started})
                print_row(row)
                calls[site] = row["calls"]  # the clients' calls (not the proxy's own second answers)
                advance(access, site, rows[site], row, phase, args)
            if all(calls.get(s, 0) >= args.max_calls for s in sites):
                break
    finally:
        proxy.stop()
        teacher.stop()
    summary = summarize(curve, sites, args)
    if args.plot is not None:
        plot(curve, sites, args.plot)
        summary["plot"] = str(args.plot)
    if args.json:
        print(json.dumps({"summary": summary, "curve": curve}, default=str))
    else:
        print(json.dumps(summary, indent=2, default=str))


def advance(access: StoreAccess, site: str, site_row: dict, row: dict, phase: dict[str, str], args) -> None:
    """Move the site on: base control once it has enough calls, then a trained version once the control is decided."""
    if phase[site] == "record" and row["calls"] >= args.train_at:
        job = access.training_job(site_row["id"], control="base")
        version = access.register(base_control_result(job))
        print(f"  {site}: base control registered as v{version['version']} ({version['status']})", flush=True)
        phase[site] = "base"
    elif phase[site] == "base" and row["state"] != "shadow":
        print(f"  {site}: base control decided: {row['why']}", flush=True)
        train_version(access, site_row["id"])
        phase[site] = "version"
    elif phase[site] == "version" and row["state"] == "local":
        print(f"  {site}: promoted at {row['calls']} calls: {row['why']}", flush=True)
        phase[site] = "local"


def summarize(curve: list[dict[str, Any]], sites: list[str], args) -> dict[str, Any]:
    out: dict[str, Any] = {"train_at": args.train_at, "max_calls": args.max_calls}
    for site in sites:
        rows = [r for r in curve if r["site"] == site]
        if not rows:
            continue
        last = rows[-1]
        promoted = next((r["calls"] for r in rows if r["state"] == "local" and r["phase"] in ("version", "local")), None)
        base = next((r for r in rows if r["phase"] == "base" and r["state"] != "shadow"), None)
        versions = last["versions"]
        out[site] = {
            "promoted_after_calls": promoted, "final_state": last["state"], "final_local_share": last["local_share"],
            "teacher_validity": last["teacher_validity"], "teacher_self_agreement": last["teacher_self_agreement"],
            "base_control": {"decision": base["why"] if base else None,
                             **next(iter(versions.values()), {})} if versions else None,
            "version": list(versions.values())[-1] if len(versions) > 1 else None,
            "agreement": last["agreement"], "agreement_with_cascade": last["agreement_with_cascade"],
            "local_share_with_cascade": last["local_share_with_cascade"], "cascade_threshold": last["cascade_threshold"],
        }
    return out


def configure_smoke(args) -> None:
    """The tiny random Llama as the local base, a couple of small batches: the benchmark end to end in minutes."""
    from understudy.training.tiny_model import make_tiny_llama

    hf_dir, gguf = make_tiny_llama(args.data_dir.parent / f"{args.data_dir.name}-tiny")
    os.environ["UNDERSTUDY_BASE_GGUF"] = str(gguf)
    os.environ["UNDERSTUDY_TRAIN_CONFIG"] = json.dumps({"base_model": str(hf_dir), "base_gguf": str(gguf),
                                                        "max_steps": 10, "lr": 1e-2, "device": "cpu",
                                                        "verify_max_tokens": 32})
    args.sites, args.train_at, args.max_calls, args.batch_runs, args.levels = "Level", 4, 12, 2, 2


if __name__ == "__main__":
    sys.exit(main())
