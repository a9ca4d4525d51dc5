"""Local serving figures: tokens/s through the proxy vs raw llama-cpp-python on the same base
GGUF + adapter, and the cost of switching adapters on one loaded model.

The adapter is registered as v1 of a site in a fresh data directory and pinned `local@v1`;
the same request (a recorded request of that site, or a simple one) is then generated N
times raw (`LocalGenerator`, what the proxy uses inside) and N times through the running
proxy over HTTP. Tokens/s = completion tokens / wall time of the generation (raw) or of the
whole HTTP call (proxy, so it includes identification, routing, validation and recording).

    .venv/bin/python benchmarks/local_serving.py --base-gguf BASE.gguf --adapter ADAPTER.gguf \\
        --request request.json [--runs 5]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

from routing.local_model import json_schema_of
from routing.registry import register_version
from training.local_generate import LocalGenerator
from training.prompt_format import render_prompt
from understudy.processes import free_port
from understudy.settings import load_settings
from understudy.store import Store

SIMPLE_REQUEST = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Describe.\n\nx = ('a', '')"}]}


def raw_tokens_per_second(base: str, adapter: str, request: dict, runs: int,
                          threads: int | None) -> tuple[float, float, float]:
    generator = LocalGenerator(base, n_threads=threads)
    try:
        prompt = render_prompt(request["messages"], request.get("response_format"), request.get("tools"))
        schema = json_schema_of(request.get("response_format"))
        generator.generate(prompt, adapter_path=adapter, max_tokens=16, grammar_schema=schema)  # warm-up
        rates = []
        for _ in range(runs):
            started = time.perf_counter()
            text = generator.generate(prompt, adapter_path=adapter, max_tokens=512, grammar_schema=schema)
            elapsed = time.perf_counter() - started
            rates.append(len(generator.llm.tokenize(text.encode(), add_bos=False)) / elapsed)
        # Adapter switch: alternate between two adapter files (a copy counts as another adapter).
        other = Path(tempfile.mkdtemp()) / "other.gguf"
        shutil.copyfile(adapter, other)
        generator._activate(adapter)
        switches = []
        for index in range(10):
            target = other if index % 2 == 0 else Path(adapter)
            started = time.perf_counter()
            generator._activate(target)
            switches.append((time.perf_counter() - started) * 1000)
        # The first switch to `other` also loads it (llama_adapter_lora_init); later ones only set + reset.
        return statistics.median(rates), switches[0], statistics.median(switches[1:])
    finally:
        generator.close()


def proxy_tokens_per_second(base: str, adapter: str, request: dict, runs: int, threads: int | None) -> float:
    data_dir = Path(tempfile.mkdtemp(prefix="understudy-local-bench-"))
    settings = load_settings(data_dir=data_dir)
    store = Store(settings.db_path)
    try:
        # The site exists once a request has been seen; register it the way the proxy would.
        from proxy.callsite import identify
        from proxy.site_registry import SiteRegistry

        ident = identify(request)
        _, row, _ = SiteRegistry([]).observe(ident)
        store.write_batch([row], [])
        register_version(store, ident.site_id, {"verified": True, "adapter_path": adapter, "base_gguf": base,
                                                "metrics": {}, "config": {}})
        store.cursor().execute("UPDATE sites SET pinned = 'local@v1' WHERE id = ?", [ident.site_id])
    finally:
        store.close()
    import os
    import subprocess

    port = free_port()
    env = {**os.environ, "UNDERSTUDY_BASE_GGUF": base, **({"UNDERSTUDY_LOCAL_THREADS": str(threads)} if threads else {})}
    proxy = subprocess.Popen([str(Path(sys.executable).parent / "understudy"), "serve", "--port", str(port),
                              "--upstream-url", "http://127.0.0.1:9/v1", "--data-dir", str(data_dir)],
                             env=env, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/v1/chat/completions"
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1)
                break
            except httpx.HTTPError:
                time.sleep(0.1)
        httpx.post(url, json={**request, "max_tokens": 16}, timeout=300)  # warm-up: loads the model
        rates = []
        for _ in range(runs):
            started = time.perf_counter()
            response = httpx.post(url, json={**request, "max_tokens": 512}, timeout=300)
            elapsed = time.perf_counter() - started
            assert response.headers["x-understudy-served-by"].startswith("local:"), response.headers
            rates.append(response.json()["usage"]["completion_tokens"] / elapsed)
        return statistics.median(rates)
    finally:
        proxy.terminate()
        proxy.wait(30)
        shutil.rmtree(data_dir, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-gguf", required=True)
    parser.add_argument("--adapter", required=True)
    parser.add_argument("--request", type=Path, help="A chat request body (JSON) of the adapter's site.")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    request = json.loads(args.request.read_text()) if args.request else SIMPLE_REQUEST
    request = {k: v for k, v in request.items() if k not in ("stream", "stream_options")}
    raw, first_switch_ms, switch_ms = raw_tokens_per_second(args.base_gguf, args.adapter, request, args.runs, args.threads)
    through = proxy_tokens_per_second(args.base_gguf, args.adapter, request, args.runs, args.threads)
    print(f"raw llama-cpp-python: {raw:.1f} tokens/s (median of {args.runs})")
    print(f"through the proxy:    {through:.1f} tokens/s ({through / raw:.0%} of raw)")
    print(f"adapter switch: {first_switch_ms:.1f} ms the first time (load + set + prompt-state reset), "
          f"{switch_ms:.2f} ms after (set + reset, median)")
    print(json.dumps({"raw_tps": raw, "proxy_tps": through, "ratio": through / raw, "first_switch_ms": first_switch_ms,
                      "switch_ms": switch_ms}))


if __name__ == "__main__":
    main()
