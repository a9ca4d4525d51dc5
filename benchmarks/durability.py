"""Crash durability: kill the real proxy under load, many times, and count what the store kept.

Each cycle starts `understudy serve` on the same data directory (so the store must reopen by
itself after the previous kill), loads it with N concurrent connections (half streaming, every
request marked), then sends SIGKILL (or SIGTERM on the last cycle). Afterwards every answer the
clients received is looked up in the store:

- SIGKILL: an answer is acknowledged before its row is committed (the recorder's group commit:
  up to `recorder_flush_ms`, 50 ms, of waiting plus the commit itself), so what may be missing
  is the calls answered in the last window before the kill. The run reports the oldest missing
  answer's age; `--window` is the bound checked (default 1.0 s).
- SIGTERM: a clean stop drains the queue: nothing acknowledged may be missing.

    .venv/bin/python benchmarks/durability.py [--cycles 20] [--connections 200] [--seconds 4] [--json]
    .venv/bin/python benchmarks/durability.py --smoke     # 2 kills + 1 clean stop, 2 s each

The upstream is the offline teacher (a real OpenAI-compatible server). Exit status 1 when a
bound is broken or the store does not reopen.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from loadgen import print_json, run_load, stored_markers  # noqa: E402

from understudy.processes import start_proxy, start_teacher  # noqa: E402
from understudy.settings import load_settings  # noqa: E402


async def _cycle(proxy_url: str, process, *, cycle: int, connections: int, seconds: float, sig: int):
    stop = asyncio.Event()
    load = asyncio.create_task(
        run_load(proxy_url, connections=connections, seconds=seconds + 30, run_id=cycle, stop=stop)
    )
    await asyncio.sleep(seconds)
    if sig == signal.SIGTERM:
        # A clean stop, as an operator does it: the clients stop sending, the requests in flight
        # finish (uvicorn's graceful shutdown), then the recorder drains its queue.
        stop.set()
    killed_at = time.monotonic()
    process.send_signal(sig)
    if sig == signal.SIGTERM:
        await asyncio.get_running_loop().run_in_executor(None, process.wait, 60)
    stop.set()
    result = await load
    if process.poll() is None:
        process.wait(60)
    return result, killed_at


def run(cycles: int, connections: int, seconds: float, window: float, data_dir: Path) -> dict:
    settings = load_settings(data_dir=data_dir)
    teacher = start_teacher()
    out = {"cycles": [], "connections": connections, "seconds": seconds, "window_s": window}
    try:
        for cycle in range(cycles):
            sig = signal.SIGTERM if cycle == cycles - 1 else signal.SIGKILL
            started = time.monotonic()
            proxy = start_proxy(settings, teacher.url, upstream_free=True)  # reopens the store the kill left
            reopen_s = time.monotonic() - started
            result, killed_at = asyncio.run(
                _cycle(proxy.url + "/v1", proxy.process, cycle=cycle, connections=connections, seconds=seconds, sig=sig)
            )
            stored = stored_markers(str(settings.db_path))
            missing = {m: t for m, t in result.acked.items() if m not in stored}
            # an answer may still arrive just after the signal is sent: its age is then negative
            oldest = max((killed_at - t for t in missing.values()), default=0.0)
            out["cycles"].append(
                {
                    "cycle": cycle,
                    "signal": "SIGTERM" if sig == signal.SIGTERM else "SIGKILL",
                    "start_s": round(reopen_s, 2),
                    "acknowledged": len(result.acked),
                    "stored": len(result.acked) - len(missing),
                    "missing": len(missing),
                    "oldest_missing_s": round(oldest, 3),
                    "errors_before_stop": result.errors,
                }
            )
    finally:
        teacher.stop()
    kills = [c for c in out["cycles"] if c["signal"] == "SIGKILL"]
    clean = [c for c in out["cycles"] if c["signal"] == "SIGTERM"]
    out["ok"] = (
        all(c["oldest_missing_s"] <= window for c in kills)
        and all(c["missing"] == 0 for c in clean)
        and all(not c["errors_before_stop"] for c in out["cycles"])
    )
    out["acknowledged"] = sum(c["acknowledged"] for c in out["cycles"])
    out["missing"] = sum(c["missing"] for c in out["cycles"])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cycles", type=int, default=20, help="start-load-kill cycles; the last one stops cleanly")
    parser.add_argument("--connections", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=4.0, help="load before each kill")
    parser.add_argument("--window", type=float, default=1.0, help="bound on the age of a missing answer, seconds")
    parser.add_argument("--data-dir", type=Path, default=None)
    parser.add_argument("--smoke", action="store_true", help="3 cycles (2 kills, 1 clean stop) of 2 s")
    parser.add_argument("--json", action="store_true", help="print one JSON object last")
    args = parser.parse_args()
    if args.smoke:
        args.cycles, args.seconds = 3, 2.0
    if args.cycles < 2:
        sys.exit("error: --cycles must be at least 2 (kills, then a clean stop)")
    data_dir = args.data_dir or Path(tempfile.mkdtemp(prefix="understudy-durability-")) / "data"
    out = run(args.cycles, args.connections, args.seconds, args.window, data_dir)
    for c in out["cycles"]:
        print(
            f"cycle {c['cycle']:>2} {c['signal']:<7} started in {c['start_s']:.2f} s; acknowledged {c['acknowledged']:>5}, "
            f"missing {c['missing']:>3} (oldest {c['oldest_missing_s']:.3f} s before the kill)"
            + (f"; errors {c['errors_before_stop']}" if c["errors_before_stop"] else "")
        )
    print(
        f"{'OK' if out['ok'] else 'FAILED'}: {out['missing']} of {out['acknowledged']} acknowledged answers missing, "
        f"all within {args.window:g} s of a SIGKILL"
        if out["ok"]
        else "FAILED: see above"
    )
    if args.json:
        print_json(out)
    sys.exit(0 if out["ok"] else 1)


if __name__ == "__main__":
    main()
