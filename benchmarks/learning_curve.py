"""The learning curve on the RPG workload, at the shipped defaults, with the base and shuffled controls.

One command, from an empty data directory: the offline teacher (flaw share 0.1) answers as the
upstream, the proxy runs with its shipped defaults (bundled Gemma 3 270M base, default
promotion policy), `understudy worker` runs the training jobs, and the Jac level generator plays
batches of games through the proxy (every game calls all five RPG sites). Per site:

1. record until the site has `--controls-at` recorded calls (below the scheduler's 50 usable
   examples, so the controls come before any version);
2. the base control: the bare base model registered as a version (`understudy train --control
   base`); it shadows until the policy decides (it must be rejected or retired);
3. the shuffled control: `understudy train SITE --control shuffled`, queued for the worker
   (trained on answers to other requests); it shadows until the policy decides;
4. from then on the product's own scheduler (`training.tasks.schedule_training`, run after each
   batch) gives the site its versions by its rules (first version, 2x growth, new data after a
   rejected or inconclusive version), the worker trains them at the shipped training defaults,
   and the policy promotes, partly promotes, rejects or retires them, until every site has
   `--max-calls` recorded calls.

The quiet window aside: the worker's own periodic scheduling is off (its window never opens)
and the benchmark runs the same scheduler function itself after every batch, then plays no
games while a job is queued or running, as if jobs ran in quiet hours; so the curve counts
calls, not this machine's training speed.

After every batch it prints, per site: calls, state, local share, the teacher's validator pass
rate and self-agreement, the active version's agreement and validity, and every version with its
status; `--json` prints the whole curve and a summary as one object, `--plot` draws one panel
per site (PNG). The summary, per site: the calls at which each version was decided and how, the
share of calls 201-300 (the last 100 of the first 300) served locally, and the served answers'
paired validity against the teacher (drift samples, with the interval); over all sites, the
local share of their last 100 calls.

    .venv/bin/python benchmarks/learning_curve.py --data-dir /tmp/curve --plot curve.png --json
    .venv/bin/python benchmarks/learning_curve.py --sites int,str,list --data-dir /tmp/curve-small
    .venv/bin/python benchmarks/learning_curve.py --smoke --data-dir /tmp/curve-smoke   # the tiny model, minutes
    .venv/bin/python benchmarks/learning_curve.py --data-dir /tmp/curve --resume --seed 100 --max-calls 500  # go on
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from understudy.cli.corpus import generate_corpus
from understudy.cli.store_access import StoreAccess
from understudy.processes import start_proxy, start_teacher, start_worker, understudy_executable
from understudy.settings import load_settings
from understudy.training.jobs import base_control_result, scheduling_rules

RPG_SITES = ("Level", "Map", "str", "int", "list")  # the showcase's five sites by return type
SCHEDULE = (
    "from understudy.training.tasks import schedule_training; import json; "
    "print(json.dumps(schedule_training.call_local()))"
)


def shadow_backlog(url: str) -> int:
    return int(httpx.get(url + "/healthz", timeout=10).json().get("shadow_pending", 0))


def wait_for_backlog(url: str, limit_s: float) -> None:
    deadline = time.monotonic() + limit_s
    while shadow_backlog(url) and time.monotonic() < deadline:
        time.sleep(1)


def site_rows(access: StoreAccess, wanted: list[str]) -> dict[str, dict]:
    return {row["returns"]: row for row in access.run("sites") if row["returns"] in wanted}


def teacher_validity(access: StoreAccess, site: str, tmp: Path) -> float | None:
    """The share of the teacher's answers to the site's calls that pass the site's validator (with their args)."""
    exported = access.export(site, filtered=True, jsonl=str(tmp / f"{site}.jsonl"), parquet=None)
    considered = exported["considered"] - exported["duplicates"]
    return exported["kept"] / considered if considered else None


