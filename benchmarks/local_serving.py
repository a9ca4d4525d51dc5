"""Local serving figures: how long a local answer takes, raw and through the proxy.

For each trained version (a training job's result.json, or a `train_gpu.py run` output directory
with `--adapter`), the site's recorded requests from a corpus data directory are answered by the
local model N times: raw (`LocalModels.complete_sync` with the checks the router builds for the
request: the response schema tightened by the site's validator, checked sampling at the default
settings, the token cap measured on the site's recorded answers; exactly what the proxy runs in
its worker thread) and through a running proxy over HTTP (the version registered in a copy of the
corpus's store, so the proxy has the site's recorded answers as a user's proxy would, and pinned
`local@v1`; the figure includes identification, routing, the validator and recording). Latency
is the wall time of one answer; tokens/s = completion tokens / that time; `local_served` is the
share of proxied answers that came from the local model.

Shadow sampling: the version registered in another copy (so the site is in shadow), the offline
teacher as the upstream, and the same requests sent back to back as fast as the teacher answers
them, much faster than the local model can shadow them; then, once the proxy's shadow backlog has
drained (`/healthz` `shadow_pending`), the share of those calls that got a shadow sample at the
default rate (`shadow_sampled`).

    .venv/bin/python benchmarks/local_serving.py --data-dir /tmp/rpg-corpus \\
        --result /tmp/rpg-corpus/bench-adapters/<level site>-compact-<t>/result.json \\
        --result /tmp/rpg-corpus/bench-adapters/<map site>-compact-<t>/result.json [--requests 10] [--json]
    .venv/bin/python benchmarks/local_serving.py --data-dir /tmp/rpg-corpus \\
        --adapter /tmp/cpu-train/Level --adapter /tmp/cpu-train/Map   # train_gpu.py run outputs
    .venv/bin/python benchmarks/local_serving.py --smoke --data-dir /tmp/rpg-smoke [--result R]
        # 2 requests, 4 shadow calls; without --result it trains the tiny model first (train_gemma.py --smoke)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx

from understudy.inference.checked_sampling import SamplingPolicy
from understudy.inference.local_model import LocalModels, Variant, checks_for
from understudy.inference.site_prompt import SitePrompt
from understudy.processes import free_port, start_teacher, wait_until_healthy
from understudy.routing.registry import register_version
from understudy.routing.router import DECOY_POOL
from understudy.settings import load_settings
from understudy.store import Store
from understudy.validators import ValidatorRegistry


def site_requests(data_dir: Path, site_id: str, n: int) -> list[dict]:
    """The site's first-turn requests recorded from the upstream, newest last."""
    store = Store(load_settings(data_dir=data_dir).db_path, read_only=True)
    try:
        rows = (
            store.cursor()
            .execute(
                "SELECT request FROM calls WHERE site_id = ? AND turn = 'first' AND served_by = 'upstream' "
                "AND coalesce(purpose, 'client') = 'client' ORDER BY ts DESC LIMIT ?",
                [site_id, n],
            )
            .fetchall()
        )
    finally:
        store.close()
    return [{k: v for k, v in json.loads(r).items() if k not in ("stream", "stream_options")} for (r,) in rows]


def recorded_answers(data_dir: Path, site_id: str) -> tuple[str, ...]:
    """The site's recent upstream answers, as the router keeps them (its token cap's measure)."""
    store = Store(load_settings(data_dir=data_dir).db_path, read_only=True)
    try:
        rows = (
            store.cursor()
            .execute(
                """SELECT json_extract_string(response, '$.choices[0].message.content') FROM calls
               WHERE site_id = ? AND served_by = 'upstream' AND status = 200 ORDER BY ts DESC LIMIT ?""",
                [site_id, DECOY_POOL],
            )
            .fetchall()
        )
    finally:
        store.close()
    return tuple(text for (text,) in rows if text)


def raw_latencies(
    models: LocalModels, variant: Variant, requests: list[dict], answers: tuple[str, ...], fast_forward: bool = True
) -> tuple[list[float], list[int], list[int]]:
    """Latency, tokens and draws of each answer under the checks the router would build for it
    (`fast_forward` False: every forced token decoded as a step of its own, as before 2026-12-07)."""
    validators = ValidatorRegistry()

    def checks(request: dict):
        return checks_for(request, validators.for_request(request), SamplingPolicy(), answers, "bench")

    models.complete_sync(requests[0], variant, checks(requests[0]))  # loads the model and the adapter
    models.generator()._decoder.fast_forward = fast_forward
    latencies, tokens, tries = [], [], []
    for request in requests:
        answer = models.complete_sync(request, variant, checks(request))
        latencies.append(answer.latency_ms / 1000)
        tokens.append(answer.completion_tokens)
        tries.append(answer.tries)
    return latencies, tokens, tries


