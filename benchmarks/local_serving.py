"""Local serving figures: how long a local answer takes, raw and through the proxy.

For each trained version (a training job's result.json), the site's recorded requests from a
corpus data directory are answered by the local model N times: raw (`LocalModels.complete_sync`,
exactly what the proxy runs in its worker thread, with the version's site prompt, lean grammar
and prefix reuse) and through a running proxy over HTTP (the version registered in a fresh data
directory and pinned `local@v1`, so the figure includes identification, routing, the validator
and recording). Latency is the wall time of one answer; tokens/s = completion tokens / that time.

    .venv/bin/python benchmarks/local_serving.py --data-dir /tmp/rpg-corpus \\
        --result /tmp/rpg-corpus/bench-adapters/<level site>-compact-<t>/result.json \\
        --result /tmp/rpg-corpus/bench-adapters/<map site>-compact-<t>/result.json [--requests 10] [--json]
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
from pathlib import Path

import httpx

from routing.local_model import LocalModels, Variant
from routing.registry import register_version
from training.site_prompt import SitePrompt
from understudy.processes import free_port, wait_until_healthy
from understudy.settings import load_settings
from understudy.store import Store


def site_requests(data_dir: Path, site_id: str, n: int) -> list[dict]:
    """The site's first-turn requests recorded from the upstream, newest last."""
    store = Store(load_settings(data_dir=data_dir).db_path, read_only=True)
    try:
        rows = store.cursor().execute(
            "SELECT request FROM calls WHERE site_id = ? AND turn = 'first' AND served_by = 'upstream' "
            "AND coalesce(purpose, 'client') = 'client' ORDER BY ts DESC LIMIT ?", [site_id, n]).fetchall()
    finally:
        store.close()
    return [{k: v for k, v in json.loads(r).items() if k not in ("stream", "stream_options")} for (r,) in rows]


def raw_latencies(models: LocalModels, variant: Variant, requests: list[dict]) -> tuple[list[float], list[int]]:
    models.complete_sync(requests[0], variant)  # loads the model and the adapter
    latencies, tokens = [], []
    for request in requests:
        answer = models.complete_sync(request, variant)
        latencies.append(answer.latency_ms / 1000)
        tokens.append(answer.completion_tokens)
    return latencies, tokens


def proxy_latencies(result: dict, requests: list[dict], threads: int | None) -> list[float]:
    data_dir = Path(tempfile.mkdtemp(prefix="understudy-local-bench-"))
    settings = load_settings(data_dir=data_dir)
    store = Store(settings.db_path)
    try:
        from proxy.callsite import identify
        from proxy.site_registry import SiteRegistry

        ident = identify(requests[0])
        _, row, _ = SiteRegistry([]).observe(ident)
        store.write_batch([row], [])
        register_version(store, ident.site_id, {**result, "site_id": ident.site_id})
        store.cursor().execute("UPDATE sites SET pinned = 'local@v1' WHERE id = ?", [ident.site_id])
    finally:
        store.close()
    port = free_port()
    env = {**os.environ, "UNDERSTUDY_BASE_GGUF": result["base_gguf"],
           **({"UNDERSTUDY_LOCAL_THREADS": str(threads)} if threads else {})}
    proxy = subprocess.Popen([str(Path(sys.executable).parent / "understudy"), "serve", "--port", str(port),
                              "--upstream-url", "http://127.0.0.1:9/v1", "--data-dir", str(data_dir)],
                             env=env, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_healthy(url, proxy)
        httpx.post(url + "/v1/chat/completions", json=requests[0], timeout=600)  # warm-up: loads the model
        latencies = []
        for request in requests:
            started = time.perf_counter()
            response = httpx.post(url + "/v1/chat/completions", json=request, timeout=600)
            latencies.append(time.perf_counter() - started)
            if not response.headers.get("x-understudy-served-by", "").startswith("local:"):
                print(f"  (answered upstream: {response.status_code})", file=sys.stderr)
        return latencies
    finally:
        proxy.terminate()
        proxy.wait(30)
        shutil.rmtree(data_dir, ignore_errors=True)


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, required=True, help="The corpus the versions were trained on.")
    parser.add_argument("--result", type=Path, action="append", required=True, help="A training job's result.json.")
    parser.add_argument("--requests", type=int, default=10)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    figures = []
    for path in args.result:
        result = json.loads(path.read_text())
        requests = site_requests(args.data_dir, result["site_id"], args.requests)
        prompt = SitePrompt.from_dict((result.get("config") or {}).get("prompt"))
        variant = Variant(result["adapter_path"], prompt)
        models = LocalModels(result["base_gguf"], n_threads=args.threads)
        try:
            raw, tokens = raw_latencies(models, variant, requests)
            hits = models.generator().prefix_hits
        finally:
            models.close()
        through = proxy_latencies(result, requests, args.threads)
        schema = ((requests[0].get("response_format") or {}).get("json_schema") or {}).get("name")
        figures.append({"site": result["site_id"], "returns": schema, "prompt": prompt.mode, "lean": prompt.lean,
                        "requests": len(requests), "raw_p50_s": statistics.median(raw), "raw_p90_s": quantile(raw, 0.9),
                        "proxy_p50_s": statistics.median(through), "proxy_p90_s": quantile(through, 0.9),
                        "completion_tokens_p50": statistics.median(tokens),
                        "tokens_per_s": sum(tokens) / sum(raw), "prefix_hits": hits})
    if args.json:
        print(json.dumps(figures))
        return
    for f in figures:
        print(f"{f['returns']} ({f['prompt']} prompt{', lean' if f['lean'] else ''}): local answer p50 "
              f"{f['raw_p50_s']:.2f} s raw, {f['proxy_p50_s']:.2f} s through the proxy (p90 {f['proxy_p90_s']:.2f} s); "
              f"{f['completion_tokens_p50']:.0f} tokens, {f['tokens_per_s']:.1f} tokens/s; prefix reused {f['prefix_hits']}x")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