def snapshot(access: StoreAccess, returns: str, site: dict, phase: str, tmp: Path) -> dict[str, Any]:
    [report] = json.loads(access.run("report", site=site["id"], format="json").body)
    versions = {
        f"v{v['version']}": {
            "status": v["status"],
            "control": v["control"],
            "shadow_samples": v["shadow"]["samples"],
            "local_valid_rate": v["shadow"]["local_valid_rate"],
            "upstream_valid_rate": v["shadow"]["upstream_valid_rate"],
            "agreement": v["shadow"]["mean"],
        }
        for v in report["versions"]
    }
    judgement, cascade, teacher = report["judgement"], report["cascade"], report["teacher"]
    return {
        "site": returns,
        "phase": phase,
        "calls": report["calls"],
        "state": report["state"],
        "version": report["active_version"],
        "local_share": report["local_share"],
        "teacher_validity": teacher_validity(access, site["id"], tmp),
        "teacher_self_agreement": teacher["mean"] if teacher else None,
        "teacher_samples": teacher["n"] if teacher else 0,
        "agreement": judgement["agreement"]["mean"] if judgement else None,
        "validity_difference": judgement["validity"]["mean"] if judgement else None,
        "validity_interval": [judgement["validity"]["low"], judgement["validity"]["high"]] if judgement else None,
        "samples": judgement["validity"]["n"] if judgement else 0,
        "cascade_threshold": cascade["threshold"] if cascade else None,
        "agreement_without_cascade": cascade["agreement_without"] if cascade else None,
        "agreement_with_cascade": cascade["agreement_with"] if cascade else None,
        "local_share_with_cascade": cascade["local_share_with"] if cascade else None,
        "versions": versions,
        "why": report["why"],
    }


def pin_unmeasured(access: StoreAccess, sites: list[str]) -> None:
    """Sites outside `--sites` are pinned to the upstream (`understudy pin SITE upstream`), so the
    scheduler trains none of them (a site pinned upstream is never trained)."""
    for row in access.run("sites"):
        if row["returns"] not in sites and not row.get("pinned"):
            access.run("action", site=row["id"], action="pin", target="upstream")
            print(f"  {row['returns']}: not measured, pinned to upstream", flush=True)


