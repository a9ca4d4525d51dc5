"""Shared fixtures: every test gets its own data directory; servers are real and on 127.0.0.1."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import duckdb
import httpx
import pytest

from tests.support.fake_upstream import FakeUpstream

VENV_BIN = Path(sys.executable).parent
REPO_ROOT = Path(__file__).resolve().parent.parent
# Real byLLM wire captures (copied from the project's shared fixtures; read-only).
FIXTURES_DIR = REPO_ROOT / "tests" / "fixtures" / "byllm"


def query_store(data_dir: Path, sql: str, params: list | None = None) -> list[tuple]:
    """Rows from the test's store: the data dir's DuckDB file, opened read-only (run it after the
    proxy stops), or the test's PostgreSQL database when it runs on one (`store_backend`)."""
    url = os.environ.get("UNDERSTUDY_STORE")
    if url:
        from understudy.store import Store

        store = Store(url, read_only=True)
        try:
            return store.cursor().execute(sql, params or []).fetchall()
        finally:
            store.close()
    con = duckdb.connect(str(data_dir / "understudy.duckdb"), read_only=True)
    try:
        return con.execute(sql, params or []).fetchall()
    finally:
        con.close()


def open_test_store(duckdb_path: Path, **kwargs):
    """The test's store: the DuckDB file at `duckdb_path`, or its PostgreSQL database when it has one."""
    from understudy.store import Store

    return Store(os.environ.get("UNDERSTUDY_STORE") or duckdb_path, **kwargs)


# ---- the store backends: DuckDB everywhere; PostgreSQL too where a module asks for both ----
# A module sets `STORE_BACKENDS = ("duckdb", "postgresql")` to run each of its tests on both
# (`UNDERSTUDY_TEST_STORE=postgresql` runs the whole suite on PostgreSQL). On PostgreSQL each
# test gets a database of its own, named by UNDERSTUDY_STORE for the proxies and CLIs it starts.


def pytest_generate_tests(metafunc):
    if "store_backend" in metafunc.fixturenames:
        forced = os.environ.get("UNDERSTUDY_TEST_STORE")
        backends = (forced,) if forced else getattr(metafunc.module, "STORE_BACKENDS", None)
        if backends:
            metafunc.parametrize("store_backend", backends, indirect=True)


@pytest.fixture(scope="session")
def postgres_server():
    from tests.support.services import PostgresServer, services_missing

    if "postgres" in services_missing():
        pytest.fail("PostgreSQL is not installed (scripts/machine_packages.sh, run by `make test`, installs it)")
    server = PostgresServer().start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def redis_server():
    from tests.support.services import RedisServer, services_missing

    if "redis-server" in services_missing():
        pytest.fail("Redis is not installed (scripts/machine_packages.sh, run by `make test`, installs it)")
    server = RedisServer().start()
    yield server
    server.stop()


@pytest.fixture(autouse=True)
def store_backend(request, monkeypatch):
    """'duckdb' (the data dir's file) or 'postgresql' (a fresh database, in UNDERSTUDY_STORE)."""
    backend = getattr(request, "param", "duckdb")
    monkeypatch.delenv("UNDERSTUDY_STORE", raising=False)
    if backend == "postgresql":
        monkeypatch.setenv("UNDERSTUDY_STORE", request.getfixturevalue("postgres_server").new_database())
    return backend


@pytest.fixture(autouse=True)
def isolated_data_dir(tmp_path, monkeypatch):
    """Nothing a test does touches ./understudy-data or the user's keys."""
    data_dir = tmp_path / "understudy-data"
    monkeypatch.setenv("UNDERSTUDY_DATA_DIR", str(data_dir))
    for name in (
        "OPENAI_API_KEY",
        "OPENAI_BASE_URL",
        "UNDERSTUDY_UPSTREAM_KEY",
        "UNDERSTUDY_UPSTREAM_URL",
        "UNDERSTUDY_URL",
    ):
        monkeypatch.delenv(name, raising=False)
    return data_dir


@pytest.fixture
def fake_upstream():
    with FakeUpstream() as upstream:
        yield upstream


@dataclass
class RunningProxy:
    process: subprocess.Popen
    url: str
    data_dir: Path
    admin_token: str

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
        return self.process.wait(timeout)

    def log(self) -> str:
        return (self.data_dir.parent / "proxy.log").read_text()

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return run_cli(*args, "--data-dir", str(self.data_dir), check=check)


def run_cli(
    *args: str, check: bool = True, env: dict | None = None, input: str | None = None
) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [str(VENV_BIN / "understudy"), *args], capture_output=True, text=True, timeout=120, env=env, input=input
    )
    if check and result.returncode != 0:
        raise AssertionError(f"understudy {' '.join(args)} exited {result.returncode}: {result.stderr}")
    return result


def start_proxy(data_dir: Path, upstream_url: str, *extra: str, env: dict | None = None) -> RunningProxy:
    """`understudy serve` exactly as a user runs it, on a free port."""
    data_dir.mkdir(parents=True, exist_ok=True)
    log = open(data_dir.parent / "proxy.log", "a")  # a file, not a pipe: a full pipe would block the proxy
    process = subprocess.Popen(
        [
            str(VENV_BIN / "understudy"),
            "serve",
            "--port",
            "0",
            "--upstream-url",
            upstream_url,
            "--data-dir",
            str(data_dir),
            *extra,
        ],
        env=env or os.environ.copy(),
        stdout=subprocess.DEVNULL,
        stderr=log,
        text=True,
    )
    log.close()
    discovery = data_dir / "proxy.json"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(
                f"proxy exited {process.returncode}: {(data_dir.parent / 'proxy.log').read_text()[-2000:]}"
            )
        if discovery.exists():
            try:
                info = json.loads(discovery.read_text())
                assert info["url"] == info["root"] + "/v1"  # `url` is what an OpenAI client is given
                httpx.get(info["root"] + "/healthz", timeout=2).raise_for_status()
                return RunningProxy(process, info["root"], data_dir, info["admin_token"])
            except (ValueError, httpx.HTTPError):
                pass
        time.sleep(0.05)
    process.kill()
    raise RuntimeError("proxy did not start within 60 s")


@pytest.fixture
def proxy(fake_upstream, isolated_data_dir):
    running = start_proxy(isolated_data_dir, fake_upstream.url)
    yield running
    running.stop()


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory):
    """(hf_dir, gguf_path) of the tiny random Llama (DESIGN.md), built once per session."""
    from understudy.training.tiny_model import make_tiny_llama

    return make_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture
def tiny_model_env(tiny_llama, monkeypatch):
    """Environment for a proxy / CLI / worker that trains and serves the tiny model fast."""
    hf_dir, gguf = (str(p) for p in tiny_llama)
    monkeypatch.setenv("UNDERSTUDY_BASE_GGUF", gguf)
    monkeypatch.setenv("UNDERSTUDY_LOCAL_THREADS", "2")
    # No routing policy here: every test of a decision runs at the shipped defaults.
    monkeypatch.setenv(
        "UNDERSTUDY_TRAIN_CONFIG",
        json.dumps(
            {
                "base_model": hf_dir,
                "base_gguf": gguf,
                "lr": 1e-2,
                "max_steps": 40,
                "batch_size": 2,
                "grad_accum": 1,
                "lora_dropout": 0.0,
                "device": "cpu",
                "verify_max_tokens": 32,
            }
        ),
    )
    return os.environ.copy()
