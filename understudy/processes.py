"""Starting Understudy's own servers as child processes and waiting until they answer.

Used by `understudy up` (teacher beside the proxy), `understudy corpus` (a proxy and a
teacher for the length of a run when none is running) and the tests.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from understudy.settings import Settings


def understudy_executable() -> str:
    return str(Path(sys.executable).parent / "understudy")


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


@dataclass
class Child:
    process: subprocess.Popen
    url: str

    def stop(self, timeout: float = 60) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                return self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
        return self.process.wait()


def wait_until_healthy(url: str, process: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{url} exited with status {process.returncode} before answering")
        try:
            if httpx.get(url + "/healthz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    process.kill()
    raise RuntimeError(f"{url} did not answer within {timeout:.0f} s")


def start_teacher(seed: int = 0, flaw_share: float = 0.1, port: int | None = None) -> Child:
    port = port or free_port()
    process = subprocess.Popen(
        [understudy_executable(), "teacher", "--port", str(port), "--seed", str(seed), "--flaw-share", str(flaw_share)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    wait_until_healthy(url, process)
    return Child(process, url + "/v1")


def start_proxy(settings: Settings, upstream_url: str, *, upstream_free: bool = False) -> Child:
    """`understudy serve` on a free port; its URL comes from the discovery file it writes."""
    settings.ensure_data_dir()
    settings.discovery_path.unlink(missing_ok=True)
    process = subprocess.Popen(
        [
            understudy_executable(),
            "serve",
            "--port",
            "0",
            "--upstream-url",
            upstream_url,
            "--data-dir",
            str(settings.data_dir),
            *(["--upstream-free"] if upstream_free else []),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the proxy exited with status {process.returncode} on start")
        try:
            info = json.loads(settings.discovery_path.read_text())
            wait_until_healthy(info["root"], process, timeout=10)
            return Child(process, info["root"])
        except (OSError, ValueError, KeyError):
            time.sleep(0.05)
    process.kill()
    raise RuntimeError("the proxy did not start within 60 s")


def start_worker(settings: Settings, extra_env: dict[str, str] | None = None) -> Child:
    """`understudy worker` for the data directory, logging to <data-dir>/worker.log."""
    settings.ensure_data_dir()
    log = open(settings.data_dir / "worker.log", "a")
    # The queue and shared dir `up` was given (flags or environment) are the worker's too; in its
    # environment, not its arguments, where `ps` would show a Redis password.
    env = {
        **os.environ,
        **({"UNDERSTUDY_QUEUE": settings.redis_url} if settings.redis_url else {}),
        **({"UNDERSTUDY_SHARED_DIR": str(settings.shared_dir)} if settings.shared_dir else {}),
        **(extra_env or {}),
    }
    process = subprocess.Popen(
        [understudy_executable(), "worker", "--data-dir", str(settings.data_dir)], stdout=log, stderr=log, env=env
    )
    log.close()
    return Child(process, str(settings.huey_path))
