"""Sustained load: N concurrent connections for S seconds through the real proxy with recording on.

Half the connections stream. Reports throughput, latency, errors, and the proxy's resident
memory sampled every second (after a warm-up, memory must stay flat: the growth from the first
to the last quarter of the run is printed), then stops the proxy cleanly and checks that every
acknowledged answer is in the store. The upstream is the offline teacher.

    .venv/bin/python benchmarks/load.py [--connections 200] [--seconds 60] [--json]
    .venv/bin/python benchmarks/load.py --smoke      # 50 connections for 5 s

Exit status 1 on any error or lost call.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from loadgen import print_json, rss_mb, run_load, stored_markers  # noqa: E402

from understudy.processes import start_proxy, start_teacher  # noqa: E402
from understudy.settings import load_settings  # noqa: E402


async def _load_and_sample(url: str, pid: int, connections: int, seconds: float):
    samples: list[tuple[float, float]] = []
    load = asyncio.create_task(run_load(url, connections=connections, seconds=seconds))
    started = time.monotonic()
    while not load.done():
        samples.append((time.monotonic() - started, rss_mb(pid)))
        await asyncio.sleep(1.0)
    return await load, samples


def run(connections: int, seconds: float, data_dir: Path) -> dict:
    settings = load_settings(data_dir=data_dir)
    teacher = start_teacher()
    try:
        proxy = start_proxy(settings, teacher.url, upstream_free=True)
        try:
            result, samples = asyncio.run(_load_and_sample(proxy.url + "/v1", proxy.process.pid, connections, seconds))
        finally:
            proxy.stop()
    finally:
        teacher.stop()
    stored = stored_markers(str(settings.db_path))
    lost = [m for m in result.acked if m not in stored]
    quarter = max(1, len(samples) // 4)
    first = statistics.mean(r for _, r in samples[quarter : 2 * quarter] or samples[:1])  # after warm-up
    last = statistics.mean(r for _, r in samples[-quarter:])
    return {
        "connections": connections,
        "seconds": round(result.seconds, 1),
        "sent": result.sent,
        "answered": len(result.acked),
        "rps": round(len(result.acked) / result.seconds, 1),
        "p50_ms": round(result.percentile(0.5) or 0, 1),
        "p99_ms": round(result.percentile(0.99) or 0, 1),
        "errors": result.errors,
        "lost": len(lost),
        "rss_mb": {
            "second_quarter": round(first, 1),
            "last_quarter": round(last, 1),
            "growth": round(last - first, 1),
            "max": round(max(r for _, r in samples), 1),
        },
        "ok": result.error_count() == 0 and not lost,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--data-dir", type=Path, default=None)
    parser.add_argument("--smoke", action="store_true", help="50 connections for 5 s")
    parser.add_argument("--json", action="store_true", help="print one JSON object last")
    args = parser.parse_args()
    if args.smoke:
        args.connections, args.seconds = 50, 5.0
    data_dir = args.data_dir or Path(tempfile.mkdtemp(prefix="understudy-load-")) / "data"
    out = run(args.connections, args.seconds, data_dir)
    rss = out["rss_mb"]
    print(
        f"{out['connections']} connections for {out['seconds']} s: {out['answered']} answered ({out['rps']} req/s), "
        f"p50 {out['p50_ms']} ms, p99 {out['p99_ms']} ms, errors {sum(out['errors'].values())}, "
        f"lost {out['lost']}; proxy RSS {rss['second_quarter']} -> {rss['last_quarter']} MB "
        f"(growth {rss['growth']:+} MB, max {rss['max']} MB)"
    )
    if args.json:
        print_json(out)
    sys.exit(0 if out["ok"] else 1)


if __name__ == "__main__":
    main()