def _registered(result: dict, corpus: Path, request: dict, pinned: str | None) -> tuple[Path, str]:
    """A copy of the corpus's data directory with `result` registered as the site's next version."""
    from understudy.proxy.callsite import identify

    data_dir = Path(tempfile.mkdtemp(prefix="understudy-local-bench-"))
    source = load_settings(data_dir=corpus).db_path
    shutil.copy(source, load_settings(data_dir=data_dir).db_path)
    if source.with_name(source.name + ".wal").exists():
        shutil.copy(
            source.with_name(source.name + ".wal"),
            load_settings(data_dir=data_dir).db_path.with_name(source.name + ".wal"),
        )
    store = Store(load_settings(data_dir=data_dir).db_path)
    try:
        site_id = identify(request).site_id
        version = register_version(store, site_id, {**result, "site_id": site_id})
        if pinned:
            store.cursor().execute("UPDATE sites SET pinned = ? WHERE id = ?", [f"local@v{version.version}", site_id])
    finally:
        store.close()
    return data_dir, site_id


def proxy_latencies(result: dict, corpus: Path, requests: list[dict], threads: int | None) -> tuple[list[float], float]:
    data_dir, _ = _registered(result, corpus, requests[0], pinned="local")
    port = free_port()
    env = {
        **os.environ,
        "UNDERSTUDY_BASE_GGUF": result["base_gguf"],
        **({"UNDERSTUDY_LOCAL_THREADS": str(threads)} if threads else {}),
    }
    proxy = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "understudy"),
            "serve",
            "--port",
            str(port),
            "--upstream-url",
            "http://127.0.0.1:9/v1",
            "--data-dir",
            str(data_dir),
        ],
        env=env,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_healthy(url, proxy)
        httpx.post(url + "/v1/chat/completions", json=requests[0], timeout=600)  # warm-up: loads the model
        latencies, local = [], 0
        for request in requests:
            started = time.perf_counter()
            response = httpx.post(url + "/v1/chat/completions", json=request, timeout=600)
            latencies.append(time.perf_counter() - started)
            if response.headers.get("x-understudy-served-by", "").startswith("local:"):
                local += 1
            else:
                print(f"  (not served locally: {response.status_code})", file=sys.stderr)
        return latencies, local / len(requests)
    finally:
        proxy.terminate()
        proxy.wait(30)
        shutil.rmtree(data_dir, ignore_errors=True)


def shadow_sampling(result: dict, corpus: Path, requests: list[dict], threads: int | None) -> dict:
    data_dir, site_id = _registered(result, corpus, requests[0], pinned=None)
    env = {
        **os.environ,
        "UNDERSTUDY_BASE_GGUF": result["base_gguf"],
        **({"UNDERSTUDY_LOCAL_THREADS": str(threads)} if threads else {}),
    }
    teacher = start_teacher()
    port = free_port()
    proxy = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "understudy"),
            "serve",
            "--port",
            str(port),
            "--upstream-url",
            teacher.url,
            "--upstream-free",
            "--data-dir",
            str(data_dir),
        ],
        env=env,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    started_at = datetime.now(UTC)
    try:
        wait_until_healthy(url, proxy)
        started = time.perf_counter()
        for request in requests:
            httpx.post(url + "/v1/chat/completions", json=request, timeout=600)
        sent_s = time.perf_counter() - started
        deadline = time.monotonic() + 60 * len(requests)
        while httpx.get(url + "/healthz", timeout=10).json().get("shadow_pending", 0) and time.monotonic() < deadline:
            time.sleep(1)
        drained_s = time.perf_counter() - started
    finally:
        proxy.terminate()
        proxy.wait(60)
        teacher.stop()
    store = Store(load_settings(data_dir=data_dir).db_path, read_only=True)
    try:
        sampled = (
            store.cursor()
            .execute(
                "SELECT count(DISTINCT call_id) FROM shadow_results WHERE site_id = ? AND call_id IN "
                "(SELECT id FROM calls WHERE ts > ?)",
                [site_id, started_at],
            )
            .fetchone()[0]
        )
    finally:
        store.close()
        shutil.rmtree(data_dir, ignore_errors=True)
    return {
        "shadow_calls": len(requests),
        "shadow_sampled": sampled / len(requests),
        "shadow_sent_s": sent_s,
        "shadow_drained_s": drained_s,
    }


