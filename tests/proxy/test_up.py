"""`understudy up` (what `make serve` runs): proxy + worker + offline teacher when no key is set."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import httpx

from tests.conftest import VENV_BIN
from tests.support.fake_upstream import free_port


def children_of(pid: int) -> dict[int, str]:
    """Child pid -> full command line. `-ww`: without it ps cuts lines to the terminal's width."""
    out = subprocess.run(["ps", "-ww", "-o", "pid=,args=", "--ppid", str(pid)], capture_output=True, text=True).stdout
    return {int(pid): args for pid, args in (line.split(None, 1) for line in out.splitlines() if line.strip())}


def is_running(pid: int) -> bool:
    """A zombie (dead, not yet reaped by whoever inherited it) counts as stopped."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def test_up_runs_the_whole_main_job_and_stops_it(isolated_data_dir):
    port = free_port()
    process = subprocess.Popen(
        [str(VENV_BIN / "understudy"), "up", "--port", str(port)],
        env=os.environ.copy(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        body = {
            "model": "gpt-4o-mini",
            "messages": [
                {
                    "role": "user",
                    "content": "describe_level\n\nlevel = ("
                    "Level(name='Crypt', difficulty=2, width=10, height=10, num_wall=2, num_enemies=2, time_countdown=100, "
                    "n_retries_allowed=3), '')",
                }
            ],
        }
        response = httpx.post(f"http://127.0.0.1:{port}/v1/chat/completions", json=body, timeout=30)
        assert response.status_code == 200 and "Crypt" in response.json()["choices"][0]["message"]["content"]
        kids = children_of(process.pid)
        assert any("understudy teacher" in args for args in kids.values()), kids
        assert any("understudy worker" in args for args in kids.values()), kids
        assert (isolated_data_dir / "understudy.duckdb").exists()
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(60)
    # The children must be stopped by `up` itself, not orphaned: uvicorn re-raises SIGTERM
    # after its shutdown, so a plain `finally` in `up` would never run.
    assert [pid for pid in kids if is_running(pid)] == []