def run_scheduler(settings) -> list[str]:
    """The product's scheduler, once: the sites it queued a job for."""
    env = {**os.environ, "UNDERSTUDY_DATA_DIR": str(settings.data_dir)}
    env.pop("UNDERSTUDY_QUIET_MAX_RPM", None)
    out = subprocess.run([sys.executable, "-c", SCHEDULE], env=env, capture_output=True, text=True, timeout=300)
    if out.returncode != 0:
        raise SystemExit(f"the scheduler failed: {out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def wait_for_jobs(access: StoreAccess, settings, worker, started: float) -> None:
    """No games while a job is queued or running (training in quiet hours)."""
    last_note = 0.0
    while True:
        pending = [
            j
            for j in access.run("training_schedule", rules=scheduling_rules(settings))["jobs"]
            if j["outcome"] == "queued or running"
        ]
        if not pending:
            return
        if worker.process.poll() is not None:
            raise SystemExit(f"the worker exited ({worker.process.returncode}); see {settings.data_dir / 'worker.log'}")
        if time.monotonic() - last_note > 60:
            print(
                f"  training: {', '.join(j['name'].split(':')[0] + ' (' + j['reason'] + ')' for j in pending)} "
                f"[{time.monotonic() - started:.0f} s]",
                flush=True,
            )
            last_note = time.monotonic()
        time.sleep(5)


def print_row(row: dict[str, Any]) -> None:
    def pct(x):
        return "-" if x is None else f"{x:.0%}"

    def num(x):
        return "-" if x is None else f"{x:.2f}"

    versions = "; ".join(
        f"{name} {v['status']} valid {pct(v['local_valid_rate'])} agree {num(v['agreement'])}"
        for name, v in row["versions"].items()
    )
    print(
        f"  {row['site']:6} {row['phase']:8} calls {row['calls']:4} {row['state']:8} local {pct(row['local_share']):>4} "
        f"| teacher valid {pct(row['teacher_validity'])} self-agree {num(row['teacher_self_agreement'])} "
        f"(n={row['teacher_samples']}) | agreement {num(row['agreement'])} cascade "
        f"{num(row['agreement_with_cascade'])}@{pct(row['local_share_with_cascade'])} | {versions}",
        flush=True,
    )


def plot(curve: list[dict[str, Any]], sites: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(sites), figsize=(7 * len(sites), 4.5), squeeze=False)
    for ax, site in zip(axes[0], sites):
        rows = [r for r in curve if r["site"] == site]
        x = [r["calls"] for r in rows]
        for key, label, style in (
            ("teacher_validity", "teacher validator pass", "k--"),
            ("teacher_self_agreement", "teacher self-agreement", "k:"),
            ("agreement", "version agreement", "b-"),
            ("agreement_with_cascade", "agreement with cascade", "c-"),
            ("local_share", "local share", "g-"),
        ):
            ax.plot(x, [r[key] if r[key] is not None else float("nan") for r in rows], style, label=label)
        valid = [
            max((v["local_valid_rate"] or 0) for v in r["versions"].values()) if r["versions"] else float("nan")
            for r in rows
        ]
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
    parser.add_argument("--sites", default=",".join(RPG_SITES), help="RPG sites by return type (default: all five).")
    parser.add_argument("--controls-at", type=int, default=40, help="Recorded calls before a site's controls.")
    parser.add_argument("--no-controls", action="store_true", help="Skip the base and shuffled controls.")
    parser.add_argument("--max-calls", type=int, default=300, help="Stop once every site has this many recorded calls.")
    parser.add_argument("--batch-runs", type=int, default=4, help="Generator runs between snapshots.")
    parser.add_argument("--levels", type=int, default=5, help="Levels per generator run.")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--flaw-share", type=float, default=0.1)
    parser.add_argument("--json", action="store_true", help="Print the whole curve as one JSON object.")
    parser.add_argument("--plot", type=Path, default=None, help="Write the curve as a PNG.")
    parser.add_argument("--smoke", action="store_true", help="The tiny random model and a few calls (minutes).")
    parser.add_argument(
        "--resume",
        action="store_true",
        help="Go on in --data-dir from where an earlier run stopped, its sites' controls decided (with a "
        "higher --max-calls, or after --max-minutes); give another --seed so its games are new.",
    )
    parser.add_argument(
        "--max-minutes",
        type=float,
        default=None,
        help="Stop after this long (checked between batches) and summarize what was reached.",
    )
    args = parser.parse_args()

    if args.smoke:
        configure_smoke(args)
    sites = args.sites.split(",")
    unknown = set(sites) - set(RPG_SITES)
    if unknown:
        parser.error(f"unknown site(s) {sorted(unknown)}: the RPG sites are {', '.join(RPG_SITES)}")
    if args.resume and not (args.data_dir / "understudy.duckdb").exists():
        parser.error(f"--resume: no earlier run in {args.data_dir}")
    if args.data_dir.exists() and not args.resume:
        shutil.rmtree(args.data_dir)
    settings = load_settings(data_dir=args.data_dir)
    tmp = args.data_dir / "bench-exports"
    tmp.mkdir(parents=True, exist_ok=True)
    # Whatever was started is stopped, also when a later start fails (another run holding the data
    # directory's DuckDB file stops the proxy's): the worker first, the teacher last.
    running = contextlib.ExitStack()
    try:
        teacher = start_teacher(seed=args.seed, flaw_share=args.flaw_share)
        running.callback(teacher.stop)
        proxy = start_proxy(settings, teacher.url, upstream_free=True)
        running.callback(proxy.stop)
        # The worker's own periodic scheduler never finds its window open (0 requests/minute is
        # never below 0): the benchmark runs the scheduler itself after each batch.
        worker = start_worker(settings, {"UNDERSTUDY_QUIET_MAX_RPM": "0"})
        running.callback(worker.stop)
    except BaseException:
        running.close()
        raise
    access = StoreAccess(settings)
    phase = {site: "learn" if args.no_controls or args.resume else "record" for site in sites}
    verdicts: dict[str, dict[str, str]] = {site: {} for site in sites}  # site -> control -> its verdict
    curve: list[dict[str, Any]] = []
    started = time.monotonic()
    stopped = None  # why the run ended before every site had --max-calls calls
    try:
        batch = 0
        while True:
            result = generate_corpus(
                settings,
                runs=args.batch_runs,
                levels=args.levels,
                parallel=1,
                seed=args.seed + batch,
                flaw_share=args.flaw_share,
                progress=False,
            )
            batch += 1
            wait_for_backlog(proxy.url, limit_s=1800)
            pin_unmeasured(access, sites)
            rows = site_rows(access, sites)
            print(
                f"batch {batch}: {result.succeeded}/{result.runs} runs, {time.monotonic() - started:.0f} s", flush=True
            )
            calls = {}
            for site in sites:
                if site not in rows:
                    continue
                row = snapshot(access, site, rows[site], phase[site], tmp)
                curve.append({**row, "batch": batch, "seconds": time.monotonic() - started})
                print_row(row)
                calls[site] = row["calls"]  # the clients' calls (not the proxy's own second answers)
                advance(access, settings, site, rows[site], row, phase, args, verdicts[site])
            if all(calls.get(s, 0) >= args.max_calls for s in sites):
                break
            if args.max_minutes is not None and time.monotonic() - started > 60 * args.max_minutes:
                stopped = f"--max-minutes {args.max_minutes:g} reached"
                break
            queued = run_scheduler(settings)
            if queued:
                names = {row["id"]: returns for returns, row in rows.items()}
                print(f"  scheduler queued: {', '.join(names.get(s, s) for s in queued)}", flush=True)
            wait_for_jobs(access, settings, worker, started)
    except KeyboardInterrupt:  # summarize what was reached
        stopped = "interrupted"
    finally:
        running.close()
    served = served_shares(settings, sites, args.max_calls)
    summary = summarize(curve, sites, served, args, verdicts)
    summary["stopped"] = stopped
    summary["seconds"] = time.monotonic() - started
    if args.plot is not None:
        plot(curve, sites, args.plot)
        summary["plot"] = str(args.plot)
    if args.json:
        print(json.dumps({"summary": summary, "curve": curve}, default=str))
    else:
        print(json.dumps(summary, indent=2, default=str))


def advance(
    access: StoreAccess,
    settings,
    site: str,
    site_row: dict,
    row: dict,
    phase: dict[str, str],
    args,
    verdicts: dict[str, str],
) -> None:
    """The controls, in order: the base control once the site has enough calls, the shuffled
    control (queued for the worker) once the base one is decided, then the scheduler's versions.
    Each control's verdict (the policy's decision, at how many calls) goes into `verdicts`."""
    if phase[site] == "record" and row["calls"] >= args.controls_at:
        job = access.run("training_job", site=site_row["id"], control="base")
        version = access.run("register_version", result=base_control_result(job))
        print(f"  {site}: base control registered as v{version['version']} ({version['status']})", flush=True)
        phase[site] = "base"
    elif phase[site] == "base" and row["state"] != "shadow":
        print(f"  {site}: base control decided: {row['why']}", flush=True)
        verdicts["base"] = _verdict(row)
        queued = subprocess.run(
            [
                understudy_executable(),
                "train",
                site_row["id"],
                "--control",
                "shuffled",
                "--data-dir",
                str(settings.data_dir),
            ],
            capture_output=True,
            text=True,
            timeout=300,
        )
        print(f"  {site}: shuffled control: {(queued.stdout or queued.stderr).strip().splitlines()[-1]}", flush=True)
        phase[site] = "shuffled" if queued.returncode == 0 else "learn"
    elif phase[site] == "shuffled":
        shuffled = [v for v in row["versions"].values() if v["control"] == "shuffled"]
        if shuffled and (row["state"] != "shadow" or shuffled[-1]["status"] == "failed"):
            print(f"  {site}: shuffled control decided: {row['why']}", flush=True)
            # a failed job leaves the site's state (and its reason) as they were: no policy verdict
            failed = shuffled[-1]["status"] == "failed"
            verdicts["shuffled"] = f"failed at {row['calls']} calls" if failed else _verdict(row)
            phase[site] = "learn"


def served_shares(settings, sites: list[str], max_calls: int) -> dict[str, dict[str, Any]]:
    """Per site: how calls 201-300 (the last 100 of the first `max_calls`) and the site's last 100
    calls were served, from the store (the clients' first turns only)."""
    from understudy.store import Store

    store = Store(settings.db_path, read_only=True)
    try:
        out = {}
        for site_id, returns in store.cursor().execute("SELECT id, schema_name FROM sites").fetchall():
            returns = returns or "str"
            if returns not in sites:
                continue
            served = [
                s
                for (s,) in store.cursor()
                .execute(
                    "SELECT served_by FROM calls WHERE site_id = ? AND coalesce(purpose, 'client') = 'client' "
                    "ORDER BY ts",
                    [site_id],
                )
                .fetchall()
            ]
            window = served[max(0, max_calls - 100) : max_calls]
            last = served[-100:]
            out[returns] = {
                "calls": len(served),
                "local_share_calls_201_300": sum(s.startswith("local") for s in window) / len(window)
                if window
                else None,
                "local_last_100": sum(s.startswith("local") for s in last),
                "last_100": len(last),
            }
        return out
    finally:
        store.close()


def summarize(
    curve: list[dict[str, Any]],
    sites: list[str],
    served: dict[str, dict[str, Any]],
    args,
    verdicts: dict[str, dict[str, str]],
) -> dict[str, Any]:
    out: dict[str, Any] = {"controls_at": None if args.no_controls else args.controls_at, "max_calls": args.max_calls}
    local_last, all_last = 0, 0
    for site in sites:
        rows = [r for r in curve if r["site"] == site]
        if not rows:
            continue
        last = rows[-1]
        decisions = []  # (version, control, calls at which its status first left shadowing, the status)
        seen: dict[str, str] = {}
        for r in rows:
            for name, v in r["versions"].items():
                if v["status"] != seen.get(name) and v["status"] not in ("active", "ready"):
                    decisions.append(
                        {"version": name, "control": v["control"], "calls": r["calls"], "status": v["status"]}
                    )
                seen[name] = v["status"]
            if r["state"] in ("local", "partial") and (not decisions or decisions[-1]["status"] != r["state"]):
                decisions.append(
                    {"version": f"v{r['version']}", "control": None, "calls": r["calls"], "status": r["state"]}
                )
        first = next((d for d in decisions if not d["control"]), None)
        site_served = served.get(site, {})
        local_last += site_served.get("local_last_100", 0)
        all_last += site_served.get("last_100", 0)
        out[site] = {
            "first_decision": first,
            "decisions": decisions,
            "final_state": last["state"],
            "final_local_share": last["local_share"],
            **site_served,
            "teacher_validity": last["teacher_validity"],
            "teacher_self_agreement": last["teacher_self_agreement"],
            "controls": verdicts.get(site, {}),
            "served_validity_difference": last["validity_difference"]
            if last["state"] in ("local", "partial")
            else None,
            "served_validity_interval": last.get("validity_interval")
            if last["state"] in ("local", "partial")
            else None,
            "agreement": last["agreement"],
            "why": last["why"],
        }
    out["local_share_last_100_all_sites"] = local_last / all_last if all_last else None
    return out


def _verdict(row: dict[str, Any]) -> str:
    """A control's verdict as the policy gave it: `rejected at 82 calls` (the status a control's
    version keeps afterwards is `retired`, whatever the verdict was)."""
    return f"{str(row['why']).split(':')[0]} at {row['calls']} calls"


def configure_smoke(args) -> None:
    """The tiny random Llama as the local base, a few small batches: the benchmark end to end in minutes."""
    from understudy.training.tiny_model import make_tiny_llama

    hf_dir, gguf = make_tiny_llama(args.data_dir.parent / f"{args.data_dir.name}-tiny")
    os.environ["UNDERSTUDY_BASE_GGUF"] = str(gguf)
    os.environ["UNDERSTUDY_TRAIN_CONFIG"] = json.dumps(
        {
            "base_model": str(hf_dir),
            "base_gguf": str(gguf),
            "max_steps": 120,
            "lr": 1e-2,
            "batch_size": 2,
            "grad_accum": 1,
            "lora_dropout": 0.0,
            "device": "cpu",
            "verify_max_tokens": 32,
        }
    )
    args.sites, args.max_calls, args.batch_runs, args.levels = "Level", 12, 2, 2
    # No controls (deciding one takes 20 shadow samples): the smoke checks the scheduler and worker
    # path, a first version at 6 usable examples within its 12 calls.
    args.no_controls = True
    os.environ["UNDERSTUDY_TRAIN_MIN_EXAMPLES"] = "6"


if __name__ == "__main__":
    sys.exit(main())