def adapter_result(directory: Path) -> dict:
    """A `train_gpu.py run` output directory as the result a training job would have registered.
    Its site is the one its prompt was rendered for (the site prompt's marker is the site id)."""
    config = json.loads((directory / "config.json").read_text())
    # train_gpu.py does not reproduce the adapter through llama.cpp as a job does; the raw pass
    # below answers with it first, so an adapter that does not load fails there, not silently.
    return {
        "site_id": config["prompt"]["marker"],
        "adapter_path": str(directory / "adapter.gguf"),
        "base_gguf": config["base_gguf"],
        "base_model": config.get("base_model"),
        "config": config,
        "verified": True,
    }


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, required=True, help="The corpus the versions were trained on.")
    parser.add_argument("--result", type=Path, action="append", default=[], help="A training job's result.json.")
    parser.add_argument(
        "--adapter",
        type=Path,
        action="append",
        default=[],
        help="A `train_gpu.py run` output directory of one site (adapter.gguf, config.json).",
    )
    parser.add_argument("--requests", type=int, default=10)
    parser.add_argument(
        "--shadow-calls",
        type=int,
        default=40,
        help="Calls sent back to back for the shadow figure (0: no shadow figure).",
    )
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--json", action="store_true")
    parser.add_argument(
        "--step-by-step",
        action="store_true",
        help="Also answer the raw requests with forced tokens decoded one step each (the old path), same run.",
    )
    parser.add_argument(
        "--smoke", action="store_true", help="2 requests and 4 shadow calls (the tiny model unless --result)."
    )
    args = parser.parse_args()
    if args.smoke:
        args.requests, args.shadow_calls = 2, 4
        if not args.result:
            trained = subprocess.run(
                [
                    sys.executable,
                    str(Path(__file__).with_name("train_gemma.py")),
                    "--smoke",
                    "--json",
                    "--data-dir",
                    str(args.data_dir),
                ],
                capture_output=True,
                text=True,
                check=True,
            )
            args.result = [Path(json.loads(trained.stdout.strip().splitlines()[-1])["result"])]
    if not args.result and not args.adapter:
        parser.error("give --result RESULT_JSON (a training job's result.json), --adapter DIR, or --smoke")
    figures = []
    for result in [json.loads(path.read_text()) for path in args.result] + [adapter_result(d) for d in args.adapter]:
        requests = site_requests(args.data_dir, result["site_id"], args.requests)
        prompt = SitePrompt.from_dict((result.get("config") or {}).get("prompt"))
        variant = Variant(result["adapter_path"], prompt)
        models = LocalModels(result["base_gguf"], n_threads=args.threads)
        answers = recorded_answers(args.data_dir, result["site_id"])
        try:
            raw, tokens, tries = raw_latencies(models, variant, requests, answers)
            hits = models.generator().prefix_hits
            old = None
            if args.step_by_step:
                old = raw_latencies(models, variant, requests, answers, fast_forward=False)
        finally:
            models.close()
        through, local_served = proxy_latencies(result, args.data_dir, requests, args.threads)
        shadow = (
            shadow_sampling(
                result, args.data_dir, site_requests(args.data_dir, result["site_id"], args.shadow_calls), args.threads
            )
            if args.shadow_calls
            else {}
        )
        schema = ((requests[0].get("response_format") or {}).get("json_schema") or {}).get("name")
        figures.append(
            {
                "site": result["site_id"],
                "returns": schema,
                "prompt": prompt.mode,
                "lean": prompt.lean,
                "requests": len(requests),
                "raw_p50_s": statistics.median(raw),
                "raw_p90_s": quantile(raw, 0.9),
                "proxy_p50_s": statistics.median(through),
                "proxy_p90_s": quantile(through, 0.9),
                "completion_tokens_p50": statistics.median(tokens),
                "tries_mean": statistics.mean(tries),
                "local_served": local_served,
                "tokens_per_s": sum(tokens) / sum(raw),
                "prefix_hits": hits,
                **shadow,
            }
        )
        if old is not None:
            old_raw, old_tokens, old_tries = old
            figures[-1]["step_by_step"] = {
                "raw_p50_s": statistics.median(old_raw),
                "raw_p90_s": quantile(old_raw, 0.9),
                "completion_tokens_p50": statistics.median(old_tokens),
                "tries_mean": statistics.mean(old_tries),
                "tokens_per_s": sum(old_tokens) / sum(old_raw),
            }
    if args.json:
        print(json.dumps(figures))
        return
    for f in figures:
        print(
            f"{f['returns']} ({f['prompt']} prompt{', lean' if f['lean'] else ''}): local answer p50 "
            f"{f['raw_p50_s']:.2f} s raw, {f['proxy_p50_s']:.2f} s through the proxy (p90 {f['proxy_p90_s']:.2f} s); "
            f"{f['local_served']:.0%} served locally; {f['completion_tokens_p50']:.0f} tokens, {f['tries_mean']:.2f} draws, "
            f"{f['tokens_per_s']:.1f} tokens/s; prefix reused {f['prefix_hits']}x"
            + (
                f"; shadow sampled {f['shadow_sampled']:.0%} of {f['shadow_calls']} calls sent in {f['shadow_sent_s']:.0f} s"
                if "shadow_sampled" in f
                else ""
            )
        )
        if "step_by_step" in f:
            old = f["step_by_step"]
            print(
                f"  step by step (same run): raw p50 {old['raw_p50_s']:.2f} s (p90 {old['raw_p90_s']:.2f} s), "
                f"{old['completion_tokens_p50']:.0f} tokens, {old['tries_mean']:.2f} draws, {old['tokens_per_s']:.1f} tokens/s"
            )
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
